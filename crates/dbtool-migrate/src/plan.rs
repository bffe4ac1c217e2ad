//! The cast plan: for every table and column, the Postgres type, how each
//! SQLite value becomes a target [`Value`], and what happens to values that
//! cannot.
//!
//! Types are chosen from the data ([`crate::profile`]), not only from the
//! declared type: among the types that suit the declared type, the narrowest
//! that holds every value losslessly; when none does, a wider one (text,
//! bytea) if [`PlanConfig::widen`] (the default), else the declared one with
//! the misfits handled by the column's [`Policy`]. See docs/migrate.md for
//! the full table.
//!
//! [`ColumnPlan::cast`] is the ONE place a SQLite value becomes a target
//! value: the loader and `verify` both call it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::ident::{self, Fold, Mapping, Namer};
use crate::profile::{self, ColumnProfile, Kind, ParsedDate, TableProfile};
use crate::source::{self, Source, Table, TableKind};
use crate::value::{normalize_numeric, PgType, Value};
use crate::Error;

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
    fn column_override(&self, table: &str, column: &str) -> Option<&ColumnOverride> {
        let key = format!("{table}.{column}");
        self.columns.get(&key).or_else(|| {
            self.columns
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&key))
                .map(|(_, v)| v)
        })
    }

    fn wants(&self, table: &str) -> bool {
        let m = |list: &[String]| list.iter().any(|t| t.eq_ignore_ascii_case(table));
        (self.include.is_empty() || m(&self.include)) && !m(&self.exclude)
    }
}

/// How numbers in a date column are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Epoch {
    /// Unix seconds (fractions allowed).
    #[serde(rename = "s")]
    Seconds,
    /// Unix milliseconds.
    #[serde(rename = "ms")]
    Millis,
    /// Unix microseconds.
    #[serde(rename = "us")]
    Micros,
    /// Julian day number (SQLite `julianday()`).
    Julian,
}

impl Epoch {
    fn label(self) -> &'static str {
        match self {
            Epoch::Seconds => "Unix seconds",
            Epoch::Millis => "Unix milliseconds",
            Epoch::Micros => "Unix microseconds",
            Epoch::Julian => "Julian days",
        }
    }
}

/// Why a value could not be cast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CastError {
    /// What is wrong with the value, for the reject file.
    pub reason: String,
}

impl std::fmt::Display for CastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for CastError {}

fn fail<T>(reason: impl Into<String>) -> Result<T, CastError> {
    Err(CastError {
        reason: reason.into(),
    })
}

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

/// The cast rules (see [`ColumnPlan::cast`]).
pub fn cast_value(ty: PgType, epoch: Option<Epoch>, v: ValueRef<'_>) -> Result<Value, CastError> {
    if let ValueRef::Null = v {
        return Ok(Value::Null);
    }
    let kind = profile::classify(v);
    match ty {
        PgType::Bool => match v {
            ValueRef::Integer(0) => Ok(Value::Bool(false)),
            ValueRef::Integer(1) => Ok(Value::Bool(true)),
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::is_text_bool) {
                Some(x) => Ok(Value::Bool(x)),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
        PgType::Int8 => match v {
            ValueRef::Integer(i) => Ok(Value::Int(i)),
            _ => misfit(kind, ty),
        },
        PgType::Int4 => match v {
            ValueRef::Integer(i) if i32::try_from(i).is_ok() => Ok(Value::Int(i)),
            ValueRef::Integer(i) => fail(format!("integer {i} is out of range for integer")),
            _ => misfit(kind, ty),
        },
        PgType::Float8 => match v {
            ValueRef::Integer(i) if i.unsigned_abs() <= 1 << 53 => Ok(Value::Float(i as f64)),
            ValueRef::Integer(i) => fail(format!(
                "integer {i} is beyond 2^53 and would lose digits as double precision"
            )),
            ValueRef::Real(f) => Ok(Value::Float(f)),
            _ => misfit(kind, ty),
        },
        PgType::Numeric => match v {
            ValueRef::Integer(i) => Ok(Value::Numeric(i.to_string())),
            ValueRef::Real(f) => Ok(Value::Numeric(real_numeric(f))),
            ValueRef::Text(b) if kind == Kind::TextNumber => {
                let s = std::str::from_utf8(b).unwrap_or_default();
                match normalize_numeric(s) {
                    Some(n) => Ok(Value::Numeric(n)),
                    None => fail(format!("text {s:?} is not a number")),
                }
            }
            _ => misfit(kind, ty),
        },
        PgType::Text => match v {
            ValueRef::Integer(i) => Ok(Value::Text(i.to_string())),
            ValueRef::Real(f) => Ok(Value::Text(real_text(f))),
            ValueRef::Text(b) | ValueRef::Blob(b) => text_of(b, matches!(v, ValueRef::Blob(_))),
            ValueRef::Null => Ok(Value::Null),
        },
        PgType::Bytea => match v {
            ValueRef::Text(b) | ValueRef::Blob(b) => Ok(Value::Bytes(b.to_vec())),
            _ => misfit(kind, ty),
        },
        PgType::Timestamptz => match v {
            ValueRef::Integer(i) => match epoch {
                Some(e) => epoch_micros(i as f64, Some(i), e).map(Value::Timestamptz),
                None => misfit(kind, ty),
            },
            ValueRef::Real(f) if f.is_finite() => match epoch {
                Some(e) => epoch_micros(f, None, e).map(Value::Timestamptz),
                None => misfit(kind, ty),
            },
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::parse_datetime) {
                Some(ParsedDate::Zoned(us) | ParsedDate::MediaWiki(us)) => Ok(Value::Timestamptz(us)),
                Some(_) => fail("timestamp has no time zone; set this column's type to timestamp to keep it as wall-clock time"),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
        PgType::Timestamp => match v {
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::parse_datetime) {
                Some(ParsedDate::Naive(us)) => Ok(Value::Timestamp(us)),
                Some(ParsedDate::Date(d)) => Ok(Value::Timestamp(i64::from(d) * 86_400_000_000)),
                Some(_) => fail("timestamp has a time zone; set this column's type to timestamptz"),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
        PgType::Date => match v {
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::parse_datetime) {
                Some(ParsedDate::Date(d)) => Ok(Value::Date(d)),
                Some(_) => fail("value has a time of day; set this column's type to timestamp"),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
    }
}

fn misfit<T>(kind: Kind, ty: PgType) -> Result<T, CastError> {
    fail(match kind {
        Kind::TextNul => "text contains NUL (0x00), which PostgreSQL text cannot hold".to_string(),
        Kind::TextInvalidUtf8 => {
            "text is not valid UTF-8, which PostgreSQL text cannot hold".to_string()
        }
        Kind::Blob => format!("binary blob does not fit column type {ty}"),
        Kind::Infinite => format!("infinite real does not fit column type {ty}"),
        k => format!("{} value does not fit column type {ty}", kind_label(k)),
    })
}

/// A short human label for a kind.
pub fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::Null => "null",
        Kind::Integer => "integer",
        Kind::Real => "real",
        Kind::Infinite => "infinite real",
        Kind::TextBool => "boolean text",
        Kind::TextNumber => "numeric text",
        Kind::TextDate => "date text",
        Kind::TextTimestamp => "timestamp text",
        Kind::TextTimestamptz => "timestamp-with-zone text",
        Kind::TextMediaWiki => "MediaWiki timestamp text",
        Kind::Text => "text",
        Kind::TextNul => "text with NUL",
        Kind::TextInvalidUtf8 => "invalid UTF-8 text",
        Kind::BlobUtf8 => "UTF-8 blob",
        Kind::Blob => "binary blob",
    }
}

fn text_of(b: &[u8], blob: bool) -> Result<Value, CastError> {
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\0') => Ok(Value::Text(s.to_string())),
        Ok(_) if blob => fail("binary blob (contains NUL) does not fit column type text"),
        Ok(_) => fail("text contains NUL (0x00), which PostgreSQL text cannot hold"),
        Err(e) if blob => fail(format!("binary blob is not UTF-8 text ({e})")),
        Err(e) => fail(format!(
            "text is not valid UTF-8 ({e}), which PostgreSQL text cannot hold"
        )),
    }
}

/// A REAL as exact decimal text: the shortest digits that read back as the
/// same double (what the application saw), `Infinity`/`-Infinity`.
pub fn real_numeric(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        let s = format!("{f}");
        normalize_numeric(&s).unwrap_or(s)
    }
}

/// A REAL as text: shortest round-trip digits (`1.0`, `0.1`, `1e300`), `Infinity`.
pub fn real_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

/// Julian day of 1970-01-01T00:00:00Z.
const JULIAN_UNIX_EPOCH: f64 = 2_440_587.5;
/// Julian day range of years 1..9999.
const JULIAN_MIN: f64 = 1_721_425.5;
const JULIAN_MAX: f64 = 5_373_484.5;
/// Largest microsecond value we produce (year 9999 and a bit; Postgres allows more).
const MAX_MICROS: f64 = 253_402_300_800_000_000.0;

