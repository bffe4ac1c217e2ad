//! The one error type of this crate.

use std::sync::Arc;

/// What can go wrong when using the cache.
///
/// Reads never fail because of Redis (they fall back to the loader); the
/// variants here are what a caller can act on: a bad configuration, a cluster
/// that cannot be reached for a write or an invalidation, a value that cannot
/// be encoded, or a loader that failed with no stale value to fall back on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `[cache]` configuration cannot be used.
    #[error("invalid cache config: {0} (fix the [cache] table of dbtool.toml)")]
    Config(String),
    /// The cluster could not be reached while connecting.
    ///
    /// The message holds the reason in words ("connection refused"); fred's
    /// own error is kept in `error` but is not the error's `source()`, so an
    /// error chain does not repeat it as a Rust Debug struct.
    #[error("cannot connect to the redis cluster at {nodes}: {} (is the cluster up and are [cache] nodes right?)", human(.error))]
    Connect {
        /// The seed nodes tried, comma separated, passwords masked.
        nodes: String,
        /// What fred reported.
        error: fred::error::Error,
    },
    /// A delete or tag invalidation did not reach Redis after its retries
    /// (error, timeout or open circuit breaker), or an operator call
    /// (`shared_stats`, `nodes`, `inspect`) failed. After a lost
    /// invalidation the cached value may be stale until its TTL ends; retry
    /// the operation. `set` never returns it (fail-open).
    #[error("cache {op} of {key:?} did not reach redis: {reason} (retry, or wait for the TTL)")]
    Unavailable {
        /// The operation: `delete`, `invalidate tag`, `get`, `read stats`, ...
        op: &'static str,
        /// The cache key or tag.
        key: String,
        /// Why: the Redis error, `timeout`, or `circuit breaker open`.
        reason: String,
    },
    /// A value could not be encoded or decoded by the codec.
    #[error("cannot {op} the cached value of {key:?}: {message}")]
    Codec {
        /// `encode` or `decode`.
        op: &'static str,
        /// The cache key.
        key: String,
        /// What the codec reported.
        message: String,
    },
    /// The loader of `get_or_load` failed, and no stale value was allowed or
    /// available to answer instead.
    #[error("loading {key:?} failed: {source}")]
    Loader {
        /// The cache key.
        key: String,
        /// The loader's error, shared between all callers that waited on it.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

/// A fred error as a person reads it: "connection refused", not
/// `IO Error: Os { code: 111, kind: ConnectionRefused, .. }`.
pub(crate) fn human(e: &fred::error::Error) -> String {
    use fred::error::ErrorKind;
    let details = e.details();
    match e.kind() {
        ErrorKind::IO => {
            // fred keeps an io::Error as its Debug text.
            if let Some(msg) = between(details, "message: \"", "\"") {
                return msg.to_lowercase();
            }
            if let Some(err) = between(details, "error: \"", "\"") {
                return err.to_owned();
            }
            if let Some(kind) = between(details, "Kind(", ")") {
                return words(kind);
            }
            format!("i/o error: {details}")
        }
        ErrorKind::Timeout => format!("timed out ({details})"),
        ErrorKind::Auth => {
            format!("authentication failed: {details} (check [cache] username and password)")
        }
        ErrorKind::Tls => format!("tls: {details}"),
        ErrorKind::Canceled => "canceled (the connection was closed)".into(),
        _ => details.to_owned(),
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// `ConnectionRefused` -> "connection refused".
fn words(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

impl Error {
    /// True when the error is the loader's own failure.
    pub fn is_loader(&self) -> bool {
        matches!(self, Error::Loader { .. })
    }

    /// True when Redis could not be reached (so the operation may be retried).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Connect { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as Fred, ErrorKind};

    #[test]
    fn io_errors_read_as_words_not_debug_structs() {
        let refused: Fred = std::io::Error::from_raw_os_error(111).into();
        assert_eq!(human(&refused), "connection refused");
        let kind: Fred = std::io::Error::from(std::io::ErrorKind::TimedOut).into();
        assert_eq!(human(&kind), "timed out");
        let custom: Fred = std::io::Error::other("boom").into();
        assert_eq!(human(&custom), "boom");
        let e = Fred::new(ErrorKind::Timeout, "no answer within 500 ms");
        assert_eq!(human(&e), "timed out (no answer within 500 ms)");
    }
}
