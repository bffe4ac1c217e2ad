//! Fan-out results and helpers to merge them.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::router::ShardId;

/// Why one shard of a fan-out has no result.
#[derive(Debug)]
#[non_exhaustive]
pub enum FanOutError<E> {
    /// The closure returned an error for this shard.
    Failed(E),
    /// The shard did not answer within the fan-out time limit.
    TimedOut(Duration),
}

impl<E: fmt::Display> fmt::Display for FanOutError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FanOutError::Failed(e) => write!(f, "{e}"),
            FanOutError::TimedOut(d) => write!(f, "timed out after {d:?}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for FanOutError<E> {}

/// One shard's part of a fan-out.
#[derive(Debug)]
pub struct ShardResult<T, E> {
    /// The shard.
    pub id: ShardId,
    /// The shard's name.
    pub shard: Arc<str>,
    /// Its value, or why there is none.
    pub outcome: Result<T, FanOutError<E>>,
    /// How long the shard took (up to the time limit).
    pub elapsed: Duration,
}

/// The results of [`Router::all`](crate::Router::all), one per shard in shard
/// order. Failed shards are kept, by name: whether partial results are good
/// enough is the caller's decision.
#[derive(Debug)]
pub struct FanOut<T, E> {
    /// Every shard's result.
    pub results: Vec<ShardResult<T, E>>,
}

impl<T, E: fmt::Display> FanOut<T, E> {
    /// True when every shard answered.
    pub fn is_complete(&self) -> bool {
        self.results.iter().all(|r| r.outcome.is_ok())
    }

    /// The names of the shards that failed, in shard order.
    pub fn failed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| r.outcome.is_err())
            .map(|r| &*r.shard)
            .collect()
    }

    /// All values, or [`Error::Shards`] naming every failed shard and why.
    ///
    /// # Errors
    /// [`Error::Shards`] when any shard failed.
    pub fn into_result(self) -> Result<Vec<(Arc<str>, T)>, Error> {
        let total = self.results.len();
        let (ok, failed) = self.partial();
        if failed.is_empty() {
            Ok(ok)
        } else {
            Err(Error::Shards {
                total,
                failed: failed
                    .into_iter()
                    .map(|(s, e)| (s.to_string(), e.to_string()))
                    .collect(),
            })
        }
    }

    /// The values of the shards that answered, and the errors of those that
    /// did not.
    #[allow(clippy::type_complexity)]
    pub fn partial(self) -> (Vec<(Arc<str>, T)>, Vec<(Arc<str>, FanOutError<E>)>) {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for r in self.results {
            match r.outcome {
                Ok(v) => ok.push((r.shard, v)),
                Err(e) => failed.push((r.shard, e)),
            }
        }
        (ok, failed)
    }

    /// The slowest shard's time: a fan-out costs about this, not the sum.
    pub fn slowest(&self) -> Duration {
        self.results
            .iter()
            .map(|r| r.elapsed)
            .max()
            .unwrap_or_default()
    }
}

/// Merges per-shard lists, each already sorted by `key`, into the first
/// `limit` items overall in `key` order (a k-way merge: O(limit * log shards),
/// not a sort of everything). Ties keep shard order. For descending order use
/// `std::cmp::Reverse` in the key.
///
/// ```
/// let parts = vec![vec![1, 4, 9], vec![2, 3, 10], vec![]];
/// assert_eq!(dbtool_shard::merge_sorted(parts, 4, |x| *x), vec![1, 2, 3, 4]);
/// ```
pub fn merge_sorted<T, K: Ord>(
    parts: impl IntoIterator<Item = Vec<T>>,
    limit: usize,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    struct Head<K> {
        key: K,
        part: usize,
    }
    impl<K: Ord> PartialEq for Head<K> {
        fn eq(&self, o: &Self) -> bool {
            self.cmp(o) == Ordering::Equal
        }
    }
    impl<K: Ord> Eq for Head<K> {}
    impl<K: Ord> PartialOrd for Head<K> {
        fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
            Some(self.cmp(o))
        }
    }
    impl<K: Ord> Ord for Head<K> {
        // BinaryHeap is a max-heap: reverse for the smallest key first.
        fn cmp(&self, o: &Self) -> Ordering {
            o.key.cmp(&self.key).then_with(|| o.part.cmp(&self.part))
        }
    }
    let mut iters: Vec<std::iter::Peekable<std::vec::IntoIter<T>>> = parts
        .into_iter()
        .map(|p| p.into_iter().peekable())
        .collect();
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (part, it) in iters.iter_mut().enumerate() {
        if let Some(first) = it.peek() {
            heap.push(Head {
                key: key(first),
                part,
            });
        }
    }
    let mut out = Vec::with_capacity(limit.min(1024));
    while out.len() < limit {
        let Some(Head { part, .. }) = heap.pop() else {
            break;
        };
        let it = &mut iters[part];
        out.push(it.next().expect("a head was peeked"));
        if let Some(next) = it.peek() {
            heap.push(Head {
                key: key(next),
                part,
            });
        }
    }
    out
}

/// The sum of per-shard counts (e.g. `SELECT count(*)` on every shard),
/// saturating rather than overflowing.
pub fn sum_counts<I: IntoIterator<Item = u64>>(counts: I) -> u64 {
    counts.into_iter().fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorted_takes_the_global_first_n_in_order_and_keeps_shard_order_on_ties() {
        let parts = vec![
            vec![(1, "a"), (5, "a"), (5, "a2")],
            vec![(0, "b"), (5, "b"), (7, "b")],
            vec![(2, "c")],
        ];
        let got = merge_sorted(parts, 5, |x| x.0);
        assert_eq!(got, vec![(0, "b"), (1, "a"), (2, "c"), (5, "a"), (5, "a2")]);
    }

    #[test]
    fn merge_sorted_descending_with_reverse() {
        let parts = vec![vec![9, 3], vec![8, 7, 1]];
        let got = merge_sorted(parts, 10, |x| std::cmp::Reverse(*x));
        assert_eq!(got, vec![9, 8, 7, 3, 1]);
    }

    #[test]
    fn sum_counts_saturates() {
        assert_eq!(sum_counts([1, 2, 3]), 6);
        assert_eq!(sum_counts([u64::MAX, 1]), u64::MAX);
    }
}