fn epoch_micros(f: f64, exact: Option<i64>, e: Epoch) -> Result<i64, CastError> {
    let us = match (e, exact) {
        (Epoch::Micros, Some(i)) => i as f64,
        (Epoch::Millis, Some(i)) => return checked(i.checked_mul(1_000), f),
        (Epoch::Seconds, Some(i)) => return checked(i.checked_mul(1_000_000), f),
        (Epoch::Seconds, None) => f * 1e6,
        (Epoch::Millis, None) => f * 1e3,
        (Epoch::Micros, None) => f,
        (Epoch::Julian, _) => {
            if !(JULIAN_MIN..=JULIAN_MAX).contains(&f) {
                return fail(format!(
                    "{f} is outside the Julian-day range of years 1-9999"
                ));
            }
            (f - JULIAN_UNIX_EPOCH) * 86_400e6
        }
    };
    if !(-MAX_MICROS..=MAX_MICROS).contains(&us) {
        return fail(format!(
            "{f} is out of range for a timestamp as {}",
            e.label()
        ));
    }
    Ok(us.round() as i64)
}

fn checked(us: Option<i64>, f: f64) -> Result<i64, CastError> {
    match us {
        Some(us) if (us as f64).abs() <= MAX_MICROS => Ok(us),
        _ => fail(format!("{f} is out of range for a timestamp")),
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

/// A constraint or index to build after the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPlan {
    /// Its name in SQLite (autoindex names for constraints).
    pub source_name: String,
    /// Its name in Postgres.
    pub target_name: String,
    /// `primary_key`, `unique` (constraint) or `index`.
    pub kind: String,
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
    /// Rows without a parent in the source (see [`profile::orphans`]).
    pub orphans: u64,
    /// Some of their rowids.
    pub orphan_rowids: Vec<i64>,
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
fn read_rowid(t: &Table) -> Option<&'static str> {
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

/// Something in the source that is not migrated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// `table`, `virtual_table`, `shadow_table`, `trigger`, `internal`.
    pub kind: String,
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

/// The declared-type family of a column, from its declared type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Bool,
    DateOnly,
    DateTime,
    Int,
    Real,
    Decimal,
    Text,
    Blob,
    Any,
}

fn class_of(decl: &str) -> Class {
    let d = decl.to_ascii_uppercase();
    if d.trim().is_empty() {
        return Class::Any;
    }
    if d.contains("BOOL") {
        Class::Bool
    } else if d.contains("DATETIME") || d.contains("TIMESTAMP") {
        Class::DateTime
    } else if d.contains("DATE") {
        Class::DateOnly
    } else if d.contains("TIME") {
        // TIME of day alone: no Postgres type in our set; texts stay text.
        Class::Text
    } else if d.contains("INT") {
        Class::Int
    } else if d.contains("CHAR")
        || d.contains("CLOB")
        || d.contains("TEXT")
        || d.contains("STRING")
        || d.contains("JSON")
        || d.contains("UUID")
    {
        Class::Text
    } else if d.contains("BLOB") || d.contains("BINARY") {
        Class::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Class::Real
    } else if d.contains("DEC")
        || d.contains("NUMERIC")
        || d.contains("MONEY")
        || d.contains("NUMBER")
    {
        Class::Decimal
    } else {
        Class::Any
    }
}

/// Whether a cast to (`ty`, `epoch`) accepts every value of `kind` in a
/// column with profile `p` (kept consistent with [`cast_value`]).
fn accepts(ty: PgType, epoch: Option<Epoch>, kind: Kind, p: &ColumnProfile) -> bool {
    use Kind::*;
    if kind == Null {
        return true;
    }
    match ty {
        PgType::Bool => match kind {
            Integer => p.int_min.unwrap_or(0) >= 0 && p.int_max.unwrap_or(0) <= 1,
            TextBool => true,
            _ => false,
        },
        PgType::Int8 => kind == Integer,
        PgType::Int4 => {
            kind == Integer
                && p.int_min.is_none_or(|v| v >= i64::from(i32::MIN))
                && p.int_max.is_none_or(|v| v <= i64::from(i32::MAX))
        }
        PgType::Float8 => match kind {
            Integer => {
                p.int_min.is_none_or(|v| v.unsigned_abs() <= 1 << 53)
                    && p.int_max.is_none_or(|v| v.unsigned_abs() <= 1 << 53)
            }
            Real | Infinite => true,
            _ => false,
        },
        PgType::Numeric => matches!(kind, Integer | Real | Infinite | TextNumber),
        PgType::Text => !matches!(kind, TextNul | TextInvalidUtf8 | Blob),
        PgType::Bytea => !matches!(kind, Integer | Real | Infinite),
        PgType::Timestamptz => match kind {
            TextTimestamptz | TextMediaWiki => true,
            Integer | Real => epoch.is_some_and(|e| epoch_fits(e, p)),
            _ => false,
        },
        PgType::Timestamp => matches!(kind, TextTimestamp | TextDate),
        PgType::Date => kind == TextDate,
    }
}

fn epoch_fits(e: Epoch, p: &ColumnProfile) -> bool {
    let mut vals: Vec<f64> = Vec::new();
    vals.extend(
        [p.int_min, p.int_max]
            .into_iter()
            .flatten()
            .map(|v| v as f64),
    );
    vals.extend([p.real_min, p.real_max].into_iter().flatten());
    vals.iter().all(|&f| epoch_micros(f, None, e).is_ok())
}

/// The epoch unit that numbers in a date column are in, judged from their
/// magnitude: Julian days when there are fractional values all within the
/// Julian range of years 1..9999; else seconds below 1e11 (year 5138),
/// milliseconds below 1e14, microseconds below 1e17.
fn guess_epoch(p: &ColumnProfile) -> Option<Epoch> {
    if p.count(Kind::Integer) + p.count(Kind::Real) == 0 {
        return None;
    }
    let in_julian = |v: f64| (JULIAN_MIN..=JULIAN_MAX).contains(&v);
    let all_julian = [p.int_min, p.int_max]
        .into_iter()
        .flatten()
        .all(|v| in_julian(v as f64))
        && [p.real_min, p.real_max]
            .into_iter()
            .flatten()
            .all(in_julian);
    if p.count(Kind::Real) > 0 && all_julian {
        return Some(Epoch::Julian);
    }
    let m = p.max_abs();
    if m < 1e11 {
        Some(Epoch::Seconds)
    } else if m < 1e14 {
        Some(Epoch::Millis)
    } else if m < 1e17 {
        Some(Epoch::Micros)
    } else {
        None
    }
}

/// Chooses the type of one column from its declared class and profile.
fn choose(class: Class, p: &ColumnProfile, widen: bool) -> (PgType, Option<Epoch>, String) {
    use PgType::*;
    let present: Vec<(Kind, u64)> = p
        .kinds
        .iter()
        .filter(|(k, _)| **k != Kind::Null && !k.is_unholdable_text())
        .map(|(k, s)| (*k, s.count))
        .collect();
    if present.is_empty() {
        let ty = match class {
            Class::Bool => Bool,
            Class::DateOnly => Date,
            Class::DateTime => Timestamp,
            Class::Int => Int8,
            Class::Real => Float8,
            Class::Decimal => Numeric,
            Class::Blob => Bytea,
            Class::Text | Class::Any => {
                if p.non_null() > 0 {
                    Bytea // only text Postgres cannot hold: keep the bytes
                } else {
                    Text
                }
            }
        };
        let why = if p.non_null() == 0 {
            "no values; from the declared type".to_string()
        } else {
            "only values text cannot hold; kept as bytes".to_string()
        };
        return (ty, None, why);
    }
    let has_blob = p.count(Kind::Blob) + p.count(Kind::BlobUtf8) > 0;
    let epoch = guess_epoch(p);
    // (type, epoch, primary): primary candidates suit the declared type.
    let mut cands: Vec<(PgType, Option<Epoch>, bool)> = Vec::new();
    let date_cands = |c: &mut Vec<(PgType, Option<Epoch>, bool)>, epoch: Option<Epoch>| {
        c.push((Date, None, true));
        c.push((Timestamp, None, true));
        c.push((Timestamptz, epoch, true));
    };
    match class {
        Class::Bool => {
            cands.push((Bool, None, true));
            cands.extend([
                (Int8, None, false),
                (Float8, None, false),
                (Numeric, None, false),
            ]);
        }
        Class::DateOnly | Class::DateTime => {
            date_cands(&mut cands, epoch);
            cands.extend([
                (Int8, None, false),
                (Float8, None, false),
                (Numeric, None, false),
            ]);
        }
        Class::Int => {
            cands.push((Int8, None, true));
            cands.extend([(Float8, None, false), (Numeric, None, false)]);
        }
        Class::Real => {
            cands.push((Float8, None, true));
            cands.push((Numeric, None, false));
        }
        Class::Decimal => cands.push((Numeric, None, true)),
        Class::Text => cands.push((Text, None, true)),
        Class::Blob if has_blob => cands.push((Bytea, None, true)),
        Class::Blob | Class::Any => {
            cands.extend([(Int8, None, true), (Float8, None, true)]);
            if p.count(Kind::TextNumber) == 0 {
                cands.push((Numeric, None, true));
            }
            if !has_blob {
                date_cands(&mut cands, None);
            }
        }
    }
    cands.push((Text, None, matches!(class, Class::Blob | Class::Any)));
    cands.push((Bytea, None, matches!(class, Class::Blob | Class::Any)));
    let rejects = |ty: PgType, e: Option<Epoch>| -> u64 {
        present
            .iter()
            .filter(|(k, _)| !accepts(ty, e, *k, p))
            .map(|(_, n)| *n)
            .sum()
    };
    let pool: Vec<_> = cands
        .iter()
        .copied()
        .filter(|(_, _, primary)| widen || *primary)
        .collect();
    let mut best = pool[0];
    let mut best_r = rejects(best.0, best.1);
    for c in pool.iter().skip(1) {
        let r = rejects(c.0, c.1);
        if r < best_r {
            best = *c;
            best_r = r;
        }
    }
    let (ty, e, primary) = best;
    let e = if ty == Timestamptz && (p.count(Kind::Integer) + p.count(Kind::Real)) > 0 {
        e
    } else {
        None
    };
    let kinds: Vec<&str> = present.iter().map(|(k, _)| kind_label(*k)).collect();
    let mut why = format!("values: {}", kinds.join(", "));
    if let Some(e) = e {
        why.push_str(&format!("; numbers read as {}", e.label()));
    }
    if !primary {
        why.push_str("; widened: the values do not fit the declared type");
    }
    if best_r > 0 {
        why.push_str(&format!("; {best_r} values do not fit any single type"));
    }
    (ty, e, why)
}

/// The type for an override name.
fn override_type(name: &str) -> Option<PgType> {
    let n = name.trim().to_ascii_lowercase();
    Some(match n.as_str() {
        "timestamptz" | "timestamp with time zone" => PgType::Timestamptz,
        "timestamp" | "timestamp without time zone" => PgType::Timestamp,
        "int" | "int4" | "integer" => PgType::Int4,
        "int8" | "bigint" => PgType::Int8,
        "float8" | "double precision" | "double" => PgType::Float8,
        "bool" | "boolean" => PgType::Bool,
        "bytea" => PgType::Bytea,
        other => return PgType::from_sql_name(other),
    })
}

/// Builds the plan: profiles every table of `source` through `conn` and
/// chooses types, names, constraints, indexes and foreign keys.
pub fn plan(
    conn: &Connection,
    source: &Source,
    config: &PlanConfig,
    schema: &str,
) -> Result<Plan, Error> {
    plan_timed(conn, source, config, schema).map(|(p, _)| p)
}

/// Where [`plan_timed`] spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanTimings {
    /// Scanning the rows to profile the values ([`profile::profile_table`]).
    pub profile: std::time::Duration,
    /// Looking for orphan rows of the foreign keys ([`profile::orphans`]).
    pub orphans: std::time::Duration,
    /// The whole call, both of the above included.
    pub total: std::time::Duration,
}

