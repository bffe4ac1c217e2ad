//! The shard map: which shard owns each bucket, in immutable versions.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::scheme::{self, Scheme, BUCKETS};

/// The most shards a map may name (one per bucket).
pub const MAX_SHARDS: usize = BUCKETS as usize;

/// An inclusive range of buckets, written `first-last` (or `n` for one bucket)
/// in `dbtool.toml` and in `dbtool shard map` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketRange {
    /// The first bucket in the range.
    pub first: u16,
    /// The last bucket in the range (inclusive).
    pub last: u16,
}

impl BucketRange {
    /// `first..=last`.
    ///
    /// # Errors
    /// [`Error::InvalidMap`] when `first > last` or `last >= 4096`.
    pub fn new(first: u16, last: u16) -> Result<BucketRange, Error> {
        if first > last || last >= BUCKETS {
            return Err(Error::InvalidMap(format!(
                "bucket range {first}-{last} is not within 0-{} (first <= last)",
                BUCKETS - 1
            )));
        }
        Ok(BucketRange { first, last })
    }

    /// How many buckets the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never true: a range holds at least one bucket. (Here for clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `bucket` is in the range.
    pub fn contains(&self, bucket: u16) -> bool {
        (self.first..=self.last).contains(&bucket)
    }
}

impl fmt::Display for BucketRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for BucketRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |n: &str| {
            n.trim().parse::<u16>().map_err(|_| {
                Error::InvalidMap(format!(
                    "bucket range {s:?} is not `first-last` or `n` with buckets 0-{}",
                    BUCKETS - 1
                ))
            })
        };
        match s.split_once('-') {
            Some((a, b)) => BucketRange::new(parse(a)?, parse(b)?),
            None => {
                let n = parse(s)?;
                BucketRange::new(n, n)
            }
        }
    }
}

impl Serialize for BucketRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BucketRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One version of the shard map: the scheme, the shards in order, and (for
/// [`Scheme::Buckets`]) the owner of every bucket.
///
/// A map is valid by construction: every bucket belongs to exactly one of its
/// shards, names are unique. It is immutable; a change is a new map with a
/// higher [`version`](ShardMap::version).
#[derive(Clone, PartialEq, Eq)]
pub struct ShardMap {
    version: u64,
    scheme: Scheme,
    shards: Vec<String>,
    /// Bucket -> index into `shards`; `BUCKETS` long for buckets, empty for
    /// hex8-modulo. A flat table so routing is one load, not a range search.
    owner: Box<[u16]>,
}

impl fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardMap")
            .field("version", &self.version)
            .field("scheme", &self.scheme)
            .field("ranges", &self.ranges())
            .field("shards", &self.shards)
            .finish()
    }
}

impl ShardMap {
    /// Version 1 of a map splitting the 4096 buckets evenly over `shards` in
    /// order (shard i owns `i*4096/n ..= (i+1)*4096/n - 1`), or, for
    /// [`Scheme::Hex8Modulo`], the `n` shards of the modulo.
    ///
    /// # Errors
    /// [`Error::InvalidMap`] for no shards, duplicate or unusable names.
    pub fn even(scheme: Scheme, shards: Vec<String>) -> Result<ShardMap, Error> {
        check_names(&shards)?;
        let n = shards.len();
        let owner = match scheme {
            Scheme::Hex8Modulo => Box::default(),
            Scheme::Buckets => (0..usize::from(BUCKETS))
                .map(|b| (b * n / usize::from(BUCKETS)) as u16)
                .collect(),
        };
        Ok(ShardMap {
            version: 1,
            scheme,
            shards,
            owner,
        })
    }

    /// Version 1 of an even map over `n` shards named `shard-0` .. `shard-{n-1}`.
    ///
    /// # Errors
    /// [`Error::InvalidMap`] when `n` is 0 or over 4096.
    pub fn even_n(scheme: Scheme, n: usize) -> Result<ShardMap, Error> {
        ShardMap::even(scheme, (0..n).map(|i| format!("shard-{i}")).collect())
    }

