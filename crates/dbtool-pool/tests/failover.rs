//! The primary goes away and a replica is promoted: writes fail fast during
//! the gap, then find the new primary by themselves. Dedicated cluster.

mod common;

use std::time::{Duration, Instant};

use common::{cluster, host_status, label, quick, wait_for};
use dbtool_pool::{Error, Health, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_replica_takes_writes_after_the_primary_stops() {
    let (c, db, replicas) = cluster(
        2,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .await;
    let pool = quick(&db.url(), &replicas).build().await.unwrap();
    assert_eq!(pool.write().await.unwrap().host(), label(&db.url()));

    c.stop_primary().await.unwrap();

    // The gap: once the monitor has seen the primary go, writes fail at once
    // with an error that says what to expect.
    let err = wait_for(
        Duration::from_secs(5),
        "writes to report no primary",
        || async {
            match pool.write().await {
                Err(e @ Error::NoPrimary { .. }) => Some(e),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        err.to_string()
            .contains("until the primary returns or a replica is promoted"),
        "{err}"
    );
    // NoPrimary comes before any connection attempt: well within the
    // connect timeout a connection attempt could take.
    let start = Instant::now();
    assert!(matches!(pool.write().await, Err(Error::NoPrimary { .. })));
    assert!(
        start.elapsed() < common::CONNECT_TIMEOUT,
        "took {:?}",
        start.elapsed()
    );
    // Reads go on from the replicas meanwhile.
    let n: i64 = pool
        .read()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    c.promote(0).await.unwrap();
    let new_primary = label(&replicas[0]);
    let w = common::promoted_write(&pool).await;
    assert_eq!(w.host(), new_primary);
    w.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    drop(w);
    assert_eq!(pool.primary(), Some(new_primary.clone()));

    let s = host_status(&pool, &new_primary);
    assert_eq!((s.role, s.writes, s.reads), (Role::Primary, true, false));
    let old = host_status(&pool, &label(&db.url()));
    assert_eq!((old.health, old.writes), (Health::Down, false));
    // The other replica still serves reads.
    assert_eq!(pool.read().await.unwrap().host(), label(&replicas[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_primary_back_as_a_replica_takes_reads() {
    let (c, db, replicas) = cluster(
        1,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .await;
    let (old_primary, new_primary) = (label(&db.url()), label(&replicas[0]));
    let pool = quick(&db.url(), &replicas).build().await.unwrap();

    c.stop_primary().await.unwrap();
    c.promote(0).await.unwrap();
    let w = common::promoted_write(&pool).await;
    assert_eq!(w.host(), new_primary);
    w.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let token = pool.commit_token(&w).await.unwrap();
    drop(w);

    // The old primary returns as a streaming replica of the new one.
    c.rejoin_primary_as_replica(0).await.unwrap();
    let s = wait_for(
        Duration::from_secs(10),
        "the old primary to be seen as a healthy replica",
        || async {
            let s = host_status(&pool, &old_primary);
            (s.role == Role::Replica && s.health == Health::Up && s.reads).then_some(s)
        },
    )
    .await;
    assert!(!s.writes);

    // It is the only replica, so it takes the reads, and it has the row
    // written on the new primary while it was away.
    for _ in 0..20 {
        let r = pool.read().await.unwrap();
        assert_eq!(r.host(), old_primary);
    }
    let r = pool.read_after(&token).await.unwrap();
    assert_eq!(r.host(), old_primary);
    let ids: Vec<i32> = r
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, [1, 2]);
    // Writes stay on the new primary.
    assert_eq!(pool.write().await.unwrap().host(), new_primary);
    assert_eq!(pool.primary(), Some(new_primary));
}
