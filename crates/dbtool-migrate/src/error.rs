//! The migrator's error type.

/// What can go wrong in a migration. Messages name the file, table, row or
/// setting at fault and say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source file could not be opened or read.
    #[error("cannot read {path}: {reason}")]
    Source {
        /// The SQLite file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A SQLite error while reading the source.
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A Postgres error.
    #[error("postgres error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    // A run's own failures: its options, its target, a batch that Postgres
    // refused, a value under policy `fail`, a source that changed, a cancel.
    // Each says whether committed batches are kept and how to continue.
    /// Invalid options (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The target database could not be reached or prepared.
    #[error("cannot use the target database {target}: {reason}")]
    Target {
        /// The target, password masked.
        target: String,
        /// Why, and what to do.
        reason: String,
    },
    /// Postgres failed while loading a table; committed batches are kept.
    #[error("loading table {table} failed: {reason}: {source}")]
    Load {
        /// Source table.
        table: String,
        /// What happened and what to do next.
        reason: String,
        /// The Postgres error.
        source: tokio_postgres::Error,
    },
    /// A value could not be cast and its column's policy is `fail` (or `--strict`).
    #[error("cannot migrate table {table}, row {row}, column {column}: {reason}; the policy for this column is fail: fix the value in the source or set the policy to reject or null, then run the same command again to resume")]
    RowFailed {
        /// Source table.
        table: String,
        /// The row: `rowid 17` or `pk {"a":1}`.
        row: String,
        /// Source column.
        column: String,
        /// Why the value could not be cast.
        reason: String,
    },
    /// The source file changed during the run (or since the interrupted run began).
    #[error("the source {path} changed during the migration ({detail}); the rows copied so far come from the old contents. Stop the application writing to it and start over with `dbtool migrate --restart`, or use `--snapshot` to copy a consistent snapshot first")]
    SourceChanged {
        /// The source file.
        path: String,
        /// What changed.
        detail: String,
    },
    /// Stopped by Ctrl-C (or the caller's cancel flag) at a batch boundary.
    #[error("migration run {run} interrupted; every committed batch is kept: run the same command again (or add --resume) to continue")]
    Cancelled {
        /// The run id.
        run: i64,
    },
    /// Another run of the same source into the same schema holds the run
    /// lock (see [`crate::lock`]).
    #[error("another dbtool migrate of {source_path} into schema {schema} is running: {holder}. Wait for it to end (or stop it; its committed batches are kept and the next run resumes them), or add --wait to wait for it")]
    Locked {
        /// The source file.
        source_path: String,
        /// The target schema.
        schema: String,
        /// Who holds the lock: host, pid, start time.
        holder: String,
    },
    /// More rows were rejected than `--max-rejects` allows.
    #[error("stopped: {rejected} rows rejected, more than --max-rejects {limit}; the rows committed so far are kept in run {run}. See `dbtool plan --from FILE` for why values do not fit, then fix the source or the overrides and start over with --restart, or raise --max-rejects and run the same command to continue")]
    RejectLimit {
        /// The run id.
        run: i64,
        /// Rows rejected so far (this run, all attempts).
        rejected: u64,
        /// The limit.
        limit: u64,
    },
    /// The finish phase or another step failed for a reason stated in full.
    #[error("{0}")]
    Other(String),
}

/// Reading or writing dbtool's own tables (runs, checkpoints, rejects)
/// fails as Postgres does; a source that cannot be fingerprinted is a source
/// error.
impl From<dbtool_catalog::Error> for Error {
    fn from(e: dbtool_catalog::Error) -> Error {
        match e {
            dbtool_catalog::Error::Postgres(e) => Error::Postgres(e),
            dbtool_catalog::Error::Source { path, reason } => Error::Source { path, reason },
            other => Error::Other(other.to_string()),
        }
    }
}
