//! What verify found: per-table counts, differing rows, structure problems.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// The result of one verification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The migration run whose plan, rejects and watermarks were used, if any.
    pub run: Option<String>,
    /// Where the plan came from: `run <id>` or `recomputed from the source`.
    pub plan_source: String,
    /// The target schema.
    pub schema: String,
    /// One entry per compared table, in plan order.
    pub tables: Vec<TableReport>,
    /// Missing or wrong structure (tables, columns, keys, indexes, FKs, sequences).
    pub structure: Vec<StructureIssue>,
    /// Differing (and rejected) rows, at most `max_diffs` of them.
    pub diffs: Vec<RowDiff>,
    /// How many differing rows were found but not listed because of `max_diffs`.
    pub diffs_not_listed: u64,
    /// Total wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// How a table was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Integer key (the rowid): checksums over key ranges, bisected on the server side.
    KeyRange,
    /// Other primary keys: checksums over buckets of the key's hash.
    KeyHash,
    /// No primary key: rows compared as multisets (duplicates count).
    Multiset,
}

/// Counts for one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    /// The source (SQLite) table name.
    pub table: String,
    /// The target table name (unqualified).
    pub target: String,
    /// How it was compared.
    pub method: Method,
    /// Source rows compared (within the watermark, sampled ranges only with `--sample`).
    pub rows_compared: u64,
    /// Rows equal on both sides.
    pub equal: u64,
    /// Source rows absent from the target (not counting rejected ones).
    pub missing: u64,
    /// Target rows absent from the source.
    pub extra: u64,
    /// Rows present on both sides with different values.
    pub changed: u64,
    /// Sharded verify: rows found on a shard their key does not map to.
    #[serde(default)]
    pub misplaced: u64,
    /// Source rows the migration rejected (expected absent; not differences).
    pub rejected: u64,
    /// Target rows beyond the watermark: written after the migration, not compared.
    pub new_since_watermark: u64,
    /// The watermark used (highest key the migration copied), if any.
    pub watermark: Option<i64>,
    /// Fraction of key ranges checked with `--sample` (None: all of them).
    pub sampled_pct: Option<f64>,
    /// Differing buckets that were detected but whose rows were not resolved
    /// (memory bound hit); their rows are counted in missing/extra only as a
    /// lower bound.
    pub unresolved_buckets: u64,
    /// Why the data of this table could not be compared, if it could not.
    pub skipped: Option<String>,
    /// Wall time for this table in milliseconds.
    pub time_ms: u64,
}

impl TableReport {
    pub(crate) fn new(table: &str, target: &str, method: Method) -> TableReport {
        TableReport {
            table: table.to_owned(),
            target: target.to_owned(),
            method,
            rows_compared: 0,
            equal: 0,
            missing: 0,
            extra: 0,
            changed: 0,
            misplaced: 0,
            rejected: 0,
            new_since_watermark: 0,
            watermark: None,
            sampled_pct: None,
            unresolved_buckets: 0,
            skipped: None,
            time_ms: 0,
        }
    }

    /// Whether this table has any difference (rejected rows and new writes are not differences).
    pub fn differs(&self) -> bool {
        self.missing + self.extra + self.changed + self.misplaced + self.unresolved_buckets > 0
            || self.skipped.is_some()
    }
}

/// What kind of difference a row has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// In the source, not in the target.
    Missing,
    /// In the target, not in the source.
    Extra,
    /// In both, with different values.
    Changed,
    /// Rejected by the migration: expected absent (not a difference).
    Rejected,
    /// Sharded verify: on a shard its key does not map to (`reason` names
    /// the shard it was found on and the one it belongs on).
    Misplaced,
}

/// One differing (or rejected) row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowDiff {
    /// The source table.
    pub table: String,
    /// The primary key as an object of target column names to values
    /// (`null` for a table without a primary key).
    pub pk: serde_json::Value,
    /// The SQLite rowid, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rowid: Option<i64>,
    /// Missing, extra, changed or rejected.
    pub kind: DiffKind,
    /// For changed rows: the columns that differ, with both values.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub columns: Vec<ColumnDiff>,
    /// For missing/extra rows of a table without a key: the row's values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<serde_json::Value>,
    /// For rejected rows: why (the reject record's reason or the cast error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a table without a key: how many copies differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<u64>,
}

