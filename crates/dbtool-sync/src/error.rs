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
    /// Reverse sync or rollback could not go on: the message names the slot,
    /// table or change at fault and what to do.
    #[error("{0}")]
    Reverse(String),
    /// A rollback stopped before switching (over its freeze budget, or a
    /// check failed): writes continue on Postgres and nothing was lost.
    #[error("rollback aborted: {0}")]
    RollbackAborted(String),
    /// The source file cannot be used.
    #[error("{path}: {reason}")]
    Source {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The target cannot be used.
    #[error("{target}: {reason}")]
    Target {
        /// The target, password masked.
        target: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The source's schema changed in a way sync cannot follow by itself.
    #[error("schema change in {path}: {change}; {todo}")]
    SchemaChange {
        /// The file.
        path: String,
        /// What changed.
        change: String,
        /// What to do.
        todo: String,
    },
    /// The cutover gave up and released the file; nothing was switched.
    #[error("cutover aborted, nothing switched, the app keeps writing to SQLite: {0}")]
    CutoverAborted(String),
    /// An error from the migrator (initial copy, plan).
    #[error(transparent)]
    Migrate(#[from] dbtool_migrate::Error),
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// True when SQLite answered "busy": another connection held the file's
    /// lock for longer than dbtool waited for it.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
        )
    }
}
