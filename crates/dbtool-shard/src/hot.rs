//! The hot-team counter: which teams send the most queries, in bounded memory.

use std::collections::HashMap;
use std::sync::Mutex;

/// A team and its estimated query count, from [`HotTeams::top`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotTeam {
    /// The team id.
    pub team_id: String,
    /// Estimated queries (an upper bound: true count is in `count - error ..= count`).
    pub count: u64,
    /// How much of `count` may belong to teams this slot evicted.
    pub error: u64,
}

/// Top-k teams by query count, with the Space-Saving algorithm (Metwally et
/// al., 2005): `capacity` counters; an untracked team takes over the smallest
/// counter and inherits its count as possible error. Any team with more than
/// `total / capacity` queries is guaranteed to be tracked.
///
/// Chosen over a count-min sketch because it needs no second structure to
/// remember *which* teams are hot, and over exact counting because team ids
/// are unbounded. A miss costs O(capacity); capacity is small (default 64).
#[derive(Debug)]
pub struct HotTeams {
    capacity: usize,
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    index: HashMap<Box<str>, usize>,
    slots: Vec<(Box<str>, u64, u64)>,
}

impl HotTeams {
    /// A counter tracking at most `capacity` teams (0 disables counting).
    pub fn new(capacity: usize) -> HotTeams {
        HotTeams {
            capacity,
            inner: Mutex::new(Counters::default()),
        }
    }

    /// Counts one query for `team_id`.
    pub fn record(&self, team_id: &str) {
        if self.capacity == 0 {
            return;
        }
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = c.index.get(team_id) {
            c.slots[i].1 += 1;
            return;
        }
        if c.slots.len() < self.capacity {
            let i = c.slots.len();
            c.slots.push((team_id.into(), 1, 0));
            c.index.insert(team_id.into(), i);
            return;
        }
        let (i, min) = c
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.1))
            .min_by_key(|&(_, count)| count)
            .expect("capacity > 0");
        let old = std::mem::replace(&mut c.slots[i], (team_id.into(), min + 1, min));
        c.index.remove(&old.0);
        c.index.insert(team_id.into(), i);
    }

    /// The `k` teams with the highest counts, highest first (ties by id).
    pub fn top(&self, k: usize) -> Vec<HotTeam> {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<HotTeam> = c
            .slots
            .iter()
            .map(|(t, count, error)| HotTeam {
                team_id: t.to_string(),
                count: *count,
                error: *error,
            })
            .collect();
        all.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.team_id.cmp(&b.team_id))
        });
        all.truncate(k);
        all
    }

    /// Forgets all counts (e.g. at the start of a reporting window).
    pub fn reset(&self) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.index.clear();
        c.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_while_teams_fit() {
        let h = HotTeams::new(4);
        for (t, n) in [("a", 5), ("b", 3), ("c", 9)] {
            for _ in 0..n {
                h.record(t);
            }
        }
        let top = h.top(2);
        assert_eq!(
            top[0],
            HotTeam {
                team_id: "c".into(),
                count: 9,
                error: 0
            }
        );
        assert_eq!(
            top[1],
            HotTeam {
                team_id: "a".into(),
                count: 5,
                error: 0
            }
        );
    }

    #[test]
    fn a_heavy_team_stays_on_top_among_many_cold_ones_in_bounded_memory() {
        let h = HotTeams::new(8);
        for i in 0..10_000 {
            h.record(&format!("cold-{i}"));
            if i % 3 == 0 {
                h.record("hot");
            }
        }
        let top = h.top(1);
        assert_eq!(top[0].team_id, "hot");
        assert!(top[0].count >= 3334, "{top:?}");
        assert_eq!(h.inner.lock().unwrap().slots.len(), 8);
        assert_eq!(h.inner.lock().unwrap().index.len(), 8);
    }
}
