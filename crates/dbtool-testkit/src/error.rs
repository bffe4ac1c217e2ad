//! The one error type of the testkit.

use std::time::Duration;

/// Result alias for testkit operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while starting or driving test servers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server binary is not installed (or not where we looked).
    #[error("{what} not found (looked in {looked}); install: {install}")]
    MissingBinary {
        /// Which binaries are missing.
        what: String,
        /// Where we looked.
        looked: String,
        /// The command that installs them.
        install: String,
    },
    /// The chosen backend cannot do this operation (e.g. killing a server you run yourself).
    #[error("{op} is not supported by the `{backend}` test backend; {hint}")]
    Unsupported {
        /// The operation asked for.
        op: &'static str,
        /// The backend in use (`local`, `docker`, `external`).
        backend: &'static str,
        /// What to do instead.
        hint: String,
    },
    /// An environment variable or argument is invalid or missing.
    #[error("invalid test configuration: {0}")]
    Config(String),
    /// A helper command (initdb, pg_ctl, redis-cli, ...) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line (no credentials: all servers use trust auth).
        command: String,
        /// Exit status and the tail of its output or log.
        detail: String,
    },
    /// A server did not reach the expected state in time.
    #[error("{what} did not happen within {:?}: {detail}", .after)]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        after: Duration,
        /// The last observation.
        detail: String,
    },
    /// A PostgreSQL statement or connection failed.
    #[error("postgres: {op} failed")]
    Postgres {
        /// What we were doing.
        op: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A Redis command failed.
    #[error("redis: {0}")]
    Redis(String),
    /// A file or process operation failed.
    #[error("{op} failed")]
    Io {
        /// What we were doing.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A node index is out of range.
    #[error("no {kind} {index}: this cluster has {count}")]
    NoSuchNode {
        /// `replica` or `node`.
        kind: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// The Docker backend failed (is a Docker engine running?).
    #[error("docker backend: {0}; is a Docker engine running and reachable (DOCKER_HOST)? use DBTOOL_TEST_BACKEND=local to run the servers from local binaries instead")]
    Docker(String),
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn pg(op: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Postgres {
            op: op.into(),
            source,
        }
    }
}
