//! Errors of the sample generator.

use std::path::PathBuf;

/// What can go wrong while generating a sample database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The output file exists and `overwrite` was not set.
    #[error("refusing to overwrite {}: the file exists (pass --force to replace it)", path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// The scale is not a positive, finite number.
    #[error(
        "invalid scale {scale}: use a positive number (1 = about 100k rows, 11 = about 1.1M rows)"
    )]
    Scale {
        /// The rejected scale.
        scale: f64,
    },
    /// A file-system operation on the output failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed while writing the sample.
    #[error("cannot write sample database {}: {source}", path.display())]
    Sqlite {
        /// The path being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
}
