//! Routes each team to its shard: `team_id` -> bucket -> shard through a
//! versioned [`ShardMap`], with one read/write pool per shard, fan-out to all
//! shards, per-shard metrics and a hot-team counter.
//!
//! ```
//! use dbtool_shard::{Options, Router, Scheme, ShardMap};
//!
//! // Four shards, the 4096 buckets split evenly. A service uses
//! // `dbtool_pool::RwPool`s as the pools; anything works here.
//! let map = ShardMap::even_n(Scheme::Buckets, 4)?;
//! let pools = (0..4).map(|i| (format!("shard-{i}"), format!("postgres://pg{i}/app")));
//! let router = Router::new(map, pools, Options::default())?;
//!
//! let shard = router.shard_of("6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f")?;
//! println!("{} -> {}", router.shard_name(shard), router.pool(shard));
//! assert!(router.shard_of("").unwrap_err().is_unroutable());
//! # Ok::<(), dbtool_shard::Error>(())
//! ```
//!
//! Schemes: [`Scheme::Buckets`] (`xxh3_64(team_id) % 4096`, then the map) and
//! [`Scheme::Hex8Modulo`] (the app's `parseInt(teamId.substring(0, 8), 16) % N`).
//! Maps live in `dbtool.toml` ([`Config`]) or in a catalog database
//! ([`catalog::Catalog`]), where each change is a new immutable version that
//! running routers pick up ([`Router::watch`]). See `docs/sharding.md`.

pub mod catalog;
mod config;
mod error;
mod fanout;
mod hot;
mod map;
mod router;
mod scheme;
mod watch;

pub use config::{Config, MapConfig, ShardConfig};
pub use error::Error;
pub use fanout::{merge_sorted, sum_counts, FanOut, FanOutError, ShardResult};
pub use hot::{HotTeam, HotTeams};
pub use map::{BucketRange, ShardMap, MAX_SHARDS};
pub use router::{
    is_moved_error, Hold, Options, Router, Routing, Shard, ShardId, ShardStats, MOVED_SQLSTATE,
};
pub use scheme::{bucket_of, bucket_of_uuid, canonical_uuid, hex8_modulo, Scheme, BUCKETS};
pub use watch::{Watch, FREEZE_CHANNEL};
