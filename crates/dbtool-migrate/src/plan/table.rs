//! Per-table planning: a table's columns (type, policy, default), its read
//! key, primary key and identity, indexes and unique constraints, foreign
//! keys (with the orphan rows found in the source, or left to the finish
//! phase) and CHECK constraints.

use std::collections::BTreeSet;

use rusqlite::Connection;

use super::model::read_rowid;
use super::model::{
    CheckPlan, ColumnPlan, FkPlan, IndexKind, IndexPlan, Predicted, ReadKey, TablePlan,
};
use super::translate::{translate_default, translate_expr, translate_index};
use super::types::{accepts, choose, class_of, guess_epoch, override_type, Class};
use super::{record, Names, PlanConfig, PlanTimings, Policy, Profiling};
use crate::ident::{self, Mapping, MappingKind, Namer};
use crate::profile::{self, Kind, TableProfile};
use crate::source::{self, IndexOrigin, Source, Table, TableKind};
use crate::value::PgType;
use crate::Error;

/// What every step of planning one table reads.
struct Ctx<'a> {
    source: &'a Source,
    t: &'a Table,
    prof: &'a TableProfile,
    config: &'a PlanConfig,
    names: &'a Names<'a>,
    schema: &'a str,
    /// The table's Postgres name.
    target: String,
    /// The table's Postgres name, schema-qualified and quoted.
    qt: String,
}

/// The table's keys: how the loader reads it and what becomes its primary key.
struct Keys {
    primary_key: Vec<usize>,
    identity: Option<(usize, Option<i64>)>,
    key: ReadKey,
    /// NULLs in the primary-key columns (SQLite allows them).
    pk_nulls: u64,
}

/// Plans one table: its columns, keys, indexes, foreign keys and checks.
/// Names are given in that order (`rel` makes them unique across the
/// schema), so the order of the steps is part of the result.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_table(
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
    profiling: Profiling,
) -> Result<TablePlan, Error> {
    let target = names.table(&t.name).cloned().unwrap_or_default();
    let cx = Ctx {
        source,
        t,
        prof: &prof,
        config,
        names,
        schema,
        qt: ident::qualified(schema, &target),
        target,
    };
    let mut notes = kind_notes(t);
    let mut columns = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        columns.push(plan_column(&cx, i, c, &mut notes)?);
    }
    let keys = plan_keys(&cx, &mut columns, &mut notes);
    let indexes = plan_indexes(&cx, &columns, &keys, rel, idents);
    let foreign_keys = plan_foreign_keys(&cx, conn, rel, timings, profiling);
    let checks = plan_checks(&cx, rel);
    Ok(TablePlan {
        source_name: t.name.clone(),
        target_name: cx.target,
        columns,
        key: keys.key,
        rows: prof.rows,
        primary_key: keys.primary_key,
        identity: keys.identity,
        indexes,
        foreign_keys,
        checks,
        notes,
    })
}

/// Notes on tables copied from virtual tables or their storage.
fn kind_notes(t: &Table) -> Vec<String> {
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
    notes
}

/// Plans column `i` (`c`): its type (chosen, or set in config), policy,
/// NOT NULL, predicted misfits and default.
fn plan_column(
    cx: &Ctx<'_>,
    i: usize,
    c: &source::Column,
    notes: &mut Vec<String>,
) -> Result<ColumnPlan, Error> {
    let (t, config, names) = (cx.t, cx.config, cx.names);
    let p = &cx.prof.columns[i];
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
        unclassified_text: p.unclassified_text,
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
    Ok(cp)
}

/// The position of column `name` in `t`.
fn position(t: &Table, name: &str) -> Option<usize> {
    t.columns
        .iter()
        .position(|c| c.name.eq_ignore_ascii_case(name))
}

