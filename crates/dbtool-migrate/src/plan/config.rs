//! What the user decides about a plan: cast policies, foreign-key policy,
//! per-column overrides, identifier folding and the table filter
//! (`[migrate]` in `dbtool.toml`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cast::Epoch;
use crate::ident::Fold;

/// What happens to a value that cannot be stored in its column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Leave the whole row out of the target and write it to the reject file (default).
    #[default]
    Reject,
    /// Store NULL in that column and record the original in the reject file.
    Null,
    /// Stop the migration with an error naming the row.
    Fail,
}

/// What happens to a foreign key whose rows do not all have a parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FkPolicy {
    /// Create it `NOT VALID` (enforced for new rows) and report the orphans (default).
    #[default]
    NotValid,
    /// Do not create it; report.
    Skip,
    /// Fail the migration.
    Fail,
}

/// A per-column override (`[migrate.columns."table.column"]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnOverride {
    /// Target type name (`text`, `bigint`, `integer`, `double precision`,
    /// `numeric`, `boolean`, `bytea`, `timestamptz`, `timestamp`, `date`).
    #[serde(rename = "type")]
    pub pg_type: Option<String>,
    /// Policy for values that do not fit.
    pub policy: Option<Policy>,
    /// Epoch unit for numbers in a timestamptz column: `s`, `ms`, `us`, `julian`.
    pub epoch: Option<Epoch>,
}

/// Cast policies and overrides (`[migrate]` in `dbtool.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanConfig {
    /// Default policy for values that cannot be stored (NUL in text, invalid
    /// UTF-8, and misfits when `widen` is off). Default `reject`.
    pub policy: Policy,
    /// Widen a column (to text or bytea) when its values do not fit the
    /// declared type, instead of rejecting them. Default `true`.
    pub widen: bool,
    /// Identifier folding: `lower` (default) or `preserve`.
    pub identifiers: Fold,
    /// Foreign keys with orphan rows: `not_valid` (default), `skip`, `fail`.
    pub foreign_keys: FkPolicy,
    /// Per-column overrides, keyed `"table.column"` (SQLite names).
    pub columns: BTreeMap<String, ColumnOverride>,
    /// Only these tables (SQLite names); empty means all.
    pub include: Vec<String>,
    /// Not these tables.
    pub exclude: Vec<String>,
}

impl Default for PlanConfig {
    fn default() -> PlanConfig {
        PlanConfig {
            policy: Policy::Reject,
            widen: true,
            identifiers: Fold::Lower,
            foreign_keys: FkPolicy::NotValid,
            columns: BTreeMap::new(),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl PlanConfig {
    pub(super) fn column_override(&self, table: &str, column: &str) -> Option<&ColumnOverride> {
        let key = format!("{table}.{column}");
        self.columns.get(&key).or_else(|| {
            self.columns
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&key))
                .map(|(_, v)| v)
        })
    }

    pub(super) fn wants(&self, table: &str) -> bool {
        let m = |list: &[String]| list.iter().any(|t| t.eq_ignore_ascii_case(table));
        (self.include.is_empty() || m(&self.include)) && !m(&self.exclude)
    }
}
