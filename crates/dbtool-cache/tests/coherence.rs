//! No stale reads after an invalidation: the forums request loop (writes on
//! the primary, then `delete`/`invalidate_tag`; cache-aside loads from the
//! replica; L1 on) against the testkit's primary + streaming replica and
//! the shared Redis Cluster, checked exactly.
//!
//! The checker: every row carries a version, bumped by each write. After a
//! write has committed *and* its invalidation has returned, the writer
//! raises `floor[key]` to that version. A reader notes `floor[key]` before
//! its read begins; the read is stale if it returns an older version. So a
//! read is judged only against writes whose invalidation finished before it
//! began, which is the guarantee docs/cache.md states.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dbtool_cache::{Cache, Config, Freshness, Options};
use dbtool_pool::{RwPool, Token};

const KEYS: i32 = 24;
const TASKS: usize = 16;
const OPS_PER_TASK: usize = 150;

async fn cache_config(l1: bool) -> Config {
    let r = dbtool_testkit::redis().await;
    let mut c = Config {
        nodes: r.nodes(),
        namespace: r.prefix().trim_end_matches(':').to_owned(),
        stats_flush_secs: 0,
        ..Config::default()
    };
    c.l1.enabled = l1;
    c
}

/// How a key is invalidated after its row is written: by key or by tag,
/// with or without the commit's WAL position.
fn invalidation(id: i32) -> &'static str {
    ["delete_after", "delete", "tag_after", "tag"][(id % 4) as usize]
}

fn key(id: i32) -> String {
    format!("item:{id}")
}

/// Entries are tagged by group, as forums tags topics by team: one tag
/// invalidation drops several keys.
fn opts(id: i32) -> Options {
    Options::ttl(Duration::from_secs(300)).tag(format!("grp:{}", id % 8))
}

