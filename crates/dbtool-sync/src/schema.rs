//! Following schema changes of the source while syncing.
//!
//! The log reader reads `PRAGMA schema_version` in the same snapshot as each
//! batch; when it moved, no change of that batch is applied before the new
//! schema is compared with the plan:
//!
//! - `ALTER TABLE ... ADD COLUMN`: the column is added to the target
//!   (`ALTER TABLE ... ADD COLUMN`, type by the declared type's affinity,
//!   default cast through the new column's plan), the capture triggers are
//!   regenerated (an old trigger does not know the column), and every row
//!   with a change still in the log is logged again whole from the file, in
//!   the same SQLite transaction: the changes written between the ALTER and
//!   the new trigger lacked the column's value, and the re-logged row carries
//!   it.
//! - `ALTER TABLE ... RENAME COLUMN`: renamed in the target (SQLite rewrites
//!   the trigger bodies itself).
//! - `CREATE TABLE`: planned by the migrator's planner (the new table only),
//!   its capture triggers installed and its existing rows read in one SQLite
//!   write transaction (no change of the table can fall between the rows
//!   read and the first one logged, nor be in both), then created in the
//!   target with those rows, keys, indexes and checks, in the transaction
//!   that stores the extended plan.
//! - `CREATE INDEX` on plain columns: created in the target (`CREATE
//!   [UNIQUE] INDEX`) once the target holds the log up to where the index
//!   was seen, so a unique index never meets rows the file had already
//!   changed. An index on an expression or with a `WHERE` clause: sync stops
//!   naming it; once the user created it in the target under the named
//!   name, sync goes on.
//! - `DROP TABLE`, a dropped or reordered column: sync stops naming the
//!   change and what to do; nothing is dropped silently.
//! - `DROP INDEX`, views, triggers, `VACUUM`: nothing to follow.

use std::path::Path;

use dbtool_migrate::ident::{self, Namer};
use dbtool_migrate::plan::{ColumnPlan, IndexKind, IndexPlan, Plan, PlanConfig, TablePlan};
use dbtool_migrate::value::PgType;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;

use crate::apply::{Applier, Sink};
use crate::capture::{self, Captured};
use crate::sync::Observer;
use crate::Error;

/// The Postgres type for a column added while syncing, by SQLite's affinity
/// rules for its declared type.
pub fn affinity_type(decl: &str) -> PgType {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        PgType::Int8
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        PgType::Text
    } else if d.contains("BLOB") {
        PgType::Bytea
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        PgType::Float8
    } else if d.is_empty() {
        PgType::Text
    } else {
        PgType::Numeric
    }
}

enum Change {
    Added(String, Vec<usize>),
    Renamed(String, usize, String),
    /// An index the user created in the target by hand, recorded in the plan.
    IndexByHand(String, IndexPlan),
}

/// An index created in the file while syncing, created in the target once
/// every target holds the log up to `head` (see the module docs).
#[derive(Debug, Clone)]
pub struct PendingIndex {
    /// The table (SQLite name).
    pub table: String,
    /// The index as it goes into the plan.
    pub index: IndexPlan,
    /// The log's head when the index was seen.
    pub head: i64,
}

/// What [`follow`] needs besides the connections and targets.
pub struct Context<'a> {
    /// The canonical source path.
    pub source: &'a str,
    /// The planner's settings (for tables created while syncing).
    pub config: &'a PlanConfig,
    /// The lowest applied position over the targets.
    pub from: i64,
    /// Progress messages.
    pub obs: &'a dyn Observer,
}

