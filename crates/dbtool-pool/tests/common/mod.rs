//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use dbtool_pool::{Builder, Conn, HostStatus, RwPool};
use dbtool_testkit::{PgCluster, TestDb};

/// `host:port` as the pool labels it, from a testkit URL.
pub fn label(url: &str) -> String {
    let cfg: dbtool_pool::tokio_postgres::Config = url.parse().expect("testkit URL parses");
    let host = match &cfg.get_hosts()[0] {
        dbtool_pool::tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        dbtool_pool::tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    format!(
        "{host}:{}",
        cfg.get_ports().first().copied().unwrap_or(5432)
    )
}

/// The connect timeout of [`quick`] pools.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A builder with quick checks, for tests that wait on the monitor.
pub fn quick(primary: &str, replicas: &[String]) -> Builder {
    RwPool::builder()
        .primary(primary)
        .replicas(replicas.iter().cloned())
        .check_interval(Duration::from_millis(100))
        .eject_for(Duration::from_millis(800))
        .failure_threshold(3)
        .connect_timeout(CONNECT_TIMEOUT)
}

/// Polls `check` until it returns Some, or panics after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of host `label`.
pub fn host_status(pool: &RwPool, label: &str) -> HostStatus {
    pool.status()
        .into_iter()
        .find(|h| h.host == label)
        .unwrap_or_else(|| panic!("no host {label} in the status"))
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A unique application_name, to find this test's connections in pg_stat_activity.
pub fn app_name(test: &str) -> String {
    format!("t_{test}_{}", std::process::id())
}

/// A dedicated cluster, for tests that stop or promote its servers: a
/// primary with `replicas` streaming replicas, a fresh database on it in
/// which `setup` has run, and that database's URL on each replica.
pub async fn cluster(replicas: usize, setup: &str) -> (PgCluster, TestDb, Vec<String>) {
    let c = PgCluster::start(replicas)
        .await
        .unwrap_or_else(|e| panic!("start a primary with {replicas} replica(s): {e}"));
    let db = c.fresh_db().await;
    db.client().await.batch_execute(setup).await.unwrap();
    let urls = db.replica_urls();
    (c, db, urls)
}

/// Waits (up to 10 s) until `pool` hands out a write connection again, as
/// it does once it has found a promoted replica, and returns it.
pub async fn promoted_write(pool: &RwPool) -> Conn {
    wait_for(
        Duration::from_secs(10),
        "writes to reach the promoted replica",
        || async { pool.write().await.ok() },
    )
    .await
}