async fn setup() -> anyhow::Result<(dbtool_testkit::TestDb, RwPool)> {
    let db = dbtool_testkit::pg().await;
    let c = db.client().await;
    c.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, version bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(0, {}) g;",
        KEYS - 1
    ))
    .await?;
    let pool = RwPool::builder()
        .primary(db.url())
        .replicas(db.replica_urls())
        .build()
        .await?;
    // Replication is asynchronous: wait for the table on the replica.
    let replica = db.replica_client(0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(row) = replica.query_one("SELECT count(*) FROM items", &[]).await {
            if row.get::<_, i64>(0) == i64::from(KEYS) {
                break;
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "replica never got the table"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((db, pool))
}

#[derive(Default)]
struct Counts {
    reads: AtomicUsize,
    stale: AtomicUsize,
    writes: AtomicUsize,
    any: AtomicUsize,
    at_least: AtomicUsize,
    primary: AtomicUsize,
}

/// The forums loop: `TASKS` tasks, `OPS_PER_TASK` operations each, one in
/// ten a write. Returns the counts.
async fn forums_loop(cache: &Cache, pool: &RwPool) -> anyhow::Result<Arc<Counts>> {
    let floor: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (cache, pool, floor, counts) =
            (cache.clone(), pool.clone(), floor.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            // A fixed pseudo-random sequence per task (an LCG): every task
            // reads and writes every key, in every invalidation mode.
            let mut x = t as u64 * 0x9E37_79B9 + 1;
            for op in 0..OPS_PER_TASK {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let id = ((x >> 33) % KEYS as u64) as i32;
                if (t + op) % 10 == 0 {
                    write(&cache, &pool, id, &floor).await?;
                    counts.writes.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let before = floor[id as usize].load(Ordering::Acquire);
                let pool = pool.clone();
                let c = counts.clone();
                let got: Option<i64> = cache
                    .get_or_load_fresh(&key(id), &opts(id), move |need| async move {
                        let conn = match need {
                            Freshness::Any => {
                                c.any.fetch_add(1, Ordering::Relaxed);
                                pool.read().await?
                            }
                            Freshness::AtLeast(lsn) => {
                                c.at_least.fetch_add(1, Ordering::Relaxed);
                                pool.read_after(&Token::from_lsn(lsn)).await?
                            }
                            _ => {
                                c.primary.fetch_add(1, Ordering::Relaxed);
                                pool.write().await?
                            }
                        };
                        let row = conn
                            .query_one("SELECT version FROM items WHERE id = $1", &[&id])
                            .await?;
                        // Hold the loaded value a moment, as a busy service
                        // would: it widens the window in which a write and
                        // its invalidation overtake this load.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Ok::<_, anyhow::Error>(Some(row.get::<_, i64>(0)))
                    })
                    .await?;
                let got = got.expect("every row exists");
                counts.reads.fetch_add(1, Ordering::Relaxed);
                if (got as u64) < before {
                    counts.stale.fetch_add(1, Ordering::Relaxed);
                    eprintln!("stale: {} read version {got}, {before} was invalidated before the read began", key(id));
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(counts)
}

/// One write on the primary, then its invalidation; only then is the
/// version the floor for reads that begin afterwards.
async fn write(cache: &Cache, pool: &RwPool, id: i32, floor: &[AtomicU64]) -> anyhow::Result<()> {
    let conn = pool.write().await?;
    let row = conn
        .query_one(
            "UPDATE items SET version = version + 1 WHERE id = $1 RETURNING version",
            &[&id],
        )
        .await?;
    let version: i64 = row.get(0);
    let lsn = pool.commit_token(&conn).await?.lsn();
    drop(conn);
    let tag = format!("grp:{}", id % 8);
    match invalidation(id) {
        "delete_after" => cache.delete_after(&key(id), lsn).await?,
        "delete" => cache.delete(&key(id)).await?,
        "tag_after" => cache.invalidate_tag_after(&tag, lsn).await?,
        _ => cache.invalidate_tag(&tag).await?,
    }
    floor[id as usize].fetch_max(version as u64, Ordering::AcqRel);
    Ok(())
}

#[tokio::test]
async fn forums_loop_with_replica_loads_and_l1_has_no_stale_reads() -> anyhow::Result<()> {
    let (_db, pool) = setup().await?;
    let cache = Cache::connect(cache_config(true).await).await?;
    let counts = forums_loop(&cache, &pool).await?;
    let s = cache.stats();
    let (reads, stale, writes) = (
        counts.reads.load(Ordering::Relaxed),
        counts.stale.load(Ordering::Relaxed),
        counts.writes.load(Ordering::Relaxed),
    );
    eprintln!(
        "reads {reads}, writes {writes}, stale {stale}; loads: any {}, at-least {}, primary {}; {s:?}",
        counts.any.load(Ordering::Relaxed),
        counts.at_least.load(Ordering::Relaxed),
        counts.primary.load(Ordering::Relaxed),
    );
    assert_eq!(writes, TASKS * OPS_PER_TASK / 10);
    assert_eq!(reads, TASKS * OPS_PER_TASK - writes);
    assert_eq!(stale, 0, "stale reads");
    // Every read counted once, and the loop exercised each path.
    assert_eq!(s.hits + s.misses, reads as u64);
    assert!(s.l1_hits > 0, "L1 answered some reads");
    assert!(counts.any.load(Ordering::Relaxed) > 0);
    assert!(
        counts.at_least.load(Ordering::Relaxed) > 0,
        "delete_after/tag_after gave watermarks"
    );
    assert!(
        counts.primary.load(Ordering::Relaxed) > 0,
        "delete/tag without a watermark sent loads to the primary"
    );
    assert_eq!(cache.pending_invalidations(), 0);
    Ok(())
}

/// The race that leases close, made certain: a load reads the old row,
/// the row is written and the key deleted, then the load tries to store.
#[tokio::test]
async fn a_load_that_began_before_a_delete_cannot_store_its_value_after_it() -> anyhow::Result<()> {
    let cache = Cache::connect(cache_config(false).await).await?;
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("k", Duration::from_secs(300), || async move {
                    let old = 1_i64; // what the database held when the load read it
                    let _ = loaded_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, std::io::Error>(Some(old))
                })
                .await
        })
    };
    loaded_rx.await?;
    // The write (version 2) commits, then the invalidation.
    cache.delete("k").await?;
    go_tx.send(()).ok();
    // The slow reader gets its own (old) value: its read began before.
    assert_eq!(reader.await??, Some(1));
    // But it was not stored: a read after the delete misses and loads 2.
    assert_eq!(cache.get::<i64>("k").await, None);
    let v = cache
        .get_or_load("k", Duration::from_secs(300), || async {
            Ok::<_, std::io::Error>(Some(2_i64))
        })
        .await?;
    assert_eq!(v, Some(2));
    assert_eq!(cache.get::<i64>("k").await, Some(2));
    Ok(())
}

/// A caller that joins a load already in flight after a delete must not
/// get that load's (older) value; one that joined before may.
#[tokio::test]
async fn a_caller_arriving_after_a_delete_does_not_share_an_older_load() -> anyhow::Result<()> {
    let cache = Cache::connect(cache_config(true).await).await?;
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("k", Duration::from_secs(300), || async move {
                    let _ = loaded_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, std::io::Error>(Some(1_i64))
                })
                .await
        })
    };
    loaded_rx.await?;
    cache.delete("k").await?;
    let second = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("k", Duration::from_secs(300), || async {
                    Ok::<_, std::io::Error>(Some(2_i64))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    go_tx.send(()).ok();
    assert_eq!(first.await??, Some(1));
    assert_eq!(second.await??, Some(2), "the later caller loaded afresh");
    assert_eq!(cache.get::<i64>("k").await, Some(2));
    Ok(())
}
