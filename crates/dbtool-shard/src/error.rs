//! The router's error type.

use crate::scheme::Scheme;

/// What can go wrong routing, loading or publishing a shard map, or fanning
/// out. Messages name the team id, shard, map version or catalog at fault and
/// say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A team id the scheme cannot route (empty; not hex for `hex8-modulo`).
    /// Never guessed: the caller decides what to do with such a row.
    #[error("cannot route team id {team_id:?} with the {scheme} scheme: {reason}")]
    Unroutable {
        /// The team id (cut to 100 characters).
        team_id: String,
        /// The scheme that refused it.
        scheme: Scheme,
        /// Why.
        reason: &'static str,
    },
    /// A shard map that does not assign every bucket to exactly one known
    /// shard, or is otherwise malformed.
    #[error("invalid shard map: {0}")]
    InvalidMap(String),
    /// A map names a shard the router has no pool for.
    #[error(
        "shard map version {version} names shard {shard:?}, which this router has no pool for: \
         add the shard to [[shard.shards]] of every service before publishing a map that uses it"
    )]
    UnknownShard {
        /// The shard's name.
        shard: String,
        /// The map version that names it.
        version: u64,
    },
    /// The catalog database holds no shard map yet.
    #[error("no shard map in the catalog {catalog}: publish one first (`dbtool shard map --set FILE --map URL`)")]
    NoMap {
        /// The catalog (password masked).
        catalog: String,
    },
    /// A bad setting in the `[shard]` table or on the command line.
    #[error("invalid shard configuration: {0}")]
    Config(String),
    /// A Postgres error talking to the catalog.
    #[error("{action} in the shard catalog {catalog}: {source}")]
    Catalog {
        /// What was being done, e.g. "cannot load the shard map".
        action: &'static str,
        /// The catalog (password masked).
        catalog: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The catalog database cannot be reached (or refused the connection or
    /// its TLS settings); the message names it, without the password.
    #[error("shard catalog: {0}")]
    CatalogConnect(dbtool_pool::ConnectError),
    /// The connection to the catalog ended (the watcher reconnects).
    #[error("the connection to the shard catalog {catalog} ended: the watcher reconnects")]
    Disconnected {
        /// The catalog (password masked).
        catalog: String,
    },
    /// Applying `migrations/` to the catalog failed.
    #[error("cannot create the shard catalog tables in {catalog}: {source}")]
    Migrate {
        /// The catalog (password masked).
        catalog: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// Building the pool of a shard failed.
    #[error("cannot build the pool of shard {shard:?}: {source}")]
    Pool {
        /// The shard's name.
        shard: String,
        /// The pool's error.
        #[source]
        source: dbtool_pool::Error,
    },
    /// Some shards of a fan-out failed (see [`FanOut::into_result`](crate::FanOut::into_result)).
    #[error("{} of {total} shards failed: {}", failed.len(), list_failures(failed))]
    Shards {
        /// How many shards were asked.
        total: usize,
        /// Each failed shard and its error message.
        failed: Vec<(String, String)>,
    },
}

fn list_failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(shard, error)| format!("{shard} ({error})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub(crate) fn unroutable(team_id: &str, scheme: Scheme, reason: &'static str) -> Error {
        Error::Unroutable {
            team_id: team_id.chars().take(100).collect(),
            scheme,
            reason,
        }
    }

    /// True for [`Error::Unroutable`]: the team id is bad, not the system.
    pub fn is_unroutable(&self) -> bool {
        matches!(self, Error::Unroutable { .. })
    }
}
