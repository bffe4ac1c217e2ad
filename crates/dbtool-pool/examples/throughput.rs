//! Throughput of `RwPool::read()` + `SELECT 1` against bare deadpool-postgres
//! on the same server, 32 concurrent tasks. Target: RwPool >= 0.95x.
//!
//! ```text
//! cargo run --release -p dbtool-pool --example throughput            # throwaway servers
//! cargo run --release -p dbtool-pool --example throughput -- 5 postgres://..primary postgres://..replica
//! ```
//! Arguments: seconds per round (default 3), then optionally the primary and
//! replica URLs. Rounds alternate between the two pools (3 each) and the best
//! round of each is compared, so a burst of noise on the machine hurts neither.
//! A third figure, when `PGBOUNCER_URL` is set, runs the bare pool through
//! pgbouncer (transaction mode) to the same replica.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_pool::RwPool;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

const TASKS: usize = 32;
const POOL_SIZE: usize = 32;
const ROUNDS: usize = 3;

async fn measure<F, Fut>(seconds: f64, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    // Warm up: open the connections before the clock starts.
    for _ in 0..TASKS {
        op().await;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    op().await;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn bare_pool(url: &str) -> Pool {
    let cfg: tokio_postgres::Config = url.parse().expect("a postgres URL");
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().map_or(Ok(3.0), |s| s.parse())?;
    let _servers;
    let (primary, replica) = match (args.get(1), args.get(2)) {
        (Some(p), Some(r)) => (p.clone(), r.clone()),
        _ => {
            let db = dbtool_testkit::pg().await;
            let urls = (db.url(), db.replica_urls()[0].clone());
            _servers = db;
            urls
        }
    };
    println!(
        "read() + SELECT 1, {TASKS} tasks, pool size {POOL_SIZE}, {ROUNDS} rounds of {seconds} s each, replica {}",
        dbtool_pool::mask_password(&replica)
    );

    let mut builder = RwPool::builder()
        .primary(&primary)
        .replica(&replica)
        .max_size(POOL_SIZE);
    // To see what the client-side query timer costs.
    if std::env::var_os("BENCH_NO_QUERY_TIMEOUT").is_some() {
        println!("(RwPool with query_timeout off)");
        builder = builder.query_timeout(Duration::ZERO);
    }
    let rw = builder.build().await?;
    let bare = bare_pool(&replica);

    let (mut best_rw, mut best_bare) = (0f64, 0f64);
    for round in 1..=ROUNDS {
        let p = bare.clone();
        let b = measure(seconds, move || {
            let p = p.clone();
            async move {
                let c = p.get().await.unwrap();
                c.query_one("SELECT 1", &[]).await.unwrap();
            }
        })
        .await;
        let p = rw.clone();
        let r = measure(seconds, move || {
            let p = p.clone();
            async move {
                let c = p.read().await.unwrap();
                c.query_one("SELECT 1", &[]).await.unwrap();
            }
        })
        .await;
        println!(
            "round {round}: bare deadpool {b:>9.0} ops/s   RwPool {r:>9.0} ops/s   ratio {:.3}",
            r / b
        );
        best_rw = best_rw.max(r);
        best_bare = best_bare.max(b);
    }
    println!("bare deadpool-postgres: {best_bare:.0} ops/s (best round)");
    println!("RwPool::read():         {best_rw:.0} ops/s (best round)");
    println!(
        "ratio RwPool / bare:    {:.3} (target >= 0.95)",
        best_rw / best_bare
    );

    if let Ok(url) = std::env::var("PGBOUNCER_URL") {
        let p = bare_pool(&url);
        let mut best = 0f64;
        for _ in 0..ROUNDS {
            let p = p.clone();
            best = best.max(
                measure(seconds, move || {
                    let p = p.clone();
                    async move {
                        let c = p.get().await.unwrap();
                        c.simple_query("SELECT 1").await.unwrap();
                    }
                })
                .await,
            );
        }
        let p = rw.clone();
        let mut best_rw_simple = 0f64;
        for _ in 0..ROUNDS {
            let p = p.clone();
            best_rw_simple = best_rw_simple.max(
                measure(seconds, move || {
                    let p = p.clone();
                    async move {
                        let c = p.read().await.unwrap();
                        c.simple_query("SELECT 1").await.unwrap();
                    }
                })
                .await,
            );
        }
        // pgbouncer in transaction mode cannot keep tokio-postgres's named
        // prepared statements, so this comparison uses the simple protocol.
        println!("simple protocol: RwPool {best_rw_simple:.0} ops/s, bare pool through pgbouncer {best:.0} ops/s (best rounds)");
    }
    Ok(())
}
