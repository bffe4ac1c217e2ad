//! Which host takes writes.
//!
//! Roles come from the servers (`pg_is_in_recovery()`), not the config: a
//! host takes writes when it answers, reports read-write and has not failed
//! since. When more than one does (a split brain: an old primary came back
//! read-write after a replica was promoted), the one on the highest timeline
//! wins, because a promotion always starts a new timeline above the one it
//! left: the host on the lower timeline is the stale one, whatever the
//! config calls it. When the highest timeline is shared nothing tells the
//! true primary apart, and writes are refused until one of them stops or
//! becomes a replica.
//!
//! The decision is a function of what the hosts report now, so a pool built
//! fresh from the config (a restarted service) and a pool that watched the
//! failover happen write to the same host.

use super::{Event, Policy};

impl Policy {
    pub(super) fn choose_write_target(&mut self, events: &mut Vec<Event>) {
        let claims: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].claims_writes())
            .collect();
        let timeline = |i: usize| self.hosts[i].timeline.unwrap_or(0);
        let chosen = match claims.as_slice() {
            [] => None,
            [only] => Some(*only),
            _ => {
                let top = claims.iter().map(|&i| timeline(i)).max().unwrap_or(0);
                let mut on_top = claims.iter().copied().filter(|&i| timeline(i) == top);
                match (on_top.next(), on_top.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            }
        };

        let split = if claims.len() > 1 { claims } else { Vec::new() };
        for (i, s) in self.hosts.iter_mut().enumerate() {
            s.split_brain = split.contains(&i);
        }
        if !split.is_empty() && (split != self.split || chosen != self.write_target) {
            events.push(Event::SplitBrain {
                hosts: split.clone(),
                writes_to: chosen,
            });
        } else if split.is_empty() && !self.split.is_empty() {
            events.push(Event::SplitBrainOver);
        }
        self.split = split;

        let previous = self.write_target;
        if let Some(prev) = previous.filter(|&p| Some(p) != chosen) {
            events.push(Event::PrimaryLost { host: prev });
        }
        if let Some(c) = chosen.filter(|&c| Some(c) != previous) {
            events.push(Event::WritesTo {
                host: c,
                failover: self.had_primary && c != self.last_primary,
            });
            self.last_primary = c;
            self.had_primary = true;
        }
        self.write_target = chosen;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::tests::{down, healthy, primary, replica, rules};
    use super::super::{Event, Policy};
    use crate::status::Role;

    #[test]
    fn writes_go_to_the_only_host_that_reports_read_write() {
        let t = Instant::now();
        let mut p = Policy::new(rules(), 3);
        let events = p.observe_all(vec![replica(1), primary(1, 1), replica(1)], t);
        assert_eq!(p.write_target(), Some(1));
        assert!(events.contains(&Event::WritesTo {
            host: 1,
            failover: false
        }));
        assert!(p.in_rotation(0) && p.in_rotation(2) && !p.in_rotation(1));
    }

    #[test]
    fn the_write_target_is_lost_at_its_first_failure() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        let events = p.observe(0, down(), t);
        assert_eq!(p.write_target(), None);
        assert!(
            events.contains(&Event::PrimaryLost { host: 0 }),
            "{events:?}"
        );
        assert_eq!(p.last_primary(), 0);
    }

    #[test]
    fn the_write_target_is_lost_when_it_reports_recovery() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.observe(0, replica(1), t);
        assert_eq!(p.write_target(), None);
        assert_eq!(p.hosts[0].role, Role::Replica);
    }

    #[test]
    fn a_failed_connection_attempt_loses_the_write_target_like_a_failed_check() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.connection_failed(0, "connection reset".into(), t);
        assert_eq!(p.write_target(), None);
        assert_eq!(p.hosts[0].failures, 1);
    }

    #[test]
    fn a_promoted_replica_takes_writes_as_a_failover() {
        let t = Instant::now();
        let mut p = healthy(2, t);
        p.observe(0, down(), t);
        let events = p.observe(1, primary(9, 2), t);
        assert_eq!(p.write_target(), Some(1));
        assert!(events.contains(&Event::WritesTo {
            host: 1,
            failover: true
        }));
        assert!(!p.in_rotation(1) && p.in_rotation(2));
    }

    #[test]
    fn the_primary_coming_back_after_a_blip_takes_writes_again_without_a_failover() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.observe(0, down(), t);
        let events = p.observe(0, primary(5_000, 1), t);
        assert_eq!(p.write_target(), Some(0));
        assert!(events.contains(&Event::WritesTo {
            host: 0,
            failover: false
        }));
    }

    #[test]
    fn an_old_primary_back_read_write_does_not_take_writes_from_the_promoted_one() {
        let t = Instant::now();
        let mut p = healthy(1, t);
        p.observe(0, down(), t);
        p.observe(1, primary(9_000, 2), t);
        let events = p.observe(0, primary(5_000, 1), t);
        assert_eq!(p.write_target(), Some(1));
        assert!(events.contains(&Event::SplitBrain {
            hosts: vec![0, 1],
            writes_to: Some(1)
        }));
        assert!(!events
            .iter()
            .any(|e| matches!(e, Event::WritesTo { .. } | Event::PrimaryLost { .. })));
    }

    #[test]
    fn a_fresh_policy_writes_to_the_highest_timeline_not_the_configured_primary() {
        // A restarted service: host 0 is the configured primary, back
        // read-write on the old timeline; host 1 was promoted meanwhile.
        let t = Instant::now();
        let mut p = Policy::new(rules(), 2);
        let events = p.observe_all(vec![primary(5_000, 1), primary(9_000, 2)], t);
        assert_eq!(p.write_target(), Some(1));
        assert!(events.contains(&Event::SplitBrain {
            hosts: vec![0, 1],
            writes_to: Some(1)
        }));
        assert_eq!(p.split_brain(), [0, 1]);
        assert!(p.hosts[0].split_brain && p.hosts[1].split_brain);
    }

    #[test]
    fn two_read_write_hosts_on_the_same_timeline_refuse_writes() {
        let t = Instant::now();
        let mut p = Policy::new(rules(), 2);
        let events = p.observe_all(vec![primary(5_000, 1), primary(7_000, 1)], t);
        assert_eq!(p.write_target(), None);
        assert!(events.contains(&Event::SplitBrain {
            hosts: vec![0, 1],
            writes_to: None
        }));
    }

    #[test]
    fn a_write_target_on_an_older_timeline_gives_way_to_a_newer_primary() {
        // The pool still reaches the old primary, but a replica was promoted
        // (a partition the pool was not part of): the new timeline wins.
        let t = Instant::now();
        let mut p = healthy(1, t);
        let events = p.observe(1, primary(9_000, 2), t);
        assert_eq!(p.write_target(), Some(1));
        assert!(events.contains(&Event::PrimaryLost { host: 0 }));
        assert!(events.contains(&Event::WritesTo {
            host: 1,
            failover: true
        }));
    }

    #[test]
    fn a_stale_primary_takes_no_reads() {
        let t = Instant::now();
        let mut p = Policy::new(rules(), 3);
        p.observe_all(
            vec![primary(5_000, 1), primary(9_000, 2), replica(9_000)],
            t,
        );
        assert!(!p.in_rotation(0), "the stale primary must not serve reads");
        assert!(p.in_rotation(2));
    }

    #[test]
    fn split_brain_is_cleared_when_the_stale_primary_stops() {
        let t = Instant::now();
        let mut p = Policy::new(rules(), 2);
        p.observe_all(vec![primary(5_000, 1), primary(9_000, 2)], t);
        let events = p.observe(0, down(), t);
        assert!(events.contains(&Event::SplitBrainOver), "{events:?}");
        assert!(p.split_brain().is_empty());
        assert!(!p.hosts[0].split_brain && !p.hosts[1].split_brain);
        assert_eq!(p.write_target(), Some(1));
    }

    #[test]
    fn split_brain_is_reported_once_while_it_lasts() {
        let t = Instant::now();
        let mut p = Policy::new(rules(), 2);
        p.observe_all(vec![primary(5_000, 1), primary(9_000, 2)], t);
        let again = p.observe(0, primary(5_000, 1), t);
        assert!(
            !again.iter().any(|e| matches!(e, Event::SplitBrain { .. })),
            "{again:?}"
        );
    }
}