/// Compares the file's tables with the plan and follows what it can (see
/// the module docs). `captured` is the capture list of the current schema
/// (with route columns). Indexes to create later are added to `pending`.
/// Returns whether the plan changed.
pub async fn follow(
    reader: &Connection,
    writer: &Connection,
    sinks: &mut [Sink],
    applier: &mut Applier,
    captured: &[Captured],
    pending: &mut Vec<PendingIndex>,
    cx: &Context<'_>,
) -> Result<bool, Error> {
    let (source, from, obs) = (cx.source, cx.from, cx.obs);
    let stop = |change: String, todo: &str| Error::SchemaChange {
        path: source.to_owned(),
        change,
        todo: todo.to_owned(),
    };
    let plan = &applier.plan;
    let mut changes = Vec::new();
    let mut created: Vec<String> = Vec::new();
    for t in captured {
        let Some(pt) = plan
            .tables
            .iter()
            .find(|p| p.source_name.eq_ignore_ascii_case(&t.name))
        else {
            if !plan
                .skipped
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(&t.name))
            {
                created.push(t.name.clone());
            }
            continue;
        };
        let old: Vec<&str> = pt.columns.iter().map(|c| c.source_name.as_str()).collect();
        let now: Vec<&str> = t.columns.iter().map(String::as_str).collect();
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if old.len() == now.len() && old.iter().zip(&now).all(|(a, b)| same(a, b)) {
            continue;
        }
        if now.len() > old.len() && old.iter().zip(&now).all(|(a, b)| same(a, b)) {
            changes.push(Change::Added(
                t.name.clone(),
                (old.len()..now.len()).collect(),
            ));
            continue;
        }
        let diff: Vec<usize> = (0..old.len().min(now.len()))
            .filter(|&i| !same(old[i], now[i]))
            .collect();
        if old.len() == now.len() && diff.len() == 1 {
            changes.push(Change::Renamed(
                t.name.clone(),
                diff[0],
                now[diff[0]].to_owned(),
            ));
            continue;
        }
        return Err(stop(
            format!(
                "the columns of table {} changed from ({}) to ({})",
                t.name,
                old.join(", "),
                now.join(", ")
            ),
            "sync follows added and renamed columns only; a dropped or reordered column needs a fresh start: dbtool sync stop, drop the target's tables, dbtool sync",
        ));
    }
    for pt in &plan.tables {
        if !captured
            .iter()
            .any(|t| t.name.eq_ignore_ascii_case(&pt.source_name))
        {
            return Err(stop(
                format!("table {} was dropped", pt.source_name),
                "dbtool does not drop target tables by itself: drop it in the target too (or restore it in the file), remove it from the sync by starting over (dbtool sync stop), then run dbtool sync again",
            ));
        }
    }
    // Indexes created on tables of the plan.
    let mut seen = Vec::new();
    for pt in &plan.tables {
        for ix in new_indexes(reader, pt)? {
            if pending
                .iter()
                .any(|p| p.table == pt.source_name && p.index.source_name == ix.name)
            {
                continue;
            }
            let target = Namer::new(cx.config.identifiers).base(&ix.name);
            let qt = ident::qualified(&plan.schema, &pt.target_name);
            let cols: Option<Vec<String>> = ix
                .columns
                .iter()
                .map(|(c, desc)| {
                    let c = pt.column(c.as_deref()?)?;
                    Some(format!(
                        "{}{}",
                        ident::quote(&c.target_name),
                        if *desc { " DESC" } else { "" }
                    ))
                })
                .collect();
            match cols {
                Some(cols) if !ix.partial && !cols.is_empty() => {
                    let sql = format!(
                        "CREATE {}INDEX IF NOT EXISTS {} ON {qt} ({})",
                        if ix.unique { "UNIQUE " } else { "" },
                        ident::quote(&target),
                        cols.join(", ")
                    );
                    seen.push(PendingIndex {
                        table: pt.source_name.clone(),
                        index: IndexPlan {
                            source_name: ix.name.clone(),
                            target_name: target,
                            kind: IndexKind::Index,
                            sql: Some(sql),
                            note: Some("created by CREATE INDEX while syncing".into()),
                        },
                        head: 0,
                    });
                }
                _ => {
                    let qi = ident::qualified(&plan.schema, &target);
                    let mut everywhere = true;
                    for sink in sinks.iter() {
                        let there: bool = sink
                            .client
                            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qi])
                            .await?
                            .get(0);
                        everywhere &= there;
                    }
                    if !everywhere {
                        return Err(stop(
                            format!(
                                "index {} was created on table {} ({})",
                                ix.name,
                                pt.source_name,
                                ix.sql.as_deref().unwrap_or("no SQL")
                            ),
                            &format!(
                                "it has an expression or a WHERE clause, which sync does not translate: create the equivalent index in the target as {qi} (on {qt}), or drop it in the file; then run dbtool sync again"
                            ),
                        ));
                    }
                    obs.message(&format!(
                        "followed a schema change: index {} on table {} was created; the target has {qi}",
                        ix.name, pt.source_name
                    ));
                    changes.push(Change::IndexByHand(
                        pt.source_name.clone(),
                        IndexPlan {
                            source_name: ix.name.clone(),
                            target_name: target,
                            kind: IndexKind::Index,
                            sql: None,
                            note: Some(
                                "an expression or partial index created while syncing; created in the target by hand"
                                    .into(),
                            ),
                        },
                    ));
                }
            }
        }
    }
    if !seen.is_empty() {
        let (head, _) = crate::apply::head(reader, from)?;
        for mut p in seen {
            p.head = head;
            obs.message(&format!(
                "schema change: index {} on table {} was created; it is created in the target once the target holds log position {head}",
                p.index.source_name, p.table
            ));
            pending.push(p);
        }
    }
    if changes.is_empty() && created.is_empty() {
        return Ok(false);
    }
    // Tables created while syncing: the migrator's plan of them alone.
    let mut plan = applier.plan.clone();
    let mut new_tables: Vec<TablePlan> = Vec::new();
    if !created.is_empty() {
        let src = dbtool_migrate::source::inspect(reader, Path::new(source))?;
        let mut config = cx.config.clone();
        config.include = created.clone();
        config.exclude.clear();
        let planned = dbtool_migrate::plan::plan(reader, &src, &config, &plan.schema)?;
        let ours = |name: &str| created.iter().any(|c| c.eq_ignore_ascii_case(name));
        for s in planned.skipped.into_iter().filter(|s| ours(&s.name)) {
            obs.message(&format!(
                "schema change: table {} was created; not synced: {}",
                s.name, s.reason
            ));
            plan.skipped.push(s);
        }
        for t in planned.tables {
            if let Some(other) = plan.tables.iter().find(|p| p.target_name == t.target_name) {
                return Err(stop(
                    format!("table {} was created", t.source_name),
                    &format!(
                        "its name in the target, {}, is the name of table {}'s: rename the new table in the file, then run dbtool sync again",
                        t.target_name, other.source_name
                    ),
                ));
            }
            for fk in t.foreign_keys.iter().filter(|f| f.sql.is_none()) {
                obs.message(&format!(
                    "table {} created while syncing: its foreign key ({}) to {} is not created in the target{}; add it after the cutover",
                    t.source_name,
                    fk.columns.join(", "),
                    fk.ref_table,
                    fk.problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default()
                ));
            }
            new_tables.push(t);
        }
        plan.identifiers.extend(
            planned
                .identifiers
                .into_iter()
                .filter(|m| m.table.as_deref().map_or(ours(&m.source), ours)),
        );
    }
    // SQLite first: new triggers, the re-logged rows and the rows of the
    // new tables, in one write transaction.
    let rows: Vec<Vec<SourceRow>> =
        crate::txn::immediate(writer, std::time::Duration::from_secs(30), |tx| {
            capture::install(tx, captured)?;
            for c in &changes {
                if let Change::Added(table, _) = c {
                    let t = captured
                        .iter()
                        .find(|t| &t.name == table)
                        .expect("listed above");
                    relog(tx, t, from)?;
                }
            }
            let mut rows = Vec::new();
            for tp in &new_tables {
                let t = captured
                    .iter()
                    .find(|t| t.name.eq_ignore_ascii_case(&tp.source_name))
                    .expect("listed above");
                rows.push(copy_rows(tx, t, tp)?);
            }
            Ok(rows)
        })?;
    // Then the plan and the target, one transaction per target.
    let mut ddl: Vec<String> = Vec::new();
    for c in &changes {
        match c {
            Change::Added(table, cols) => {
                let t = captured.iter().find(|t| &t.name == table).expect("listed");
                let pt = plan
                    .tables
                    .iter_mut()
                    .find(|p| p.source_name.eq_ignore_ascii_case(table))
                    .expect("listed");
                let info = column_info(reader, table)?;
                for &i in cols {
                    let name = &t.columns[i];
                    let (decl, dflt) = info
                        .iter()
                        .find(|(n, _, _)| n == name)
                        .map(|(_, d, f)| (d.clone(), f.clone()))
                        .unwrap_or_default();
                    let mut col: ColumnPlan = pt.columns[0].clone();
                    col.source_name = name.clone();
                    col.target_name = fold_like(pt.columns.first(), name);
                    col.decl_type = decl.clone();
                    col.pg_type = affinity_type(&decl);
                    col.epoch = None;
                    col.not_null = false;
                    col.reason =
                        "added by ALTER TABLE while syncing: type by declared affinity".into();
                    col.evidence.clear();
                    col.date_formats.clear();
                    col.predicted.clear();
                    col.default = match dflt {
                        Some(expr) => {
                            let v: SqlValue =
                                reader.query_row(&format!("SELECT {expr}"), [], |r| r.get(0))?;
                            match col.cast(ValueRef::from(&v)) {
                                Ok(x) => Some(dbtool_migrate::plan::sql_literal(&x, col.pg_type)),
                                Err(e) => {
                                    return Err(stop(
                                        format!("column {table}.{name} was added with default {expr}"),
                                        &format!("its default cannot be cast to {} ({}): add the column to the target yourself, then run dbtool sync again", col.pg_type, e.reason),
                                    ))
                                }
                            }
                        }
                        None => None,
                    };
                    let mut stmt = format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                        ident::qualified(&plan.schema, &pt.target_name),
                        ident::quote(&col.target_name),
                        col.pg_type.sql_name()
                    );
                    if let Some(d) = &col.default {
                        stmt.push_str(&format!(" DEFAULT {d}"));
                    }
                    ddl.push(stmt);
                    obs.message(&format!(
                        "followed a schema change: column {table}.{name} added; added to the target as {}",
                        col.pg_type
                    ));
                    pt.columns.push(col);
                }
            }
            Change::Renamed(table, i, new) => {
                let pt = plan
                    .tables
                    .iter_mut()
                    .find(|p| p.source_name.eq_ignore_ascii_case(table))
                    .expect("listed");
                let target_new = fold_like(pt.columns.get(*i), new);
                ddl.push(format!(
                    "ALTER TABLE {} RENAME COLUMN {} TO {}",
                    ident::qualified(&plan.schema, &pt.target_name),
                    ident::quote(&pt.columns[*i].target_name),
                    ident::quote(&target_new)
                ));
                obs.message(&format!(
                    "followed a schema change: column {table}.{} renamed to {new}; renamed in the target",
                    pt.columns[*i].source_name
                ));
                pt.columns[*i].source_name = new.clone();
                pt.columns[*i].target_name = target_new;
            }
            Change::IndexByHand(table, ix) => {
                if let Some(pt) = plan
                    .tables
                    .iter_mut()
                    .find(|p| p.source_name.eq_ignore_ascii_case(table))
                {
                    pt.indexes.push(ix.clone());
                }
            }
        }
    }
    plan.tables.extend(new_tables.iter().cloned());
    // The new tables' rows are cast through the extended plan.
    let next = Applier::new(
        source.to_owned(),
        plan.clone(),
        captured,
        applier.router.clone(),
        applier.first_shard.clone(),
    )?;
    let plan_json = serde_json::to_value(&plan)
        .map_err(|e| Error::Other(format!("cannot serialize the plan: {e}")))?;
    let in_target = |e: tokio_postgres::Error, s: &str| {
        Error::Other(format!(
            "cannot follow a schema change of {source} in the target: {e}; statement: {s}; fix it and run dbtool sync again"
        ))
    };
    for sink in sinks.iter_mut() {
        let tx = sink.client.transaction().await?;
        for s in &ddl {
            tx.batch_execute(s).await.map_err(|e| in_target(e, s))?;
        }
        for (tp, rows) in new_tables.iter().zip(&rows) {
            let n =
                load_table(&tx, &next, &sink.shard, tp, rows, source, &stop, &in_target).await?;
            obs.message(&format!(
                "followed a schema change: table {} created; created in the target{} with its {n} rows",
                tp.source_name,
                if sink.shard.is_empty() {
                    String::new()
                } else {
                    format!(" (shard {})", sink.shard)
                }
            ));
        }
        persist_plan(&tx, source, &sink.shard, &plan_json).await?;
        tx.commit().await?;
        sink.reset();
    }
    applier.plan = plan;
    Ok(true)
}

