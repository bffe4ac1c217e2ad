//! Live-sync benchmarks against a Postgres started by dbtool-testkit:
//!
//! - trigger cost: the forums workload's write rate on a file without and
//!   with capture (as fast as it can write, WAL mode, `synchronous =
//!   NORMAL` as an app in WAL mode runs), printed side by side;
//! - apply rate: single-row changes applied per second by `dbtool sync`;
//! - lag p99 while the workload writes 1,000 writes/s (sampled every 50 ms:
//!   age of the oldest change not yet applied), next to the write rate the
//!   workload reached;
//! - freeze p50/p99 over N cutovers at 1,000 writes/s;
//! - the offline alternative: `dbtool migrate` of the same file (the app
//!   would be down for all of it);
//! - with `--downtime-file FILE` (the benchmark-size file): the app-visible
//!   downtime of both paths on it, the live cutover's freeze (the workload
//!   writing at 1,000 writes/s, `dbtool sync` running) next to an offline
//!   `dbtool migrate` of the same file.
//!
//! ```text
//! cargo run --release -p dbtool-sync --example bench -- [--changes 50000] [--cutovers 20] [--scale 0.2]
//!     [--lag-secs 20] [--downtime-file forums.db]
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_sample::workload::{self, WorkloadOptions};
use dbtool_sync::state::Target;
use dbtool_sync::sync::{Options, Quiet};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn sample(dir: &Path, scale: f64) -> PathBuf {
    let path = dir.join("template.db");
    let mut o = dbtool_sample::Options::new(&path);
    o.scale = scale;
    dbtool_sample::generate(&o).expect("generate");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    drop(c);
    path
}

fn copy_of(template: &Path, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let c = rusqlite::Connection::open(template).unwrap();
    c.execute("VACUUM INTO ?1", [p.to_str().unwrap()]).unwrap();
    drop(c);
    let c = rusqlite::Connection::open(&p).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    p
}

fn targets(url: &str) -> Vec<Target> {
    vec![Target {
        shard: String::new(),
        to: url.parse().unwrap(),
    }]
}

async fn idle(file: &Path, url: &str) -> Duration {
    let mut o = Options::new(file, targets(url));
    o.until_idle = true;
    let t0 = Instant::now();
    dbtool_sync::sync::run(o, &Quiet).await.expect("sync");
    t0.elapsed()
}

fn write_fast(file: &Path, n: u64, seed: u64) -> f64 {
    let mut w = WorkloadOptions::new(file);
    w.rate = 0.0;
    w.max_writes = Some(n);
    w.seed = seed;
    let s = workload::run(&w, &AtomicBool::new(false), |_| {}).unwrap();
    s.acked as f64 / s.elapsed.as_secs_f64()
}

/// Waits until a freshly started sync has reported its numbers once.
async fn wait_running(client: &tokio_postgres::Client) {
    let since: std::time::SystemTime = client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the sync did not start within 120 s"
        );
        let at: std::time::SystemTime = client
            .query_one("SELECT updated_at FROM dbtool.syncs", &[])
            .await
            .unwrap()
            .get(0);
        if at > since {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `dbtool sync` on a thread of its own (its future holds SQLite
/// connections, which are not `Send`).
fn background(o: Options) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                if let Err(e) = dbtool_sync::sync::run(o, &Quiet).await {
                    eprintln!("sync: {e}");
                }
            })
    })
}

