//! The one error type of this crate.

use std::time::Duration;

use tokio_postgres::error::SqlState;

/// What went wrong in the pool. Every variant names the host (as `host:port`,
/// never with a password) and what the caller can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work (no primary, a size of zero, ...).
    #[error("invalid pool config: {0}")]
    Config(String),

    /// A connection URL does not parse. `url` has its password masked.
    #[error("invalid connection url {url} (expected postgres://user:password@host:port/db)")]
    Url {
        /// The URL with its password masked.
        url: String,
        /// Why it does not parse (never quoting the password).
        #[source]
        source: crate::tls::TlsError,
    },

    /// No host currently accepts writes: the primary is down and no replica
    /// has been promoted yet. Retry later; the pool finds a promoted replica
    /// by itself.
    #[error("no primary available for writes: {reason}; writes fail until the primary returns or a replica is promoted")]
    NoPrimary {
        /// What the monitor last saw.
        reason: String,
    },

    /// More than one host accepts writes and none is on a higher timeline
    /// than the others, so nothing tells the true primary apart: writes are
    /// refused rather than sent to a host whose commits a failover may have
    /// discarded. Stop the stale primary or rebuild it as a replica.
    #[error("split brain: {hosts} all accept writes and none is on a newer timeline; writes are refused until only one does (stop the stale primary or rebuild it as a replica)")]
    SplitBrain {
        /// The hosts that accept writes, with their timelines.
        hosts: String,
    },

    /// No host can take reads: no replica is in rotation and no host takes
    /// writes either.
    #[error("no host available for reads: {reason}; reads fail until a replica or the primary answers again")]
    NoHost {
        /// What the monitor last saw.
        reason: String,
    },

    /// Reads that fell back to the primary hold every connection they may
    /// (its size minus `write_reserve`) for the whole checkout wait.
    #[error("no connection for reads on primary {host} within {after:?} (checkout_timeout_ms): reads falling back to the primary may use all but the {reserve} connections kept for writes (write_reserve); bring a replica back or raise primary_max_size")]
    ReadSlotTimeout {
        /// `host:port`.
        host: String,
        /// The configured limit.
        after: Duration,
        /// Connections kept for writes.
        reserve: usize,
    },

    /// No replica can take reads and `fallback = "error"` forbids using the primary.
    #[error("no healthy replica for reads and fallback to the primary is disabled (set fallback = \"primary\" to allow it)")]
    NoReplica,

    /// A new connection to `host` failed. The message carries the driver's
    /// error (its chain of causes); [`Error::as_db`] gives the error itself.
    #[error("cannot connect to {role} {host}: {}", cause(error))]
    Connect {
        /// `host:port`.
        host: String,
        /// `primary` or `replica`: what the connection was wanted for.
        role: &'static str,
        /// The driver's error.
        error: tokio_postgres::Error,
    },

    /// A new connection to `host` did not finish its handshake in time.
    #[error("connecting to {role} {host} timed out after {after:?} (connect_timeout_ms); is the server up and reachable?")]
    ConnectTimeout {
        /// `host:port`.
        host: String,
        /// `primary` or `replica`.
        role: &'static str,
        /// The configured limit.
        after: Duration,
    },

    /// Every connection to `host` stayed busy for the whole checkout wait.
    #[error("no free connection to {host} within {after:?} (checkout_timeout_ms); raise the pool size or hold connections for less time")]
    CheckoutTimeout {
        /// `host:port`.
        host: String,
        /// The configured limit.
        after: Duration,
    },

    /// A query failed on `host` (including a server-side `statement_timeout`,
    /// see [`Error::is_statement_timeout`]). The message carries the cause:
    /// the server's message and SQLSTATE, or why the connection failed.
    #[error("query on {host} failed: {}", cause(error))]
    Query {
        /// `host:port`.
        host: String,
        /// The driver's error; [`Error::code`] gives its SQLSTATE.
        error: tokio_postgres::Error,
    },

    /// A query ran longer than the client-side limit; it was cancelled on the
    /// server and its connection is discarded when returned.
    #[error("query on {host} timed out after {after:?} (query_timeout_ms) and was cancelled")]
    QueryTimeout {
        /// `host:port`.
        host: String,
        /// The configured limit.
        after: Duration,
    },

    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,

    /// A string is not a consistency token.
    #[error("invalid consistency token {input:?}: expected a WAL position like 0/16B3748")]
    Token {
        /// What was given.
        input: String,
    },
}

impl Error {
    /// The SQLSTATE of a database error, if this is one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Query { error, .. } | Error::Connect { error, .. } => error.code(),
            _ => None,
        }
    }

    /// True when the server cancelled the statement because of `statement_timeout`
    /// (SQLSTATE 57014).
    pub fn is_statement_timeout(&self) -> bool {
        self.code() == Some(&SqlState::QUERY_CANCELED)
    }

    /// True for every kind of timeout: connect, checkout, query, statement.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::ConnectTimeout { .. }
                | Error::CheckoutTimeout { .. }
                | Error::ReadSlotTimeout { .. }
                | Error::QueryTimeout { .. }
        ) || self.is_statement_timeout()
    }

    /// True when the host could not be reached: the request never ran and can
    /// be retried elsewhere.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NoPrimary { .. }
                | Error::SplitBrain { .. }
                | Error::NoHost { .. }
                | Error::NoReplica
                | Error::Connect { .. }
                | Error::ConnectTimeout { .. }
        )
    }

    /// The driver's error, when there is one.
    pub fn as_db(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Query { error, .. } | Error::Connect { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// True when `e` means the connection is gone (closed, reset, or the server
/// is shutting down): the statement did not complete and a read can move to
/// another host.
pub(crate) fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What went wrong, for a message: the server's message and SQLSTATE for
/// an error the server sent (`canceling statement due to statement timeout
/// (SQLSTATE 57014)`), else the driver's error and its causes.
///
/// The driver's error is kept out of `source()`: its text is already in the
/// message, and a chain printer (`{:#}`) would repeat it.
fn cause(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => chain(e),
    }
}

/// `e` and its causes joined with `: ` (the driver's `Display` stops at the
/// first level, e.g. "error connecting to server").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}