/// [`plan`], also saying where the time went.
pub fn plan_timed(
    conn: &Connection,
    source: &Source,
    config: &PlanConfig,
    schema: &str,
) -> Result<(Plan, PlanTimings), Error> {
    let started = std::time::Instant::now();
    let mut timings = PlanTimings::default();
    let mut out = Plan {
        source: source.path.clone(),
        schema: schema.to_string(),
        encoding: source.encoding.clone(),
        tables: Vec::new(),
        views: Vec::new(),
        skipped: Vec::new(),
        identifiers: Vec::new(),
        fk_policy: config.foreign_keys,
        notes: Vec::new(),
    };
    if source.encoding != "UTF-8" {
        out.notes.push(format!(
            "the source is {}; SQLite converts its text to UTF-8 as it is read",
            source.encoding
        ));
    }
    for name in &source.internal_tables {
        let reason = if name == "sqlite_sequence" {
            "internal; its values set the identity sequences".to_string()
        } else {
            "SQLite internal table; not data".to_string()
        };
        out.skipped.push(Skipped {
            kind: "internal".into(),
            name: name.clone(),
            reason,
        });
    }
    // Which tables to migrate.
    let mut chosen: Vec<&Table> = Vec::new();
    for t in &source.tables {
        if !config.wants(&t.name) {
            out.skipped.push(Skipped {
                kind: "table".into(),
                name: t.name.clone(),
                reason: "excluded by --include/--exclude".into(),
            });
            continue;
        }
        match &t.kind {
            TableKind::Virtual {
                module,
                readable: false,
                ..
            } => {
                out.skipped.push(Skipped {
                    kind: "virtual_table".into(),
                    name: t.name.clone(),
                    reason: format!(
                        "virtual table using module {module}, which this SQLite does not have; its data is in its shadow tables, which are copied as plain tables"
                    ),
                });
                continue;
            }
            TableKind::Virtual {
                module,
                content: Some(c),
                ..
            } => {
                let reason = if c.is_empty() {
                    format!("contentless {module} full-text index: it stores no text to copy; build a tsvector index in Postgres instead")
                } else {
                    format!("{module} full-text index over table {c}, which is migrated; build a tsvector index in Postgres instead")
                };
                out.skipped.push(Skipped {
                    kind: "virtual_table".into(),
                    name: t.name.clone(),
                    reason,
                });
                continue;
            }
            TableKind::Shadow { owner } => {
                let owner_readable = source
                    .table(owner)
                    .is_some_and(|o| matches!(o.kind, TableKind::Virtual { readable: true, .. }));
                if owner_readable {
                    out.skipped.push(Skipped {
                        kind: "shadow_table".into(),
                        name: t.name.clone(),
                        reason: format!("internal storage of virtual table {owner}, whose content is migrated or reported instead"),
                    });
                    continue;
                }
            }
            _ => {}
        }
        if let Some(why) = &t.unreadable {
            out.skipped.push(Skipped {
                kind: "table".into(),
                name: t.name.clone(),
                reason: format!("cannot be read: {why}"),
            });
            continue;
        }
        chosen.push(t);
    }
    // Relation names: tables first, then views, then indexes and constraints.
    let mut rel = Namer::new(config.identifiers);
    let mut table_names: BTreeMap<String, String> = BTreeMap::new();
    for t in &chosen {
        let target = rel.map(&t.name);
        record(&mut out.identifiers, "table", None, &t.name, &target);
        table_names.insert(t.name.to_ascii_lowercase(), target);
    }
    for v in &source.views {
        let target = rel.map(&v.name);
        record(&mut out.identifiers, "view", None, &v.name, &target);
        out.views.push(ViewPlan {
            source_name: v.name.clone(),
            target_name: target,
            source_sql: v.sql.clone(),
            sql: None,
        });
    }
    // Column names per table.
    let mut col_names: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for t in &chosen {
        let mut namer = Namer::for_columns(config.identifiers);
        let mut m = BTreeMap::new();
        for c in &t.columns {
            let target = namer.map(&c.name);
            record(
                &mut out.identifiers,
                "column",
                Some(&t.name),
                &c.name,
                &target,
            );
            m.insert(c.name.to_ascii_lowercase(), target);
        }
        col_names.insert(t.name.to_ascii_lowercase(), m);
    }
    let names = Names {
        tables: &table_names,
        columns: &col_names,
        fold: config.identifiers,
    };
    // Profile every chosen table (in parallel: the longest part of planning).
    let t0 = std::time::Instant::now();
    let work: Vec<(&Table, Option<&str>)> = chosen.iter().map(|t| (*t, read_rowid(t))).collect();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let profiles = profile::profile_tables(conn, Path::new(&source.path), &work, jobs);
    timings.profile = t0.elapsed();
    for (t, prof) in chosen.iter().zip(profiles) {
        let prof = prof.map_err(|e| Error::Source {
            path: source.path.clone(),
            reason: format!("cannot read table {}: {e}", t.name),
        })?;
        let tp = plan_table(
            conn,
            source,
            t,
            prof,
            config,
            schema,
            &names,
            &mut rel,
            &mut out.identifiers,
            &mut timings,
        )?;
        out.tables.push(tp);
    }
    // Views: translated now, created (or reported) by finish.
    for v in &mut out.views {
        v.sql = translate_view(&v.source_sql, &names).map(|body| {
            format!(
                "CREATE VIEW {} AS {body}",
                ident::qualified(schema, &v.target_name)
            )
        });
    }
    for tr in &source.triggers {
        out.skipped.push(Skipped {
            kind: "trigger".into(),
            name: tr.name.clone(),
            reason: format!(
                "triggers are not migrated (on table {}); rewrite it as a PL/pgSQL trigger if the application relies on it",
                tr.table
            ),
        });
    }
    timings.total = started.elapsed();
    Ok((out, timings))
}