    /// Version 1 of a [`Scheme::Buckets`] map from explicit ranges. `shards`
    /// gives the order (a shard may own no bucket yet: that is how a new shard
    /// is staged); every bucket must be in exactly one range.
    ///
    /// # Errors
    /// [`Error::InvalidMap`] naming the first uncovered or doubly covered
    /// bucket, or a range whose shard is not in `shards`.
    pub fn from_ranges<'a>(
        shards: Vec<String>,
        ranges: impl IntoIterator<Item = (&'a str, BucketRange)>,
    ) -> Result<ShardMap, Error> {
        check_names(&shards)?;
        const FREE: u16 = u16::MAX;
        let mut owner = vec![FREE; usize::from(BUCKETS)].into_boxed_slice();
        for (shard, range) in ranges {
            let index = shards.iter().position(|s| s == shard).ok_or_else(|| {
                Error::InvalidMap(format!(
                    "range {range} belongs to shard {shard:?}, which is not in the map's shards {shards:?}"
                ))
            })? as u16;
            for b in range.first..=range.last {
                let slot = &mut owner[usize::from(b)];
                if *slot != FREE {
                    return Err(Error::InvalidMap(format!(
                        "bucket {b} is in two ranges (shards {:?} and {shard:?}): each bucket needs exactly one shard",
                        shards[usize::from(*slot)]
                    )));
                }
                *slot = index;
            }
        }
        if let Some(b) = owner.iter().position(|&o| o == FREE) {
            let end = owner[b..]
                .iter()
                .position(|&o| o != FREE)
                .map_or(owner.len(), |e| b + e);
            return Err(Error::InvalidMap(format!(
                "buckets {} are in no range: each bucket 0-{} needs exactly one shard",
                BucketRange {
                    first: b as u16,
                    last: (end - 1) as u16
                },
                BUCKETS - 1
            )));
        }
        Ok(ShardMap {
            version: 1,
            scheme: Scheme::Buckets,
            shards,
            owner,
        })
    }

    /// The same map with another version number.
    ///
    /// # Errors
    /// [`Error::InvalidMap`] for version 0 (versions start at 1).
    pub fn with_version(mut self, version: u64) -> Result<ShardMap, Error> {
        if version == 0 {
            return Err(Error::InvalidMap("map versions start at 1".into()));
        }
        self.version = version;
        Ok(self)
    }

    /// The version: higher is newer.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The routing scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The shards, in map order (hex8-modulo index i is `shards()[i]`).
    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// The index in [`shards`](ShardMap::shards) of the team's shard.
    ///
    /// # Errors
    /// [`Error::Unroutable`] for an id the scheme cannot route.
    #[inline]
    pub fn shard_index(&self, team_id: &str) -> Result<usize, Error> {
        match self.scheme {
            Scheme::Buckets => Ok(usize::from(
                self.owner[usize::from(scheme::bucket_of(team_id)?)],
            )),
            Scheme::Hex8Modulo => {
                Ok(scheme::hex8_modulo(team_id, self.shards.len() as u32)? as usize)
            }
        }
    }

    /// The name of the team's shard.
    ///
    /// # Errors
    /// [`Error::Unroutable`] for an id the scheme cannot route.
    pub fn shard_of(&self, team_id: &str) -> Result<&str, Error> {
        Ok(&self.shards[self.shard_index(team_id)?])
    }

    /// The shard that owns `bucket` (`None` for hex8-modulo maps or a bucket
    /// over 4095).
    pub fn owner_of_bucket(&self, bucket: u16) -> Option<&str> {
        self.owner
            .get(usize::from(bucket))
            .map(|&i| self.shards[usize::from(i)].as_str())
    }

    /// The bucket ranges in bucket order, each with its shard (empty for
    /// hex8-modulo maps).
    pub fn ranges(&self) -> Vec<(&str, BucketRange)> {
        let mut out: Vec<(&str, BucketRange)> = Vec::new();
        for (b, &o) in self.owner.iter().enumerate() {
            let shard = self.shards[usize::from(o)].as_str();
            match out.last_mut() {
                Some((s, r)) if *s == shard && usize::from(r.last) + 1 == b => r.last = b as u16,
                _ => out.push((
                    shard,
                    BucketRange {
                        first: b as u16,
                        last: b as u16,
                    },
                )),
            }
        }
        out
    }

