//! Counters: kept as atomics for [`Cache::stats`](crate::Cache::stats), and
//! mirrored to the `metrics` facade with a `namespace` label.
//!
//! Metric handles are registered once at connect, so the hot path pays an
//! atomic add, not a label lookup. Install the metrics recorder before
//! calling `Cache::connect`.
//!
//! Each event is one add to one atomic (plus the metrics handle, a no-op
//! without a recorder). The counts not yet added to the Redis stats hash are
//! the difference to a second set of atomics, `flushed`, moved forward by
//! each flush. So an event costs one add whether or not flushing is on; a
//! second per-event "unflushed" counter would double the cost of every L1
//! hit, the hottest path there is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use serde::Serialize;

/// A snapshot of one [`Cache`](crate::Cache)'s counters since it connected.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// The namespace these counters belong to.
    pub namespace: String,
    /// Reads answered from Redis or L1 (negative entries included).
    pub hits: u64,
    /// Reads that found nothing usable (absent, expired, invalidated by tag,
    /// undecodable, or Redis unavailable).
    pub misses: u64,
    /// Of `hits`, those answered by the in-process L1.
    pub l1_hits: u64,
    /// Loader calls made by `get_or_load`.
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Stale values served because the loader failed (fail-safe).
    pub stale_served: u64,
    /// Cached values that did not decode as the type asked for (a value
    /// stored as another type, or by another codec or schema). Each is also
    /// counted as a miss.
    pub decode_errors: u64,
    /// Redis commands that failed or timed out (absorbed by fail-open).
    pub errors: u64,
    /// Of `errors`, timeouts.
    pub timeouts: u64,
    /// Redis calls skipped because the circuit breaker was open.
    pub breaker_skips: u64,
    /// Redis round trips made.
    pub redis_calls: u64,
    /// Their summed latency, in microseconds.
    pub redis_micros: u64,
}

