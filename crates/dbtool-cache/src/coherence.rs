//! What keeps the cache from serving a value older than an invalidation:
//! the freshness a load must reach, the tag versions that carry it, and the
//! invalidations that have not reached Redis yet.
//!
//! The rule (see docs/cache.md, "Coherence"): a read that begins after an
//! invalidation (`delete`, `invalidate_tag`) has returned never gets a value
//! older than the write that invalidation followed. Three mechanisms:
//!
//! - **Fill leases** (`entry.rs`): a fill stores its value only if the key
//!   still holds the generation its loader started from; `delete` replaces
//!   it with a marker of a new generation, so an older load cannot land
//!   after it (memcache's leases, "Scaling Memcache at Facebook", NSDI 2013).
//! - **Markers and watermarks** ([`Freshness`]): the marker left by `delete`
//!   (and the note `invalidate_tag` writes into the tag's version) tells a
//!   load that starts from it to read data at least as new as the write:
//!   at or past a watermark (a WAL position) when the invalidation carried
//!   one, else from the primary (memcache's remote markers for replica lag).
//! - **Pending invalidations** ([`Pending`]): a `delete` or tag invalidation
//!   that could not reach Redis is kept and retried in the background until
//!   it lands; until then this process treats the key (or every entry with
//!   the tag) as a miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a loader must read for its value to be at least as new as every
/// invalidation the cache knows of, handed to the loader of
/// [`Cache::get_or_load_fresh`](crate::Cache::get_or_load_fresh).
///
/// ```
/// use dbtool_cache::Freshness;
/// // How a loader over dbtool-pool's RwPool picks its connection:
/// fn pick(f: Freshness) -> &'static str {
///     match f {
///         Freshness::Any => "pool.read()",
///         Freshness::AtLeast(_lsn) => "pool.read_after(&Token::from_lsn(lsn))",
///         _ => "pool.write() (the primary)",
///     }
/// }
/// assert_eq!(pick(Freshness::AtLeast(7)), "pool.read_after(&Token::from_lsn(lsn))");
/// assert!(Freshness::Primary.needs_primary() && Freshness::Unknown.needs_primary());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// No invalidation of the key or its tags is recent: any replica will do.
    Any,
    /// The key or one of its tags was invalidated with this watermark
    /// ([`Cache::delete_after`](crate::Cache::delete_after)): read data that
    /// includes it (for dbtool-pool, `read_after(&Token::from_lsn(lsn))`).
    AtLeast(u64),
    /// The key or one of its tags was invalidated within `marker_ms` without
    /// a watermark: read from the primary.
    Primary,
    /// Redis could not be asked (error, timeout, open breaker), so the cache
    /// cannot tell: read from the primary for the guarantee, or from a
    /// replica to spare the primary during a Redis outage (the value is not
    /// cached either way). A load of a key whose invalidation has not
    /// reached Redis yet gets what that invalidation asks (`Primary` or
    /// `AtLeast`).
    Unknown,
}

impl Freshness {
    /// True for [`Primary`](Self::Primary) and [`Unknown`](Self::Unknown).
    pub fn needs_primary(self) -> bool {
        matches!(self, Freshness::Primary | Freshness::Unknown)
    }

    /// The watermark of [`AtLeast`](Self::AtLeast).
    pub fn watermark(self) -> Option<u64> {
        match self {
            Freshness::AtLeast(w) => Some(w),
            _ => None,
        }
    }

    /// The stricter of two requirements.
    pub(crate) fn and(self, other: Freshness) -> Freshness {
        use Freshness::*;
        match (self, other) {
            (Primary, _) | (_, Primary) => Primary,
            (Unknown, _) | (_, Unknown) => Unknown,
            (AtLeast(a), AtLeast(b)) => AtLeast(a.max(b)),
            (AtLeast(a), Any) | (Any, AtLeast(a)) => AtLeast(a),
            (Any, Any) => Any,
        }
    }

    /// What an invalidation with this watermark asks of later loads.
    pub(crate) fn of_watermark(watermark: Option<u64>) -> Freshness {
        watermark.map_or(Freshness::Primary, Freshness::AtLeast)
    }
}

/// A tag's version key as stored: `<version>` when created by a first
/// reader, `<version> <invalidated unix ms> <watermark or ->` when written
/// by `invalidate_tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagState {
    pub version: u64,
    pub invalidated_ms: u64,
    pub watermark: Option<u64>,
}

impl TagState {
    pub fn parse(s: &str) -> Option<TagState> {
        let mut it = s.split(' ');
        let version = it.next()?.parse().ok()?;
        let invalidated_ms = it.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        let watermark = it.next().and_then(|t| t.parse().ok());
        Some(TagState {
            version,
            invalidated_ms,
            watermark,
        })
    }

    pub fn encode(version: u64, invalidated_ms: u64, watermark: Option<u64>) -> String {
        match watermark {
            Some(w) => format!("{version} {invalidated_ms} {w}"),
            None => format!("{version} {invalidated_ms} -"),
        }
    }

