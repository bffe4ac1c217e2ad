//! The `[shard]` table of `dbtool.toml`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::map::{BucketRange, ShardMap};
use crate::scheme::Scheme;

/// Settings for this crate, the `[shard]` table of `dbtool.toml`:
///
/// ```toml
/// [shard]
/// scheme = "buckets"          # or "hex8-modulo" (default "buckets")
/// # catalog = "postgres://dbtool@catalog/app"  # where published map versions live;
/// #                                            # when set, its newest version wins over [shard.map]
/// refresh_secs = 10           # poll the catalog for a new map version (0: never; default 10)
/// listen = true               # also LISTEN for new versions (default true)
/// fanout_concurrency = 8      # shards queried at once by Router::all (default 8)
/// fanout_timeout_secs = 30    # per-shard time limit in Router::all (default 30)
/// hot_teams = 64              # teams tracked by the hot-team counter (default 64)
///
/// [[shard.shards]]
/// name = "shard-0"
/// primary = "postgres://app@pg0/app"
/// replicas = ["postgres://app@pg0r/app"]
///
/// [[shard.shards]]
/// name = "shard-1"
/// primary = "postgres://app@pg1/app"
///
/// [shard.map]
/// version = 1                 # default 1
/// # Either nothing (an even split over [[shard.shards]]), `even = N` (shards
/// # shard-0..shard-N-1, for a map without pools), or explicit ranges:
/// buckets = { "shard-0" = ["0-2047"], "shard-1" = ["2048-4095"] }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The routing scheme.
    pub scheme: Scheme,
    /// URL of the Postgres database holding the versioned map (`dbtool`
    /// schema). `None`: the map is `[shard.map]`, fixed for the process.
    pub catalog: Option<String>,
    /// Seconds between polls of the catalog for a newer version; 0 disables.
    pub refresh_secs: u64,
    /// LISTEN on the catalog for new versions (immediate pick-up).
    pub listen: bool,
    /// Shards queried at once by [`Router::all`](crate::Router::all).
    pub fanout_concurrency: usize,
    /// Per-shard time limit, in seconds, for [`Router::all`](crate::Router::all).
    pub fanout_timeout_secs: u64,
    /// How many teams the hot-team counter tracks (memory is bounded by this).
    pub hot_teams: usize,
    /// The shards and their servers.
    pub shards: Vec<ShardConfig>,
    /// The map, when not read from the catalog.
    pub map: MapConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheme: Scheme::Buckets,
            catalog: None,
            refresh_secs: 10,
            listen: true,
            fanout_concurrency: 8,
            fanout_timeout_secs: 30,
            hot_teams: 64,
            shards: Vec::new(),
            map: MapConfig::default(),
        }
    }
}

/// One shard: a name and its servers (`[[shard.shards]]`). Pool tuning
/// (timeouts, sizes, lag limits) comes from the `[pool]` table, the same for
/// every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// The shard's name, as used in the map.
    pub name: String,
    /// URL of the shard's primary.
    pub primary: String,
    /// URLs of the shard's replicas.
    pub replicas: Vec<String>,
}

/// The map in `dbtool.toml` (`[shard.map]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    /// The map's version.
    pub version: u64,
    /// An even map over `shard-0` .. `shard-{even-1}`, when no shards are listed.
    pub even: Option<usize>,
    /// Explicit bucket ranges per shard name (buckets scheme only).
    pub buckets: BTreeMap<String, Vec<BucketRange>>,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            version: 1,
            even: None,
            buckets: BTreeMap::new(),
        }
    }
}

