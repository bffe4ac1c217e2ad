//! Circuit breakers in front of Redis: one per master.
//!
//! Closed: every call goes to Redis. After `threshold` failures in a row it
//! opens: calls skip Redis (a miss, answered by the loader) for `open_for`.
//! Then it lets one probe through (half-open): success closes it, failure
//! opens it again. Counting consecutive failures (not a ratio) keeps it
//! lock-free on the hot path.
//!
//! One per master (see `cache::routing`): a failed master opens only the
//! breaker of the slots it owns, and the keys on the other masters keep
//! being served.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    open_for: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` until which the breaker is open; 0: closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            threshold,
            open_for,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// May a call go to Redis now? In half-open state, only one caller (the
    /// probe) gets `true` until it reports.
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now() < until {
            return false;
        }
        // Half-open: one probe at a time.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::info!("cache circuit breaker closed: redis answers again");
        }
    }

    pub fn failure(&self) {
        if self.threshold == 0 {
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let half_open = self.probing.load(Ordering::Acquire);
        if n >= self.threshold || half_open {
            let was = self.open_until.swap(
                self.now() + self.open_for.as_nanos() as u64,
                Ordering::AcqRel,
            );
            self.probing.store(false, Ordering::Release);
            if was == 0 {
                tracing::warn!(
                    failures = n,
                    open_ms = self.open_for.as_millis() as u64,
                    "cache circuit breaker open: skipping redis, loaders answer"
                );
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = Breaker::new(3, Duration::from_secs(60));
        b.failure();
        b.failure();
        assert!(b.allow());
        b.success();
        b.failure();
        b.failure();
        assert!(b.allow(), "success reset the count");
        b.failure();
        assert!(!b.allow());
        assert!(b.is_open());
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_success() {
        let b = Breaker::new(1, Duration::from_millis(1));
        b.failure();
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe at a time");
        b.success();
        assert!(b.allow());
        assert!(!b.is_open());
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(5, Duration::from_millis(1));
        for _ in 0..5 {
            b.failure();
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.allow());
        b.failure();
        assert!(!b.allow());
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            b.failure();
        }
        assert!(b.allow());
    }
}