    /// What a load of an entry with this tag must read. A watermark holds
    /// as long as this version is current (waiting for it is cheap once
    /// replicas pass it); "read the primary" only within `marker_ms` of the
    /// invalidation, by the clock of the reader (clock skew between
    /// processes widens or narrows that window by the skew).
    pub fn freshness(&self, now_ms: u64, marker_ms: u64) -> Freshness {
        match self.watermark {
            Some(w) => Freshness::AtLeast(w),
            None if self.invalidated_ms > 0
                && now_ms < self.invalidated_ms.saturating_add(marker_ms) =>
            {
                Freshness::Primary
            }
            None => Freshness::Any,
        }
    }
}

/// One invalidation that did not reach Redis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Inval {
    Key(String),
    Tag(String),
}

/// Invalidations not yet in Redis, with the watermark each carries
/// (`None`: read the primary). The count keeps the read path at one
/// relaxed load while nothing is pending.
#[derive(Default)]
pub(crate) struct Pending {
    count: AtomicUsize,
    map: Mutex<HashMap<Inval, Option<u64>>>,
}

impl Pending {
    pub fn add(&self, what: Inval, watermark: Option<u64>) {
        let mut map = self.map.lock().expect("pending lock");
        let merged = match map.get(&what) {
            Some(old) => match (old, watermark) {
                (Some(a), Some(b)) => Some((*a).max(b)),
                _ => None,
            },
            None => watermark,
        };
        map.insert(what, merged);
        self.count.store(map.len(), Ordering::Release);
    }

    /// Removes `what` if it still carries `watermark` (a newer failed
    /// invalidation of the same key stays).
    pub fn remove(&self, what: &Inval, watermark: Option<u64>) {
        let mut map = self.map.lock().expect("pending lock");
        if map.get(what) == Some(&watermark) {
            map.remove(what);
        }
        self.count.store(map.len(), Ordering::Release);
    }

    /// Removes `what` whatever it carries (a later invalidation landed).
    pub fn clear(&self, what: &Inval) {
        if self.is_empty() {
            return;
        }
        let mut map = self.map.lock().expect("pending lock");
        map.remove(what);
        self.count.store(map.len(), Ordering::Release);
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The freshness a load of `key` with these tags must reach because of
    /// pending invalidations, if any concern it.
    pub fn concerns<'a>(
        &self,
        key: &str,
        tags: impl Iterator<Item = &'a str>,
    ) -> Option<Freshness> {
        if self.is_empty() {
            return None;
        }
        let map = self.map.lock().expect("pending lock");
        let mut out: Option<Freshness> = None;
        let mut add = |w: &Option<u64>| {
            let f = Freshness::of_watermark(*w);
            out = Some(out.map_or(f, |o| o.and(f)));
        };
        if let Some(w) = map.get(&Inval::Key(key.to_owned())) {
            add(w);
        }
        for t in tags {
            if let Some(w) = map.get(&Inval::Tag(t.to_owned())) {
                add(w);
            }
        }
        out
    }

    pub fn snapshot(&self) -> Vec<(Inval, Option<u64>)> {
        if self.is_empty() {
            return Vec::new();
        }
        let map = self.map.lock().expect("pending lock");
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stricter_requirement_wins() {
        use Freshness::*;
        assert_eq!(Any.and(AtLeast(5)), AtLeast(5));
        assert_eq!(AtLeast(9).and(AtLeast(5)), AtLeast(9));
        assert_eq!(AtLeast(9).and(Primary), Primary);
        assert_eq!(Unknown.and(AtLeast(1)), Unknown);
        assert_eq!(Unknown.and(Primary), Primary);
        assert_eq!(Any.and(Any), Any);
    }

    #[test]
    fn tag_states_parse_old_and_new_forms() {
        assert_eq!(
            TagState::parse("42"),
            Some(TagState {
                version: 42,
                invalidated_ms: 0,
                watermark: None
            })
        );
        let s = TagState::parse(&TagState::encode(7, 1_000, Some(99))).unwrap();
        assert_eq!(s.freshness(1_000_000, 10), Freshness::AtLeast(99));
        let s = TagState::parse(&TagState::encode(7, 1_000, None)).unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.freshness(1_500, 1_000), Freshness::Primary);
        assert_eq!(s.freshness(2_000, 1_000), Freshness::Any);
        assert_eq!(TagState::parse("x"), None);
    }

    #[test]
    fn pending_invalidations_concern_their_key_and_tags_only() {
        let p = Pending::default();
        assert_eq!(p.concerns("a", ["t"].into_iter()), None);
        p.add(Inval::Key("a".into()), Some(5));
        p.add(Inval::Tag("t".into()), None);
        assert_eq!(
            p.concerns("a", std::iter::empty()),
            Some(Freshness::AtLeast(5))
        );
        assert_eq!(p.concerns("b", ["t"].into_iter()), Some(Freshness::Primary));
        assert_eq!(p.concerns("b", ["u"].into_iter()), None);
        // A newer failure with another watermark is not removed by the old one.
        p.add(Inval::Key("a".into()), Some(8));
        p.remove(&Inval::Key("a".into()), Some(5));
        assert_eq!(p.len(), 2);
        p.remove(&Inval::Key("a".into()), Some(8));
        p.clear(&Inval::Tag("t".into()));
        assert!(p.is_empty());
    }
}