/// One differing column of a changed row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnDiff {
    /// The target column name.
    pub column: String,
    /// The source value after the cast, rendered (bytea over the mask size shortened).
    pub source: String,
    /// The target value, rendered the same way.
    pub target: String,
}

/// A structure problem on the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StructureIssue {
    /// The source table it concerns (empty for schema-wide ones).
    pub table: String,
    /// What is wrong (`missing index`, `sequence behind max(id)`, ...).
    pub kind: String,
    /// Details: names, expected and found.
    pub detail: String,
    /// Problems are differences (exit 1); warnings are printed but do not fail.
    pub warning: bool,
}

impl Report {
    /// Whether source and target are equal: no differing row and no structure problem.
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(|t| !t.differs()) && self.structure.iter().all(|s| s.warning)
    }

    /// The process exit code: 0 equal, 1 differences found.
    pub fn exit_code(&self) -> u8 {
        if self.is_equal() {
            0
        } else {
            1
        }
    }

    /// Prints the per-table summary (and structure problems) as plain text.
    pub fn write_summary(&self, mut w: impl Write) -> std::io::Result<()> {
        writeln!(
            w,
            "verify: schema {}, plan {}{}",
            self.schema,
            self.plan_source,
            self.run
                .as_deref()
                .map(|r| format!(", run {r}"))
                .unwrap_or_default()
        )?;
        let width = self
            .tables
            .iter()
            .map(|t| t.table.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            w,
            "{:<width$}  {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "table", "compared", "equal", "missing", "extra", "changed", "rejected", "new", "time"
        )?;
        for t in &self.tables {
            writeln!(
                w,
                "{:<width$}  {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.2}s{}{}{}{}",
                t.table,
                t.rows_compared,
                t.equal,
                t.missing,
                t.extra,
                t.changed,
                t.rejected,
                t.new_since_watermark,
                t.time_ms as f64 / 1000.0,
                if t.misplaced > 0 {
                    format!("  ({} misplaced)", t.misplaced)
                } else {
                    String::new()
                },
                t.sampled_pct
                    .map(|p| format!("  (sampled {p}%)"))
                    .unwrap_or_default(),
                if t.unresolved_buckets > 0 {
                    format!("  ({} buckets unresolved)", t.unresolved_buckets)
                } else {
                    String::new()
                },
                t.skipped
                    .as_deref()
                    .map(|s| format!("  NOT COMPARED: {s}"))
                    .unwrap_or_default(),
            )?;
        }
        for s in &self.structure {
            writeln!(
                w,
                "{}: {}{}{}: {}",
                if s.warning { "warning" } else { "structure" },
                s.table,
                if s.table.is_empty() { "" } else { ": " },
                s.kind,
                s.detail
            )?;
        }
        let listed = self
            .diffs
            .iter()
            .filter(|d| d.kind != DiffKind::Rejected)
            .count();
        if listed > 0 || self.diffs_not_listed > 0 {
            writeln!(w, "differing rows:")?;
            for d in self
                .diffs
                .iter()
                .filter(|d| d.kind != DiffKind::Rejected)
                .take(20)
            {
                let cols: Vec<String> = d
                    .columns
                    .iter()
                    .map(|c| format!("{}: {} -> {}", c.column, c.source, c.target))
                    .collect();
                writeln!(
                    w,
                    "  {} {:?} pk={}{}{}{}",
                    d.table,
                    d.kind,
                    d.pk,
                    d.rowid.map(|r| format!(" rowid={r}")).unwrap_or_default(),
                    if cols.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", cols.join(", "))
                    },
                    match (&d.reason, d.kind) {
                        (Some(r), DiffKind::Misplaced) => format!(": {r}"),
                        _ => String::new(),
                    }
                )?;
            }
            let more = listed.saturating_sub(20) as u64 + self.diffs_not_listed;
            if more > 0 {
                writeln!(w, "  ... and {more} more (see --report FILE)")?;
            }
        }
        writeln!(
            w,
            "{} in {:.2}s",
            if self.is_equal() {
                "EQUAL"
            } else {
                "DIFFERENT"
            },
            self.elapsed_ms as f64 / 1000.0
        )
    }
}
