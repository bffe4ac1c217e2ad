//! A Redis Cluster cache client on [fred]: typed, fail-open, single-flight,
//! with tag invalidation, early refresh and an optional in-process L1.
//!
//! ```no_run
//! use std::time::Duration;
//! use dbtool_cache::{Cache, Config, Options};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Topic { id: i64, title: String }
//!
//! # async fn db_topic(id: i64) -> Result<Option<Topic>, std::io::Error> { Ok(None) }
//! # async fn example() -> Result<(), dbtool_cache::Error> {
//! let cache = Cache::connect(Config::with_nodes(["127.0.0.1:7000"])).await?;
//!
//! // Cache-aside: one loader call per key at a time; Redis trouble never
//! // reaches this line, the loader answers instead.
//! let opts = Options::ttl(Duration::from_secs(600)).tag("team:7");
//! let topic: Option<Topic> = cache.get_or_load_with("topic:42", &opts, || db_topic(42)).await?;
//!
//! // Everything tagged team:7, on every slot, in one O(1) write.
//! cache.invalidate_tag("team:7").await?;
//! # Ok(()) }
//! ```
//!
//! After a database write, invalidate with [`Cache::delete`] or
//! [`Cache::invalidate_tag`] (or their `_after` forms, given the commit's
//! WAL position): a load that began before can no longer store its older
//! value, and with [`Cache::get_or_load_fresh`] a loader that reads from
//! replicas is told how fresh it must read ([`Freshness`]).
//!
//! Key layout, guarantees and failure behaviour: `docs/cache.md` and the
//! [`keys`] module.

mod breaker;
mod cache;
mod clock;
mod codec;
mod coherence;
mod config;
mod entry;
mod error;
mod flight;
pub mod keys;
mod l1;
mod stats;

pub use cache::{Cache, Inspection, NodeInfo, Options};
pub use codec::{Codec, Json};
pub use coherence::Freshness;
pub use config::{mask_url, Breaker, Config, Retry, L1};
pub use error::Error;
pub use stats::Stats;