#[tokio::main]
async fn main() {
    let changes = arg("--changes", 50_000.0) as u64;
    let cutovers = arg("--cutovers", 20.0) as usize;
    let scale = arg("--scale", 0.2);
    let lag_secs = arg("--lag-secs", 20.0);
    let cluster = dbtool_testkit::shared_pg().await;
    let dir = tempfile::tempdir().unwrap();
    let template = sample(dir.path(), scale);

    // Trigger cost: alternate plain and captured files, three rounds each.
    let plain = copy_of(&template, dir.path(), "plain.db");
    let captured = copy_of(&template, dir.path(), "captured.db");
    let db = cluster.fresh_db().await;
    idle(&captured, &db.url()).await;
    let (mut base, mut with) = (Vec::new(), Vec::new());
    for round in 0..3 {
        base.push(write_fast(&plain, 5_000, round));
        with.push(write_fast(&captured, 5_000, round));
    }
    idle(&captured, &db.url()).await;
    let (b, w) = (pct(&mut base, 0.5), pct(&mut with, 0.5));
    println!(
        "trigger cost: median {b:.0} writes/s without capture, {w:.0} with ({:.0}% of the plain rate; rounds {base:.0?} vs {with:.0?})",
        100.0 * w / b
    );

    // Apply rate: a backlog of single-row changes, then one sync to drain it.
    write_fast(&captured, changes, 2);
    let took = idle(&captured, &db.url()).await;
    let applied: i64 = db
        .client()
        .await
        .query_one("SELECT applied FROM dbtool.syncs", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "apply rate: {changes} workload writes drained in {:.2} s = {:.0} changes/s ({} applied in total)",
        took.as_secs_f64(),
        changes as f64 / took.as_secs_f64(),
        applied
    );

    // Lag at 1,000 writes/s.
    let lagf = copy_of(&template, dir.path(), "lag.db");
    let db2 = cluster.fresh_db().await;
    idle(&lagf, &db2.url()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, f) = (stop.clone(), lagf.clone());
        std::thread::spawn(move || {
            let mut w = WorkloadOptions::new(f);
            w.rate = 1000.0;
            workload::run(&w, &stop, |_| {}).unwrap()
        })
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let sync = {
        let mut o = Options::new(&lagf, targets(&db2.url()));
        o.cancel = cancel.clone();
        background(o)
    };
    let client = db2.client().await;
    let reader = rusqlite::Connection::open(&lagf).unwrap();
    // Steady state only: from the moment the running sync has reported once
    // (its start-up, while the writer already writes, is not lag).
    wait_running(&client).await;
    let mut lags = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs_f64(lag_secs) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pos: i64 = client
            .query_one("SELECT position FROM dbtool.syncs", &[])
            .await
            .unwrap()
            .get(0);
        let (_, oldest) = dbtool_sync::apply::head(&reader, pos).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        lags.push(oldest.map_or(0.0, |t| (now - t).max(0.0)));
    }
    stop.store(true, Ordering::SeqCst);
    let ws = writer.join().unwrap();
    cancel.store(true, Ordering::SeqCst);
    let _ = sync.join();
    println!(
        "lag at {:.0} writes/s over {lag_secs} s: p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} samples)",
        ws.acked as f64 / ws.elapsed.as_secs_f64(),
        pct(&mut lags, 0.5),
        pct(&mut lags, 0.99),
        pct(&mut lags, 1.0),
        lags.len()
    );

    // Freeze over N cutovers at 1,000 writes/s.
    let mut freezes = Vec::new();
    let mut rates = Vec::new();
    let mut aborted = 0;
    for i in 0..cutovers {
        let f = copy_of(&template, dir.path(), &format!("cut{i}.db"));
        let db = cluster.fresh_db().await;
        idle(&f, &db.url()).await;
        let (r, rate) = live_cutover(&f, &db.url(), &db.client().await, i as u64).await;
        rates.push(rate);
        match r {
            Ok(ms) => freezes.push(ms as f64),
            Err(e) => {
                aborted += 1;
                eprintln!("cutover {i} aborted: {e}");
            }
        }
        drop(db);
    }
    let n = freezes.len();
    println!(
        "freeze over {n} cutovers at 1,000 writes/s ({aborted} aborted): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (workload reached a median {:.0} writes/s)",
        pct(&mut freezes, 0.5),
        pct(&mut freezes, 0.99),
        pct(&mut freezes, 1.0),
        pct(&mut rates, 0.5)
    );

    // The offline alternative: the app is down for a whole migrate.
    let off = copy_of(&template, dir.path(), "offline.db");
    let db3 = cluster.fresh_db().await;
    let t0 = Instant::now();
    dbtool_migrate::run::migrate(
        dbtool_migrate::run::Options::new(&off, db3.url().parse().unwrap()),
        &Default::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await
    .expect("migrate");
    println!(
        "offline migrate of the same file ({:.1} MB): {:.2} s of downtime",
        std::fs::metadata(&off).unwrap().len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );

    // App-visible downtime on the benchmark-size file.
    if let Some(big) = arg_str("--downtime-file") {
        let size = std::fs::metadata(&big).expect("--downtime-file").len() as f64 / 1e6;
        let off = dir.path().join("downtime-offline.db");
        std::fs::copy(&big, &off).unwrap();
        let db = cluster.fresh_db().await;
        let t0 = Instant::now();
        dbtool_migrate::run::migrate(
            dbtool_migrate::run::Options::new(&off, db.url().parse().unwrap()),
            &Default::default(),
            &dbtool_migrate::run::Quiet,
        )
        .await
        .expect("migrate");
        let offline = t0.elapsed().as_secs_f64();
        drop(db);
        let _ = std::fs::remove_file(&off);
        let live = dir.path().join("downtime-live.db");
        std::fs::copy(&big, &live).unwrap();
        rusqlite::Connection::open(&live)
            .unwrap()
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        let db = cluster.fresh_db().await;
        let initial = idle(&live, &db.url()).await.as_secs_f64();
        let (r, rate) = live_cutover(&live, &db.url(), &db.client().await, 99).await;
        match r {
            Ok(ms) => println!(
                "downtime on the benchmark file ({size:.0} MB): live cutover froze the app's writes {ms} ms (workload at {rate:.0} writes/s; the initial sync took {initial:.1} s with the app running); offline migrate {offline:.2} s with the app stopped"
            ),
            Err(e) => println!(
                "downtime on the benchmark file ({size:.0} MB): live cutover aborted ({e}); offline migrate {offline:.2} s with the app stopped"
            ),
        }
    }
}

/// One live cutover of `file` (already synced into `url`): the workload
/// writes at 1,000 writes/s and `dbtool sync` runs, then `dbtool cutover
/// --max-freeze 2s`. Returns the freeze (ms) or why it aborted, and the
/// write rate the workload reached before the cutover.
async fn live_cutover(
    file: &Path,
    url: &str,
    client: &tokio_postgres::Client,
    seed: u64,
) -> (Result<u64, String>, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let writer = {
        let (stop, acked, f) = (stop.clone(), acked.clone(), file.to_path_buf());
        std::thread::spawn(move || {
            let mut w = WorkloadOptions::new(f);
            w.rate = 1000.0;
            w.seed = seed;
            workload::run(&w, &stop, |_| {
                acked.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap()
        })
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let sync = {
        let mut o = Options::new(file, targets(url));
        o.cancel = cancel.clone();
        background(o)
    };
    wait_running(client).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The rate the app wrote at up to the cutover (after it, its writes fail).
    let rate = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let r = dbtool_sync::cutover::cutover(
        dbtool_sync::cutover::Options {
            from: file.to_path_buf(),
            targets: targets(url),
            sharded: None,
            max_freeze: Duration::from_secs(2),
            wait: Duration::from_secs(30),
            batch: 5000,
        },
        &Quiet,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    cancel.store(true, Ordering::SeqCst);
    let _ = sync.join();
    (r.map(|r| r.freeze_ms).map_err(|e| e.to_string()), rate)
}
