//! Reads that fall back to the primary while no replica is up cannot take
//! the connections writes need (`write_reserve`). Shared test server; the
//! replica is a port nothing listens on.

mod common;

use std::time::Duration;

use common::{closed_port, host_status, label};
use dbtool_pool::{Error, RwPool};

async fn pool_with_dead_replica(reserve: usize) -> (RwPool, String, dbtool_testkit::TestDb) {
    let db = dbtool_testkit::pg().await;
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        closed_port(),
        db.name()
    );
    let pool = RwPool::builder()
        .primary(db.url())
        .replica(dead)
        .max_size(4)
        .write_reserve(reserve)
        .checkout_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    (pool, label(&db.url()), db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_get_the_reserved_connections_while_fallback_reads_hold_the_rest() {
    let (pool, primary, _db) = pool_with_dead_replica(2).await;
    // Two reads fall back to the primary and hold its two read slots.
    let r1 = pool.read().await.unwrap();
    let r2 = pool.read().await.unwrap();
    assert_eq!((r1.host(), r2.host()), (primary.as_str(), primary.as_str()));
    // A third read waits for a slot, and gets none within the checkout wait.
    let err = pool.read().await.unwrap_err();
    assert!(
        matches!(err, Error::ReadSlotTimeout { reserve: 2, .. }),
        "{err:?}"
    );
    assert!(err.is_timeout());
    assert_eq!(
        err.to_string(),
        format!(
            "no connection for reads on primary {primary} within 300ms (checkout_timeout_ms): \
             reads falling back to the primary may use all but the 2 connections kept for \
             writes (write_reserve); bring a replica back or raise primary_max_size"
        )
    );
    // Meanwhile both reserved connections serve writes at once.
    let w1 = pool.write().await.unwrap();
    let w2 = pool.write().await.unwrap();
    for w in [&w1, &w2] {
        assert_eq!(w.host(), primary);
        w.query_one("SELECT 1", &[]).await.unwrap();
    }
    let s = host_status(&pool, &primary);
    assert_eq!((s.pool.size, s.pool.active), (4, 4));
    // A read slot given back is taken by the next read.
    drop(r1);
    let r3 = pool.read().await.unwrap();
    r3.query_one("SELECT 1", &[]).await.unwrap();
    drop((r2, r3, w1, w2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reserve_fallback_reads_can_starve_writes() {
    // The same load with write_reserve = 0: what the reserve prevents.
    let (pool, primary, _db) = pool_with_dead_replica(0).await;
    let reads: Vec<_> = held_reads(&pool, 4).await;
    assert!(reads.iter().all(|r| r.host() == primary));
    let err = pool.write().await.unwrap_err();
    assert!(matches!(err, Error::CheckoutTimeout { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_leaves_fallback_reads_at_least_one_connection() {
    // A reserve as large as the pool is capped at its size minus one.
    let (pool, primary, _db) = pool_with_dead_replica(16).await;
    let r = pool.read().await.unwrap();
    assert_eq!(r.host(), primary);
    let err = pool.read().await.unwrap_err();
    assert!(
        matches!(err, Error::ReadSlotTimeout { reserve: 3, .. }),
        "{err:?}"
    );
    let mut writes = Vec::new();
    for _ in 0..3 {
        writes.push(pool.write().await.unwrap());
    }
    assert!(writes.iter().all(|w| w.host() == primary));
}

/// `n` reads checked out at once.
async fn held_reads(pool: &RwPool, n: usize) -> Vec<dbtool_pool::Conn> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(pool.read().await.unwrap());
    }
    v
}
