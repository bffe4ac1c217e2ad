//! The migration report: per-table counts and times, the cast plan, the
//! identifier map, what was skipped, what `finish` could not do, and the
//! exit code. JSON with `--report FILE`; a short summary on stderr.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::finish::{FinishReport, Outcome, StepKind};
use crate::plan::Plan;

/// Exit code: every row migrated.
pub const EXIT_OK: u8 = 0;
/// Exit code: failed (with what to do next).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: completed, with rows in the reject file.
pub const EXIT_REJECTS: u8 = 3;
/// Exit code: the rows are loaded but a primary key, unique constraint or
/// foreign key failed to build: the target is not a complete copy.
pub const EXIT_KEYS: u8 = 4;

/// One table's numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableReport {
    /// SQLite name.
    pub source_name: String,
    /// Postgres name.
    pub target_name: String,
    /// Rows read from the source.
    pub rows_read: u64,
    /// Rows written to the target.
    pub rows_written: u64,
    /// Rows left out and written to the reject file.
    pub rows_rejected: u64,
    /// Values stored as NULL (policy null) and recorded in the reject file.
    pub values_nulled: u64,
    /// Seconds spent loading it.
    pub seconds: f64,
}

/// Seconds spent in each phase of a run. A resumed run reuses the plan of
/// the run it resumes, so its inspect, profile and plan phases are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Phases {
    /// Reading the source's schema.
    pub inspect: f64,
    /// Scanning every row to profile the values.
    pub profile: f64,
    /// The rest of planning: types, names, keys, the foreign-key orphan
    /// check, chunking.
    pub plan: f64,
    /// Creating the tables and copying the rows.
    pub data: f64,
    /// Keys, indexes, constraints, foreign keys, sequences, views, ANALYZE.
    pub finish: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The source file.
    pub source: String,
    /// The target, password masked.
    pub target: String,
    /// The target schema.
    pub schema: String,
    /// The run id in `dbtool.migration_runs`, when recorded.
    pub run_id: Option<i64>,
    /// Per-table numbers.
    pub tables: Vec<TableReport>,
    /// The cast plan (types, evidence, identifier map, skipped objects).
    pub plan: Plan,
    /// What the finish phase did.
    pub finish: Option<FinishReport>,
    /// The reject file, if any rows went there.
    pub rejects_file: Option<String>,
    /// Total seconds.
    pub seconds: f64,
    /// Seconds per phase.
    #[serde(default)]
    pub phases: Phases,
    /// The error that stopped the run, if one did.
    pub error: Option<String>,
    /// 0 all rows migrated, 3 some rejected, 4 keys failed to build, 1 failed.
    pub exit_code: u8,
}

impl Report {
    /// A report for `plan` with no tables loaded yet.
    pub fn new(plan: Plan, target: &str) -> Report {
        Report {
            source: plan.source.clone(),
            target: mask_url(target),
            schema: plan.schema.clone(),
            run_id: None,
            tables: Vec::new(),
            plan,
            finish: None,
            rejects_file: None,
            seconds: 0.0,
            phases: Phases::default(),
            error: None,
            exit_code: EXIT_OK,
        }
    }

    /// The primary keys, unique constraints and foreign keys the finish
    /// phase failed to build (a foreign key created NOT VALID or skipped by
    /// the configured policy is not a failure: the plan said so).
    pub fn failed_keys(&self) -> Vec<&crate::finish::Step> {
        self.finish
            .iter()
            .flat_map(|f| f.steps.iter())
            .filter(|st| {
                st.outcome == Outcome::Failed
                    && matches!(
                        st.kind,
                        StepKind::PrimaryKey | StepKind::Unique | StepKind::ForeignKey
                    )
            })
            .collect()
    }

    /// The exit code the numbers call for: 1 with an error, 4 when a key
    /// failed to build, 3 with rejected or nulled values, else 0. Also
    /// stores it in `exit_code`.
    pub fn compute_exit_code(&mut self) -> u8 {
        self.exit_code = if self.error.is_some() {
            EXIT_FAILED
        } else if !self.failed_keys().is_empty() {
            EXIT_KEYS
        } else if self
            .tables
            .iter()
            .any(|t| t.rows_rejected > 0 || t.values_nulled > 0)
        {
            EXIT_REJECTS
        } else {
            EXIT_OK
        };
        self.exit_code
    }

