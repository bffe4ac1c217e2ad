//! The forums loop, timed: writes on the primary then invalidation,
//! cache-aside reads loading from the replica, 16 tasks; throughput and
//! stale reads with and without the coherence protection.
//!
//! ```sh
//! cargo run --release -p dbtool-cache --example coherence   # SECS=5 CONCURRENCY=16 READ_AFTER_WAIT_MS=0
//! ```
//!
//! It starts a throwaway PostgreSQL primary + streaming replica and the
//! 6-node Redis Cluster through the testkit. Variants, each for `SECS`:
//!
//! - `raw`: the old app's cache-aside on fred (GET; on a miss load from a
//!   replica and SET; after a write DEL of the key, or of every key of its
//!   group where the others invalidate a tag): no protection.
//! - `leases`: `dbtool_cache` with `delete`/`invalidate_tag` and a loader
//!   that ignores [`Freshness`] (always a replica): fill leases only.
//! - `protected`: `get_or_load_fresh` + `delete_after`/`invalidate_tag_after`
//!   with the commit's LSN, the loader reading as fresh as told.
//! - `protected+l1`: the same with the L1 on.
//!
//! A read is stale when it returns a version older than one whose write
//! committed and whose invalidation returned before the read began (the
//! same checker as `tests/coherence.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_cache::{Cache, Config, Freshness, Options};
use dbtool_pool::{RwPool, Token};
use fred::interfaces::{ClientLike as _, KeysInterface as _};

const KEYS: i32 = 200;
/// Tag groups: key `id` is in group `id % GROUPS`.
const GROUPS: i32 = 20;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Raw,
    Leases,
    Protected,
    ProtectedL1,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::Leases => "leases",
            Variant::Protected => "protected",
            Variant::ProtectedL1 => "protected+l1",
        }
    }
}

#[derive(Default)]
struct Counts {
    reads: AtomicUsize,
    writes: AtomicUsize,
    stale: AtomicUsize,
    /// Database reads by loaders: from a replica, a replica that reached
    /// a watermark (or the primary when none had), the primary.
    loads_replica: AtomicUsize,
    loads_after: AtomicUsize,
    loads_primary: AtomicUsize,
}