fn record(map: &mut Vec<Mapping>, kind: &str, table: Option<&str>, source: &str, target: &str) {
    if source != target {
        map.push(Mapping {
            kind: kind.into(),
            table: table.map(str::to_string),
            source: source.into(),
            target: target.into(),
        });
    }
}

/// Name maps, keyed by ASCII-lowercased SQLite names.
struct Names<'a> {
    tables: &'a BTreeMap<String, String>,
    columns: &'a BTreeMap<String, BTreeMap<String, String>>,
    fold: Fold,
}

impl Names<'_> {
    fn table(&self, name: &str) -> Option<&String> {
        self.tables.get(&name.to_ascii_lowercase())
    }
    fn column(&self, table: &str, col: &str) -> Option<&String> {
        self.columns
            .get(&table.to_ascii_lowercase())
            .and_then(|m| m.get(&col.to_ascii_lowercase()))
    }
    fn any_column(&self, col: &str) -> Option<&String> {
        let key = col.to_ascii_lowercase();
        self.columns.values().find_map(|m| m.get(&key))
    }
    fn fold(&self, name: &str) -> String {
        Namer::new(self.fold).base(name)
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_table(
    conn: &Connection,
    source: &Source,
    t: &Table,
    prof: TableProfile,
    config: &PlanConfig,
    schema: &str,
    names: &Names<'_>,
    rel: &mut Namer,
    idents: &mut Vec<Mapping>,
    timings: &mut PlanTimings,
) -> Result<TablePlan, Error> {
    let target = names.table(&t.name).cloned().unwrap_or_default();
    let mut notes = Vec::new();
    if let TableKind::Shadow { owner } = &t.kind {
        notes.push(format!(
            "shadow table of virtual table {owner}, which cannot be read here: copied as a plain table so its data is kept"
        ));
    }
    if let TableKind::Virtual { module, .. } = &t.kind {
        notes.push(format!(
            "virtual table ({module}): its content is copied as a plain table"
        ));
    }
    // The loader reads by rowid when the table has one it can name; else by
    // the planned primary key (chosen below, once the profile shows whether
    // the key columns hold NULLs); else in one pass.
    let rowid_expr = read_rowid(t);
    let mut columns = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        let p = &prof.columns[i];
        let class = class_of(&c.decl_type);
        let ov = config.column_override(&t.name, &c.name);
        let (mut ty, mut epoch, mut reason) = choose(class, p, config.widen);
        if let Some(ov) = ov {
            if let Some(name) = &ov.pg_type {
                match override_type(name) {
                    Some(o) => {
                        ty = o;
                        epoch = if o == PgType::Timestamptz {
                            ov.epoch.or_else(|| guess_epoch(p))
                        } else {
                            None
                        };
                        reason = format!("set in config (type = {name:?})");
                    }
                    None => {
                        return Err(Error::Usage(format!(
                            "invalid type {name:?} for column {}.{} in [migrate.columns]: use one of text, bigint, integer, double precision, numeric, boolean, bytea, timestamptz, timestamp, date",
                            t.name, c.name
                        )))
                    }
                }
            } else if let Some(e) = ov.epoch {
                if ty == PgType::Timestamptz {
                    epoch = Some(e);
                }
            }
        }
        let mut policy = ov.and_then(|o| o.policy).unwrap_or(config.policy);
        let is_alias = t.rowid_alias.as_deref() == Some(c.name.as_str());
        let mut not_null = c.not_null || is_alias;
        if not_null && p.count(Kind::Null) > 0 {
            not_null = false;
            notes.push(format!(
                "column {} is declared NOT NULL but holds {} NULLs: created without NOT NULL",
                c.name,
                p.count(Kind::Null)
            ));
        }
        if policy == Policy::Null && not_null {
            policy = Policy::Reject;
            notes.push(format!(
                "column {} is NOT NULL, so policy null cannot apply: its misfits are rejected",
                c.name
            ));
        }
        // Predicted misfits.
        let mut predicted = Vec::new();
        for (k, s) in &p.kinds {
            if !accepts(ty, epoch, *k, p) {
                predicted.push(Predicted {
                    kind: *k,
                    count: s.count,
                    sample_rowids: s.sample_rowids.clone(),
                    policy,
                });
            }
        }
        if class == Class::Text && ty == PgType::Text {
            let dates: u64 = [Kind::TextDate, Kind::TextTimestamp, Kind::TextTimestamptz]
                .iter()
                .map(|k| p.count(*k))
                .sum();
            if dates > 0 && dates == p.non_null() {
                notes.push(format!(
                    "column {} is declared {} and holds only ISO dates: kept as text (set [migrate.columns.\"{}.{}\"] type = \"timestamp\" to convert)",
                    c.name, c.decl_type, t.name, c.name
                ));
            }
        }
        let mut cp = ColumnPlan {
            source_name: c.name.clone(),
            target_name: names.column(&t.name, &c.name).cloned().unwrap_or_default(),
            decl_type: c.decl_type.clone(),
            pg_type: ty,
            epoch,
            policy,
            not_null,
            default: None,
            reason,
            evidence: p.kinds.iter().map(|(k, s)| (*k, s.count)).collect(),
            date_formats: p.date_formats.clone(),
            predicted,
        };
        if c.generated != source::Generated::No {
            notes.push(format!(
                "column {} is a generated column: its values are copied as a plain column",
                c.name
            ));
        }
        if let Some(d) = &c.default {
            if c.generated == source::Generated::No {
                match translate_default(d, &cp, class) {
                    Ok(x) => cp.default = x,
                    Err(why) => notes.push(format!(
                        "default of column {} ({d}) not translated: {why}",
                        c.name
                    )),
                }
            }
        }
        columns.push(cp);
    }
    let pos = |name: &str| {
        t.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    };
    let primary_key: Vec<usize> = t.primary_key.iter().filter_map(|k| pos(k)).collect();
    let identity = t
        .rowid_alias
        .as_ref()
        .and_then(|a| pos(a))
        .filter(|&i| columns[i].pg_type == PgType::Int8)
        .map(|i| (i, source.sequences.get(&t.name).copied()));
    if let Some((i, _)) = identity {
        // SQLite never applies a default to the rowid alias (an omitted id is
        // assigned), and Postgres cannot make a column with a default an
        // identity column: the identity wins, the default goes.
        if let Some(d) = &t.columns[i].default {
            columns[i].default = None;
            notes.push(format!(
                "column {} is an INTEGER PRIMARY KEY (the rowid): its DEFAULT {d} was never used by SQLite, which assigns the next id instead; it becomes an identity column without the default",
                t.columns[i].name
            ));
        }
    }
    let qt = ident::qualified(schema, &target);
    let col_list = |idx: &[usize]| -> String {
        idx.iter()
            .map(|&i| ident::quote(&columns[i].target_name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let source_list = |idx: &[usize]| -> String {
        idx.iter()
            .map(|&i| t.columns[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pk_nulls: u64 = primary_key
        .iter()
        .map(|&i| prof.columns[i].count(Kind::Null))
        .sum();
    // The read key: the rowid, else the planned primary key when it is a
    // real key (every column found, no NULLs: NULLs neither order nor
    // compare, so reading after the last key read would skip rows).
    let key = if rowid_expr.is_some() {
        ReadKey::Rowid
    } else if !primary_key.is_empty() && primary_key.len() == t.primary_key.len() && pk_nulls == 0 {
        ReadKey::PrimaryKey(primary_key.clone())
    } else if !primary_key.is_empty() && pk_nulls > 0 {
        notes.push(format!(
            "no rowid, and the primary key ({}) holds NULLs, so it cannot order the rows: read in one pass (an interrupted load of this table starts it over)",
            source_list(&primary_key)
        ));
        ReadKey::None
    } else {
        notes.push("no rowid and no primary key: read in one pass".into());
        ReadKey::None
    };
    // Indexes and constraints.
    let mut indexes = Vec::new();
    if !primary_key.is_empty() {
        let name = rel.map(&format!("{target}_pkey"));
        let (sql, note) = if pk_nulls > 0 {
            (
                Some(format!("ALTER TABLE {qt} ADD CONSTRAINT {} UNIQUE ({})", ident::quote(&name), col_list(&primary_key))),
                Some(format!(
                    "primary key ({}) of table {} holds {pk_nulls} NULLs (SQLite allows that, Postgres does not): created as a UNIQUE constraint instead",
                    source_list(&primary_key),
                    t.name
                )),
            )
        } else {
            (
                Some(format!(
                    "ALTER TABLE {qt} ADD CONSTRAINT {} PRIMARY KEY ({})",
                    ident::quote(&name),
                    col_list(&primary_key)
                )),
                None,
            )
        };
        indexes.push(IndexPlan {
            source_name: "PRIMARY KEY".into(),
            target_name: name,
            kind: "primary_key".into(),
            sql,
            note,
        });
    }
    for ix in &t.indexes {
        if ix.origin == "pk" {
            continue;
        }
        let cols: Vec<Option<usize>> = ix
            .columns
            .iter()
            .map(|c| c.name.as_deref().and_then(pos))
            .collect();
        let nocase = ix
            .columns
            .iter()
            .any(|c| !c.collation.eq_ignore_ascii_case("BINARY"));
        if ix.origin == "u" && cols.iter().all(Option::is_some) {
            let idx: Vec<usize> = cols.iter().flatten().copied().collect();
            let base = format!(
                "{target}_{}_key",
                idx.iter()
                    .map(|&i| columns[i].target_name.as_str())
                    .collect::<Vec<_>>()
                    .join("_")
            );
            let name = rel.map(&base);
            indexes.push(IndexPlan {
                source_name: ix.name.clone(),
                target_name: name.clone(),
                kind: "unique".into(),
                sql: Some(format!("ALTER TABLE {qt} ADD CONSTRAINT {} UNIQUE ({})", ident::quote(&name), col_list(&idx))),
                note: nocase.then(|| "SQLite compared these columns with a non-binary collation; Postgres compares exactly".to_string()),
            });
            continue;
        }
        let name = rel.map(&ix.name);
        record(idents, "index", Some(&t.name), &ix.name, &name);
        let bools: Vec<&str> = columns
            .iter()
            .filter(|c| c.pg_type == PgType::Bool)
            .map(|c| c.target_name.as_str())
            .collect();
        let (sql, note) = match translate_index(ix, t, &name, &qt, names, &bools) {
            Ok(s) => (
                Some(s),
                nocase.then(|| "collation dropped: Postgres compares exactly".to_string()),
            ),
            Err(why) => (None, Some(why)),
        };
        indexes.push(IndexPlan {
            source_name: ix.name.clone(),
            target_name: name,
            kind: "index".into(),
            sql,
            note,
        });
    }
    // Foreign keys, with orphans found on the source first: one anti-join
    // per foreign key through the parent's key index.
    let mut foreign_keys = Vec::new();
    for fk in &t.foreign_keys {
        let fname = rel.map(&format!(
            "{target}_{}_fkey",
            fk.from
                .iter()
                .map(|c| names
                    .column(&t.name, c)
                    .cloned()
                    .unwrap_or_else(|| c.clone()))
                .collect::<Vec<_>>()
                .join("_")
        ));
        let (mut n_orph, mut rowids) = (0, Vec::new());
        let (sql, problem) = match fk_sql(fk, t, source, names, &qt, &fname, schema) {
            Ok((sql, parent, to)) => {
                let t0 = std::time::Instant::now();
                let found = profile::orphans(conn, t, &fk.from, parent, &to);
                timings.orphans += t0.elapsed();
                match found {
                    Ok((n, r)) => {
                        n_orph = n;
                        rowids = r;
                        (Some(sql), None)
                    }
                    Err(e) => (
                        Some(sql),
                        Some(format!("cannot look for orphan rows in the source: {e}")),
                    ),
                }
            }
            Err(why) => (None, Some(why)),
        };
        foreign_keys.push(FkPlan {
            target_name: fname,
            columns: fk.from.clone(),
            ref_table: fk.table.clone(),
            sql,
            orphans: n_orph,
            orphan_rowids: rowids,
            problem,
        });
    }
    let mut checks = Vec::new();
    for (i, ch) in t.checks.iter().enumerate() {
        let name = rel.map(&format!(
            "{target}_check{}",
            if i == 0 {
                String::new()
            } else {
                (i + 1).to_string()
            }
        ));
        let expr = translate_expr(ch, Some(&t.name), names);
        checks.push(CheckPlan {
            target_name: name.clone(),
            source: ch.clone(),
            sql: format!(
                "ALTER TABLE {qt} ADD CONSTRAINT {} CHECK ({expr})",
                ident::quote(&name)
            ),
        });
    }
    Ok(TablePlan {
        source_name: t.name.clone(),
        target_name: target,
        columns,
        key,
        rows: prof.rows,
        primary_key,
        identity,
        indexes,
        foreign_keys,
        checks,
        notes,
    })
}

/// The `ALTER TABLE .. ADD CONSTRAINT .. FOREIGN KEY` of `fk`, with the
/// parent table and the referenced columns (SQLite names), or why there is
/// none. Postgres requires the referenced columns to be exactly the parent's
/// primary key or one of its unique constraints or indexes; SQLite does not
/// (it reports "foreign key mismatch" only when the key is checked).
fn fk_sql<'s>(
    fk: &source::ForeignKey,
    t: &Table,
    source: &'s Source,
    names: &Names<'_>,
    qt: &str,
    fname: &str,
    schema: &str,
) -> Result<(String, &'s Table, Vec<String>), String> {
    let parent = source
        .table(&fk.table)
        .ok_or_else(|| format!("references table {}, which does not exist", fk.table))?;
    let ptarget = names
        .table(&parent.name)
        .ok_or_else(|| format!("references table {}, which is not migrated", parent.name))?;
    let to: Vec<String> = if fk.to.iter().all(Option::is_none) {
        if parent.primary_key.is_empty() {
            return Err(format!(
                "references the primary key of {}, which has none",
                parent.name
            ));
        }
        parent.primary_key.clone()
    } else {
        fk.to
            .iter()
            .map(|c| c.clone().unwrap_or_default())
            .collect()
    };
    if to.len() != fk.from.len() {
        return Err("column count differs from the referenced key".into());
    }
    if !is_unique_key(parent, &to) {
        let (from, to) = (fk.from.join(", "), to.join(", "));
        let p = &parent.name;
        return Err(format!(
            "foreign key {} ({from}) references {p} ({to}), which is not a primary key or unique constraint of {p}; Postgres requires one: add a UNIQUE constraint on {p} ({to}) after checking the values are unique, then add the foreign key by hand",
            t.name
        ));
    }
    let from_cols: Result<Vec<String>, String> = fk
        .from
        .iter()
        .map(|c| {
            names
                .column(&t.name, c)
                .map(|n| ident::quote(n))
                .ok_or_else(|| format!("no column {c}"))
        })
        .collect();
    let to_cols: Result<Vec<String>, String> = to
        .iter()
        .map(|c| {
            names
                .column(&parent.name, c)
                .map(|n| ident::quote(n))
                .ok_or_else(|| format!("referenced column {}.{c} does not exist", parent.name))
        })
        .collect();
    let action = |a: &str| -> &'static str {
        match a.to_ascii_uppercase().as_str() {
            "CASCADE" => " CASCADE",
            "SET NULL" => " SET NULL",
            "SET DEFAULT" => " SET DEFAULT",
            "RESTRICT" => " RESTRICT",
            _ => " NO ACTION",
        }
    };
    let sql = format!(
        "ALTER TABLE {qt} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE{} ON DELETE{} NOT VALID",
        ident::quote(fname),
        from_cols?.join(", "),
        ident::qualified(schema, ptarget),
        to_cols?.join(", "),
        action(&fk.on_update),
        action(&fk.on_delete),
    );
    Ok((sql, parent, to))
}

/// Whether `cols` (in any order) are exactly the primary key of `t` or the
/// columns of one of its unique, non-partial, expression-free indexes: what
/// Postgres accepts as the target of a foreign key.
fn is_unique_key(t: &Table, cols: &[String]) -> bool {
    let set = |it: &mut dyn Iterator<Item = &str>| -> BTreeSet<String> {
        it.map(str::to_ascii_lowercase).collect()
    };
    let want = set(&mut cols.iter().map(String::as_str));
    if want.len() != cols.len() {
        return false;
    }
    let pk = set(&mut t.primary_key.iter().map(String::as_str));
    if pk == want {
        return true;
    }
    t.indexes.iter().any(|ix| {
        ix.unique
            && !ix.partial
            && ix.columns.len() == cols.len()
            && ix.columns.iter().all(|c| c.name.is_some())
            && set(&mut ix.columns.iter().filter_map(|c| c.name.as_deref())) == want
    })
}

fn translate_index(
    ix: &source::Index,
    t: &Table,
    name: &str,
    qt: &str,
    names: &Names<'_>,
    bools: &[&str],
) -> Result<String, String> {
    let sql = ix.sql.as_deref().ok_or("automatic index without SQL")?;
    // CREATE [UNIQUE] INDEX [IF NOT EXISTS] name ON table (parts) [WHERE expr]
    let open = find_on_paren(sql).ok_or("cannot find the indexed columns")?;
    let close = source::matching_paren(sql, open).ok_or("unbalanced parentheses")?;
    let parts = split_top(&sql[open + 1..close]);
    let mut out_parts = Vec::new();
    for part in parts {
        let p = strip_collate(part.trim());
        out_parts.push(translate_expr(&p, Some(&t.name), names));
    }
    let rest = sql[close + 1..].trim();
    let mut where_clause = String::new();
    if !rest.is_empty() {
        let upper = rest.to_ascii_uppercase();
        if let Some(w) = upper.strip_prefix("WHERE") {
            let expr = &rest[rest.len() - w.len()..];
            let pred = translate_expr(expr.trim(), Some(&t.name), names);
            where_clause = format!(" WHERE {}", boolean_comparisons(&pred, bools));
        }
    }
    Ok(format!(
        "CREATE {}INDEX {} ON {qt} ({}){where_clause}",
        if ix.unique { "UNIQUE " } else { "" },
        ident::quote(name),
        out_parts.join(", ")
    ))
}

/// SQLite stores booleans as 0/1, so predicates compare them with integers
/// (`pinned = 1`); once the column is `boolean`, Postgres has no
/// `boolean = integer` operator. Rewrites those comparisons for the columns
/// planned as boolean.
fn boolean_comparisons(pred: &str, bools: &[&str]) -> String {
    let mut out = pred.to_string();
    for col in bools {
        let q = ident::quote(col);
        for (op, lit, truth) in [
            ("=", "1", true),
            ("==", "1", true),
            ("=", "0", false),
            ("==", "0", false),
            ("!=", "0", true),
            ("<>", "0", true),
            ("!=", "1", false),
            ("<>", "1", false),
        ] {
            for spaced in [format!("{q} {op} {lit}"), format!("{q}{op}{lit}")] {
                let with = if truth { q.clone() } else { format!("NOT {q}") };
                out = replace_whole(&out, &spaced, &with);
            }
        }
    }
    out
}

/// Replaces `from` where it is not followed by another digit (`= 1` must not
/// match inside `= 10`).
fn replace_whole(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The `(` that opens the indexed columns of `CREATE INDEX name ON table (...)`:
/// the first one after the keyword `ON`, both outside quoted names and
/// strings. Names are hostile input: a table named `t (x); DROP ...` must not
/// be taken for the column list.
fn find_on_paren(sql: &str) -> Option<usize> {
    let b = sql.as_bytes();
    let mut quote: Option<u8> = None;
    let mut seen_on = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == q || (q == b'[' && c == b']') {
                quote = None;
            }
        } else {
            match c {
                b'\'' | b'"' | b'`' | b'[' => quote = Some(c),
                b'(' if seen_on => return Some(i),
                b'O' | b'o'
                    if !seen_on
                        && b.get(i + 1).is_some_and(|n| n.eq_ignore_ascii_case(&b'N'))
                        && (i == 0
                            || matches!(
                                b[i - 1],
                                b' ' | b'\t' | b'\n' | b'\r' | b'"' | b']' | b'`'
                            ))
                        && b.get(i + 2).is_none_or(|n| {
                            matches!(n, b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'[' | b'`')
                        }) =>
                {
                    seen_on = true;
                    i += 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn find_word(upper: &str, w: &str) -> Option<usize> {
    let b = upper.as_bytes();
    let mut start = 0;
    while let Some(i) = upper[start..].find(w) {
        let at = start + i;
        let ok_b = at == 0
            || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'"');
        let end = at + w.len();
        let ok_a =
            end >= b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'"');
        if ok_b && ok_a {
            return Some(at);
        }
        start = end;
    }
    None
}

fn strip_collate(p: &str) -> String {
    let upper = p.to_ascii_uppercase();
    match find_word(&upper, "COLLATE") {
        Some(i) => {
            let after = p[i + 7..].trim_start();
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            format!("{} {}", p[..i].trim_end(), after[end..].trim())
                .trim()
                .to_string()
        }
        None => p.to_string(),
    }
}

/// Splits on commas outside parentheses and quotes.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    let mut q: Option<char> = None;
    for ch in s.chars() {
        if let Some(qc) = q {
            cur.push(ch);
            if ch == qc || (qc == '[' && ch == ']') {
                q = None;
            }
            continue;
        }
        match ch {
            '\'' | '"' | '`' | '[' => {
                q = Some(ch);
                cur.push(ch);
            }
            '(' => {
                depth += 1;
                cur.push(ch);
            }
            ')' => {
                depth -= 1;
                cur.push(ch);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Translates a SQLite expression or query to Postgres: identifiers are
/// mapped to their Postgres names (quoted), `==` becomes `=`, `IFNULL`
/// becomes `COALESCE`. Anything else is left as written; Postgres judges it
/// when the object is created, and failures are reported.
fn translate_expr(sql: &str, table: Option<&str>, names: &Names<'_>) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 16);
    let mut i = 0;
    let mut prev_word = String::new();
    let map_ident = |raw: &str, quoted: bool, next_is_paren: bool, prev: &str| -> String {
        if !quoted && next_is_paren {
            return match raw.to_ascii_lowercase().as_str() {
                "ifnull" => "coalesce".into(),
                _ => raw.to_string(),
            };
        }
        if let Some(t) = table {
            if let Some(c) = names.column(t, raw) {
                return ident::quote(c);
            }
        }
        if let Some(t) = names.table(raw) {
            return ident::quote(t);
        }
        if let Some(c) = names.any_column(raw) {
            return ident::quote(c);
        }
        if quoted {
            let _ = prev;
            ident::quote(&names.fold(raw))
        } else {
            raw.to_string()
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let mut name = String::new();
                i += 1;
                let start = i;
                let mut seg = start;
                while i < b.len() {
                    if b[i] == close {
                        if close != b']' && i + 1 < b.len() && b[i + 1] == close {
                            name.push_str(&sql[seg..=i]);
                            i += 2;
                            seg = i;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                name.push_str(&sql[seg..i.min(b.len())]);
                i = (i + 1).min(b.len());
                let next_paren = sql[i..].trim_start().starts_with('(');
                out.push_str(&map_ident(&name, true, next_paren, &prev_word));
                prev_word.clear();
            }
            b'=' if i + 1 < b.len() && b[i + 1] == b'=' => {
                out.push('=');
                i += 2;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &sql[start..i];
                let next_paren = sql[i..].trim_start().starts_with('(');
                if is_keyword(word) {
                    out.push_str(word);
                } else {
                    out.push_str(&map_ident(word, false, next_paren, &prev_word));
                }
                prev_word = word.to_ascii_uppercase();
            }
            _ if c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn is_keyword(w: &str) -> bool {
    const KW: &[&str] = &[
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "NULL",
        "IS",
        "IN",
        "AS",
        "ON",
        "JOIN",
        "LEFT",
        "RIGHT",
        "INNER",
        "OUTER",
        "CROSS",
        "FULL",
        "GROUP",
        "BY",
        "ORDER",
        "HAVING",
        "LIMIT",
        "OFFSET",
        "UNION",
        "ALL",
        "DISTINCT",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "LIKE",
        "BETWEEN",
        "EXISTS",
        "ASC",
        "DESC",
        "TRUE",
        "FALSE",
        "CAST",
        "INTERSECT",
        "EXCEPT",
        "USING",
        "NATURAL",
        "WITH",
        "RECURSIVE",
        "ESCAPE",
        "COLLATE",
        "GLOB",
        "REGEXP",
        "ISNULL",
        "NOTNULL",
        "VALUES",
        "CURRENT_TIMESTAMP",
        "CURRENT_DATE",
        "CURRENT_TIME",
        "INTEGER",
        "TEXT",
        "REAL",
        "NUMERIC",
        "BLOB",
        "FILTER",
        "OVER",
        "PARTITION",
    ];
    KW.iter().any(|k| k.eq_ignore_ascii_case(w))
}

/// The `SELECT ...` body of a `CREATE VIEW`, translated, or `None` when the
/// statement cannot be parsed.
fn translate_view(sql: &str, names: &Names<'_>) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    // The first top-level AS after the view name (and its optional column list).
    let mut depth = 0;
    let b = upper.as_bytes();
    let mut q: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(qc) = q {
            if c == qc || (qc == b'[' && c == b']') {
                q = None;
            }
        } else {
            match c {
                b'\'' | b'"' | b'`' | b'[' => q = Some(c),
                b'(' => depth += 1,
                b')' => depth -= 1,
                b'A' if depth == 0
                    && upper[i..].starts_with("AS")
                    && i > 0
                    && !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
                    && b.get(i + 2)
                        .is_some_and(|n| !(n.is_ascii_alphanumeric() || *n == b'_')) =>
                {
                    let body = sql[i + 2..].trim().trim_end_matches(';');
                    return Some(translate_expr(body, None, names));
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Translates a column default: `CURRENT_TIMESTAMP` and `datetime('now')`
/// and friends become `now()`-based expressions of the column's type; a
/// literal is cast with the column's own rule and written as a Postgres
/// literal. `Ok(None)` means no default (NULL).
fn translate_default(d: &str, col: &ColumnPlan, class: Class) -> Result<Option<String>, String> {
    let mut s = d.trim();
    while s.starts_with('(') && source::matching_paren(s, 0) == Some(s.len() - 1) {
        s = s[1..s.len() - 1].trim();
    }
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
        .replace('"', "'");
    if compact == "null" {
        return Ok(None);
    }
    enum Now {
        Stamp,
        Millis,
        Date,
        Time,
        Epoch,
        Local,
    }
    let now = match compact.as_str() {
        "current_timestamp" | "datetime('now')" | "datetime('now','utc')" => Some(Now::Stamp),
        "strftime('%y-%m-%d%h:%m:%f','now')" | "strftime('%y-%m-%dt%h:%m:%f','now')" => {
            Some(Now::Millis)
        }
        "current_date" | "date('now')" => Some(Now::Date),
        "current_time" | "time('now')" => Some(Now::Time),
        "strftime('%s','now')" | "unixepoch()" | "unixepoch('now')" => Some(Now::Epoch),
        "datetime('now','localtime')" => Some(Now::Local),
        _ => None,
    };
    if let Some(n) = now {
        let utc = "(now() AT TIME ZONE 'UTC')";
        return match (col.pg_type, n) {
            (PgType::Timestamptz, _) => Ok(Some("now()".into())),
            (PgType::Timestamp, Now::Local) => Ok(Some("LOCALTIMESTAMP".into())),
            (PgType::Timestamp, Now::Stamp | Now::Millis) => Ok(Some(utc.into())),
            (PgType::Date, Now::Date | Now::Stamp) => Ok(Some(format!("({utc})::date"))),
            (PgType::Text, Now::Stamp) => {
                Ok(Some(format!("to_char({utc}, 'YYYY-MM-DD HH24:MI:SS')")))
            }
            (PgType::Text, Now::Millis) => {
                Ok(Some(format!("to_char({utc}, 'YYYY-MM-DD HH24:MI:SS.MS')")))
            }
            (PgType::Text, Now::Date) => Ok(Some(format!("to_char({utc}, 'YYYY-MM-DD')"))),
            (PgType::Text, Now::Time) => Ok(Some(format!("to_char({utc}, 'HH24:MI:SS')"))),
            (PgType::Text, Now::Local) => Ok(Some(
                "to_char(LOCALTIMESTAMP, 'YYYY-MM-DD HH24:MI:SS')".into(),
            )),
            (PgType::Int8 | PgType::Numeric | PgType::Float8, Now::Epoch) => {
                Ok(Some("(extract(epoch from now())::bigint)".into()))
            }
            (ty, _) => Err(format!("the current time does not fit column type {ty}")),
        };
    }
    // A literal: read it as SQLite would store it in this column.
    let lit = parse_literal(s).ok_or("not a constant")?;
    let stored = apply_affinity(lit, class);
    let v = col.cast(stored.as_ref()).map_err(|e| e.reason)?;
    Ok(Some(sql_literal(&v, col.pg_type)))
}

enum Lit {
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Lit {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Lit::Int(i) => ValueRef::Integer(*i),
            Lit::Real(f) => ValueRef::Real(*f),
            Lit::Text(s) => ValueRef::Text(s.as_bytes()),
            Lit::Blob(b) => ValueRef::Blob(b),
        }
    }
}

fn parse_literal(s: &str) -> Option<Lit> {
    if s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')))
    {
        let q = &s[..1];
        return Some(Lit::Text(s[1..s.len() - 1].replace(&format!("{q}{q}"), q)));
    }
    if (s.starts_with("x'") || s.starts_with("X'")) && s.ends_with('\'') {
        let hex = &s[2..s.len() - 1];
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        return bytes.map(Lit::Blob);
    }
    if s.eq_ignore_ascii_case("true") {
        return Some(Lit::Int(1));
    }
    if s.eq_ignore_ascii_case("false") {
        return Some(Lit::Int(0));
    }
    let t = s.strip_prefix('+').unwrap_or(s);
    if let Ok(i) = t.parse::<i64>() {
        return Some(Lit::Int(i));
    }
    if profile::is_decimal(t) {
        return t.parse::<f64>().ok().map(Lit::Real);
    }
    None
}

/// SQLite's type affinity applied to a literal (numeric text in a numeric
/// column is stored as a number).
fn apply_affinity(l: Lit, class: Class) -> Lit {
    let numeric = matches!(
        class,
        Class::Int | Class::Real | Class::Decimal | Class::Bool | Class::DateOnly | Class::DateTime
    );
    match l {
        Lit::Text(s) if numeric && profile::is_decimal(s.trim()) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Lit::Int(i)
            } else if let Ok(f) = t.parse::<f64>() {
                if class != Class::Real && f.fract() == 0.0 && f.abs() < 9.2e18 {
                    Lit::Int(f as i64)
                } else {
                    Lit::Real(f)
                }
            } else {
                Lit::Text(s)
            }
        }
        Lit::Int(i) if class == Class::Real => Lit::Real(i as f64),
        Lit::Text(s) if class == Class::Text => Lit::Text(s),
        Lit::Int(i) if class == Class::Text => Lit::Text(i.to_string()),
        other => other,
    }
}

/// A Postgres literal for `v` in a column of type `ty`.
pub fn sql_literal(v: &Value, ty: PgType) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!(
            "'{}'::double precision",
            real_text(*f).replace("inf", "Infinity")
        ),
        Value::Numeric(s) => format!("'{s}'::numeric"),
        Value::Text(s) => ident::literal(s),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("'\\x{hex}'::bytea")
        }
        // Years 1..9999 read naturally as text; others (year 0 is 1 BC in
        // Postgres's calendar) are written as an offset from the epoch.
        Value::Timestamptz(us) | Value::Timestamp(us)
            if (-62_135_596_800_000_000..253_402_300_800_000_000).contains(us) =>
        {
            format!("'{}'::{}", v.display_short(64), ty.sql_name())
        }
        Value::Timestamptz(us) => {
            format!("(TIMESTAMPTZ 'epoch' + {us} * INTERVAL '1 microsecond')")
        }
        Value::Timestamp(us) => format!("(TIMESTAMP 'epoch' + {us} * INTERVAL '1 microsecond')"),
        Value::Date(d) if (-719_162..2_932_897).contains(d) => {
            format!("'{}'::date", v.display_short(64))
        }
        Value::Date(d) => format!("(DATE 'epoch' + {d})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_list_of_an_index_is_found_outside_quoted_names() {
        let sql = r#"CREATE INDEX "on (a)" ON "t (x int); DROP TABLE users; --" ("c(1)", d)"#;
        let open = find_on_paren(sql).unwrap();
        assert!(
            sql[open..].starts_with(r#"("c(1)", d)"#),
            "{}",
            &sql[open..]
        );
        let sql = "create index ix on t(a)";
        assert_eq!(&sql[find_on_paren(sql).unwrap()..], "(a)");
    }

    #[test]
    fn boolean_predicates_compare_as_booleans() {
        assert_eq!(
            boolean_comparisons("\"pinned\" = 1", &["pinned"]),
            "\"pinned\""
        );
        assert_eq!(
            boolean_comparisons("\"pinned\" = 0 AND \"n\" = 1", &["pinned"]),
            "NOT \"pinned\" AND \"n\" = 1"
        );
        assert_eq!(
            boolean_comparisons("\"pinned\" = 10", &["pinned"]),
            "\"pinned\" = 10"
        );
    }

    fn prof(values: &[ValueRef<'_>]) -> ColumnProfile {
        let mut p = ColumnProfile::default();
        for (i, v) in values.iter().enumerate() {
            p.add(*v, Some(i as i64 + 1));
        }
        p
    }

    fn chosen(decl: &str, values: &[ValueRef<'_>]) -> (PgType, Option<Epoch>) {
        let (t, e, _) = choose(class_of(decl), &prof(values), true);
        (t, e)
    }

    #[test]
    fn integers_become_bigint() {
        assert_eq!(
            chosen(
                "INTEGER",
                &[ValueRef::Integer(1), ValueRef::Integer(i64::MAX)]
            )
            .0,
            PgType::Int8
        );
    }

    #[test]
    fn reals_become_double_precision_never_real() {
        assert_eq!(chosen("REAL", &[ValueRef::Real(0.1)]).0, PgType::Float8);
        assert_eq!(
            chosen("float", &[ValueRef::Real(1.5), ValueRef::Integer(3)]).0,
            PgType::Float8
        );
    }

    #[test]
    fn epoch_milliseconds_in_datetime_columns_become_timestamptz() {
        let (t, e) = chosen("DATETIME", &[ValueRef::Integer(1_414_378_823_109)]);
        assert_eq!((t, e), (PgType::Timestamptz, Some(Epoch::Millis)));
        let c = cast_value(t, e, ValueRef::Integer(1_414_378_823_109)).unwrap();
        assert_eq!(c, Value::Timestamptz(1_414_378_823_109_000));
    }

    #[test]
    fn epoch_seconds_and_julian_days_are_recognised() {
        assert_eq!(
            chosen("DATE", &[ValueRef::Integer(1_600_000_000)]),
            (PgType::Timestamptz, Some(Epoch::Seconds))
        );
        let (t, e) = chosen("TIMESTAMP", &[ValueRef::Real(2_440_588.0)]);
        assert_eq!((t, e), (PgType::Timestamptz, Some(Epoch::Julian)));
        assert_eq!(
            cast_value(t, e, ValueRef::Real(2_440_588.0)).unwrap(),
            Value::Timestamptz(43_200_000_000)
        );
    }

    #[test]
    fn iso_text_dates_choose_date_timestamp_or_timestamptz() {
        assert_eq!(
            chosen("DATE", &[ValueRef::Text(b"2020-01-02")]).0,
            PgType::Date
        );
        assert_eq!(
            chosen(
                "DATETIME",
                &[
                    ValueRef::Text(b"2020-01-02 10:00:00"),
                    ValueRef::Text(b"2020-01-02")
                ]
            )
            .0,
            PgType::Timestamp
        );
        assert_eq!(
            chosen("DATETIME", &[ValueRef::Text(b"2020-01-02T10:00:00Z")]).0,
            PgType::Timestamptz
        );
        assert_eq!(
            chosen("", &[ValueRef::Text(b"20110716014006")]).0,
            PgType::Timestamptz
        );
    }

    #[test]
    fn mixed_zone_and_naive_dates_are_widened_to_text() {
        assert_eq!(
            chosen(
                "DATETIME",
                &[
                    ValueRef::Text(b"2020-01-02T10:00:00Z"),
                    ValueRef::Text(b"2020-01-02 10:00:00")
                ]
            )
            .0,
            PgType::Text
        );
    }

    #[test]
    fn text_declared_columns_keep_their_dates_as_text() {
        assert_eq!(
            chosen("TEXT", &[ValueRef::Text(b"2020-01-02")]).0,
            PgType::Text
        );
    }

    #[test]
    fn boolean_columns_take_0_1_t_f() {
        let vals = [
            ValueRef::Integer(0),
            ValueRef::Integer(1),
            ValueRef::Text(b"t"),
        ];
        assert_eq!(chosen("BOOLEAN", &vals).0, PgType::Bool);
        assert_eq!(
            cast_value(PgType::Bool, None, ValueRef::Text(b"F")).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(chosen("BOOLEAN", &[ValueRef::Integer(2)]).0, PgType::Int8);
    }

    #[test]
    fn decimals_become_numeric_without_rounding() {
        assert_eq!(
            chosen(
                "DECIMAL(5,2)",
                &[ValueRef::Real(2.99), ValueRef::Integer(3)]
            )
            .0,
            PgType::Numeric
        );
        assert_eq!(
            cast_value(PgType::Numeric, None, ValueRef::Real(2.99)).unwrap(),
            Value::Numeric("2.99".into())
        );
        assert_eq!(
            cast_value(
                PgType::Numeric,
                None,
                ValueRef::Text(b"12345678901234567890.123456789")
            )
            .unwrap(),
            Value::Numeric("12345678901234567890.123456789".into())
        );
    }

    #[test]
    fn text_in_integer_column_widens_to_text_or_rejects_without_widen() {
        let vals = [ValueRef::Integer(1), ValueRef::Text(b"abc")];
        assert_eq!(chosen("INTEGER", &vals).0, PgType::Text);
        let (t, _, _) = choose(Class::Int, &prof(&vals), false);
        assert_eq!(t, PgType::Int8);
        assert!(cast_value(PgType::Int8, None, ValueRef::Text(b"abc")).is_err());
    }

    #[test]
    fn big_integers_mixed_with_reals_become_numeric() {
        let vals = [
            ValueRef::Integer(29_834_776_566_209_834),
            ValueRef::Real(1.5),
        ];
        assert_eq!(chosen("INTEGER", &vals).0, PgType::Numeric);
    }

    #[test]
    fn nul_and_invalid_utf8_follow_the_policy_not_widening() {
        let vals = [ValueRef::Text(b"ok"), ValueRef::Text(b"\xff\xfe")];
        assert_eq!(chosen("TEXT", &vals).0, PgType::Text);
        let e = cast_value(PgType::Text, None, ValueRef::Text(b"\xff\xfe")).unwrap_err();
        assert!(e.reason.contains("not valid UTF-8"), "{}", e.reason);
        let e = cast_value(PgType::Text, None, ValueRef::Text(b"a\0b")).unwrap_err();
        assert!(e.reason.contains("NUL"), "{}", e.reason);
    }

    #[test]
    fn blobs_become_bytea_and_utf8_blobs_in_text_columns_become_text() {
        assert_eq!(
            chosen("BLOB", &[ValueRef::Blob(b"\x00\x01")]).0,
            PgType::Bytea
        );
        assert_eq!(
            chosen("TEXT", &[ValueRef::Text(b"a"), ValueRef::Blob(b"{}")]).0,
            PgType::Text
        );
        assert_eq!(
            chosen("TEXT", &[ValueRef::Text(b"a"), ValueRef::Blob(b"\x00")]).0,
            PgType::Bytea
        );
    }

    #[test]
    fn infinity_is_kept_in_double_precision() {
        assert_eq!(
            chosen("REAL", &[ValueRef::Real(f64::INFINITY)]).0,
            PgType::Float8
        );
        assert_eq!(
            cast_value(PgType::Float8, None, ValueRef::Real(f64::NEG_INFINITY)).unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn predicted_acceptance_matches_cast() {
        let samples: Vec<ValueRef<'_>> = vec![
            ValueRef::Integer(0),
            ValueRef::Integer(1),
            ValueRef::Integer(1_600_000_000),
            ValueRef::Real(2.5),
            ValueRef::Real(f64::INFINITY),
            ValueRef::Text(b"t"),
            ValueRef::Text(b"12.5"),
            ValueRef::Text(b"2020-01-01"),
            ValueRef::Text(b"2020-01-01 10:00"),
            ValueRef::Text(b"2020-01-01T10:00Z"),
            ValueRef::Text(b"20200101100000"),
            ValueRef::Text(b"hello"),
            ValueRef::Text(b"a\0"),
            ValueRef::Text(b"\xff"),
            ValueRef::Blob(b"abc"),
            ValueRef::Blob(b"\x00\xff"),
        ];
        for v in &samples {
            let p = prof(&[*v]);
            let k = profile::classify(*v);
            for ty in [
                PgType::Bool,
                PgType::Int4,
                PgType::Int8,
                PgType::Float8,
                PgType::Numeric,
                PgType::Text,
                PgType::Bytea,
                PgType::Timestamptz,
                PgType::Timestamp,
                PgType::Date,
            ] {
                for e in [None, Some(Epoch::Seconds)] {
                    assert_eq!(
                        accepts(ty, e, k, &p),
                        cast_value(ty, e, *v).is_ok(),
                        "{v:?} as {ty} epoch {e:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn defaults_translate_now_and_literals() {
        let mut col = ColumnPlan {
            source_name: "c".into(),
            target_name: "c".into(),
            decl_type: "DATETIME".into(),
            pg_type: PgType::Timestamp,
            epoch: None,
            policy: Policy::Reject,
            not_null: false,
            default: None,
            reason: String::new(),
            evidence: BTreeMap::new(),
            date_formats: BTreeMap::new(),
            predicted: Vec::new(),
        };
        assert_eq!(
            translate_default("CURRENT_TIMESTAMP", &col, Class::DateTime)
                .unwrap()
                .unwrap(),
            "(now() AT TIME ZONE 'UTC')"
        );
        assert_eq!(
            translate_default("(datetime('now', 'localtime'))", &col, Class::DateTime)
                .unwrap()
                .unwrap(),
            "LOCALTIMESTAMP"
        );
        col.pg_type = PgType::Int8;
        assert_eq!(
            translate_default("'0'", &col, Class::Int).unwrap().unwrap(),
            "0"
        );
        assert!(translate_default("'\"0\"'", &col, Class::Int).is_err());
        col.pg_type = PgType::Text;
        assert_eq!(
            translate_default("\"\"", &col, Class::Text)
                .unwrap()
                .unwrap(),
            "''"
        );
        col.pg_type = PgType::Timestamptz;
        col.epoch = Some(Epoch::Seconds);
        assert_eq!(
            translate_default("0", &col, Class::DateTime)
                .unwrap()
                .unwrap(),
            "'1970-01-01 00:00:00.000000+00'::timestamp with time zone"
        );
    }
}
