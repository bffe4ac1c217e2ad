//! The verifier's error type: everything that stops a comparison from running.
//!
//! Differences between source and target are not errors: they are the
//! [`Report`](crate::Report). An [`Error`] means "could not compare" (exit 2).

/// Why a verification could not run. Messages name the file, URL (password
/// masked), table or run at fault and say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SQLite source could not be opened or read.
    #[error("cannot read source {path}: {reason}")]
    Source {
        /// The SQLite file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The target could not be reached (connect or a lost connection).
    #[error("cannot reach target {url}: {source} (is the server up and the URL right?)")]
    Connect {
        /// The target URL with the password masked.
        url: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The target's address could not be reached or gave no answer within
    /// `connect_timeout` (refused, unroutable, silent).
    #[error("cannot reach target {url}: {reason}")]
    Unreachable {
        /// The target URL with the password masked.
        url: String,
        /// Why, with the setting that bounded the wait where there is one.
        reason: String,
    },
    /// A query on the target failed.
    #[error("query on the target failed while {what}: {source}")]
    Target {
        /// What verify was doing.
        what: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQLite error while reading the source.
    #[error("reading the source failed while {what}: {source}")]
    Sqlite {
        /// What verify was doing.
        what: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// No plan could be found or made (no run record and the source cannot be planned).
    #[error("cannot determine the migration plan: {0}")]
    Plan(String),
    /// The run named with `--watermark` does not exist or has no record.
    #[error("migration run {run} not found in dbtool.runs of the target (list runs with `SELECT id FROM dbtool.runs`, or use --watermark auto)")]
    RunNotFound {
        /// The run asked for.
        run: String,
    },
    /// The reject file could not be read.
    #[error("cannot read reject file {path}: {reason}")]
    Rejects {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A table named with `--tables` is not in the plan.
    #[error("table {0:?} is not in the migration plan (check the name with `dbtool plan`)")]
    UnknownTable(String),
    /// An option has an invalid value.
    #[error("invalid option: {0}")]
    Usage(String),
    /// Writing the report failed.
    #[error("cannot write report {path}: {source}")]
    Report {
        /// The report file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A background task died (a bug: please report it).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn target(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let what = what.into();
        move |source| Error::Target { what, source }
    }

    /// For reads of dbtool's own tables through `dbtool-catalog`.
    pub(crate) fn catalog(what: impl Into<String>) -> impl FnOnce(dbtool_catalog::Error) -> Error {
        let what = what.into();
        move |e| match e {
            dbtool_catalog::Error::Postgres(source) => Error::Target { what, source },
            other => Error::Internal(format!("{what}: {other}")),
        }
    }

    pub(crate) fn sqlite(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let what = what.into();
        move |source| Error::Sqlite { what, source }
    }
}

/// dbtool's one masker (`postgres://user:***@host/db`, `password=***`),
/// under the name this crate has always exported.
pub use dbtool_pool::mask_password as mask_url;
