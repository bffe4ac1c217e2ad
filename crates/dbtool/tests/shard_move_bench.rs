//! Benchmark of online bucket moves (ignored by `cargo test`; run it alone):
//!
//! ```text
//! CARGO_INCREMENTAL=0 cargo test -p dbtool --test shard_move_bench -- --ignored --nocapture
//! ```
//!
//! The sample (`SHARD_MOVE_BENCH_SCALE`, default 1.0, plus 200 small teams)
//! is migrated offline onto four shards with `dbtool migrate --shards`
//! (timed: the baseline), a fifth shard is added online with the library
//! calls `dbtool shard add` makes while writers insert through `Router` +
//! `RwPool` to every team, then `SHARD_MOVE_BENCH_MOVES` (default 20) small
//! moves of 20 buckets each run under a paced load of 1,000 writes/s.
//! Printed: copy rate against the offline sharded migrate, catch-up apply
//! rate, freeze p50/p99/max, and the non-moving teams' write throughput
//! before, during and after the add (`SHARD_MOVE_BENCH_JOBS` and
//! `SHARD_MOVE_BENCH_COPY_RATE` set `--jobs` and `--copy-rate`). Results go
//! to docs/benchmarks.md ("## Shard moves").

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbtool_shard::catalog::Catalog;
use dbtool_shard::{is_moved_error, BucketRange, Router, ShardMap};
use dbtool_sync::moves::{self, Event, Keys, Options, Shard};
use dbtool_testkit::{shared_shards, PgCluster};

use common::run;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Log {
    /// (team, acknowledged at) of every write.
    acks: Mutex<Vec<(usize, Instant)>>,
    failed: AtomicU64,
    refused: AtomicU64,
    /// The first few failures: (team, error).
    errors: Mutex<Vec<(usize, String)>>,
}

