//! What the scenarios share to measure: the load average, the contenders' order,
//! a closed loop with latency percentiles.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Record;

/// The 1-minute load average, recorded next to each number (the machine is shared).
pub fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The order of contenders in run `run` (from 1): rotated, so that no contender
/// always goes first (cold caches) or last (the others' leftovers).
pub fn rotated<T: Clone>(items: &[T], run: usize) -> Vec<T> {
    let n = items.len();
    (0..n)
        .map(|i| items[(i + run.max(1) - 1) % n].clone())
        .collect()
}

/// Throughput and latency of a closed loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Loop {
    /// Completed operations per wall-clock second.
    pub ops_per_s: f64,
    /// Median latency of one operation, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Operations that returned `false`.
    pub errors: u64,
}

impl Loop {
    /// The loop's three numbers as records (`qps` or `ops_per_s`, `p50_us`,
    /// `p99_us`), and a progress line on stderr.
    pub fn records(&self, section: &str, contender: &str, metric: &str, run: usize) -> Vec<Record> {
        eprintln!(
            "   {section:<14} {contender:<28} run {run}: {:>9.0} ops/s  p50 {:>6.0} µs  p99 {:>6.0} µs{}  (load {})",
            self.ops_per_s,
            self.p50_us,
            self.p99_us,
            if self.errors > 0 {
                format!("  {} ERRORS", self.errors)
            } else {
                String::new()
            },
            load1()
        );
        vec![
            Record::value(section, contender, metric, run, self.ops_per_s, "ops/s"),
            Record::value(section, contender, "p50_us", run, self.p50_us, "µs"),
            Record::value(section, contender, "p99_us", run, self.p99_us, "µs"),
        ]
    }
}

/// Runs `op` in `tasks` concurrent tasks for `seconds` and times each call; `op`
/// gets a pseudo-random number to pick its key and returns whether it succeeded.
/// Each task calls `op` once before the clock starts, so that connections are open.
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
    Loop {
        ops_per_s: all.len() as f64 / elapsed,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        errors,
    }
}

/// The `p` quantile (0..=1) of sorted latencies; 0 when there are none.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        0.0
    } else {
        sorted[((sorted.len() - 1) as f64 * p) as usize] as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_starts_with_the_next_contender() {
        let who = ["a", "b", "c"];
        assert_eq!(rotated(&who, 1), ["a", "b", "c"]);
        assert_eq!(rotated(&who, 2), ["b", "c", "a"]);
        assert_eq!(rotated(&who, 4), ["a", "b", "c"]);
    }

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let lat: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&lat, 0.5), 50.0);
        assert_eq!(percentile(&lat, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }

    #[tokio::test]
    async fn a_closed_loop_counts_every_failed_call_as_an_error() {
        let failing = closed_loop(2, 0.05, |_| async {
            tokio::task::yield_now().await;
            false
        })
        .await;
        assert!(failing.ops_per_s > 0.0);
        assert!(failing.errors > 0);
        let passing = closed_loop(2, 0.05, |_| async {
            tokio::task::yield_now().await;
            true
        })
        .await;
        assert_eq!(passing.errors, 0);
    }
}
