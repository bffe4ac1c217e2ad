//! The optional in-process L1: a bounded map of decoded values, kept honest
//! by invalidation messages (see `l1_task` in `cache/local.rs`).
//!
//! Built on `quick_cache`'s sync cache (sharded `RwLock`s, foldhash, S3-FIFO
//! eviction by entry count) rather than moka: a moka `get` costs ~700 ns on
//! one core (~1.4M hits/s, 90% of it inside moka's bookkeeping: frequency
//! sketch, access-order deques, per-entry expiry), where a read here is a
//! shard read lock, a hash probe and an `Arc` clone. moka's own TTL is not needed: every entry carries its
//! own expiry (the entry's logical expiry in Redis, capped by `l1.ttl_secs`),
//! checked on each read.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A decoded value: an `Arc<T>`, or [`Negative`], type-erased so one map
/// holds every value type.
pub(crate) type Value = Arc<dyn Any + Send + Sync>;

/// Marks a negative entry ("the loader said: no such value").
pub(crate) struct Negative;

/// One L1 entry; cloning it is one atomic increment.
#[derive(Clone)]
pub(crate) struct Item(Arc<ItemInner>);

pub(crate) struct ItemInner {
    pub value: Value,
    /// Unix ms after which the entry must not be served.
    pub expires_ms: u64,
    /// Tags the entry was stored with; empty when unknown (plain `get`), and
    /// such entries are dropped by every tag invalidation.
    pub tags: Arc<[String]>,
}

impl Item {
    pub fn value(&self) -> &Value {
        &self.0.value
    }
}

pub(crate) struct L1 {
    map: quick_cache::sync::Cache<String, Item>,
    /// Longest an entry may live, in ms.
    ttl_ms: u64,
    /// Bumped on every invalidation received and every flush. A reader notes
    /// it before going to Redis and only fills L1 if it is unchanged, so a
    /// value read before an invalidation cannot land in L1 after it.
    epoch: AtomicU64,
    /// False while the invalidation channel is not subscribed: L1 is then
    /// neither read nor filled, since messages could be missed.
    live: AtomicBool,
}

impl L1 {
    pub fn new(max_entries: u64, ttl_ms: u64) -> L1 {
        let max = usize::try_from(max_entries.max(1)).unwrap_or(usize::MAX);
        L1 {
            map: quick_cache::sync::Cache::new(max),
            ttl_ms: ttl_ms.max(1),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    /// The entry for `key` if L1 is live and the entry has not expired at
    /// `now_ms`. An expired entry is removed on the way.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Item> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let item = self.map.get(key)?;
        if item.0.expires_ms <= now_ms {
            self.map.remove_if(key, |i| Arc::ptr_eq(&i.0, &item.0));
            return None;
        }
        Some(item)
    }

    /// Stores a value read or loaded while the epoch was `epoch`. It expires
    /// at `expires_ms` (the entry's logical expiry in Redis) or after the L1
    /// TTL, whichever comes first. Nothing is stored when an invalidation or
    /// flush happened since `epoch`, or when L1 is not live.
    pub fn put(
        &self,
        key: &str,
        epoch: u64,
        value: Value,
        expires_ms: u64,
        now_ms: u64,
        tags: Option<&[String]>,
    ) {
        if !self.live.load(Ordering::Acquire) || self.epoch() != epoch {
            return;
        }
        let expires_ms = expires_ms.min(now_ms.saturating_add(self.ttl_ms));
        if expires_ms <= now_ms {
            return;
        }
        let item = Item(Arc::new(ItemInner {
            value,
            expires_ms,
            tags: tags.map(Arc::from).unwrap_or_else(|| Arc::from(Vec::new())),
        }));
        let mine = item.0.clone();
        self.map.insert(key.to_owned(), item);
        // An invalidation that raced with the insert may have run before it
        // landed: take ours out again.
        if self.epoch() != epoch {
            self.map.remove_if(key, |i| Arc::ptr_eq(&i.0, &mine));
        }
    }

    pub fn forget(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.remove(key);
    }

    /// Drops every entry tagged `tag`, and every entry whose tags are unknown
    /// (read by plain `get`), conservatively.
    pub fn forget_tag(&self, tag: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map
            .retain(|_, item| !(item.0.tags.is_empty() || item.0.tags.iter().any(|t| t == tag)));
    }

    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.clear();
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(max: u64, ttl_ms: u64) -> L1 {
        let l1 = L1::new(max, ttl_ms);
        l1.set_live(true);
        l1
    }

    fn val(n: i64) -> Value {
        Arc::new(n)
    }

    fn get_i64(l1: &L1, key: &str, now: u64) -> Option<i64> {
        l1.get(key, now)
            .and_then(|i| i.value().downcast_ref::<i64>().copied())
    }

    #[test]
    fn an_entry_expires_with_its_redis_expiry_not_only_the_l1_ttl() {
        // An entry must not outlive its value in Redis, however long the
        // L1 TTL (30 s by default).
        let l1 = live(100, 30_000);
        l1.put("k", l1.epoch(), val(1), 1_500, 1_000, None);
        assert_eq!(get_i64(&l1, "k", 1_499), Some(1));
        assert_eq!(get_i64(&l1, "k", 1_500), None);
        assert_eq!(l1.len(), 0, "expired entry removed on read");
    }

    #[test]
    fn the_l1_ttl_caps_a_longer_redis_expiry() {
        let l1 = live(100, 200);
        l1.put("k", l1.epoch(), val(1), 1_000_000, 1_000, None);
        assert_eq!(get_i64(&l1, "k", 1_199), Some(1));
        assert_eq!(get_i64(&l1, "k", 1_200), None);
    }

    #[test]
    fn a_value_read_before_an_invalidation_is_not_stored() {
        let l1 = live(100, 30_000);
        let epoch = l1.epoch();
        l1.forget("k");
        l1.put("k", epoch, val(1), 10_000, 1_000, None);
        assert_eq!(get_i64(&l1, "k", 1_001), None);
    }

    #[test]
    fn nothing_is_read_or_stored_while_not_live() {
        let l1 = L1::new(100, 30_000);
        l1.put("k", l1.epoch(), val(1), 10_000, 1_000, None);
        assert_eq!(l1.len(), 0);
        l1.set_live(true);
        l1.put("k", l1.epoch(), val(1), 10_000, 1_000, None);
        l1.set_live(false);
        assert_eq!(get_i64(&l1, "k", 1_001), None);
    }

    #[test]
    fn tag_invalidation_drops_tagged_and_untagged_entries_only() {
        let l1 = live(100, 30_000);
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = l1.epoch();
        l1.put("a", e, val(1), 10_000, 1_000, Some(&tags(&["team:1"])));
        l1.put("b", e, val(2), 10_000, 1_000, Some(&tags(&["team:2", "x"])));
        l1.put("c", e, val(3), 10_000, 1_000, None);
        l1.forget_tag("team:1");
        assert_eq!(get_i64(&l1, "a", 1_001), None);
        assert_eq!(get_i64(&l1, "b", 1_001), Some(2));
        assert_eq!(get_i64(&l1, "c", 1_001), None, "unknown tags: dropped");
    }

    #[test]
    fn the_entry_count_stays_bounded() {
        let l1 = live(1_000, 30_000);
        for i in 0..10_000 {
            l1.put(&format!("k{i}"), l1.epoch(), val(i), 10_000, 1_000, None);
        }
        assert!(l1.len() <= 1_100, "len {}", l1.len());
        l1.flush();
        assert_eq!(l1.len(), 0);
    }
}
