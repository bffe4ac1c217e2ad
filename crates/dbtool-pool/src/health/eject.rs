//! Which replicas take reads: ejection of down and lagging replicas, and
//! their re-admission.
//!
//! - A replica is **down** after `failure_threshold` failed checks or
//!   connection attempts in a row, and is ejected whatever the count.
//! - A replica is **lagging** after [`LAG_CHECKS`] checks in a row over
//!   `max_lag_bytes` or `max_lag`; at most half the replicas (at least one)
//!   are out for lag at once, counting those out for any reason: a slow
//!   replica is better than a primary buried under every read.
//! - An ejected replica stays out for `eject_for`, then comes back at the
//!   first check that finds it up and not lagging.

use std::time::Instant;

use super::{Event, Policy, LAG_CHECKS};
use crate::status::{EjectReason, Health, Role};

impl Policy {
    pub(super) fn eject_and_readmit(&mut self, now: Instant, events: &mut Vec<Event>) {
        let wt = self.write_target;
        let rules = &self.rules;
        let others = self.hosts.len() - usize::from(wt.is_some());
        let max_lag_ejected = (others / 2).max(1);
        for (i, s) in self.hosts.iter_mut().enumerate() {
            if Some(i) == wt {
                s.ejected = None;
                continue;
            }
            if s.failures >= rules.failure_threshold {
                if !matches!(s.ejected, Some((EjectReason::Down, _))) {
                    events.push(Event::Ejected {
                        host: i,
                        reason: EjectReason::Down,
                    });
                    s.ejected = Some((EjectReason::Down, now + rules.eject_for));
                }
            } else if let Some((_, until)) = s.ejected {
                if now >= until && s.health == Health::Up && s.failures == 0 && s.over_lag == 0 {
                    events.push(Event::Readmitted { host: i });
                    s.ejected = None;
                }
            }
        }
        let mut ejected = self
            .hosts
            .iter()
            .enumerate()
            .filter(|&(i, s)| Some(i) != wt && s.ejected.is_some())
            .count();
        for (i, s) in self.hosts.iter_mut().enumerate() {
            if Some(i) == wt
                || s.ejected.is_some()
                || s.role != Role::Replica
                || s.over_lag < LAG_CHECKS
            {
                continue;
            }
            if ejected >= max_lag_ejected {
                break;
            }
            events.push(Event::Ejected {
                host: i,
                reason: EjectReason::Lag,
            });
            s.ejected = Some((EjectReason::Lag, now + rules.eject_for));
            ejected += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::tests::{down, healthy, lagging, primary, replica};
    use super::super::Event;
    use crate::status::EjectReason;

    const BAN: Duration = Duration::from_secs(30);

    fn ejected_for(events: &[Event], host: usize) -> Option<EjectReason> {
        events.iter().find_map(|e| match e {
            Event::Ejected { host: h, reason } if *h == host => Some(*reason),
            _ => None,
        })
    }

    #[test]
    fn ejects_a_replica_after_failure_threshold_failures_in_a_row() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        p.observe(1, down(), t);
        p.observe(1, down(), t);
        let events = p.observe(1, down(), t);
        assert_eq!(ejected_for(&events, 1), Some(EjectReason::Down));
        assert_eq!(p.hosts[1].ejected, Some((EjectReason::Down, t + BAN)));
        assert!(!p.in_rotation(1) && p.in_rotation(2));
    }

    #[test]
    fn a_replica_below_the_failure_threshold_stays_ejectable_but_not_ejected() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.observe(1, down(), t);
        p.observe(1, down(), t);
        assert_eq!(p.hosts[1].ejected, None);
        // Still in rotation: reads skip a replica they cannot reach anyway.
        assert!(p.in_rotation(1));
    }

