//! After a failover the old primary comes back read-write: a pool that
//! watched the failover and a pool built fresh from the original config (a
//! restarted service) must both write to the promoted host, not to the one
//! the config calls primary, and say that two hosts accept writes.
//! Dedicated cluster.

mod common;

use std::time::Duration;

use common::{host_status, label, wait_for};
use dbtool_pool::{Error, Health, Role, RwPool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_pool_writes_to_the_promoted_host_when_the_old_primary_is_back_read_write() {
    let (c, db, replicas) =
        common::cluster(1, "CREATE TABLE t (id int PRIMARY KEY, at text NOT NULL)").await;
    let (old, new) = (label(&db.url()), label(&replicas[0]));

    // A pool that watches the failover happen.
    let watcher = common::quick(&db.url(), &replicas).build().await.unwrap();
    assert_eq!(watcher.primary(), Some(old.clone()));

    // Failover, then the old primary restarts on its own, read-write.
    c.stop_primary().await.unwrap();
    c.promote(0).await.unwrap();
    wait_for(
        Duration::from_secs(10),
        "the watching pool to follow the promotion",
        || async { (watcher.primary().as_deref() == Some(new.as_str())).then_some(()) },
    )
    .await;
    c.start_primary().await.unwrap();
    // The watching pool sees the old primary back read-write, flags it, and
    // keeps writing to the promoted host.
    wait_for(
        Duration::from_secs(10),
        "the watching pool to flag the split brain",
        || async { host_status(&watcher, &old).split_brain.then_some(()) },
    )
    .await;
    assert_eq!(watcher.write().await.unwrap().host(), new);
    assert!(host_status(&watcher, &new).split_brain);
    assert!(!host_status(&watcher, &old).writes);
    drop(watcher);

    // The service restarts: a new pool from the same config.
    let pool = common::quick(&db.url(), &replicas).build().await.unwrap();
    assert_eq!(pool.primary(), Some(new.clone()));
    let w = pool.write().await.unwrap();
    assert_eq!(w.host(), new);
    w.execute("INSERT INTO t VALUES (1, 'promoted')", &[])
        .await
        .unwrap();
    drop(w);
    // The row is on the promoted host only.
    let on_old: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_old, 0, "a write reached the old primary");

    // Status flags both hosts; writes go to the newer timeline.
    let o = host_status(&pool, &old);
    let n = host_status(&pool, &new);
    assert_eq!(
        (o.role, o.health, o.writes, o.reads, o.split_brain),
        (Role::Primary, Health::Up, false, false, true)
    );
    assert_eq!(
        (n.role, n.health, n.writes, n.split_brain),
        (Role::Primary, Health::Up, true, true)
    );
    let (ot, nt) = (o.timeline.unwrap(), n.timeline.unwrap());
    assert!(nt > ot, "promoted timeline {nt}, old {ot}");
    // Reads do not go to the stale primary either.
    for _ in 0..10 {
        assert_eq!(pool.read().await.unwrap().host(), new);
    }
    drop(pool);

    // Two read-write hosts on the same timeline cannot be told apart: the
    // old primary (timeline 1) and an unrelated server that never failed
    // over (timeline 1). Writes are refused, and say why.
    let other = dbtool_testkit::pg().await;
    let pool = RwPool::builder()
        .primary(db.url())
        .replica(other.url())
        .build()
        .await
        .unwrap();
    let other_label = label(&other.url());
    assert_eq!(host_status(&pool, &other_label).timeline, Some(ot));
    let err = pool.write().await.unwrap_err();
    assert!(matches!(err, Error::SplitBrain { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "split brain: {old} (timeline {ot}), {other_label} (timeline {ot}) all accept writes \
             and none is on a newer timeline; writes are refused until only one does \
             (stop the stale primary or rebuild it as a replica)"
        )
    );
    assert!(pool.status().iter().all(|h| h.split_brain && !h.writes));
    // Reads refuse too: neither host is known to hold the latest commits.
    let err = pool.read().await.unwrap_err();
    assert!(matches!(err, Error::SplitBrain { .. }), "{err:?}");
}
