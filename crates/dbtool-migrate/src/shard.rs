//! The shard routing of rows: which shard keeps each row of a source table.
//!
//! [`Sharding`] (`[migrate.sharding]`) names the shard key column; a
//! [`ShardFilter`] for one shard gives each table a [`Rule`] and each row a
//! [`Decision`]. The loader applies it to the rows it copies
//! ([`run::Options::filter`](crate::run::Options::filter)), `verify` to the
//! rows it compares, so both agree on where a row belongs. The sharded
//! migration itself is [`crate::sharded`].
//!
//! A row whose shard key is NULL or cannot be routed (not a string, or a
//! string the scheme refuses) is rejected on the first shard only, so the
//! reject files list it exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::plan::TablePlan;
use crate::Error;

/// How rows are assigned to shards: `[migrate.sharding]` in `dbtool.toml`.
///
/// ```toml
/// [migrate.sharding]
/// key = "team_id"                # the shard key column (default team_id)
/// keys = { teams = "id" }        # per-table shard key column (default: none)
/// unkeyed = "every"              # tables without the key: "every" shard (default)
///                                # or the name of one home shard
/// # unkeyed_tables = ["settings"] # when set, the only tables allowed without a key
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sharding {
    /// The shard key column of every table that has it.
    pub key: String,
    /// Per-table key columns (source table -> source column), over `key`.
    pub keys: BTreeMap<String, String>,
    /// Where tables without a key go: `every` shard, or one shard's name.
    pub unkeyed: String,
    /// When set, exactly the tables that may have no key (a table missing its
    /// key and not listed is an error, so nothing is copied everywhere by
    /// accident); a listed table is unkeyed even if it has the key column.
    pub unkeyed_tables: Option<Vec<String>>,
}

impl Default for Sharding {
    fn default() -> Sharding {
        Sharding {
            key: "team_id".into(),
            keys: BTreeMap::new(),
            unkeyed: "every".into(),
            unkeyed_tables: None,
        }
    }
}

/// How the rows of one table are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Every row to every shard.
    Every,
    /// Every row to this one shard.
    Home(String),
    /// Each row to the shard of the value in this column (index into the
    /// table's columns; its source name).
    Key(usize, String),
}

/// What a [`ShardFilter`] says about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The row belongs here.
    Keep,
    /// The row belongs to another shard.
    Skip,
    /// The row cannot be routed; reject it here (the first shard only), with why.
    Reject(String),
}

/// Decides, for one shard, which source rows it takes.
#[derive(Debug, Clone)]
pub struct ShardFilter {
    map: Arc<dbtool_shard::ShardMap>,
    sharding: Sharding,
    shard: String,
    first: bool,
}

impl ShardFilter {
    /// The filter of `shard` (a shard of `map`). `first`: this shard reports
    /// the rows that cannot be routed (exactly one shard should).
    ///
    /// # Errors
    /// [`Error::Usage`] when `shard`, or the `unkeyed` home shard, is not in the map.
    pub fn new(
        map: Arc<dbtool_shard::ShardMap>,
        sharding: Sharding,
        shard: &str,
        first: bool,
    ) -> Result<ShardFilter, Error> {
        let known = |s: &str| map.shards().iter().any(|n| n == s);
        if !known(shard) {
            return Err(Error::Usage(format!(
                "shard {shard:?} is not in shard map version {} (shards {:?})",
                map.version(),
                map.shards()
            )));
        }
        if sharding.unkeyed != "every" && !known(&sharding.unkeyed) {
            return Err(Error::Usage(format!(
                "[migrate.sharding] unkeyed = {:?} is neither \"every\" nor a shard of the map {:?}",
                sharding.unkeyed,
                map.shards()
            )));
        }
        Ok(ShardFilter {
            map,
            sharding,
            shard: shard.to_owned(),
            first,
        })
    }

    /// This filter's shard.
    pub fn shard(&self) -> &str {
        &self.shard
    }

    /// The map it routes with.
    pub fn map(&self) -> &dbtool_shard::ShardMap {
        &self.map
    }

    /// The rule for a table with these source columns.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the table when its `keys` column does not
    /// exist, or it has no key and is not in `unkeyed_tables`.
    pub fn rule(&self, table: &str, columns: &[&str]) -> Result<Rule, Error> {
        rule(&self.sharding, table, columns)
    }

    /// The rule for a planned table.
    ///
    /// # Errors
    /// See [`rule`](ShardFilter::rule).
    pub fn rule_for(&self, table: &TablePlan) -> Result<Rule, Error> {
        let cols: Vec<&str> = table
            .columns
            .iter()
            .map(|c| c.source_name.as_str())
            .collect();
        self.rule(&table.source_name, &cols)
    }