    /// The bucket ranges of one shard, in order.
    pub fn ranges_of(&self, shard: &str) -> Vec<BucketRange> {
        self.ranges()
            .into_iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, r)| r)
            .collect()
    }

    /// How many buckets `shard` owns.
    pub fn bucket_count(&self, shard: &str) -> usize {
        match self.shards.iter().position(|s| s == shard) {
            Some(i) => self.owner.iter().filter(|&&o| usize::from(o) == i).count(),
            None => 0,
        }
    }

    /// True when both maps send every team to the same shard name
    /// (versions aside).
    pub fn routes_like(&self, other: &ShardMap) -> bool {
        if self.scheme != other.scheme {
            return false;
        }
        match self.scheme {
            Scheme::Hex8Modulo => self.shards == other.shards,
            Scheme::Buckets => {
                (0..BUCKETS).all(|b| self.owner_of_bucket(b) == other.owner_of_bucket(b))
            }
        }
    }

    /// The buckets whose shard differs between `self` and `next`, as
    /// `(bucket range, from shard, to shard)`. For bucket maps only (a scheme
    /// change moves nearly everything and has no bucket diff): empty otherwise.
    pub fn moves_to<'a>(&'a self, next: &'a ShardMap) -> Vec<(BucketRange, &'a str, &'a str)> {
        let mut out: Vec<(BucketRange, &str, &str)> = Vec::new();
        if self.scheme != Scheme::Buckets || next.scheme != Scheme::Buckets {
            return out;
        }
        for b in 0..BUCKETS {
            let (from, to) = (
                self.owner_of_bucket(b).unwrap_or(""),
                next.owner_of_bucket(b).unwrap_or(""),
            );
            if from == to {
                continue;
            }
            match out.last_mut() {
                Some((r, f, t)) if *f == from && *t == to && r.last + 1 == b => r.last = b,
                _ => out.push((BucketRange { first: b, last: b }, from, to)),
            }
        }
        out
    }

    /// The next version of this bucket map with shard `name` added and given
    /// `4096 / (n+1)` buckets, taken one at a time from whichever shard owns
    /// the most (its highest-numbered bucket), so about `1/(n+1)` of the teams
    /// move and the shards stay even. `name` may already be in the map
    /// owning no buckets (a staged shard); `n` counts the shards owning some.
    ///
    /// # Errors
    /// [`Error::InvalidMap`] for a hex8-modulo map (adding a shard there moves
    /// almost every team: not a map change) or a name that owns buckets.
    pub fn with_shard_added(&self, name: &str) -> Result<ShardMap, Error> {
        if self.scheme != Scheme::Buckets {
            return Err(Error::InvalidMap(
                "a shard can only be added to a buckets map: with hex8-modulo, N -> N+1 moves almost every team"
                    .into(),
            ));
        }
        let mut shards = self.shards.clone();
        // A shard already listed but owning nothing (staged) gets its share too.
        let new = match shards.iter().position(|s| s == name) {
            Some(i) if self.bucket_count(name) == 0 => i as u16,
            Some(_) => {
                return Err(Error::InvalidMap(format!(
                    "shard {name:?} already owns {} buckets",
                    self.bucket_count(name)
                )))
            }
            None => {
                shards.push(name.to_string());
                check_names(&shards)?;
                (shards.len() - 1) as u16
            }
        };
        let mut owned: Vec<Vec<u16>> = vec![Vec::new(); self.shards.len()];
        for (b, &o) in self.owner.iter().enumerate() {
            owned[usize::from(o)].push(b as u16);
        }
        let owning = owned.iter().filter(|o| !o.is_empty()).count();
        let mut owner = self.owner.clone();
        for _ in 0..usize::from(BUCKETS) / (owning + 1) {
            let richest = (0..owned.len())
                .max_by_key(|&i| (owned[i].len(), std::cmp::Reverse(i)))
                .expect("at least one shard");
            let b = owned[richest]
                .pop()
                .expect("the richest shard owns a bucket");
            owner[usize::from(b)] = new;
        }
        Ok(ShardMap {
            version: self.version + 1,
            scheme: Scheme::Buckets,
            shards,
            owner,
        })
    }
}

