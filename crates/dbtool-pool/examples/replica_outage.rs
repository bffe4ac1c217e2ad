//! Write latency while a replica is down: readers fall back to the primary
//! and share its connections with writers. Measures write latency (checkout
//! and one INSERT) with the replica up, with it down and no write reserve
//! (every connection open to reads), and with it down and the default
//! reserve.
//!
//! ```text
//! cargo run --release -p dbtool-pool --example replica_outage -- [seconds per phase, default 5]
//! ```
//!
//! Starts its own primary and replica through `dbtool-testkit`. 64 readers
//! run `SELECT pg_sleep(0.02)` (a 20 ms query) in a loop, 2 writers insert a
//! row each in a loop; the pools have 16 connections per host. "Down" is a
//! replica URL nothing listens on, so every read falls back to the primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_pool::RwPool;

const READERS: usize = 64;
const WRITERS: usize = 2;

struct Phase {
    name: &'static str,
    replica: String,
    reserve: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let db = dbtool_testkit::pg().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE w (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        .await?;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        drop(l);
        format!("postgres://postgres@127.0.0.1:{port}/{}", db.name())
    };
    let phases = [
        Phase {
            name: "replica up",
            replica: db.replica_urls()[0].clone(),
            reserve: 4,
        },
        Phase {
            name: "replica down, write_reserve = 0",
            replica: dead.clone(),
            reserve: 0,
        },
        Phase {
            name: "replica down, write_reserve = 4 (default)",
            replica: dead,
            reserve: 4,
        },
    ];
    println!(
        "{READERS} readers (20 ms queries), {WRITERS} writers, {secs} s per phase, pool size 16"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "phase", "write p50", "write p99", "writes", "reads/s", "errors"
    );
    for phase in phases {
        let pool = RwPool::builder()
            .primary(db.url())
            .replica(phase.replica.clone())
            .write_reserve(phase.reserve)
            .build()
            .await?;
        let r = run(&pool, Duration::from_secs(secs)).await;
        println!(
            "{:<44} {:>8.2}ms {:>8.2}ms {:>10} {:>8.0} {:>8}",
            phase.name,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.writes,
            r.reads as f64 / secs as f64,
            r.errors
        );
    }
    Ok(())
}

struct Result {
    p50: Duration,
    p99: Duration,
    writes: usize,
    reads: u64,
    errors: u64,
}

async fn run(pool: &RwPool, length: Duration) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (pool, stop) = (pool.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let c = pool.read().await?;
                    c.query_one("SELECT pg_sleep(0.02)", &[]).await?;
                    Ok::<_, dbtool_pool::Error>(())
                }
                .await;
                match r {
                    Ok(()) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    // Let the readers fill the pools before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (pool, stop) = (pool.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let r = async {
                    let c = pool.write().await?;
                    c.execute("INSERT INTO w (at) VALUES (now())", &[]).await?;
                    Ok::<_, dbtool_pool::Error>(())
                }
                .await;
                match r {
                    Ok(()) => took.push(start.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (took, errors)
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let (mut took, mut errors, mut reads) = (Vec::new(), 0, 0);
    for w in writers {
        let (t, e) = w.await.expect("writer");
        took.extend(t);
        errors += e;
    }
    for r in readers {
        let (ok, e) = r.await.expect("reader");
        reads += ok;
        errors += e;
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    Result {
        p50: at(0.5),
        p99: at(0.99),
        writes: took.len(),
        reads,
        errors,
    }
}