/// Stores the extended plan: the sync's, and the run's (`dbtool verify`
/// casts with the run's plan).
async fn persist_plan(
    tx: &tokio_postgres::Transaction<'_>,
    source: &str,
    shard: &str,
    plan_json: &serde_json::Value,
) -> Result<(), Error> {
    tx.execute(
        "UPDATE dbtool.syncs SET plan = $3, updated_at = now() WHERE source_path = $1 AND shard = $2",
        &[&source, &shard, plan_json],
    )
    .await?;
    tx.execute(
        "UPDATE dbtool.runs SET plan = $3 WHERE id = (SELECT run_id FROM dbtool.syncs WHERE source_path = $1 AND shard = $2)",
        &[&source, &shard, plan_json],
    )
    .await?;
    Ok(())
}

/// Creates a table created while syncing in one target (inside `tx`) and
/// loads the rows read with its capture install: table, rows, then its
/// keys, identity, indexes, checks and foreign keys, as `migrate` builds
/// them. A target table of that name that an earlier, interrupted attempt
/// made (it is in this target's stored plan) is emptied and loaded again;
/// any other is left alone and sync stops. Returns the rows loaded.
#[allow(clippy::too_many_arguments)]
async fn load_table(
    tx: &tokio_postgres::Transaction<'_>,
    applier: &Applier,
    shard: &str,
    tp: &TablePlan,
    rows: &[SourceRow],
    source: &str,
    stop: &dyn Fn(String, &str) -> Error,
    in_target: &dyn Fn(tokio_postgres::Error, &str) -> Error,
) -> Result<usize, Error> {
    let schema = &applier.plan.schema;
    let qt = ident::qualified(schema, &tp.target_name);
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qt])
        .await?
        .get(0);
    if exists {
        let ours: bool = tx
            .query_one(
                "SELECT coalesce((SELECT EXISTS (SELECT 1 FROM jsonb_array_elements(plan->'tables') e WHERE e->>'source_name' = $3)
                 FROM dbtool.syncs WHERE source_path = $1 AND shard = $2), false)",
                &[&source, &shard, &tp.source_name],
            )
            .await?
            .get(0);
        if !ours {
            return Err(stop(
                format!("table {} was created", tp.source_name),
                &format!(
                    "the target already has a table {qt} that this sync did not make: dbtool does not overwrite it; drop or rename it in the target, then run dbtool sync again"
                ),
            ));
        }
        let s = format!("TRUNCATE {qt}");
        tx.batch_execute(&s).await.map_err(|e| in_target(e, &s))?;
        tx.execute(
            "DELETE FROM dbtool.rejects WHERE run_id = (SELECT run_id FROM dbtool.syncs WHERE source_path = $1 AND shard = $2) AND table_name = $3",
            &[&source, &shard, &tp.source_name],
        )
        .await?;
    } else {
        let s = dbtool_migrate::ddl::create_table(schema, tp);
        tx.batch_execute(&s).await.map_err(|e| in_target(e, &s))?;
    }
    let values: Vec<Vec<SqlValue>> = rows.iter().map(|(_, v)| v.clone()).collect();
    let mut rejects = Vec::new();
    let cast = applier.cast_rows(shard, &tp.source_name, &values, &mut rejects)?;
    if !tp.columns.is_empty() && !cast.is_empty() {
        let names: Vec<String> = tp
            .columns
            .iter()
            .map(|c| ident::quote(&c.target_name))
            .collect();
        let ps: Vec<String> = (1..=tp.columns.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {qt} ({}) VALUES ({})",
            names.join(", "),
            ps.join(", ")
        );
        let types: Vec<_> = tp.columns.iter().map(|c| c.pg_type.pg_type()).collect();
        let stmt = tx
            .prepare_typed(&sql, &types)
            .await
            .map_err(|e| in_target(e, &sql))?;
        for chunk in cast.chunks(1000) {
            let futs = chunk.iter().map(|row| {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let stmt = &stmt;
                async move { tx.execute(stmt, &refs).await }
            });
            for r in futures::future::join_all(futs).await {
                r.map_err(|e| in_target(e, &sql))?;
            }
        }
    }
    if !exists {
        let mut after: Vec<String> = tp.indexes.iter().filter_map(|i| i.sql.clone()).collect();
        if let Some((i, _)) = tp.identity {
            after.push(dbtool_migrate::ddl::identity_sql(schema, tp, i));
        }
        after.extend(tp.checks.iter().map(|c| c.sql.clone()));
        after.extend(tp.foreign_keys.iter().filter_map(|f| f.sql.clone()));
        for s in &after {
            tx.batch_execute(s).await.map_err(|e| in_target(e, s))?;
        }
    }
    for r in &rejects {
        let rowid = usize::try_from(r.seq)
            .ok()
            .and_then(|i| rows.get(i))
            .and_then(|(id, _)| *id);
        tx.execute(
            "INSERT INTO dbtool.rejects (run_id, table_name, chunk, ordinal, rowid, pk, column_name, reason, value, action) \
             SELECT run_id, $3, 0, $4, $5, $6, $7, $8, $9, $10 FROM dbtool.syncs WHERE source_path = $1 AND shard = $2 AND run_id IS NOT NULL \
             ON CONFLICT DO NOTHING",
            &[
                &source,
                &shard,
                &r.table,
                &r.seq,
                &rowid,
                &r.pk,
                &r.column,
                &r.reason,
                &r.value,
                &r.action,
            ],
        )
        .await?;
    }
    Ok(cast.len())
}