/// Writers inserting an event per write, teams in turn. `interval_us` 0:
/// closed loop; otherwise one write per interval across all writers.
fn writers(
    router: Arc<Router>,
    teams: Arc<Vec<String>>,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    interval_us: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ticket = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    (0..6)
        .map(|w| {
            let (router, teams, log, stop, interval_us, ticket) = (
                router.clone(),
                teams.clone(),
                log.clone(),
                stop.clone(),
                interval_us.clone(),
                ticket.clone(),
            );
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let every = interval_us.load(Ordering::Relaxed);
                    if every > 0 {
                        let k = ticket.fetch_add(1, Ordering::Relaxed);
                        let at = t0 + Duration::from_micros(k * every);
                        let now = Instant::now();
                        if at > now {
                            tokio::time::sleep(at - now).await;
                        } else if now - at > Duration::from_millis(200) {
                            // Behind: skip ahead rather than burst.
                            let behind = (now - t0).as_micros() as u64 / every;
                            ticket.fetch_max(behind, Ordering::Relaxed);
                        }
                    }
                    let team = i % teams.len();
                    i += 6;
                    let t = &teams[team];
                    for attempt in 1.. {
                        let r = async {
                            let pool = router
                                .team_ready(t)
                                .await
                                .map_err(|e| (false, e.to_string()))?;
                            let conn = pool.write().await.map_err(|e| (false, e.to_string()))?;
                            conn.execute(
                                "INSERT INTO events (team_id, n) VALUES ($1, $2)",
                                &[t, &(i as i32)],
                            )
                            .await
                            .map_err(|e| (e.as_db().is_some_and(is_moved_error), e.to_string()))
                        }
                        .await;
                        match r {
                            Ok(_) => {
                                log.acks.lock().unwrap().push((team, Instant::now()));
                                break;
                            }
                            Err((true, _)) if attempt < 10 => {
                                // Refused by the old shard: the router has not
                                // installed the new map yet; give it a moment.
                                log.refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                            }
                            Err((_, e)) => {
                                log.failed.fetch_add(1, Ordering::Relaxed);
                                let mut errors = log.errors.lock().unwrap();
                                if errors.len() < 5 {
                                    errors.push((team, e));
                                }
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Writes per second of the teams `pick` selects, acknowledged in `[from, to)`.
fn rate(log: &Log, from: Instant, to: Instant, pick: impl Fn(usize) -> bool) -> f64 {
    let n = log
        .acks
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, at)| *at >= from && *at < to && pick(*t))
        .count();
    n as f64 / (to - from).as_secs_f64()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run alone with --ignored --nocapture"]
async fn shard_move_bench() -> anyhow::Result<()> {
    let scale: f64 = env_or("SHARD_MOVE_BENCH_SCALE", 1.0);
    let small_moves: usize = env_or("SHARD_MOVE_BENCH_MOVES", 20);
    let dir = tempfile::tempdir()?;
    let fifth = PgCluster::start(0).await?;
    let mut dbs = Vec::new();
    for c in shared_shards().clusters() {
        dbs.push(c.fresh_db().await);
    }
    dbs.push(fifth.fresh_db().await);
    let catalog = fifth.fresh_db().await;
    let names: Vec<String> = (0..5).map(|i| format!("shard-{i}")).collect();
    let four = ShardMap::even_n(dbtool_shard::Scheme::Buckets, 4)?;
    let ranges: Vec<(String, BucketRange)> = four
        .ranges()
        .into_iter()
        .map(|(s, r)| (s.to_string(), r))
        .collect();
    let map = ShardMap::from_ranges(names, ranges.iter().map(|(s, r)| (s.as_str(), *r)))?;
    Catalog::connect(&catalog.url().parse()?)
        .await?
        .publish(&map, "staged")
        .await?;

    let src = dir.path().join("forums.db");
    let mut o = dbtool_sample::Options::new(&src);
    o.scale = scale;
    dbtool_sample::generate(&o)?;
    let source_rows: i64 = {
        let c = rusqlite::Connection::open(&src)?;
        for i in 0..200u64 {
            let team = format!(
                "{:08x}-be0c-4000-8000-{i:012x}",
                i * 2_654_435_761 % 0xffff_ffff
            );
            c.execute(
                "INSERT INTO teams (id, name, plan, created_at) VALUES (?1, ?2, 'free', '2024-01-02T03:04:05Z')",
                rusqlite::params![team, format!("team {i}")],
            )?;
        }
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for t in tables {
            n += c.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                r.get::<_, i64>(0)
            })?;
        }
        n
    };
    let mut toml = format!(
        "[migrate.sharding]\nkeys = {{ teams = \"id\" }}\n\n[shard]\ncatalog = \"{}\"\nrefresh_secs = 1\n\n",
        catalog.url()
    );
    for (i, db) in dbs.iter().enumerate() {
        toml.push_str(&format!(
            "[[shard.shards]]\nname = \"shard-{i}\"\nprimary = \"{}\"\n\n",
            db.url()
        ));
    }
    std::fs::write(dir.path().join("dbtool.toml"), &toml)?;
    let started = Instant::now();
    let migrated = run(
        dir.path(),
        &[
            "migrate",
            "--from",
            src.to_str().unwrap(),
            "--shards",
            "dbtool.toml",
        ],
    );
    let offline = started.elapsed();
    assert_eq!(
        migrated.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    for db in &dbs {
        db.client()
            .await
            .batch_execute(
                "CREATE TABLE events (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
                 team_id text NOT NULL, n integer NOT NULL)",
            )
            .await?;
    }
    let shards = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            Ok(Shard {
                name: format!("shard-{i}"),
                primary: db.url().parse()?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut opts = Options::new(catalog.url().parse()?, shards);
    opts.keys = Keys {
        per_table: [("teams".to_string(), "id".to_string())].into(),
        ..Keys::default()
    };
    opts.max_freeze = Duration::from_millis(500);
    // The copy's knobs (`--jobs`, `--copy-rate`), to compare their effect
    // on the teams that do not move.
    opts.jobs = env_or("SHARD_MOVE_BENCH_JOBS", opts.jobs);
    opts.copy_rate = env_or("SHARD_MOVE_BENCH_COPY_RATE", 0);
    moves::set_identity_ranges(&opts).await?;

    let teams: Vec<String> = {
        let c = rusqlite::Connection::open(&src)?;
        let mut st = c.prepare("SELECT id FROM teams ORDER BY id")?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let (plan, next) = moves::plan_add(&map, "shard-4")?;
    let moving: Vec<bool> = teams
        .iter()
        .map(|t| map.shard_of(t).unwrap() != next.shard_of(t).unwrap())
        .collect();
    let shard_config: dbtool_shard::Config = toml::from_str::<toml::Table>(&toml)?["shard"]
        .clone()
        .try_into()?;
    let router = Router::connect(&shard_config, &dbtool_pool::Config::default()).await?;
    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Arc::new(AtomicU64::new(0));
    let tasks = writers(
        router.clone(),
        Arc::new(teams.clone()),
        log.clone(),
        stop.clone(),
        interval.clone(),
    );

    // Closed loop: the non-moving teams' throughput before, then during the add.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_to = Instant::now();
    let quiet = |_: &Event| {};
    let mut outs = Vec::new();
    for (range, _) in &plan {
        outs.push(moves::move_buckets(&opts, *range, "shard-4", &quiet).await?);
    }
    let during_to = Instant::now();
    // After the add, before `--finish`: the guards stay on the old shards.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_to = Instant::now();
    let still = |t: usize| !moving[t];
    let (before, during, after) = (
        rate(&log, before_from, before_to, still),
        rate(&log, before_to, during_to, still),
        rate(&log, during_to, after_to, still),
    );
    let started = Instant::now();
    let finished = moves::finish(&opts, 5000).await?;
    let finish_time = started.elapsed();

    // Paced at 1,000 writes/s: small moves out of shard-4, for the freezes.
    interval.store(1000, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paced_from = Instant::now();
    let owned: Vec<BucketRange> = next
        .ranges()
        .into_iter()
        .filter(|(s, _)| *s == "shard-4")
        .map(|(_, r)| r)
        .collect();
    let mut chunks = Vec::new();
    for r in owned {
        let mut b = r.first;
        while b + 19 <= r.last {
            chunks.push(BucketRange::new(b, b + 19)?);
            b += 20;
        }
    }
    let mut freezes = Vec::new();
    let mut aborted = 0;
    for (k, r) in chunks.iter().take(small_moves).enumerate() {
        let out = moves::move_buckets(&opts, *r, &format!("shard-{}", k % 4), &quiet).await?;
        aborted += out.freezes.len() - 1;
        freezes.push(out.freeze);
    }
    let paced_to = Instant::now();
    let paced = rate(&log, paced_from, paced_to, |_| true);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    moves::finish(&opts, 5000).await?;
    for (i, db) in dbs.iter().enumerate() {
        let slots: i64 = db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(slots, 0, "slots left on shard-{i}");
    }

    let copied: u64 = outs.iter().map(|o| o.rows_copied).sum();
    let copy_time: Duration = outs.iter().map(|o| o.copy_time).sum();
    let applied: u64 = outs.iter().map(|o| o.changes_applied).sum();
    let catch_up: Duration = outs.iter().map(|o| o.catch_up_time).sum();
    freezes.sort_unstable();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "shard move bench: scale {scale}, {} teams, test build, load average {load}",
        teams.len()
    );
    println!(
        "offline sharded migrate: {source_rows} rows in {:.2} s = {:.0} rows/s",
        offline.as_secs_f64(),
        source_rows as f64 / offline.as_secs_f64()
    );
    println!(
        "online copy (4 moves, 4 -> 5 shards): {copied} rows in {:.2} s = {:.0} rows/s ({:.2}x offline)",
        copy_time.as_secs_f64(),
        copied as f64 / copy_time.as_secs_f64(),
        (copied as f64 / copy_time.as_secs_f64()) / (source_rows as f64 / offline.as_secs_f64())
    );
    println!(
        "catch-up: {applied} changes in {:.2} s = {:.0} changes/s",
        catch_up.as_secs_f64(),
        applied as f64 / catch_up.as_secs_f64()
    );
    println!(
        "add freezes: {:?} ms",
        outs.iter()
            .map(|o| o.freeze.as_millis())
            .collect::<Vec<_>>()
    );
    println!(
        "non-moving teams, closed loop (6 writers, --jobs {}, --copy-rate {}): {before:.0} writes/s before, {during:.0} during the add ({:.2}x), {after:.0} after it ({:.2}x)",
        opts.jobs,
        opts.copy_rate,
        during / before,
        after / before
    );
    println!(
        "finish: {} rows deleted in {:.2} s",
        finished.iter().map(|f| f.rows_deleted).sum::<u64>(),
        finish_time.as_secs_f64()
    );
    if !freezes.is_empty() {
        println!(
            "freeze over {} moves of 20 buckets at {paced:.0} writes/s: p50 {} ms, p99 {} ms, max {} ms, {aborted} aborted attempts",
            freezes.len(),
            pct(&freezes, 0.5).as_millis(),
            pct(&freezes, 0.99).as_millis(),
            freezes.last().unwrap().as_millis()
        );
    }
    println!(
        "writes: {} acknowledged, {} refused by an old shard and retried, {} failed",
        log.acks.lock().unwrap().len(),
        log.refused.load(Ordering::Relaxed),
        log.failed.load(Ordering::Relaxed)
    );
    for (t, e) in log.errors.lock().unwrap().iter() {
        println!(
            "failed write of team {} (moving in the add: {}): {e}",
            teams[*t], moving[*t]
        );
    }
    assert_eq!(log.failed.load(Ordering::Relaxed), 0);
    Ok(())
}