/// `"a", "b"`: the Postgres names of columns `idx`, quoted.
fn target_list(columns: &[ColumnPlan], idx: &[usize]) -> String {
    idx.iter()
        .map(|&i| ident::quote(&columns[i].target_name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a, b`: the SQLite names of columns `idx`, for messages.
fn source_list(t: &Table, idx: &[usize]) -> String {
    idx.iter()
        .map(|&i| t.columns[i].name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The primary key, the identity column and the read key. The loader reads
/// by rowid when the table has one it can name; else by the primary key when
/// the profile shows its columns hold no NULLs; else in one pass.
fn plan_keys(cx: &Ctx<'_>, columns: &mut [ColumnPlan], notes: &mut Vec<String>) -> Keys {
    let (t, source, prof) = (cx.t, cx.source, cx.prof);
    let pos = |name: &str| position(t, name);
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
    let pk_nulls: u64 = primary_key
        .iter()
        .map(|&i| prof.columns[i].count(Kind::Null))
        .sum();
    // The read key: the rowid, else the planned primary key when it is a
    // real key (every column found, no NULLs: NULLs neither order nor
    // compare, so reading after the last key read would skip rows).
    let key = if read_rowid(t).is_some() {
        ReadKey::Rowid
    } else if !primary_key.is_empty() && primary_key.len() == t.primary_key.len() && pk_nulls == 0 {
        ReadKey::PrimaryKey(primary_key.clone())
    } else if !primary_key.is_empty() && pk_nulls > 0 {
        notes.push(format!(
            "no rowid, and the primary key ({}) holds NULLs, so it cannot order the rows: read in one pass (an interrupted load of this table starts it over)",
            source_list(t, &primary_key)
        ));
        ReadKey::None
    } else {
        notes.push("no rowid and no primary key: read in one pass".into());
        ReadKey::None
    };
    Keys {
        primary_key,
        identity,
        key,
        pk_nulls,
    }
}

/// The primary key, unique constraints and indexes, built after the load.
fn plan_indexes(
    cx: &Ctx<'_>,
    columns: &[ColumnPlan],
    keys: &Keys,
    rel: &mut Namer,
    idents: &mut Vec<Mapping>,
) -> Vec<IndexPlan> {
    let (t, names, target, qt) = (cx.t, cx.names, &cx.target, &cx.qt);
    let (primary_key, pk_nulls) = (&keys.primary_key, keys.pk_nulls);
    let pos = |name: &str| position(t, name);
    let col_list = |idx: &[usize]| target_list(columns, idx);
    let mut indexes = Vec::new();
    if !primary_key.is_empty() {
        let name = rel.map(&format!("{target}_pkey"));
        let (sql, note) = if pk_nulls > 0 {
            (
                Some(format!("ALTER TABLE {qt} ADD CONSTRAINT {} UNIQUE ({})", ident::quote(&name), col_list(primary_key))),
                Some(format!(
                    "primary key ({}) of table {} holds {pk_nulls} NULLs (SQLite allows that, Postgres does not): created as a UNIQUE constraint instead",
                    source_list(t, primary_key),
                    t.name
                )),
            )
        } else {
            (
                Some(format!(
                    "ALTER TABLE {qt} ADD CONSTRAINT {} PRIMARY KEY ({})",
                    ident::quote(&name),
                    col_list(primary_key)
                )),
                None,
            )
        };
        indexes.push(IndexPlan {
            source_name: "PRIMARY KEY".into(),
            target_name: name,
            kind: IndexKind::PrimaryKey,
            sql,
            note,
        });
    }
    for ix in &t.indexes {
        if ix.origin == IndexOrigin::PrimaryKey {
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
        if ix.origin == IndexOrigin::Unique && cols.iter().all(Option::is_some) {
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
                kind: IndexKind::Unique,
                sql: Some(format!("ALTER TABLE {qt} ADD CONSTRAINT {} UNIQUE ({})", ident::quote(&name), col_list(&idx))),
                note: nocase.then(|| "SQLite compared these columns with a non-binary collation; Postgres compares exactly".to_string()),
            });
            continue;
        }
        let name = rel.map(&ix.name);
        record(idents, MappingKind::Index, Some(&t.name), &ix.name, &name);
        let bools: Vec<&str> = columns
            .iter()
            .filter(|c| c.pg_type == PgType::Bool)
            .map(|c| c.target_name.as_str())
            .collect();
        let (sql, note) = match translate_index(ix, t, &name, qt, names, &bools) {
            Ok(s) => (
                Some(s),
                nocase.then(|| "collation dropped: Postgres compares exactly".to_string()),
            ),
            Err(why) => (None, Some(why)),
        };
        indexes.push(IndexPlan {
            source_name: ix.name.clone(),
            target_name: name,
            kind: IndexKind::Index,
            sql,
            note,
        });
    }
    indexes
}

/// Foreign keys, with orphans found on the source first (one anti-join per
/// foreign key through the parent's key index), unless `profiling` is
/// [`Profiling::Load`]: a migration validates each foreign key on the
/// target and counts the orphans only when that fails
/// ([`FkPlan::orphans_deferred`]), which keeps the anti-joins out of the
/// time before the first row is copied.
fn plan_foreign_keys(
    cx: &Ctx<'_>,
    conn: &Connection,
    rel: &mut Namer,
    timings: &mut PlanTimings,
    profiling: Profiling,
) -> Vec<FkPlan> {
    let (t, source, names, schema, target, qt) =
        (cx.t, cx.source, cx.names, cx.schema, &cx.target, &cx.qt);
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
        let mut ref_columns = Vec::new();
        let deferred = profiling == Profiling::Load;
        let (sql, problem) = match fk_sql(fk, t, source, names, qt, &fname, schema) {
            Ok((sql, _, to)) if deferred => {
                ref_columns = to;
                (Some(sql), None)
            }
            Ok((sql, parent, to)) => {
                ref_columns = to.clone();
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
            ref_columns,
            sql,
            orphans: n_orph,
            orphan_rowids: rowids,
            orphans_deferred: deferred && problem.is_none(),
            problem,
        });
    }
    foreign_keys
}

/// CHECK constraints, translated.
fn plan_checks(cx: &Ctx<'_>, rel: &mut Namer) -> Vec<CheckPlan> {
    let (t, names, target, qt) = (cx.t, cx.names, &cx.target, &cx.qt);
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
    checks
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