/// Shard names: 1..=4096 of them, unique, 1-63 characters of `[A-Za-z0-9_.-]`
/// (they appear in metric labels, log lines and `TEAM_ID SHARD` output).
fn check_names(shards: &[String]) -> Result<(), Error> {
    if shards.is_empty() || shards.len() > MAX_SHARDS {
        return Err(Error::InvalidMap(format!(
            "a map needs 1 to {MAX_SHARDS} shards, not {}",
            shards.len()
        )));
    }
    let mut seen = HashSet::new();
    for s in shards {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
        if !ok {
            return Err(Error::InvalidMap(format!(
                "shard name {s:?} is not 1-63 characters of letters, digits, '_', '.', '-'"
            )));
        }
        if !seen.insert(s.as_str()) {
            return Err(Error::InvalidMap(format!("shard {s:?} is named twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn even_map_of_four_gives_each_shard_1024_contiguous_buckets() {
        let m = ShardMap::even(Scheme::Buckets, names(4)).unwrap();
        let r = m.ranges();
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[0],
            (
                "s0",
                BucketRange {
                    first: 0,
                    last: 1023
                }
            )
        );
        assert_eq!(
            r[3],
            (
                "s3",
                BucketRange {
                    first: 3072,
                    last: 4095
                }
            )
        );
        assert_eq!(m.version(), 1);
    }

    #[test]
    fn even_map_of_three_covers_every_bucket_once() {
        let m = ShardMap::even(Scheme::Buckets, names(3)).unwrap();
        let total: usize = (0..3).map(|i| m.bucket_count(&format!("s{i}"))).sum();
        assert_eq!(total, 4096);
        let rebuilt = ShardMap::from_ranges(m.shards().to_vec(), m.ranges()).unwrap();
        assert!(rebuilt.routes_like(&m));
    }

    #[test]
    fn from_ranges_names_the_uncovered_buckets() {
        let err = ShardMap::from_ranges(
            names(2),
            [
                ("s0", "0-2000".parse().unwrap()),
                ("s1", "2010-4095".parse().unwrap()),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid shard map: buckets 2001-2009 are in no range: each bucket 0-4095 needs exactly one shard"
        );
    }

    #[test]
    fn from_ranges_names_a_doubly_covered_bucket() {
        let err = ShardMap::from_ranges(
            names(2),
            [
                ("s0", "0-2048".parse().unwrap()),
                ("s1", "2048-4095".parse().unwrap()),
            ],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("bucket 2048 is in two ranges"),
            "{err}"
        );
    }

    #[test]
    fn from_ranges_rejects_a_range_of_an_unlisted_shard() {
        let err = ShardMap::from_ranges(names(1), [("s9", "0-4095".parse().unwrap())]).unwrap_err();
        assert!(err.to_string().contains("\"s9\""), "{err}");
    }

    #[test]
    fn bucket_ranges_parse_and_print() {
        assert_eq!(
            "7".parse::<BucketRange>().unwrap(),
            BucketRange { first: 7, last: 7 }
        );
        assert_eq!("0-4095".parse::<BucketRange>().unwrap().len(), 4096);
        assert!("5-4".parse::<BucketRange>().is_err());
        assert!("0-4096".parse::<BucketRange>().is_err());
        assert!("x".parse::<BucketRange>().is_err());
        assert_eq!(BucketRange { first: 3, last: 9 }.to_string(), "3-9");
    }

    #[test]
    fn bad_shard_names_are_rejected() {
        for bad in [
            vec![],
            vec!["".to_string()],
            vec!["a b".to_string()],
            vec!["a".into(), "a".into()],
        ] {
            assert!(ShardMap::even(Scheme::Buckets, bad).is_err());
        }
    }

    #[test]
    fn adding_a_fifth_shard_moves_a_fifth_of_the_buckets_and_keeps_shards_even() {
        let four = ShardMap::even(Scheme::Buckets, names(4)).unwrap();
        let five = four.with_shard_added("s4").unwrap();
        assert_eq!(five.version(), 2);
        let moved: usize = four
            .moves_to(&five)
            .iter()
            .map(|(r, _, to)| {
                assert_eq!(*to, "s4");
                r.len()
            })
            .sum();
        assert_eq!(moved, 4096 / 5);
        for i in 0..5 {
            let c = five.bucket_count(&format!("s{i}"));
            assert!((819..=820).contains(&c), "s{i} has {c}");
        }
    }

    #[test]
    fn hex8_modulo_map_routes_by_index() {
        let m = ShardMap::even(Scheme::Hex8Modulo, names(3)).unwrap();
        assert_eq!(m.shard_of("00000005-aaaa").unwrap(), "s2");
        assert!(m.ranges().is_empty());
        assert!(m.with_shard_added("s3").is_err());
    }

    #[test]
    fn a_staged_shard_gets_the_same_share_as_a_new_one() {
        let four = ShardMap::even(Scheme::Buckets, names(4)).unwrap();
        let added = four.with_shard_added("s4").unwrap();
        let ranges: Vec<(String, BucketRange)> = four
            .ranges()
            .into_iter()
            .map(|(s, r)| (s.to_string(), r))
            .collect();
        let staged =
            ShardMap::from_ranges(names(5), ranges.iter().map(|(s, r)| (s.as_str(), *r))).unwrap();
        let grown = staged.with_shard_added("s4").unwrap();
        assert!(grown.routes_like(&added));
        assert_eq!(grown.bucket_count("s4"), 819);
        let err = grown.with_shard_added("s4").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid shard map: shard \"s4\" already owns 819 buckets"
        );
    }
}
