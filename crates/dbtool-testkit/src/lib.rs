//! Real PostgreSQL and Redis Cluster servers for tests: local binaries (default),
//! Docker (testcontainers), or servers you already run.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // A fresh database on the shared primary (which has 1 streaming replica).
//! let db = dbtool_testkit::pg().await;
//! let client = db.client().await;
//! client.batch_execute("CREATE TABLE t (id int)").await?;
//! let _on_replica = db.replica_urls();
//!
//! // A dedicated cluster for tests that break things.
//! let c = dbtool_testkit::PgCluster::start(2).await?;
//! c.pause_replay(0).await?;
//!
//! // The shared Redis Cluster, with a key prefix per test.
//! let r = dbtool_testkit::redis().await;
//! let (_nodes, _prefix) = (r.nodes(), r.prefix());
//! # Ok(()) }
//! ```
//!
//! Shared servers start once per test process (one per `cargo test` binary) and
//! stop when it exits, even after a panic or SIGKILL: a watchdog shell per server
//! group polls the test's pid and then stops the servers and removes their files.
//! The backend comes from `DBTOOL_TEST_BACKEND` (`local`, `docker`, `external`);
//! see `docs/testing.md`.

mod backend;
mod docker;
mod error;
mod local_pg;
mod local_redis;
mod pg;
mod redis;
mod resp;
mod tls;
mod util;

pub use backend::Backend;
pub use error::{Error, Result};
pub use pg::{pg, shared_pg, shared_shards, shared_tls_pg, PgCluster, PgOptions, Shards, TestDb};
pub use redis::{redis, RedisCluster, Role};
pub use tls::TestCa;

// dbtool's one masker, compiled from the pool's file: the testkit must not
// depend on the crates it tests, and test output must be masked the same way.
#[path = "../../dbtool-pool/src/mask.rs"]
#[allow(dead_code)]
mod mask_impl;

/// A URL (or libpq string) with its password replaced by `***`, for
/// messages: the same code as `dbtool_pool::mask_password`.
pub fn mask(url: &str) -> String {
    mask_impl::mask_password(url)
}

/// An error and its causes, joined with `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