/// A row read from the file: its rowid (when the table has one) and its
/// values in capture order.
type SourceRow = (Option<i64>, Vec<SqlValue>);

/// Reads every row of a table created while syncing, in capture order
/// (with its rowid, for reject records), and drops the log's changes of it
/// (an interrupted earlier attempt's): the rows read are the table's state
/// at the point from which its changes are logged. Runs in the caller's
/// write transaction, the one that installs the table's triggers.
fn copy_rows(conn: &Connection, t: &Captured, tp: &TablePlan) -> Result<Vec<SourceRow>, Error> {
    conn.execute(
        &format!("DELETE FROM {} WHERE tbl = ?1", capture::LOG),
        [&t.name],
    )?;
    let mut cols: Vec<String> = vec![tp.rowid_expr().unwrap_or("NULL").to_owned()];
    cols.extend(t.columns.iter().map(|c| capture::quote(c)));
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM {}",
        cols.join(", "),
        capture::quote(&t.name)
    ))?;
    let width = t.columns.len();
    let rows = stmt
        .query_map([], |r| {
            let mut v = Vec::with_capacity(width);
            for i in 0..width {
                v.push(r.get::<_, SqlValue>(i + 1)?);
            }
            Ok((r.get::<_, Option<i64>>(0)?, v))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// An index of the file (`CREATE INDEX`) that the plan does not know.
struct NewIndex {
    name: String,
    unique: bool,
    partial: bool,
    /// Key parts: the column (`None`: an expression) and descending.
    columns: Vec<(Option<String>, bool)>,
    sql: Option<String>,
}

/// The indexes made by `CREATE INDEX` on `pt`'s table that are not in its
/// plan (`PRAGMA index_list`/`index_xinfo`: no full schema read).
fn new_indexes(conn: &Connection, pt: &TablePlan) -> Result<Vec<NewIndex>, Error> {
    let mut stmt = conn.prepare(&format!(
        "SELECT name, \"unique\", partial FROM pragma_index_list({}) WHERE origin = 'c'",
        capture::literal(&pt.source_name)
    ))?;
    let list: Vec<(String, bool, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (name, unique, partial) in list {
        if pt
            .indexes
            .iter()
            .any(|i| i.source_name.eq_ignore_ascii_case(&name))
        {
            continue;
        }
        let mut xs = conn.prepare(&format!(
            "SELECT cid, name, desc FROM pragma_index_xinfo({}) WHERE key = 1 ORDER BY seqno",
            capture::literal(&name)
        ))?;
        let columns = xs
            .query_map([], |r| {
                let cid: i64 = r.get(0)?;
                let col: Option<String> = r.get(1)?;
                Ok((col.filter(|_| cid >= 0), r.get::<_, bool>(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .unwrap_or(None);
        out.push(NewIndex {
            name,
            unique,
            partial,
            columns,
            sql,
        });
    }
    Ok(out)
}

/// Creates in every target the pending indexes whose `head` every target
/// has reached, and records them in the plan. Returns whether it did.
pub async fn create_pending(
    sinks: &mut [Sink],
    applier: &mut Applier,
    pending: &mut Vec<PendingIndex>,
    source: &str,
    obs: &dyn Observer,
) -> Result<bool, Error> {
    let pos = sinks.iter().map(|s| s.position).min().unwrap_or(0);
    let (ready, later): (Vec<PendingIndex>, Vec<PendingIndex>) =
        pending.drain(..).partition(|p| p.head <= pos);
    *pending = later;
    if ready.is_empty() {
        return Ok(false);
    }
    let mut plan = applier.plan.clone();
    for p in &ready {
        if let Some(pt) = plan
            .tables
            .iter_mut()
            .find(|t| t.source_name.eq_ignore_ascii_case(&p.table))
        {
            pt.indexes.push(p.index.clone());
        }
    }
    let plan_json = serde_json::to_value(&plan)
        .map_err(|e| Error::Other(format!("cannot serialize the plan: {e}")))?;
    for sink in sinks.iter_mut() {
        let tx = sink.client.transaction().await?;
        for p in &ready {
            let sql = p.index.sql.as_deref().unwrap_or_default();
            tx.batch_execute(sql).await.map_err(|e| Error::SchemaChange {
                path: source.to_owned(),
                change: format!("index {} was created on table {}", p.index.source_name, p.table),
                todo: format!("creating it in the target failed ({e}; statement: {sql}): create it there yourself as {}, then run dbtool sync again", p.index.target_name),
            })?;
        }
        persist_plan(&tx, source, &sink.shard, &plan_json).await?;
        tx.commit().await?;
    }
    for p in &ready {
        obs.message(&format!(
            "followed a schema change: index {} on table {} created in the target as {}",
            p.index.source_name, p.table, p.index.target_name
        ));
    }
    applier.plan = plan;
    Ok(true)
}

/// The target name for a new source column, folded the way the table's
/// existing columns were (lowercase when they were).
fn fold_like(example: Option<&ColumnPlan>, name: &str) -> String {
    match example {
        Some(c)
            if c.target_name != c.source_name && c.target_name == c.source_name.to_lowercase() =>
        {
            name.to_lowercase()
        }
        Some(c)
            if c.target_name == c.source_name && c.source_name != c.source_name.to_lowercase() =>
        {
            name.to_owned()
        }
        _ => name.to_lowercase(),
    }
}

fn column_info(
    conn: &Connection,
    table: &str,
) -> Result<Vec<(String, String, Option<String>)>, Error> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", capture::quote(table)))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                r.get::<_, Option<String>>(4)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Logs again, whole, every row of `t` that has a change after `from`.
fn relog(conn: &Connection, t: &Captured, from: i64) -> Result<(), Error> {
    if t.key.is_empty() {
        return Err(Error::SchemaChange {
            path: String::new(),
            change: format!("a column was added to table {} while syncing", t.name),
            todo: "the table has no primary key, so its pending changes cannot be completed by key: stop the app's writes to it, dbtool sync stop, and start over".into(),
        });
    }
    let cols: Vec<String> = (0..t.columns.len()).map(|i| format!("c{i}")).collect();
    let vals: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("t.{}", capture::quote(c)))
        .collect();
    let conds: Vec<String> = t
        .key
        .iter()
        .map(|&i| format!("l.c{i} IS t.{}", capture::quote(&t.columns[i])))
        .collect();
    conn.execute(
        &format!(
            "INSERT INTO {log}(tbl, op, {}) SELECT ?1, 'U', {} FROM {} AS t WHERE EXISTS \
             (SELECT 1 FROM {log} AS l WHERE l.tbl = ?1 AND l.seq > ?2 AND {})",
            cols.join(", "),
            vals.join(", "),
            capture::quote(&t.name),
            conds.join(" AND "),
            log = capture::LOG
        ),
        rusqlite::params![t.name, from],
    )?;
    Ok(())
}

/// The plan's tables that exist in the file, for messages.
pub fn plan_tables(plan: &Plan) -> Vec<String> {
    plan.tables.iter().map(|t| t.source_name.clone()).collect()
}
