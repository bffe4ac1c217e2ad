//! The plan model: what is decided for every table, column, index,
//! foreign key, check and view. Serialisable: a run stores its plan as JSON
//! in `dbtool.runs.plan`, and a resume or `verify` reads it back, so the
//! field names and enum spellings here are a stored format.

use std::collections::BTreeMap;

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use super::config::{FkPolicy, Policy};
use crate::cast::{cast_value, CastError, Epoch};
use crate::ident::Mapping;
use crate::profile::Kind;
use crate::source::{self, Table};
use crate::value::{PgType, Value};

/// Rows that the plan predicts will not cast, for one kind of value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Predicted {
    /// The kind of value (`text`, `text_invalid_utf8`, ...).
    pub kind: Kind,
    /// How many values.
    pub count: u64,
    /// Some of their rowids.
    pub sample_rowids: Vec<i64>,
    /// What the policy does with them.
    pub policy: Policy,
}

/// One column's plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnPlan {
    /// Name in SQLite.
    pub source_name: String,
    /// Name in Postgres.
    pub target_name: String,
    /// Declared type in SQLite (`""` when untyped).
    pub decl_type: String,
    /// Postgres type.
    pub pg_type: PgType,
    /// How numbers become timestamps (timestamptz columns only).
    pub epoch: Option<Epoch>,
    /// What happens to values that do not cast.
    pub policy: Policy,
    /// `NOT NULL` in the target.
    pub not_null: bool,
    /// The default, translated to Postgres SQL.
    pub default: Option<String>,
    /// Why this type (one line, for `dbtool plan`).
    pub reason: String,
    /// Values by kind, as profiled.
    pub evidence: BTreeMap<Kind, u64>,
    /// Text date formats seen.
    pub date_formats: BTreeMap<String, u64>,
    /// Values predicted not to cast.
    pub predicted: Vec<Predicted>,
    /// Texts counted as `text` in `evidence` without being classified
    /// (planned for a load, see [`crate::plan::Profiling::Load`]): a NUL or
    /// invalid UTF-8 among them is not in `predicted`; the load finds it and
    /// applies `policy`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unclassified_text: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ColumnPlan {
    /// Casts one SQLite value to this column's target type.
    ///
    /// Never changes a value silently: it either returns a value Postgres
    /// holds exactly (up to the documented normalisations: timestamps to
    /// microseconds, numbers to their decimal text), or an error saying why.
    pub fn cast(&self, v: ValueRef<'_>) -> Result<Value, CastError> {
        cast_value(self.pg_type, self.epoch, v)
    }
}

/// How the loader reads a table in ranges or batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadKey {
    /// By rowid (every table that has one).
    Rowid,
    /// By these columns (indexes into [`TablePlan::columns`]), in key order:
    /// WITHOUT ROWID tables.
    PrimaryKey(Vec<usize>),
    /// No usable key: read in one pass.
    None,
}

/// What an [`IndexPlan`] builds. Stored as `primary_key`, `unique`, `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// The table's primary key (a UNIQUE constraint when its columns hold NULLs).
    PrimaryKey,
    /// A UNIQUE constraint.
    Unique,
    /// A `CREATE INDEX` (unique or not).
    Index,
}

impl IndexKind {
    /// Its stored name: `primary_key`, `unique`, `index`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::PrimaryKey => "primary_key",
            IndexKind::Unique => "unique",
            IndexKind::Index => "index",
        }
    }
}

impl std::fmt::Display for IndexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A constraint or index to build after the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPlan {
    /// Its name in SQLite (autoindex names for constraints).
    pub source_name: String,
    /// Its name in Postgres.
    pub target_name: String,
    /// Primary key, unique constraint or index.
    pub kind: IndexKind,
    /// The Postgres statement, or `None` when it cannot be translated.
    pub sql: Option<String>,
    /// Why it was changed or not translated.
    pub note: Option<String>,
}

/// A foreign key to create after the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FkPlan {
    /// Constraint name in Postgres.
    pub target_name: String,
    /// Referencing columns (SQLite names).
    pub columns: Vec<String>,
    /// Referenced table (SQLite name).
    pub ref_table: String,
    /// `ALTER TABLE .. ADD CONSTRAINT .. FOREIGN KEY .. NOT VALID`, or `None`
    /// when it cannot be created (see `problem`).
    pub sql: Option<String>,
    /// Referenced columns (SQLite names): the parent's primary key when
    /// the source names none. Empty in plans stored before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ref_columns: Vec<String>,
    /// Rows without a parent in the source (see [`crate::profile::orphans`]).
    pub orphans: u64,
    /// Some of their rowids.
    pub orphan_rowids: Vec<i64>,
    /// The source was not searched for orphans when planning (a
    /// migration's plan, [`Profiling::Load`](super::Profiling::Load)): the
    /// foreign key is validated on the target instead, and only when that
    /// fails does the finish phase count the orphans in the source and
    /// apply [`FkPolicy`] (the run's report then carries
    /// the counts). `orphans` is 0 until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orphans_deferred: bool,
    /// Why it cannot be created or checked, if so.
    pub problem: Option<String>,
}

