//! The pool's health policy as pure code: what the checks of every host
//! have found, and the decisions taken from it (which host takes writes,
//! which replicas take reads, when a replica is ejected and re-admitted).
//!
//! [`Policy`] takes probe results, failed connection attempts and the time,
//! and returns [`Event`]s; it does no I/O, logs nothing and keeps no clock of
//! its own, so every rule is a unit test. The pool (`pool.rs`) runs the
//! probes, turns the events into logs and metrics, and publishes the routing
//! (write target, replicas in rotation) to its lock-free fast path.
//!
//! The rules, one file each:
//! - [`primary`]: the write target, failover, split brain.
//! - [`eject`]: ejection of down and lagging replicas, re-admission.

mod eject;
mod primary;

use std::time::{Duration, Instant};

use crate::status::{EjectReason, Health, Role};

/// What one check of a host learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Probe {
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` on a replica.
    pub lsn: Option<u64>,
    /// Replay delay: 0 when everything received is replayed, else the age of
    /// the last replayed commit. None on a primary.
    pub lag: Option<Duration>,
    pub replay_paused: Option<bool>,
    /// The timeline the host writes WAL on (primaries), or its last
    /// checkpoint's timeline (replicas). A promotion starts a new, higher one.
    pub timeline: Option<u32>,
}

/// The limits the rules apply.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// Failures in a row that make a replica down (at least 1).
    pub failure_threshold: u32,
    /// How long an ejected replica stays out.
    pub eject_for: Duration,
    /// Bytes of WAL behind the primary that count as lagging.
    pub max_lag_bytes: u64,
    /// Replay delay that counts as lagging.
    pub max_lag: Option<Duration>,
}

/// A lag-limit breach must be seen this many checks in a row before the
/// replica is ejected: one sample can catch a replica in the moment between
/// receiving WAL and replaying it.
pub(crate) const LAG_CHECKS: u32 = 2;

/// What the checks know of one host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostState {
    pub role: Role,
    pub health: Health,
    /// Failed checks or connection attempts in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_check: Option<Instant>,
    pub lsn: Option<u64>,
    /// Bytes behind the write target; None unless an up replica.
    pub lag_bytes: Option<u64>,
    /// Replay delay; None unless an up replica.
    pub lag: Option<Duration>,
    pub replay_paused: Option<bool>,
    pub timeline: Option<u32>,
    /// Checks in a row that found the replica over a lag limit.
    pub over_lag: u32,
    /// Out of rotation: why, and until when at least.
    pub ejected: Option<(EjectReason, Instant)>,
    /// Accepts writes while another host does too.
    pub split_brain: bool,
}

impl HostState {
    pub fn new() -> HostState {
        HostState {
            role: Role::Unknown,
            health: Health::Unknown,
            failures: 0,
            last_error: None,
            last_check: None,
            lsn: None,
            lag_bytes: None,
            lag: None,
            replay_paused: None,
            timeline: None,
            over_lag: 0,
            ejected: None,
            split_brain: false,
        }
    }

    /// Answers and reports read-write: may take writes.
    fn claims_writes(&self) -> bool {
        self.role == Role::Primary && self.health == Health::Up && self.failures == 0
    }
}

/// A decision, for the pool to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A host that was up (or not checked yet) failed a check or a connection.
    HostDown { host: usize, error: String },
    /// The write target failed or became a replica; writes fail for now.
    PrimaryLost { host: usize },
    /// Writes go to `host` now; `failover` when it is not the host that took
    /// them before.
    WritesTo { host: usize, failover: bool },
    /// More than one host accepts writes. `writes_to` is the one with the
    /// highest timeline, or None when the highest is shared (writes refused).
    SplitBrain {
        hosts: Vec<usize>,
        writes_to: Option<usize>,
    },
    /// At most one host accepts writes again.
    SplitBrainOver,
    /// A replica left rotation.
    Ejected { host: usize, reason: EjectReason },
    /// An ejected replica is back in rotation.
    Readmitted { host: usize },
}

/// The state of every host and the routing decided from it.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub rules: Rules,
    pub hosts: Vec<HostState>,
    /// The host that takes writes.
    write_target: Option<usize>,
    /// The host that last took writes (the configured primary before any did).
    last_primary: usize,
    /// Whether any host has taken writes yet.
    had_primary: bool,
    /// Hosts that took part in the last split brain seen (empty when none).
    split: Vec<usize>,
}

impl Policy {
    /// `n` hosts, none checked yet; host 0 is the configured primary.
    pub fn new(rules: Rules, n: usize) -> Policy {
        Policy {
            rules,
            hosts: vec![HostState::new(); n],
            write_target: None,
            last_primary: 0,
            had_primary: false,
            split: Vec::new(),
        }
    }

    /// The host that takes writes, if any.
    pub fn write_target(&self) -> Option<usize> {
        self.write_target
    }

    /// The host that last took writes.
    pub fn last_primary(&self) -> usize {
        self.last_primary
    }

    /// Whether reads may go to replica `i`.
    pub fn in_rotation(&self, i: usize) -> bool {
        let s = &self.hosts[i];
        Some(i) != self.write_target && s.role == Role::Replica && s.ejected.is_none()
    }

    /// Hosts that accept writes now, when more than one does.
    pub fn split_brain(&self) -> &[usize] {
        &self.split
    }

    /// Records one check of host `idx` and re-decides.
    pub fn observe(
        &mut self,
        idx: usize,
        result: Result<Probe, String>,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        self.record(idx, result, now, &mut events);
        self.decide(now, &mut events);
        events
    }

    /// Records the first check of every host, then decides once: a fresh
    /// pool routes from what all hosts said, not from whichever answered
    /// first (a stale primary must not take writes because it was listed first).
    pub fn observe_all(&mut self, results: Vec<Result<Probe, String>>, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for (idx, r) in results.into_iter().enumerate() {
            self.record(idx, r, now, &mut events);
        }
        // The replicas were recorded before the primary was known: measure
        // their lag in bytes now that it is.
        self.choose_write_target(&mut events);
        if let Some(p) = self.write_target.and_then(|w| self.hosts[w].lsn) {
            for s in &mut self.hosts {
                if s.role == Role::Replica && s.health == Health::Up {
                    s.lag_bytes = s.lsn.map(|r| p.saturating_sub(r));
                }
            }
        }
        self.decide(now, &mut events);
        events
    }

    /// A failed connection attempt outside the checks (a checkout, a lost
    /// connection): counts like a failed check.
    pub fn connection_failed(&mut self, idx: usize, error: String, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        self.fail(idx, error, &mut events);
        self.decide(now, &mut events);
        events
    }

    fn fail(&mut self, idx: usize, error: String, events: &mut Vec<Event>) {
        let s = &mut self.hosts[idx];
        if s.health != Health::Down {
            events.push(Event::HostDown {
                host: idx,
                error: error.clone(),
            });
        }
        s.health = Health::Down;
        s.failures += 1;
        s.last_error = Some(error);
        // Nothing is known of a host that does not answer: its lag is not
        // zero, it is unknown.
        s.lag_bytes = None;
        s.lag = None;
        s.replay_paused = None;
        s.over_lag = 0;
    }

    fn record(
        &mut self,
        idx: usize,
        result: Result<Probe, String>,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        self.hosts[idx].last_check = Some(now);
        let p = match result {
            Ok(p) => p,
            Err(e) => return self.fail(idx, e, events),
        };
        let primary_lsn = match self.write_target {
            Some(w) if w != idx => self.hosts[w].lsn,
            _ => None,
        };
        let rules = &self.rules;
        let s = &mut self.hosts[idx];
        s.health = Health::Up;
        s.failures = 0;
        s.last_error = None;
        s.role = if p.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        };
        s.lsn = p.lsn;
        s.timeline = p.timeline;
        s.replay_paused = p.replay_paused;
        if s.role == Role::Replica {
            s.lag = p.lag;
            s.lag_bytes = primary_lsn.zip(s.lsn).map(|(p, r)| p.saturating_sub(r));
            let over_bytes = s.lag_bytes.is_some_and(|b| b > rules.max_lag_bytes);
            let over_time = match (s.lag, rules.max_lag) {
                (Some(lag), Some(max)) => lag > max,
                _ => false,
            };
            s.over_lag = if over_bytes || over_time {
                s.over_lag + 1
            } else {
                0
            };
        } else {
            s.lag = None;
            s.lag_bytes = None;
            s.over_lag = 0;
        }
    }

    /// Who takes writes, which replicas take reads.
    fn decide(&mut self, now: Instant, events: &mut Vec<Event>) {
        self.choose_write_target(events);
        self.eject_and_readmit(now, events);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Helpers for the rule tests in `primary.rs` and `eject.rs`.
    use super::*;

    pub fn rules() -> Rules {
        Rules {
            failure_threshold: 3,
            eject_for: Duration::from_secs(30),
            max_lag_bytes: 1_000,
            max_lag: Some(Duration::from_secs(10)),
        }
    }

    pub fn primary(lsn: u64, timeline: u32) -> Result<Probe, String> {
        Ok(Probe {
            in_recovery: false,
            lsn: Some(lsn),
            timeline: Some(timeline),
            ..Probe::default()
        })
    }

    pub fn replica(lsn: u64) -> Result<Probe, String> {
        Ok(Probe {
            in_recovery: true,
            lsn: Some(lsn),
            lag: Some(Duration::ZERO),
            replay_paused: Some(false),
            timeline: Some(1),
        })
    }

    pub fn lagging(lsn: u64, lag: Duration) -> Result<Probe, String> {
        Ok(Probe {
            lag: Some(lag),
            ..replica(lsn).unwrap()
        })
    }

    pub fn down() -> Result<Probe, String> {
        Err("connection refused".to_string())
    }

    /// A primary (host 0) and `replicas` caught-up replicas, all checked once.
    pub fn healthy(replicas: usize, now: Instant) -> Policy {
        let mut p = Policy::new(rules(), replicas + 1);
        let mut first = vec![primary(5_000, 1)];
        first.extend((0..replicas).map(|_| replica(5_000)));
        p.observe_all(first, now);
        p
    }

    #[test]
    fn a_fresh_policy_routes_nothing_until_hosts_are_checked() {
        let p = Policy::new(rules(), 2);
        assert_eq!(p.write_target(), None);
        assert!(!p.in_rotation(0) && !p.in_rotation(1));
    }

    #[test]
    fn a_down_replica_has_unknown_lag_not_zero() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        assert_eq!(p.hosts[1].lag_bytes, Some(0));
        p.observe(1, down(), t);
        let s = &p.hosts[1];
        assert_eq!((s.lag_bytes, s.lag, s.replay_paused), (None, None, None));
        assert_eq!(s.health, Health::Down);
        assert_eq!(s.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn host_down_is_reported_once_per_outage() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        let first = p.observe(1, down(), t);
        assert!(first.contains(&Event::HostDown {
            host: 1,
            error: "connection refused".into()
        }));
        let second = p.observe(1, down(), t);
        assert!(
            !second.iter().any(|e| matches!(e, Event::HostDown { .. })),
            "{second:?}"
        );
        assert_eq!(p.hosts[1].failures, 2);
    }

    #[test]
    fn lag_in_bytes_is_measured_against_the_write_target() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.observe(0, primary(9_000, 1), t);
        p.observe(1, replica(8_500), t);
        assert_eq!(p.hosts[1].lag_bytes, Some(500));
    }
}
