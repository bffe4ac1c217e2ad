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
    #[error("cannot connect to the redis cluster at {nodes}: {source} (is the cluster up and are [cache] nodes right?)")]
    Connect {
        /// The seed nodes tried, comma separated.
        nodes: String,
        /// What fred reported.
        #[source]
        source: fred::error::Error,
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