impl Config {
    /// The map this configuration describes (`[shard.map]` over
    /// `[[shard.shards]]`), without looking at the catalog.
    ///
    /// # Errors
    /// [`Error::Config`] when it names no shards, or `even` disagrees with the
    /// listed shards; [`Error::InvalidMap`] for bad ranges.
    pub fn map(&self) -> Result<ShardMap, Error> {
        let listed: Vec<String> = self.shards.iter().map(|s| s.name.clone()).collect();
        let names = match (self.map.even, listed.is_empty()) {
            (Some(n), true) => (0..n).map(|i| format!("shard-{i}")).collect(),
            (Some(n), false) if n != listed.len() => {
                return Err(Error::Config(format!(
                    "[shard.map] even = {n} but {} shards are listed in [[shard.shards]]: drop `even` or make them agree",
                    listed.len()
                )))
            }
            (None, true) if self.map.buckets.is_empty() => {
                return Err(Error::Config(
                    "no shards: list them in [[shard.shards]] or set [shard.map] even = N".into(),
                ))
            }
            (None, true) => self.map.buckets.keys().cloned().collect(),
            (_, false) => listed,
        };
        let map = if self.map.buckets.is_empty() {
            ShardMap::even(self.scheme, names)?
        } else {
            if self.scheme != Scheme::Buckets {
                return Err(Error::Config(format!(
                    "[shard.map] buckets given for the {} scheme, which has no buckets: remove them",
                    self.scheme
                )));
            }
            ShardMap::from_ranges(
                names,
                self.map
                    .buckets
                    .iter()
                    .flat_map(|(s, rs)| rs.iter().map(move |r| (s.as_str(), *r))),
            )?
        };
        map.with_version(self.map.version)
    }

    /// The parsed `catalog` URL, if set.
    ///
    /// # Errors
    /// [`Error::Config`] when it does not parse (the message masks the password).
    pub fn catalog_config(&self) -> Result<Option<dbtool_pool::Target>, Error> {
        self.catalog
            .as_deref()
            .map(|url| {
                url.parse().map_err(|e| {
                    Error::Config(format!(
                        "[shard] catalog {} is not a Postgres URL: {e}",
                        dbtool_pool::mask_password(url)
                    ))
                })
            })
            .transpose()
    }

    /// The `[shard]` settings to write for `map` (scheme and `[shard.map]`),
    /// for `dbtool shard map --toml`.
    pub fn for_map(map: &ShardMap) -> Config {
        let mut buckets: BTreeMap<String, Vec<BucketRange>> = BTreeMap::new();
        for (shard, range) in map.ranges() {
            buckets.entry(shard.to_string()).or_default().push(range);
        }
        Config {
            scheme: map.scheme(),
            shards: map
                .shards()
                .iter()
                .map(|name| ShardConfig {
                    name: name.clone(),
                    ..ShardConfig::default()
                })
                .collect(),
            map: MapConfig {
                version: map.version(),
                even: None,
                buckets,
            },
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_table_with_explicit_ranges_loads_into_a_valid_map() {
        let c: Config = toml::from_str(
            r#"
            scheme = "buckets"
            [[shards]]
            name = "a"
            primary = "postgres://localhost/a"
            [[shards]]
            name = "b"
            primary = "postgres://localhost/b"
            replicas = ["postgres://localhost:5433/b"]
            [map]
            version = 7
            buckets = { a = ["0-99", "200-4095"], b = ["100-199"] }
            "#,
        )
        .unwrap();
        let m = c.map().unwrap();
        assert_eq!(m.version(), 7);
        assert_eq!(m.shards(), ["a", "b"]);
        assert_eq!(m.bucket_count("b"), 100);
        assert_eq!(m.owner_of_bucket(150), Some("b"));
    }

    #[test]
    fn even_n_without_pools_names_shards_by_index() {
        let c: Config = toml::from_str("[map]\neven = 3").unwrap();
        assert_eq!(c.map().unwrap().shards(), ["shard-0", "shard-1", "shard-2"]);
    }

    #[test]
    fn empty_config_is_an_error_saying_how_to_name_shards() {
        let err = Config::default().map().unwrap_err().to_string();
        assert!(err.contains("[[shard.shards]]"), "{err}");
    }

    #[test]
    fn for_map_round_trips_through_toml() {
        let m = ShardMap::even_n(Scheme::Buckets, 3)
            .unwrap()
            .with_version(4)
            .unwrap();
        let text = toml::to_string(&Config::for_map(&m)).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        let m2 = back.map().unwrap();
        assert!(m2.routes_like(&m));
        assert_eq!(m2.version(), 4);
    }
}
