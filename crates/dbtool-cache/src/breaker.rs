//! Circuit breakers in front of Redis: one per master.
//!
//! Closed: every call goes to Redis. After `threshold` failures in a row it
//! opens: calls skip Redis (a miss, answered by the loader) for `open_for`.
//! Then it lets one probe through (half-open): success closes it, failure
//! opens it again. Counting consecutive failures (not a ratio) keeps it
//! lock-free on the hot path.
//!
//! [`Breakers`] keeps one breaker per master and a slot -> master table, so
//! a failed master opens only the breaker of the slots it owns: the keys on
//! the other masters keep being served. One breaker per process would open
//! on the failures of one master and turn every key into a miss. After a
//! failover the table is rebuilt from fred's cluster state, and the slots
//! point at the promoted master's (closed) breaker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Redis Cluster's hash slots.
const SLOTS: usize = 16384;
/// Breakers held: index 0 is for slots whose master is not known yet, the
/// rest are assigned to masters by name as they appear (a cluster with
/// more masters shares breakers between some of them).
const NODES: usize = 64;

/// One breaker per master, found by hash slot.
pub(crate) struct Breakers {
    slots: Box<[AtomicU8]>,
    nodes: Box<[Breaker]>,
    names: Mutex<HashMap<String, u8>>,
    /// For calls made while the client reconnects (every node waits then,
    /// so the failures say nothing about one master) and calls that are
    /// not about a key. Opens after 4x the failures of a master's breaker:
    /// a failover's reconnects do not trip it, an outage of every node
    /// does.
    stall: Breaker,
}

impl Breakers {
    pub fn new(threshold: u32, open_for: Duration) -> Breakers {
        Breakers {
            slots: (0..SLOTS).map(|_| AtomicU8::new(0)).collect(),
            nodes: (0..NODES)
                .map(|_| Breaker::new(threshold, open_for))
                .collect(),
            names: Mutex::new(HashMap::new()),
            stall: Breaker::new(threshold.saturating_mul(4), open_for),
        }
    }

    /// The breaker of the master that owns `slot`.
    #[inline]
    pub fn for_slot(&self, slot: u16) -> &Breaker {
        let i = self.slots[usize::from(slot) % SLOTS].load(Ordering::Relaxed);
        &self.nodes[usize::from(i)]
    }

    /// The client-wide breaker (see the field).
    pub fn stall(&self) -> &Breaker {
        &self.stall
    }

    /// Points each slot range at its master's breaker.
    pub fn route(&self, ranges: &[(u16, u16, String)]) {
        let mut names = self.names.lock().expect("breaker names");
        for (start, end, node) in ranges {
            let next = names.len();
            let i = *names
                .entry(node.clone())
                .or_insert_with(|| (1 + next % (NODES - 1)) as u8);
            for slot in *start..=*end {
                if let Some(s) = self.slots.get(usize::from(slot)) {
                    s.store(i, Ordering::Relaxed);
                }
            }
        }
    }

    /// Indexes of the breakers that own at least one slot now.
    fn routed(&self) -> [bool; NODES] {
        let mut used = [false; NODES];
        for s in self.slots.iter() {
            used[usize::from(s.load(Ordering::Relaxed))] = true;
        }
        used
    }

    /// True while the breaker of any master that owns slots is open (a
    /// master replaced by a failover no longer counts).
    pub fn any_open(&self) -> bool {
        let used = self.routed();
        self.stall.is_open()
            || self
                .nodes
                .iter()
                .enumerate()
                .any(|(i, b)| used[i] && b.is_open())
    }

    /// Masters (by `host:port`) that own slots and whose breaker is open.
    pub fn open_nodes(&self) -> Vec<String> {
        let used = self.routed();
        let names = self.names.lock().expect("breaker names");
        let mut out: Vec<String> = names
            .iter()
            .filter(|(_, &i)| used[usize::from(i)] && self.nodes[usize::from(i)].is_open())
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }
}

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
    fn a_failing_master_opens_only_the_breaker_of_its_slots() {
        let b = Breakers::new(2, Duration::from_secs(60));
        b.route(&[
            (0, 5460, "a:1".into()),
            (5461, 10922, "b:1".into()),
            (10923, 16383, "c:1".into()),
        ]);
        b.for_slot(100).failure();
        b.for_slot(200).failure();
        assert!(!b.for_slot(300).allow(), "a's slots skip redis");
        assert!(b.for_slot(6000).allow(), "b's slots do not");
        assert!(b.for_slot(16000).allow(), "c's slots do not");
        assert_eq!(b.open_nodes(), ["a:1"]);
        // After a failover a's slots belong to a promoted replica.
        b.route(&[(0, 5460, "d:1".into())]);
        assert!(b.for_slot(300).allow());
        assert!(
            !b.any_open(),
            "a owns no slot: its open breaker no longer counts"
        );
        assert!(b.open_nodes().is_empty());
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