    #[test]
    fn a_successful_check_resets_the_failure_count() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.observe(1, down(), t);
        p.observe(1, down(), t);
        p.observe(1, replica(5_000), t);
        let events = p.observe(1, down(), t);
        assert_eq!(ejected_for(&events, 1), None);
        assert_eq!(p.hosts[1].failures, 1);
    }

    #[test]
    fn down_ejection_is_reported_once_and_its_ban_not_extended() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        for _ in 0..3 {
            p.observe(1, down(), t);
        }
        let later = t + Duration::from_secs(5);
        let events = p.observe(1, down(), later);
        assert_eq!(ejected_for(&events, 1), None);
        assert_eq!(p.hosts[1].ejected, Some((EjectReason::Down, t + BAN)));
    }

    #[test]
    fn keeps_an_ejected_replica_out_until_the_ban_expires() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        for _ in 0..3 {
            p.observe(1, down(), t);
        }
        let events = p.observe(1, replica(5_000), t + BAN - Duration::from_millis(1));
        assert!(!events.contains(&Event::Readmitted { host: 1 }));
        assert!(!p.in_rotation(1));
    }

    #[test]
    fn readmits_an_ejected_replica_after_the_ban_when_healthy() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        for _ in 0..3 {
            p.observe(1, down(), t);
        }
        let events = p.observe(1, replica(5_000), t + BAN);
        assert!(
            events.contains(&Event::Readmitted { host: 1 }),
            "{events:?}"
        );
        assert!(p.in_rotation(1));
    }

    #[test]
    fn does_not_readmit_an_unhealthy_replica_after_the_ban() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        for _ in 0..3 {
            p.observe(1, down(), t);
        }
        let events = p.observe(1, down(), t + BAN * 2);
        assert!(!events.contains(&Event::Readmitted { host: 1 }));
        assert!(!p.in_rotation(1));
    }

    #[test]
    fn a_single_lag_sample_does_not_eject() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        let events = p.observe(1, lagging(5_000, Duration::from_secs(11)), t);
        assert_eq!(ejected_for(&events, 1), None);
        assert_eq!(p.hosts[1].over_lag, 1);
        // A good sample in between starts the count again.
        p.observe(1, replica(5_000), t);
        let events = p.observe(1, lagging(5_000, Duration::from_secs(11)), t);
        assert_eq!(ejected_for(&events, 1), None);
    }

    #[test]
    fn ejects_a_replica_lagging_in_time_on_two_checks_in_a_row() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        p.observe(1, lagging(5_000, Duration::from_secs(11)), t);
        let events = p.observe(1, lagging(5_000, Duration::from_secs(12)), t);
        assert_eq!(ejected_for(&events, 1), Some(EjectReason::Lag));
        assert!(!p.in_rotation(1) && p.in_rotation(2));
    }

    #[test]
    fn ejects_a_replica_lagging_in_bytes_on_two_checks_in_a_row() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        p.observe(0, primary(10_000, 1), t);
        p.observe(1, replica(5_000), t);
        let events = p.observe(1, replica(5_000), t);
        assert_eq!(p.hosts[1].lag_bytes, Some(5_000));
        assert_eq!(ejected_for(&events, 1), Some(EjectReason::Lag));
    }

    #[test]
    fn lag_at_the_limit_is_not_lagging() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        p.observe(0, primary(6_000, 1), t);
        for _ in 0..3 {
            p.observe(1, lagging(5_000, Duration::from_secs(10)), t);
        }
        assert_eq!(p.hosts[1].lag_bytes, Some(1_000));
        assert_eq!(p.hosts[1].ejected, None);
    }

    #[test]
    fn ejects_at_most_half_the_replicas_for_lag() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        let slow = || lagging(5_000, Duration::from_secs(20));
        for _ in 0..2 {
            p.observe(1, slow(), t);
            p.observe(2, slow(), t);
        }
        let out = p.hosts.iter().filter(|s| s.ejected.is_some()).count();
        assert_eq!(out, 1);
        assert_eq!(
            (1..=2).filter(|&i| p.in_rotation(i)).count(),
            1,
            "one replica keeps serving reads"
        );
    }

    #[test]
    fn a_down_replica_counts_toward_the_lag_ejection_limit() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        for _ in 0..3 {
            p.observe(2, down(), t);
        }
        for _ in 0..3 {
            p.observe(1, lagging(5_000, Duration::from_secs(20)), t);
        }
        assert_eq!(
            p.hosts[1].ejected, None,
            "the last replica in rotation stays"
        );
    }

    #[test]
    fn down_replicas_are_ejected_whatever_the_count() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        for _ in 0..3 {
            p.observe(1, down(), t);
            p.observe(2, down(), t);
        }
        assert!(p.hosts[1].ejected.is_some() && p.hosts[2].ejected.is_some());
    }

    #[test]
    fn does_not_readmit_a_replica_still_lagging_after_the_ban() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        let slow = || lagging(5_000, Duration::from_secs(20));
        p.observe(1, slow(), t);
        p.observe(1, slow(), t);
        let events = p.observe(1, slow(), t + BAN);
        assert!(!events.contains(&Event::Readmitted { host: 1 }));
        let events = p.observe(1, replica(5_000), t + BAN);
        assert!(events.contains(&Event::Readmitted { host: 1 }));
    }

    #[test]
    fn the_write_target_is_never_ejected() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        for _ in 0..3 {
            p.observe(1, down(), t);
        }
        // The replica is promoted while ejected: as the write target it is in.
        p.observe(0, down(), t);
        p.observe(1, primary(9_000, 2), t + BAN);
        assert_eq!(p.write_target(), Some(1));
        assert_eq!(p.hosts[1].ejected, None);
    }
}