    /// The shard a row belongs on under `rule`, given its key value: `None`
    /// for [`Rule::Every`]; `Err` with why for a value that cannot be routed.
    ///
    /// # Errors
    /// A message naming the column and value.
    pub fn shard_of<'a>(
        &'a self,
        rule: &'a Rule,
        value: ValueRef<'_>,
    ) -> Result<Option<&'a str>, String> {
        match rule {
            Rule::Every => Ok(None),
            Rule::Home(h) => Ok(Some(h.as_str())),
            Rule::Key(_, column) => {
                let text = match value {
                    ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| {
                        format!("shard key {column} is not valid UTF-8: cannot route the row to a shard")
                    })?,
                    ValueRef::Null => {
                        return Err(format!(
                            "shard key {column} is NULL: cannot route the row to a shard"
                        ))
                    }
                    ValueRef::Integer(_) | ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(format!(
                            "shard key {column} holds a {} where a text team id is expected: cannot route the row to a shard",
                            match value {
                                ValueRef::Integer(_) => "integer",
                                ValueRef::Real(_) => "real",
                                _ => "blob",
                            }
                        ))
                    }
                };
                self.map
                    .shard_of(text)
                    .map(Some)
                    .map_err(|e| format!("shard key {column}: {e}"))
            }
        }
    }

    /// Whether this shard takes a row with key value `value` under `rule`.
    pub fn decide(&self, rule: &Rule, value: ValueRef<'_>) -> Decision {
        match self.shard_of(rule, value) {
            Ok(None) => Decision::Keep,
            Ok(Some(s)) if s == self.shard => Decision::Keep,
            Ok(Some(_)) => Decision::Skip,
            Err(reason) if self.first => Decision::Reject(reason),
            Err(_) => Decision::Skip,
        }
    }

    /// [`decide`](ShardFilter::decide) for a row read with `cell(i)` giving
    /// column `i`'s value.
    ///
    /// # Errors
    /// The reader's error for the key column.
    pub fn decide_row<'r, E>(
        &self,
        rule: &Rule,
        cell: impl FnOnce(usize) -> Result<ValueRef<'r>, E>,
    ) -> Result<Decision, E> {
        Ok(match rule {
            Rule::Every => Decision::Keep,
            Rule::Home(h) if *h == self.shard => Decision::Keep,
            Rule::Home(_) => Decision::Skip,
            Rule::Key(i, _) => self.decide(rule, cell(*i)?),
        })
    }
}

