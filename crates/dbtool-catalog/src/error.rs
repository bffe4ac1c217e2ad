//! The catalog's error type.

/// What can go wrong reading or writing dbtool's own tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A query on dbtool's tables failed.
    #[error("postgres error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A source file could not be read to fingerprint it.
    #[error("cannot read {path}: {reason}")]
    Source {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}