impl Stats {
    /// `hits / (hits + misses)`, or 0 before any read (the old app's
    /// `cache_hit_rate`).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// Mean Redis round-trip latency.
    pub fn mean_latency(&self) -> Duration {
        Duration::from_micros(self.redis_micros.checked_div(self.redis_calls).unwrap_or(0))
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Atomics { $(pub $name: AtomicU64,)* }
        impl Atomics {
            /// Claims the counts of `total` not yet claimed here: moves each
            /// of our counters up to `total`'s and returns the differences.
            /// Two concurrent callers never claim the same count.
            pub fn claim(&self, total: &Atomics) -> Vec<(&'static str, u64)> {
                vec![$({
                    let now = total.$name.load(Ordering::Relaxed);
                    let before = self.$name.swap(now, Ordering::Relaxed);
                    (stringify!($name), now.saturating_sub(before))
                },)*]
            }
            /// Gives back counts claimed by [`claim`](Self::claim) that could
            /// not be written, so the next flush carries them.
            pub fn unclaim(&self, deltas: &[(&'static str, u64)]) {
                for (name, n) in deltas {
                    match *name {
                        $(stringify!($name) => { self.$name.fetch_sub(*n, Ordering::Relaxed); })*
                        _ => {}
                    }
                }
            }
        }
    };
}

// `redis_hits` counts hits answered by Redis only; `Stats::hits` is
// `redis_hits + l1_hits`, so an L1 hit costs one atomic add, not two.
counters!(
    redis_hits,
    misses,
    l1_hits,
    loads,
    load_errors,
    stale_served,
    errors,
    timeouts,
    breaker_skips,
    redis_calls,
    redis_micros,
    decode_errors
);

pub(crate) struct Recorder {
    namespace: String,
    pub local: Atomics,
    /// The part of `local` already added to the Redis stats hash.
    pub flushed: Atomics,
    hits: Counter,
    misses: Counter,
    l1_hits: Counter,
    loads: Counter,
    load_errors: Counter,
    stale_served: Counter,
    decode_errors: Counter,
    errors: Counter,
    timeouts: Counter,
    breaker_skips: Counter,
    latency: Histogram,
    load_latency: Histogram,
    hit_rate: Gauge,
}

macro_rules! bump {
    ($self:ident, $name:ident) => {{
        $self.local.$name.fetch_add(1, Ordering::Relaxed);
        $self.$name.increment(1);
    }};
}

impl Recorder {
    pub fn new(namespace: &str) -> Recorder {
        let ns = namespace.to_owned();
        let c = |name: &'static str| metrics::counter!(name, "namespace" => ns.clone());
        Recorder {
            namespace: ns.clone(),
            local: Atomics::default(),
            flushed: Atomics::default(),
            hits: c("cache_hits_total"),
            misses: c("cache_misses_total"),
            l1_hits: c("cache_l1_hits_total"),
            loads: c("cache_loads_total"),
            load_errors: c("cache_load_errors_total"),
            stale_served: c("cache_stale_served_total"),
            decode_errors: c("cache_decode_errors_total"),
            errors: c("cache_errors_total"),
            timeouts: c("cache_timeouts_total"),
            breaker_skips: c("cache_breaker_skips_total"),
            latency: metrics::histogram!("cache_redis_seconds", "namespace" => ns.clone()),
            load_latency: metrics::histogram!("cache_load_seconds", "namespace" => ns.clone()),
            hit_rate: metrics::gauge!("cache_hit_rate", "namespace" => ns),
        }
    }

    pub fn hit(&self) {
        self.local.redis_hits.fetch_add(1, Ordering::Relaxed);
        self.hits.increment(1);
    }
    pub fn l1_hit(&self) {
        bump!(self, l1_hits);
        self.hits.increment(1);
    }
    pub fn miss(&self) {
        bump!(self, misses);
    }
    pub fn load(&self, took: Duration, ok: bool) {
        bump!(self, loads);
        if !ok {
            bump!(self, load_errors);
        }
        self.load_latency.record(took.as_secs_f64());
    }
    pub fn stale_served(&self) {
        bump!(self, stale_served);
    }
    pub fn decode_error(&self) {
        bump!(self, decode_errors);
    }
    pub fn error(&self, timeout: bool) {
        bump!(self, errors);
        if timeout {
            bump!(self, timeouts);
        }
    }
    pub fn breaker_skip(&self) {
        bump!(self, breaker_skips);
    }
    pub fn redis(&self, took: Duration) {
        let us = took.as_micros() as u64;
        self.local.redis_calls.fetch_add(1, Ordering::Relaxed);
        self.local.redis_micros.fetch_add(us, Ordering::Relaxed);
        self.latency.record(took.as_secs_f64());
    }

    /// Counts not yet in the Redis stats hash, claimed for one flush; give
    /// them back with [`unclaim`](Self::unclaim) if the flush fails.
    pub fn claim_unflushed(&self) -> Vec<(&'static str, u64)> {
        self.flushed.claim(&self.local)
    }

    pub fn unclaim(&self, deltas: &[(&'static str, u64)]) {
        self.flushed.unclaim(deltas);
    }

    pub fn snapshot(&self) -> Stats {
        let a = &self.local;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = Stats {
            namespace: self.namespace.clone(),
            hits: get(&a.redis_hits) + get(&a.l1_hits),
            misses: get(&a.misses),
            l1_hits: get(&a.l1_hits),
            loads: get(&a.loads),
            load_errors: get(&a.load_errors),
            stale_served: get(&a.stale_served),
            decode_errors: get(&a.decode_errors),
            errors: get(&a.errors),
            timeouts: get(&a.timeouts),
            breaker_skips: get(&a.breaker_skips),
            redis_calls: get(&a.redis_calls),
            redis_micros: get(&a.redis_micros),
        };
        self.hit_rate.set(s.hit_rate());
        s
    }
}

/// Builds [`Stats`] from the `<ns>:stats` hash in Redis (its fields are the
/// counter names above: `redis_hits`, `l1_hits`, `misses`, ...).
pub(crate) fn from_hash(namespace: &str, fields: &std::collections::HashMap<String, u64>) -> Stats {
    let g = |k: &str| fields.get(k).copied().unwrap_or(0);
    Stats {
        namespace: namespace.to_owned(),
        hits: g("redis_hits") + g("l1_hits"),
        misses: g("misses"),
        l1_hits: g("l1_hits"),
        loads: g("loads"),
        load_errors: g("load_errors"),
        stale_served: g("stale_served"),
        decode_errors: g("decode_errors"),
        errors: g("errors"),
        timeouts: g("timeouts"),
        breaker_skips: g("breaker_skips"),
        redis_calls: g("redis_calls"),
        redis_micros: g("redis_micros"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_counts_l1_hits_as_hits() {
        let r = Recorder::new("ns");
        r.hit();
        r.l1_hit();
        r.miss();
        r.miss();
        let s = r.snapshot();
        assert_eq!((s.hits, s.l1_hits, s.misses), (2, 1, 2));
        assert_eq!(s.hit_rate(), 0.5);
        assert_eq!(s.namespace, "ns");
    }

    #[test]
    fn claim_takes_each_count_once_and_keeps_the_local_totals() {
        let r = Recorder::new("ns");
        r.hit();
        r.hit();
        let d = r.claim_unflushed();
        assert!(d.contains(&("redis_hits", 2)));
        assert!(r.claim_unflushed().contains(&("redis_hits", 0)));
        r.hit();
        assert!(r.claim_unflushed().contains(&("redis_hits", 1)));
        assert_eq!(r.snapshot().hits, 3);
    }

    #[test]
    fn hits_in_the_stats_hash_are_redis_plus_l1_hits() {
        let r = Recorder::new("ns");
        r.hit();
        r.l1_hit();
        r.l1_hit();
        let fields: std::collections::HashMap<String, u64> = r
            .claim_unflushed()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let s = from_hash("ns", &fields);
        assert_eq!((s.hits, s.l1_hits), (3, 2));
        assert_eq!(s, {
            let mut l = r.snapshot();
            l.namespace = "ns".into();
            l
        });
    }

    #[test]
    fn unclaimed_counts_go_to_the_next_flush() {
        let r = Recorder::new("ns");
        r.miss();
        let d = r.claim_unflushed();
        r.unclaim(&d);
        r.miss();
        assert!(r.claim_unflushed().contains(&("misses", 2)));
    }
}