fn rule(s: &Sharding, table: &str, columns: &[&str]) -> Result<Rule, Error> {
    let find = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let unkeyed = || {
        if s.unkeyed == "every" {
            Rule::Every
        } else {
            Rule::Home(s.unkeyed.clone())
        }
    };
    let listed = s
        .unkeyed_tables
        .as_ref()
        .map(|l| l.iter().any(|t| t.eq_ignore_ascii_case(table)));
    if listed == Some(true) {
        return Ok(unkeyed());
    }
    let explicit = s
        .keys
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(table))
        .map(|(_, c)| c);
    if let Some(col) = explicit {
        return match find(col) {
            Some(i) => Ok(Rule::Key(i, columns[i].to_owned())),
            None => Err(Error::Usage(format!(
                "[migrate.sharding] keys.{table} = {col:?}, but table {table} has no column {col:?} (it has {columns:?})"
            ))),
        };
    }
    match find(&s.key) {
        Some(i) => Ok(Rule::Key(i, columns[i].to_owned())),
        None if listed == Some(false) => Err(Error::Usage(format!(
            "table {table} has no shard key column {:?} and is not in [migrate.sharding] unkeyed_tables: add it there, or name its key in keys.{table}",
            s.key
        ))),
        None => Ok(unkeyed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use dbtool_shard::{Scheme, ShardMap};

    fn filter(shard: &str, first: bool, s: Sharding) -> ShardFilter {
        let map = Arc::new(ShardMap::even_n(Scheme::Buckets, 4).unwrap());
        ShardFilter::new(map, s, shard, first).unwrap()
    }

    #[test]
    fn tables_with_the_key_are_keyed_others_go_everywhere() {
        let f = filter("shard-0", true, Sharding::default());
        assert_eq!(
            f.rule("posts", &["id", "Team_ID", "body"]).unwrap(),
            Rule::Key(1, "Team_ID".into())
        );
        assert_eq!(f.rule("settings", &["key", "value"]).unwrap(), Rule::Every);
    }

    #[test]
    fn per_table_keys_and_home_shard() {
        let s = Sharding {
            keys: [("teams".to_owned(), "id".to_owned())].into(),
            unkeyed: "shard-2".into(),
            ..Sharding::default()
        };
        let f = filter("shard-0", true, s);
        assert_eq!(
            f.rule("teams", &["id", "name"]).unwrap(),
            Rule::Key(0, "id".into())
        );
        assert_eq!(
            f.rule("settings", &["key"]).unwrap(),
            Rule::Home("shard-2".into())
        );
        let err = f.rule("teams", &["uuid"]).unwrap_err().to_string();
        assert!(
            err.contains("keys.teams") && err.contains("\"id\""),
            "{err}"
        );
    }

    #[test]
    fn unkeyed_tables_list_is_exhaustive() {
        let s = Sharding {
            unkeyed_tables: Some(vec!["settings".into()]),
            ..Sharding::default()
        };
        let f = filter("shard-1", false, s);
        assert_eq!(f.rule("settings", &["team_id"]).unwrap(), Rule::Every);
        let err = f.rule("teams", &["id"]).unwrap_err().to_string();
        assert!(
            err.contains("table teams") && err.contains("unkeyed_tables"),
            "{err}"
        );
    }

    #[test]
    fn unknown_home_shard_is_refused() {
        let map = Arc::new(ShardMap::even_n(Scheme::Buckets, 2).unwrap());
        let s = Sharding {
            unkeyed: "shard-7".into(),
            ..Sharding::default()
        };
        let err = ShardFilter::new(map, s, "shard-0", true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard-7"), "{err}");
    }

    #[test]
    fn each_row_is_kept_by_exactly_one_shard_and_bad_keys_by_the_first_only() {
        let filters: Vec<ShardFilter> = (0..4)
            .map(|i| filter(&format!("shard-{i}"), i == 0, Sharding::default()))
            .collect();
        let rule = Rule::Key(0, "team_id".into());
        let map = filters[0].map().clone();
        for i in 0..500 {
            let team = format!("{i:08x}-team");
            let keeps: Vec<usize> = (0..4)
                .filter(|&s| {
                    filters[s].decide(&rule, ValueRef::Text(team.as_bytes())) == Decision::Keep
                })
                .collect();
            assert_eq!(keeps.len(), 1, "{team}");
            assert_eq!(format!("shard-{}", keeps[0]), map.shard_of(&team).unwrap());
        }
        for bad in [ValueRef::Null, ValueRef::Text(b""), ValueRef::Integer(7)] {
            match filters[0].decide(&rule, bad) {
                Decision::Reject(why) => assert!(why.contains("team_id"), "{why}"),
                d => panic!("{bad:?}: {d:?}"),
            }
            for f in &filters[1..] {
                assert_eq!(f.decide(&rule, bad), Decision::Skip);
            }
        }
    }

    #[test]
    fn sharding_table_is_read_next_to_the_flattened_migrate_settings() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "batch_rows": 10,
            "sharding": { "keys": { "teams": "id" }, "unkeyed": "shard-0" }
        }))
        .unwrap();
        assert_eq!(c.load.batch_rows, 10);
        assert_eq!(c.sharding.key, "team_id");
        assert_eq!(c.sharding.keys["teams"], "id");
        assert_eq!(c.sharding.unkeyed, "shard-0");
        let typo = serde_json::from_value::<Config>(serde_json::json!({
            "sharding": { "key_column": "team" }
        }));
        assert!(typo.unwrap_err().to_string().contains("key_column"));
    }

    #[test]
    fn hex8_modulo_maps_route_like_the_app_and_refuse_non_hex() {
        let map = Arc::new(ShardMap::even_n(Scheme::Hex8Modulo, 4).unwrap());
        let f = |i: usize| {
            ShardFilter::new(
                map.clone(),
                Sharding::default(),
                &format!("shard-{i}"),
                i == 0,
            )
            .unwrap()
        };
        let rule = Rule::Key(0, "team_id".into());
        // parseInt("0000000a", 16) % 4 == 2
        let team = ValueRef::Text(b"0000000a-1111-4222-8333-444455556666");
        assert_eq!(f(2).decide(&rule, team), Decision::Keep);
        assert_eq!(f(1).decide(&rule, team), Decision::Skip);
        match f(0).decide(&rule, ValueRef::Text(b"zz-not-hex")) {
            Decision::Reject(why) => assert!(why.contains("zz-not-hex"), "{why}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            f(3).decide(&rule, ValueRef::Text(b"zz-not-hex")),
            Decision::Skip
        );
    }
}