/// A CHECK constraint to add after the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckPlan {
    /// Constraint name.
    pub target_name: String,
    /// The expression as written in SQLite.
    pub source: String,
    /// The translated `ALTER TABLE .. ADD CONSTRAINT .. CHECK (..)`.
    pub sql: String,
}

/// One table's plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TablePlan {
    /// Name in SQLite.
    pub source_name: String,
    /// Name in Postgres.
    pub target_name: String,
    /// Columns, in order.
    pub columns: Vec<ColumnPlan>,
    /// How the loader reads it.
    pub key: ReadKey,
    /// Rows in the source.
    pub rows: u64,
    /// Primary-key columns (indexes into `columns`), in key order.
    pub primary_key: Vec<usize>,
    /// The rowid-alias column that becomes an identity column, and the
    /// `sqlite_sequence` value for the table.
    pub identity: Option<(usize, Option<i64>)>,
    /// Primary key, unique constraints and indexes.
    pub indexes: Vec<IndexPlan>,
    /// Foreign keys.
    pub foreign_keys: Vec<FkPlan>,
    /// CHECK constraints.
    pub checks: Vec<CheckPlan>,
    /// What `dbtool plan` should tell about this table.
    pub notes: Vec<String>,
}

impl TablePlan {
    /// The primary-key columns (indexes into `columns`), in key order; empty
    /// when the table declares none.
    pub fn pk_columns(&self) -> Vec<usize> {
        self.primary_key.clone()
    }

    /// The SQLite expression that reads the rowid (`rowid`, or `_rowid_`/`oid`
    /// when a column shadows it), when the table is read by rowid.
    pub fn rowid_expr(&self) -> Option<&'static str> {
        if self.key != ReadKey::Rowid {
            return None;
        }
        rowid_alias_free(self.columns.iter().map(|c| c.source_name.as_str()))
    }

    /// `SELECT <key>, "c1", "c2", ... FROM "t"` (SQLite quoting). The key is
    /// the rowid for [`ReadKey::Rowid`], the key columns for
    /// [`ReadKey::PrimaryKey`], nothing for [`ReadKey::None`]; so the
    /// columns start at [`TablePlan::key_width`]. Callers append `WHERE` /
    /// `ORDER BY`.
    pub fn select_sql(&self) -> String {
        let mut parts: Vec<String> = self.key_exprs();
        parts.extend(self.columns.iter().map(|c| source::quote(&c.source_name)));
        if parts.is_empty() {
            parts.push("NULL".into());
        }
        format!(
            "SELECT {} FROM {}",
            parts.join(", "),
            source::quote(&self.source_name)
        )
    }

    /// The key expressions in the select list (SQLite quoting).
    pub fn key_exprs(&self) -> Vec<String> {
        match &self.key {
            ReadKey::Rowid => vec![self.rowid_expr().unwrap_or("rowid").to_string()],
            ReadKey::PrimaryKey(cols) => cols
                .iter()
                .map(|&i| source::quote(&self.columns[i].source_name))
                .collect(),
            ReadKey::None => Vec::new(),
        }
    }

    /// How many key values precede the columns in [`TablePlan::select_sql`].
    pub fn key_width(&self) -> usize {
        self.key_exprs().len()
    }

    /// The column named `name` in SQLite.
    pub fn column(&self, name: &str) -> Option<&ColumnPlan> {
        self.columns
            .iter()
            .find(|c| c.source_name.eq_ignore_ascii_case(name))
    }

    /// Rows predicted to be rejected or nulled (sum over columns; a row with
    /// two bad values counts twice).
    pub fn predicted_problems(&self) -> u64 {
        self.columns
            .iter()
            .flat_map(|c| c.predicted.iter())
            .map(|p| p.count)
            .sum()
    }
}

/// The expression the profiler and loader read `t`'s rowid with, when it
/// has a rowid that a column does not shadow.
pub(super) fn read_rowid(t: &Table) -> Option<&'static str> {
    if t.has_rowid() {
        rowid_alias_free(t.columns.iter().map(|c| c.name.as_str()))
    } else {
        None
    }
}

