//! What the peer benchmarks share: arguments, timing loops, result lines.
//!
//! Each benchmark prints one tab-separated `RESULT` line per measurement on
//! stdout (section, contender, metric, run, value, unit, 1-minute load, note,
//! UTC time), the format of `scripts/bench`'s results file; progress goes to stderr.

#![allow(dead_code)] // each bench uses a different part

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--quick`, `--runs N`, `--seconds S` (cargo's own `--bench` is ignored).
pub struct Args {
    pub quick: bool,
    pub runs: usize,
    pub seconds: f64,
}

impl Args {
    pub fn parse() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Args {
            quick,
            runs: value("--runs").map_or(3, |v| v.max(1.0) as usize),
            seconds: value("--seconds").unwrap_or(if quick { 1.0 } else { 4.0 }),
        }
    }
}

/// The 1-minute load average, recorded next to each number (the machine is shared).
pub fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Prints one result line.
pub fn result(section: &str, contender: &str, metric: &str, run: usize, value: f64, unit: &str) {
    println!(
        "RESULT\t{section}\t{contender}\t{metric}\t{run}\t{value:.3}\t{unit}\t{}\t\t{}",
        load1(),
        utc_now()
    );
}

/// Prints that a contender could not be measured, and why.
pub fn missing(section: &str, contender: &str, why: &str) {
    let why = why.replace(['\t', '\n'], " ");
    println!(
        "RESULT\t{section}\t{contender}\t-\t-\t-\t-\t{}\t{why}\t{}",
        load1(),
        utc_now()
    );
}

/// The order of contenders in run `run` (1-based): rotated so none is always first.
pub fn rotated<T: Clone>(items: &[T], run: usize) -> Vec<T> {
    let n = items.len();
    (0..n).map(|i| items[(i + run - 1) % n].clone()).collect()
}

/// Throughput and latency of a closed loop.
pub struct Loop {
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// Runs `op` in `tasks` concurrent tasks for `seconds` and measures each call.
/// Each task warms up first (connections opened before the clock starts).
pub async fn closed_loop<F, Fut>(tasks: usize, seconds: f64, op: F) -> Loop
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    for i in 0..tasks as u64 {
        op(i).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks as u64)
        .map(|t| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                let mut errors = 0u64;
                let mut i = t.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while !stop.load(Ordering::Relaxed) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let s = Instant::now();
                    if !op(i >> 11).await {
                        errors += 1;
                    }
                    lat.push(s.elapsed().as_micros() as u32);
                }
                (lat, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (lat, e) = h.await.expect("benchmark task panicked");
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() - 1) as f64 * p) as usize] as f64
        }
    };
    Loop {
        ops_per_s: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// Prints a closed loop's three numbers.
pub fn report_loop(section: &str, contender: &str, run: usize, l: &Loop) {
    let metric = if section.starts_with("pool") {
        "qps"
    } else {
        "ops_per_s"
    };
    result(section, contender, metric, run, l.ops_per_s, "ops/s");
    result(section, contender, "p50_us", run, l.p50_us, "µs");
    result(section, contender, "p99_us", run, l.p99_us, "µs");
    eprintln!(
        "   {section:<14} {contender:<28} run {run}: {:>9.0} ops/s  p50 {:>6.0} µs  p99 {:>6.0} µs{}  (load {})",
        l.ops_per_s,
        l.p50_us,
        l.p99_us,
        if l.errors > 0 { format!("  {} ERRORS", l.errors) } else { String::new() },
        load1()
    );
}