/// Redis commands served by every node of the cluster so far, by name
/// (`INFO commandstats`, summed over the nodes).
fn redis_calls(redis: &dbtool_testkit::RedisCluster) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for i in 0..redis.nodes().len() {
        let Ok(text) = redis.command(i, &["INFO", "commandstats"]) else {
            continue;
        };
        for line in text.lines() {
            // cmdstat_get:calls=12,usec=...
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls = rest
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            *out.entry(name.to_owned()).or_default() += calls;
        }
    }
    out
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs = env("SECS", 5);
    let concurrency = env("CONCURRENCY", 16) as usize;
    let redis = dbtool_testkit::redis().await;
    let db = dbtool_testkit::pg().await;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO items SELECT g, 0 FROM generate_series(0, {}) g;",
            KEYS - 1
        ))
        .await?;
    // A load that must see a watermark the replica has not replayed goes to
    // the primary at once instead of polling the replica (200 ms by
    // default): on a busy machine the replica lags by more than that.
    let wait_ms = env("READ_AFTER_WAIT_MS", 0);
    let pool = RwPool::builder()
        .primary(db.url())
        .replicas(db.replica_urls())
        .read_after_wait(Duration::from_millis(wait_ms))
        .build()
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "forums loop: {concurrency} tasks, {secs} s each, {KEYS} keys, 1 write in 10, read_after_wait {wait_ms} ms"
    );
    println!(
        "{:<14} {:>10} {:>8} {:>8} {:>8}",
        "variant", "ops/s", "reads", "writes", "stale"
    );
    for variant in [
        Variant::Raw,
        Variant::Leases,
        Variant::Protected,
        Variant::ProtectedL1,
    ] {
        let ns = redis.prefix().trim_end_matches(':').to_owned();
        let mut cfg = Config {
            nodes: redis.nodes(),
            namespace: ns.clone(),
            stats_flush_secs: 0,
            ..Config::default()
        };
        cfg.l1.enabled = variant == Variant::ProtectedL1;
        let cache = Cache::connect(cfg).await?;
        let raw = fred::clients::Client::new(redis.fred_config(), None, None, None);
        raw.init().await?;
        let floor: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let calls_before = redis_calls(redis);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let (cache, raw, pool, floor, counts, stop, ns) = (
                cache.clone(),
                raw.clone(),
                pool.clone(),
                floor.clone(),
                counts.clone(),
                stop.clone(),
                ns.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut x = t as u64 * 0x9E37_79B9 + 1;
                let mut op = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    op += 1;
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let id = ((x >> 33) % KEYS as u64) as i32;
                    let key = format!("item:{id}");
                    let tag = format!("grp:{}", id % GROUPS);
                    if op % 10 == 0 {
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
                        let by_tag = id % 2 == 1;
                        match (variant, by_tag) {
                            (Variant::Raw, false) => {
                                raw.del::<i64, _>(format!("{ns}:raw:{id}")).await?;
                            }
                            // The old app's pattern invalidation (`KEYS forum:*`,
                            // then DEL) with the group's keys known up front: the
                            // same keys a tag invalidation makes miss, so every
                            // variant does the same invalidation work.
                            (Variant::Raw, true) => {
                                let group = (id % GROUPS..KEYS)
                                    .step_by(GROUPS as usize)
                                    .map(|k| raw.del::<i64, _>(format!("{ns}:raw:{k}")));
                                for r in futures::future::join_all(group).await {
                                    r?;
                                }
                            }
                            (Variant::Leases, false) => cache.delete(&key).await?,
                            (Variant::Leases, true) => cache.invalidate_tag(&tag).await?,
                            (_, false) => cache.delete_after(&key, lsn).await?,
                            (_, true) => cache.invalidate_tag_after(&tag, lsn).await?,
                        }
                        floor[id as usize].fetch_max(version as u64, Ordering::AcqRel);
                        counts.writes.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let before = floor[id as usize].load(Ordering::Acquire);
                    let got: i64 = if variant == Variant::Raw {
                        let rkey = format!("{ns}:raw:{id}");
                        match raw.get::<Option<i64>, _>(rkey.as_str()).await? {
                            Some(v) => v,
                            None => {
                                counts.loads_replica.fetch_add(1, Ordering::Relaxed);
                                let conn = pool.read().await?;
                                let v: i64 = conn
                                    .query_one("SELECT version FROM items WHERE id = $1", &[&id])
                                    .await?
                                    .get(0);
                                raw.set::<(), _, _>(
                                    rkey.as_str(),
                                    v,
                                    Some(fred::types::Expiration::EX(300)),
                                    None,
                                    false,
                                )
                                .await?;
                                v
                            }
                        }
                    } else {
                        let pool = pool.clone();
                        let counts = counts.clone();
                        let opts = Options::ttl(Duration::from_secs(300)).tag(tag);
                        cache
                            .get_or_load_fresh(&key, &opts, move |need| async move {
                                let need = if variant == Variant::Leases {
                                    Freshness::Any
                                } else {
                                    need
                                };
                                let (conn, n) = match need {
                                    Freshness::Any => (pool.read().await?, &counts.loads_replica),
                                    Freshness::AtLeast(lsn) => (
                                        pool.read_after(&Token::from_lsn(lsn)).await?,
                                        &counts.loads_after,
                                    ),
                                    _ => (pool.write().await?, &counts.loads_primary),
                                };
                                n.fetch_add(1, Ordering::Relaxed);
                                let v: i64 = conn
                                    .query_one("SELECT version FROM items WHERE id = $1", &[&id])
                                    .await?
                                    .get(0);
                                Ok::<_, anyhow::Error>(Some(v))
                            })
                            .await?
                            .unwrap_or(-1)
                    };
                    counts.reads.fetch_add(1, Ordering::Relaxed);
                    if (got as u64) < before || got < 0 {
                        counts.stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        let took = started.elapsed().as_secs_f64();
        let (reads, writes, stale) = (
            counts.reads.load(Ordering::Relaxed),
            counts.writes.load(Ordering::Relaxed),
            counts.stale.load(Ordering::Relaxed),
        );
        println!(
            "{:<14} {:>10.0} {:>8} {:>8} {:>8}",
            variant.name(),
            (reads + writes) as f64 / took,
            reads,
            writes,
            stale
        );
        // Where the work went: Redis commands and database reads per
        // operation (on stderr, so the table above stays as it is).
        let ops = (reads + writes).max(1) as f64;
        let after = redis_calls(redis);
        let mut cmds: Vec<(String, u64)> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - calls_before.get(k).copied().unwrap_or(0)))
            .filter(|(k, v)| *v > 0 && k != "info")
            .collect();
        cmds.sort_by_key(|c| std::cmp::Reverse(c.1));
        let total: u64 = cmds.iter().map(|c| c.1).sum();
        let per = |n: &AtomicUsize| n.load(Ordering::Relaxed) as f64 / ops;
        eprintln!(
            "  {}: redis commands/op {:.2} ({}); db reads/op: replica {:.3}, after-lsn {:.3}, primary {:.3}",
            variant.name(),
            total as f64 / ops,
            cmds.iter()
                .map(|(k, v)| format!("{k} {:.3}", *v as f64 / ops))
                .collect::<Vec<_>>()
                .join(", "),
            per(&counts.loads_replica),
            per(&counts.loads_after),
            per(&counts.loads_primary),
        );
        cache.close().await;
        let _ = raw.quit().await;
    }
    Ok(())
}