    /// The summary printed on stderr: one line per table, then totals,
    /// skipped objects and finish problems.
    pub fn render_summary(&self) -> String {
        let mut s = String::new();
        let w = self
            .tables
            .iter()
            .map(|t| t.source_name.chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 40);
        let _ = writeln!(
            s,
            "{} -> {}, schema {}",
            self.source, self.target, self.schema
        );
        let _ = writeln!(
            s,
            "{:<w$}  {:>10}  {:>10}  {:>9}  {:>7}  {:>8}",
            "table", "read", "written", "rejected", "nulled", "seconds"
        );
        let (mut r, mut wr, mut rj, mut nl) = (0, 0, 0, 0);
        for t in &self.tables {
            let _ = writeln!(
                s,
                "{:<w$}  {:>10}  {:>10}  {:>9}  {:>7}  {:>8.2}",
                t.source_name,
                t.rows_read,
                t.rows_written,
                t.rows_rejected,
                t.values_nulled,
                t.seconds
            );
            r += t.rows_read;
            wr += t.rows_written;
            rj += t.rows_rejected;
            nl += t.values_nulled;
        }
        let _ = writeln!(
            s,
            "{:<w$}  {:>10}  {:>10}  {:>9}  {:>7}  {:>8.2}",
            "total", r, wr, rj, nl, self.seconds
        );
        let p = &self.phases;
        let _ = writeln!(
            s,
            "phases: inspect {:.2} s, profile {:.2} s, plan {:.2} s, data {:.2} s, finish {:.2} s",
            p.inspect, p.profile, p.plan, p.data, p.finish
        );
        for sk in &self.plan.skipped {
            if sk.kind != crate::plan::SkipKind::Internal {
                let _ = writeln!(s, "skipped {} {}: {}", sk.kind.label(), sk.name, sk.reason);
            }
        }
        if let Some(f) = &self.finish {
            // Problems, then objects created differently from the source
            // (a primary key over NULLs made UNIQUE, a collation dropped).
            let changed = f
                .steps
                .iter()
                .filter(|st| st.outcome == Outcome::Ok && st.error.is_some());
            for st in f.problems().chain(changed) {
                let what = match st.outcome {
                    Outcome::NotValid => "created NOT VALID",
                    Outcome::Skipped => "not created",
                    Outcome::Ok => "changed",
                    _ => "failed",
                };
                let _ = writeln!(
                    s,
                    "{} {} on {} {what}: {}",
                    st.kind.label(),
                    st.name,
                    st.table,
                    st.error.as_deref().unwrap_or("")
                );
            }
        }
        if rj + nl > 0 {
            let _ = writeln!(
                s,
                "{rj} rows rejected, {nl} values stored as NULL: see {}",
                self.rejects_file.as_deref().unwrap_or("the reject records")
            );
        }
        let keys = self.failed_keys();
        if !keys.is_empty() {
            let names: Vec<String> = keys
                .iter()
                .map(|st| format!("{} {}", st.kind.label(), st.name))
                .collect();
            let _ = writeln!(
                s,
                "FAILED (exit 4): the rows are loaded but {} key(s) could not be built: {}; the target lacks them. Fix the rows named above (duplicates, orphans) and add the keys, or start over",
                keys.len(),
                names.join(", ")
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}

/// dbtool's one masker (`postgres://user:***@host/db`, `password=***`),
/// under the name this module has always used.
pub use dbtool_pool::mask_password as mask_url;

/// Renders a plan for `dbtool plan`: per table, each column's cast with its
/// evidence and predicted rejects; then skipped objects and notes.
pub fn render_plan(plan: &Plan) -> String {
    let mut s = String::new();
    for t in &plan.tables {
        let rename = if t.target_name != t.source_name {
            format!(" -> {}", t.target_name)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "table {}{rename} ({} rows, read by {:?})",
            t.source_name, t.rows, t.key
        );
        for c in &t.columns {
            let rename = if c.target_name != c.source_name {
                format!(" -> {}", c.target_name)
            } else {
                String::new()
            };
            let decl = if c.decl_type.is_empty() {
                "(untyped)"
            } else {
                c.decl_type.as_str()
            };
            let mut classes: Vec<String> = Vec::new();
            for (k, n) in &c.evidence {
                classes.push(format!("{} {n}", crate::plan::kind_label(*k)));
            }
            let _ = writeln!(
                s,
                "  {}{rename}: {decl} -> {}{}  [{}]",
                c.source_name,
                c.pg_type.sql_name(),
                if c.not_null { " NOT NULL" } else { "" },
                classes.join(", ")
            );
            let _ = writeln!(s, "      {}", c.reason);
            if !c.date_formats.is_empty() {
                let f: Vec<String> = c
                    .date_formats
                    .iter()
                    .map(|(k, n)| format!("{k} ({n})"))
                    .collect();
                let _ = writeln!(s, "      date formats: {}", f.join(", "));
            }
            for p in &c.predicted {
                if p.kind == crate::profile::Kind::Null {
                    continue;
                }
                let _ = writeln!(
                    s,
                    "      PREDICTED: {} {} values will be {} (rowids {:?})",
                    p.count,
                    crate::plan::kind_label(p.kind),
                    match p.policy {
                        crate::plan::Policy::Reject => "rejected (row goes to the reject file)",
                        crate::plan::Policy::Null => "stored as NULL (recorded in the reject file)",
                        crate::plan::Policy::Fail => "fatal (policy fail)",
                    },
                    p.sample_rowids
                );
            }
        }
        for n in &t.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        for ix in &t.indexes {
            if ix.sql.is_none() || ix.note.is_some() {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    ix.kind,
                    ix.target_name,
                    ix.note.as_deref().unwrap_or("")
                );
            }
        }
        for fk in &t.foreign_keys {
            if fk.orphans > 0 {
                let _ = writeln!(
                    s,
                    "  foreign key {}: {} orphan rows (rowids {:?}); policy {:?}",
                    fk.target_name, fk.orphans, fk.orphan_rowids, plan.fk_policy
                );
            }
            if let Some(p) = &fk.problem {
                let _ = writeln!(s, "  foreign key {}: {p}", fk.target_name);
            }
        }
    }
    for sk in &plan.skipped {
        let _ = writeln!(s, "skipped {} {}: {}", sk.kind.label(), sk.name, sk.reason);
    }
    for m in &plan.identifiers {
        let _ = writeln!(
            s,
            "name {}{} {:?} -> {:?}",
            m.kind,
            m.table
                .as_deref()
                .map(|t| format!(" in {t}"))
                .unwrap_or_default(),
            m.source,
            m.target
        );
    }
    for n in &plan.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