fn rowid_alias_free<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let names: Vec<&str> = names.collect();
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|alias| !names.iter().any(|n| n.eq_ignore_ascii_case(alias)))
}

/// What kind of source object a [`Skipped`] entry is. Stored as
/// `table`, `virtual_table`, `shadow_table`, `trigger`, `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// A table (excluded, or unreadable).
    Table,
    /// A virtual table (full-text index, or a module this SQLite lacks).
    VirtualTable,
    /// The storage table of a virtual table.
    ShadowTable,
    /// A trigger.
    Trigger,
    /// A SQLite internal table (`sqlite_sequence`, `sqlite_stat1`, ...).
    Internal,
}

impl SkipKind {
    /// Its stored name: `table`, `virtual_table`, `shadow_table`, `trigger`, `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::Table => "table",
            SkipKind::VirtualTable => "virtual_table",
            SkipKind::ShadowTable => "shadow_table",
            SkipKind::Trigger => "trigger",
            SkipKind::Internal => "internal",
        }
    }

    /// Words for reports: `table`, `virtual table`, `shadow table`, ...
    pub fn label(self) -> &'static str {
        match self {
            SkipKind::Table => "table",
            SkipKind::VirtualTable => "virtual table",
            SkipKind::ShadowTable => "shadow table",
            SkipKind::Trigger => "trigger",
            SkipKind::Internal => "internal",
        }
    }
}

/// Something in the source that is not migrated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// What kind of object it is.
    pub kind: SkipKind,
    /// Its SQLite name.
    pub name: String,
    /// Why, and what to do.
    pub reason: String,
}

/// A view to recreate after the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewPlan {
    /// Name in SQLite.
    pub source_name: String,
    /// Name in Postgres.
    pub target_name: String,
    /// The SQLite statement.
    pub source_sql: String,
    /// The translated `CREATE VIEW`, tried after the load; reported if Postgres refuses it.
    pub sql: Option<String>,
}

/// The whole plan. Serialisable: stored as JSON in the run record, read by `verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The source file.
    pub source: String,
    /// The target schema.
    pub schema: String,
    /// The source's text encoding.
    pub encoding: String,
    /// Tables to migrate.
    pub tables: Vec<TablePlan>,
    /// Views to recreate.
    pub views: Vec<ViewPlan>,
    /// What is not migrated, and why.
    pub skipped: Vec<Skipped>,
    /// Every identifier whose Postgres name differs from its SQLite name.
    pub identifiers: Vec<Mapping>,
    /// Foreign-key policy.
    pub fk_policy: FkPolicy,
    /// General notes.
    pub notes: Vec<String>,
}

impl Plan {
    /// The table named `name` in SQLite.
    pub fn table(&self, name: &str) -> Option<&TablePlan> {
        self.tables
            .iter()
            .find(|t| t.source_name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::MappingKind;
    use crate::source::IndexOrigin;

    /// A run stores its plan as JSON and a resume by a newer binary reads it
    /// back: the enums must keep the spellings the plan was stored with.
    #[test]
    fn stored_plan_spellings_are_kept() {
        let json = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for k in [IndexKind::PrimaryKey, IndexKind::Unique, IndexKind::Index] {
            assert_eq!(json(serde_json::to_value(k).unwrap()), k.as_str());
        }
        assert_eq!(
            [IndexKind::PrimaryKey, IndexKind::Unique, IndexKind::Index].map(IndexKind::as_str),
            ["primary_key", "unique", "index"]
        );
        let skips = [
            SkipKind::Table,
            SkipKind::VirtualTable,
            SkipKind::ShadowTable,
            SkipKind::Trigger,
            SkipKind::Internal,
        ];
        for k in skips {
            assert_eq!(json(serde_json::to_value(k).unwrap()), k.as_str());
        }
        assert_eq!(
            skips.map(SkipKind::as_str),
            [
                "table",
                "virtual_table",
                "shadow_table",
                "trigger",
                "internal"
            ]
        );
        let maps = [
            MappingKind::Table,
            MappingKind::Column,
            MappingKind::Index,
            MappingKind::Constraint,
            MappingKind::View,
        ];
        for k in maps {
            assert_eq!(json(serde_json::to_value(k).unwrap()), k.to_string());
        }
        assert_eq!(
            maps.map(|k| k.to_string()),
            ["table", "column", "index", "constraint", "view"]
        );
        let origins: Vec<IndexOrigin> = serde_json::from_str(r#"["c", "u", "pk"]"#).unwrap();
        assert_eq!(
            origins,
            [
                IndexOrigin::CreateIndex,
                IndexOrigin::Unique,
                IndexOrigin::PrimaryKey
            ]
        );
    }
}
