//! The change streams' error type.

/// What can go wrong while syncing, cutting over or rolling back. Messages
/// name the file, table, change or setting at fault and say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid options or state for the requested command (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A SQLite error on the source file.
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A Postgres error.
    #[error("postgres error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}
