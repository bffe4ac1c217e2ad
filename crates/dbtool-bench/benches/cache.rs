//! Cache scenario (goals from issue 8): GET and SET of a 1 KB JSON value,
//! 32 concurrent tasks, through `dbtool_cache::Cache`, the raw fred client (with the
//! same serde_json encoding a service would do), and `redis-benchmark -P 16` on the
//! same 6-node testkit Redis Cluster; then L1 hits on one task.
//!
//! ```text
//! cargo bench -p dbtool-bench --bench cache -- [--quick] [--runs N] [--seconds S]
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use dbtool_bench::{closed_loop, rotated, Args, Record};
use fred::prelude::*;
use serde::{Deserialize, Serialize};

const TASKS: usize = 32;
const KEYS: u64 = 1_000;

/// About 1 KB of JSON: a cached post.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Post {
    id: i64,
    team_id: String,
    topic_id: i64,
    user_id: Option<i64>,
    body: String,
    created_at: String,
    score: f64,
    tags: Vec<String>,
}

fn post(id: i64) -> Post {
    Post {
        id,
        team_id: "6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f".into(),
        topic_id: id / 10,
        user_id: Some(id % 977),
        body:
            "Honestly, the release broke the dashboard again — «données» look fine on staging 🚀. "
                .repeat(10),
        created_at: "2024-03-05 10:11:12".into(),
        score: 3.25,
        tags: vec!["release".into(), "bug".into(), "données".into()],
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Cache,
    Fred,
}

/// `redis-benchmark --cluster -P 16` against the first node; returns (rps, p50 µs, p99 µs)
/// for GET and SET.
fn redis_benchmark(node: &str, requests: u64) -> Result<Vec<(String, f64, f64, f64)>, String> {
    let (host, port) = node.rsplit_once(':').ok_or("a host:port node")?;
    let out = Command::new("redis-benchmark")
        .args([
            "--cluster",
            "-h",
            host,
            "-p",
            port,
            "-t",
            "get,set",
            "-d",
            "1024",
            "-P",
            "16",
            "-c",
        ])
        .arg(TASKS.to_string())
        .args(["-r", "1000", "-n"])
        .arg(requests.to_string())
        .arg("--csv")
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e} (apt-get install redis-tools)"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').map(|s| s.trim_matches('"')).collect();
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        if f.len() >= 7 && (f[0] == "GET" || f[0] == "SET") {
            let num = |i: usize| f[i].parse::<f64>().unwrap_or(0.0);
            rows.push((f[0].to_owned(), num(1), num(4) * 1000.0, num(6) * 1000.0));
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "no GET/SET lines in redis-benchmark's output: {}",
            text.trim()
        ));
    }
    Ok(rows)
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cluster = dbtool_testkit::redis().await;
    let prefix = cluster.prefix();
    let nodes = cluster.nodes();

    let mut cfg = dbtool_cache::Config::with_nodes(nodes.clone());
    cfg.namespace = format!("{prefix}bench");
    cfg.stats_flush_secs = 0;
    let cache = dbtool_cache::Cache::connect(cfg.clone())
        .await
        .expect("connect dbtool-cache");
    let fred = Builder::from_config(cluster.fred_config())
        .build()
        .expect("a fred client");
    fred.init().await.expect("connect fred");

    let raw_key = |i: u64| format!("{prefix}raw:post:{}", i % KEYS);
    let cache_key = |i: u64| format!("post:{}", i % KEYS);
    let ttl = Duration::from_secs(600);
    for i in 0..KEYS {
        let p = post(i as i64);
        cache.set(&cache_key(i), &p, ttl).await.expect("cache set");
        let json = serde_json::to_string(&p).expect("json");
        fred.set::<(), _, _>(raw_key(i), json, Some(Expiration::EX(600)), None, false)
            .await
            .expect("fred set");
    }
    eprintln!(
        "value: {} bytes of JSON",
        serde_json::to_string(&post(1)).map_or(0, |s| s.len())
    );

    let who = [Who::Cache, Who::Fred];
    for (section, set) in [("cache-get", false), ("cache-set", true)] {
        eprintln!(
            "{section}: {TASKS} tasks, {} runs of {} s",
            args.runs, args.seconds
        );
        for run in 1..=args.runs {
            for w in rotated(&who, run) {
                let l = match w {
                    Who::Cache => {
                        let c = cache.clone();
                        closed_loop(TASKS, args.seconds, move |i| {
                            let c = c.clone();
                            async move {
                                let key = format!("post:{}", i % KEYS);
                                if set {
                                    c.set(&key, &post((i % KEYS) as i64), ttl).await.is_ok()
                                } else {
                                    c.get::<Post>(&key).await.is_some()
                                }
                            }
                        })
                        .await
                    }
                    Who::Fred => {
                        let f = fred.clone();
                        let prefix = prefix.clone();
                        closed_loop(TASKS, args.seconds, move |i| {
                            let f = f.clone();
                            let key = format!("{prefix}raw:post:{}", i % KEYS);
                            async move {
                                if set {
                                    let json = serde_json::to_string(&post((i % KEYS) as i64))
                                        .unwrap_or_default();
                                    f.set::<(), _, _>(
                                        key,
                                        json,
                                        Some(Expiration::EX(600)),
                                        None,
                                        false,
                                    )
                                    .await
                                    .is_ok()
                                } else {
                                    match f.get::<Option<String>, _>(key).await {
                                        Ok(Some(s)) => serde_json::from_str::<Post>(&s).is_ok(),
                                        _ => false,
                                    }
                                }
                            }
                        })
                        .await
                    }
                };
                let name = match (w, set) {
                    (Who::Cache, false) => "dbtool Cache::get",
                    (Who::Cache, true) => "dbtool Cache::set",
                    (Who::Fred, false) => "fred GET + serde_json",
                    (Who::Fred, true) => "fred SET + serde_json",
                };
                for r in l.records(section, name, "ops_per_s", run) {
                    r.emit();
                }
            }
        }
    }

    // redis-benchmark: pipelined (-P 16), no decoding; the cluster's ceiling.
    let requests = if args.quick { 100_000 } else { 1_000_000 };
    for run in 1..=args.runs {
        match redis_benchmark(&nodes[0], requests) {
            Ok(rows) => {
                for (test, rps, p50, p99) in rows {
                    let section = if test == "GET" {
                        "cache-get"
                    } else {
                        "cache-set"
                    };
                    let name = "redis-benchmark -P 16";
                    Record::value(section, name, "ops_per_s", run, rps, "ops/s").emit();
                    Record::value(section, name, "p50_us", run, p50, "µs").emit();
                    Record::value(section, name, "p99_us", run, p99, "µs").emit();
                    eprintln!("   {section:<14} {name:<28} run {run}: {rps:>9.0} ops/s  p50 {p50:>6.0} µs  p99 {p99:>6.0} µs");
                }
            }
            Err(e) => {
                Record::missing("cache-get", "redis-benchmark -P 16", &e).emit();
                Record::missing("cache-set", "redis-benchmark -P 16", &e).emit();
                break;
            }
        }
    }

    // L1: hot keys, one task (one core), all answered in process.
    let mut l1cfg = cfg.clone();
    l1cfg.l1.enabled = true;
    l1cfg.l1.max_entries = 10_000;
    let l1 = dbtool_cache::Cache::connect(l1cfg)
        .await
        .expect("connect dbtool-cache with L1");
    let keys: Vec<String> = (0..KEYS).map(cache_key).collect();
    for k in &keys {
        let _ = l1.get::<Post>(k).await;
    }
    // `get` clones the 1 KB value out of L1 (what `Cache::get` must do);
    // `get_arc` hands out the shared `Arc` L1 holds. Rates are per second of
    // wall clock and per second of this thread's CPU time ("on one core"),
    // which is what the target means on a machine shared with other work.
    for run in 1..=args.runs {
        for arc in [false, true] {
            let before = l1.stats();
            let (start, cpu0) = (Instant::now(), thread_cpu_ns());
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < args.seconds {
                for k in keys.iter().take(100) {
                    if arc {
                        std::hint::black_box(l1.get_arc::<Post>(k).await);
                    } else {
                        std::hint::black_box(l1.get::<Post>(k).await);
                    }
                    n += 1;
                }
            }
            let ops = n as f64 / start.elapsed().as_secs_f64();
            let cpu = cpu0.zip(thread_cpu_ns()).map(|(a, b)| (b - a) as f64 / 1e9);
            let after = l1.stats();
            let reads = (after.hits + after.misses) - (before.hits + before.misses);
            let hit = if reads == 0 {
                0.0
            } else {
                (after.l1_hits - before.l1_hits) as f64 * 100.0 / reads as f64
            };
            let name = if arc {
                "dbtool Cache::get_arc (L1 hit)"
            } else {
                "dbtool Cache::get (L1 hit)"
            };
            Record::value("cache-l1", name, "ops_per_s", run, ops, "ops/s").emit();
            if let Some(cpu) = cpu.filter(|c| *c > 0.0) {
                let per_core = n as f64 / cpu;
                Record::value("cache-l1", name, "ops_per_cpu_s", run, per_core, "ops/s").emit();
                eprintln!(
                    "   cache-l1 {name} run {run}: {ops:.0}/s wall, {per_core:.0}/s per CPU second, L1 hit rate {hit:.1}%"
                );
            } else {
                eprintln!("   cache-l1 {name} run {run}: {ops:.0}/s wall, L1 hit rate {hit:.1}%");
            }
            Record::value("cache-l1", name, "hit_rate_pct", run, hit, "%").emit();
        }
    }
    let _ = fred.quit().await;
}
