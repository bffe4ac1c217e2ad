//! The cast plan: for every table and column, the Postgres type, how each
//! SQLite value becomes a target [`Value`](crate::value::Value), and what happens to values that
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
//!
//! The planner is cut by concept: [`config`] (policies and overrides),
//! [`model`] (the plan itself, stored as JSON with each run), `types` (type
//! choice), `table` (per-table planning) and `translate` (SQL translation);
//! the cast itself is [`crate::cast`].

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::Connection;

use crate::ident::{self, Fold, Mapping, MappingKind, Namer};
use crate::profile;
use crate::source::{Source, Table, TableKind};
use crate::Error;

pub mod config;
pub mod model;
mod table;
mod translate;
mod types;

pub use crate::cast::{cast_value, kind_label, real_numeric, real_text, CastError, Epoch};
pub use config::{ColumnOverride, FkPolicy, PlanConfig, Policy};
pub use model::{
    CheckPlan, ColumnPlan, FkPlan, IndexKind, IndexPlan, Plan, Predicted, ReadKey, SkipKind,
    Skipped, TablePlan, ViewPlan,
};
pub use translate::sql_literal;

use model::read_rowid;
use table::plan_table;
use translate::translate_view;

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

/// How closely planning looks at the values of columns declared text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profiling {
    /// Every value is classified and every foreign key's orphans counted:
    /// the evidence, predicted rejects and orphans `dbtool plan` shows.
    #[default]
    Full,
    /// For the load: in a column declared text (CHAR, CLOB, TEXT, ...,
    /// without a type set in config), texts are classified only until the
    /// first one Postgres can hold, since the kind of a text never changes
    /// the type chosen for such a column (see
    /// [`ColumnProfile::add_lean`](crate::profile::ColumnProfile::add_lean)).
    /// The plan's types, policies and keys are the ones [`Profiling::Full`]
    /// chooses; its evidence counts those texts as `text`
    /// ([`ColumnPlan::unclassified_text`]), and a text that cannot be held
    /// is found by the load's cast instead of predicted. Foreign keys are
    /// not searched for orphans: the finish phase validates them on the
    /// target and counts orphans in the source only when that fails
    /// ([`FkPlan::orphans_deferred`]).
    Load,
}

/// [`plan`], also saying where the time went.
pub fn plan_timed(
    conn: &Connection,
    source: &Source,
    config: &PlanConfig,
    schema: &str,
) -> Result<(Plan, PlanTimings), Error> {
    plan_timed_with(conn, source, config, schema, Profiling::Full)
}

/// [`plan_timed`], profiling as `profiling` says.
pub fn plan_timed_with(
    conn: &Connection,
    source: &Source,
    config: &PlanConfig,
    schema: &str,
    profiling: Profiling,
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
            kind: SkipKind::Internal,
            name: name.clone(),
            reason,
        });
    }
    // Which tables to migrate.
    let mut chosen: Vec<&Table> = Vec::new();
    for t in &source.tables {
        if !config.wants(&t.name) {
            out.skipped.push(Skipped {
                kind: SkipKind::Table,
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
                    kind: SkipKind::VirtualTable,
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
                    kind: SkipKind::VirtualTable,
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
                        kind: SkipKind::ShadowTable,
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
                kind: SkipKind::Table,
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
        record(
            &mut out.identifiers,
            MappingKind::Table,
            None,
            &t.name,
            &target,
        );
        table_names.insert(t.name.to_ascii_lowercase(), target);
    }
    for v in &source.views {
        let target = rel.map(&v.name);
        record(
            &mut out.identifiers,
            MappingKind::View,
            None,
            &v.name,
            &target,
        );
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
                MappingKind::Column,
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
    let lean: Vec<Vec<bool>> = match profiling {
        Profiling::Full => Vec::new(),
        Profiling::Load => chosen
            .iter()
            .map(|t| {
                t.columns
                    .iter()
                    .map(|c| {
                        types::class_of(&c.decl_type) == types::Class::Text
                            && config
                                .column_override(&t.name, &c.name)
                                .is_none_or(|o| o.pg_type.is_none())
                    })
                    .collect()
            })
            .collect(),
    };
    let profiles = profile::profile_tables_lean(conn, Path::new(&source.path), &work, &lean, jobs);
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
            profiling,
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
            kind: SkipKind::Trigger,
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

fn record(
    map: &mut Vec<Mapping>,
    kind: MappingKind,
    table: Option<&str>,
    source: &str,
    target: &str,
) {
    if source != target {
        map.push(Mapping {
            kind,
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
