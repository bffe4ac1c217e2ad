//! Throughput: GET of a 1 KB JSON value through `Cache::get` against raw
//! fred on the same cluster, and L1 hits per second on one core (`get`, which
//! clones the value out of L1, and `get_arc`, which shares it).
//!
//! ```sh
//! cargo run --release -p dbtool-cache --example bench              # testkit cluster
//! cargo run --release -p dbtool-cache --example bench -- 127.0.0.1:7000
//! ```
//! Each run uses `CONCURRENCY` tasks issuing GETs in a loop for `SECS`
//! seconds (env vars, defaults 64 and 5) on a current-thread runtime, so
//! both clients get exactly one core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_cache::{Cache, Config};
use fred::interfaces::{ClientLike, KeysInterface};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Page {
    id: i64,
    title: String,
    body: String,
    tags: Vec<String>,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run<F, Fut>(secs: u64, concurrency: u64, op: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = bool> + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let local = tokio::task::LocalSet::new();
    for t in 0..concurrency {
        let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
        local.spawn_local(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                assert!(op(i).await, "value missing");
                done.fetch_add(1, Ordering::Relaxed);
                i = i.wrapping_add(concurrency);
            }
        });
    }
    let start = Instant::now();
    local
        .run_until(async {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
        })
        .await;
    let n = done.load(Ordering::Relaxed);
    local.await;
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let secs = env("SECS", 5);
    let concurrency = env("CONCURRENCY", 64);
    let mut _cluster = None;
    let nodes: Vec<String> = match std::env::args().nth(1) {
        Some(n) => n.split(',').map(str::to_owned).collect(),
        None => {
            let c = dbtool_testkit::RedisCluster::start().await?;
            let nodes = c.nodes();
            _cluster = Some(c);
            nodes
        }
    };
    let keys = 1000u64;
    let page = Page {
        id: 1,
        title: "A wiki page".into(),
        body: "x".repeat(900),
        tags: vec!["team:1".into(), "wiki".into()],
    };
    let json_len = serde_json::to_vec(&page)?.len();

    let mut config = Config::with_nodes(nodes.clone());
    config.namespace = "bench".into();
    config.stats_flush_secs = 0;
    let cache = Cache::connect(config.clone()).await?;
    for i in 0..keys {
        cache
            .set(&format!("page:{i}"), &page, Duration::from_secs(3600))
            .await?;
        // The same JSON under a plain key for the raw client.
        cache
            .redis()
            .set::<(), _, _>(
                format!("raw:page:{i}"),
                serde_json::to_vec(&page)?,
                None,
                None,
                false,
            )
            .await?;
    }

    // Raw fred: its own client, GET + serde_json decode (what the old app did).
    let raw = fred::types::Builder::from_config(fred::types::config::Config {
        server: fred::types::config::ServerConfig::new_clustered(
            nodes
                .iter()
                .map(|n| {
                    let (h, p) = n.rsplit_once(':').expect("host:port");
                    (h.to_owned(), p.parse::<u16>().expect("port"))
                })
                .collect(),
        ),
        ..Default::default()
    })
    .build()?;
    raw.init().await?;

    let raw_c = raw.clone();
    let raw_rate = run(secs, concurrency, move |i| {
        let raw = raw_c.clone();
        async move {
            let bytes: Option<Vec<u8>> = raw
                .get(format!("raw:page:{}", i % keys))
                .await
                .expect("get");
            bytes
                .and_then(|b| serde_json::from_slice::<Page>(&b).ok())
                .is_some()
        }
    })
    .await;

    let c = cache.clone();
    let cache_rate = run(secs, concurrency, move |i| {
        let c = c.clone();
        async move { c.get::<Page>(&format!("page:{}", i % keys)).await.is_some() }
    })
    .await;
    assert_eq!(cache.stats().errors, 0);

    // L1: one task, one core, hits only.
    let mut l1_config = config.clone();
    l1_config.l1.enabled = true;
    l1_config.l1.max_entries = 10_000;
    let l1 = Cache::connect(l1_config).await?;
    for i in 0..keys {
        l1.get::<Page>(&format!("page:{i}")).await.expect("warm");
    }
    let names: Vec<String> = (0..keys).map(|i| format!("page:{i}")).collect();
    let n = 2_000_000u64;
    let start = Instant::now();
    for i in 0..n {
        let v = l1.get::<Page>(&names[(i % keys) as usize]).await;
        assert!(v.is_some());
    }
    let l1_rate = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..n {
        let v = l1.get_arc::<Page>(&names[(i % keys) as usize]).await;
        assert!(v.is_some());
    }
    let l1_arc_rate = n as f64 / start.elapsed().as_secs_f64();
    let s = l1.stats();
    assert!(s.l1_hits >= 2 * n, "all L1 hits: {s:?}");

    println!("value: {json_len} bytes of JSON; {concurrency} concurrent tasks; {secs} s per run; one core each");
    println!("raw fred GET + serde_json   {raw_rate:>12.0} ops/s");
    println!(
        "Cache::get (envelope, JSON) {cache_rate:>12.0} ops/s  ({:.2}x raw)",
        cache_rate / raw_rate
    );
    println!("Cache::get L1 hit (clone)   {l1_rate:>12.0} ops/s");
    println!("Cache::get_arc L1 hit       {l1_arc_rate:>12.0} ops/s");
    Ok(())
}
