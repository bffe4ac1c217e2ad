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
//! - `CREATE TABLE`, `DROP TABLE`, a dropped or retyped column: sync stops
//!   naming the change and what to do; nothing is dropped silently.
//! - `CREATE INDEX` and other changes that do not touch rows: reported, and
//!   sync goes on.

use dbtool_migrate::ident;
use dbtool_migrate::plan::{ColumnPlan, Plan};
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
}

/// Compares the file's tables with the plan and follows what it can (see
/// the module docs). `captured` is the capture list of the current schema
/// (with route columns). Returns whether the plan changed.
#[allow(clippy::too_many_arguments)]
pub async fn follow(
    reader: &Connection,
    writer: &Connection,
    sinks: &mut [Sink],
    applier: &mut Applier,
    captured: &[Captured],
    from: i64,
    source: &str,
    obs: &dyn Observer,
) -> Result<bool, Error> {
    let stop = |change: String, todo: &str| Error::SchemaChange {
        path: source.to_owned(),
        change,
        todo: todo.to_owned(),
    };
    let plan = &applier.plan;
    let mut changes = Vec::new();
    for t in captured {
        let Some(pt) = plan
            .tables
            .iter()
            .find(|p| p.source_name.eq_ignore_ascii_case(&t.name))
        else {
            if plan
                .skipped
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(&t.name))
            {
                continue;
            }
            return Err(stop(
                format!("table {} was created", t.name),
                "sync copies the tables of its initial copy only: create it in the target and load it (dbtool migrate --include), or stop the app's use of it until after the cutover; then run dbtool sync again",
            ));
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
    if changes.is_empty() {
        return Ok(false);
    }
    // SQLite first: new triggers and the re-logged rows, in one transaction.
    crate::sync::write_polling(writer, std::time::Duration::from_secs(30), || {
        writer.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| {
            capture::install(writer, captured)?;
            for c in &changes {
                if let Change::Added(table, _) = c {
                    let t = captured
                        .iter()
                        .find(|t| &t.name == table)
                        .expect("listed above");
                    relog(writer, t, from)?;
                }
            }
            Ok::<(), Error>(writer.execute_batch("COMMIT")?)
        })();
        if r.is_err() {
            let _ = writer.execute_batch("ROLLBACK");
        }
        r
    })?;
    // Then the plan and the target, one transaction per target.
    let mut plan = applier.plan.clone();
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
        }
    }
    let plan_json = serde_json::to_value(&plan)
        .map_err(|e| Error::Other(format!("cannot serialize the plan: {e}")))?;
    for sink in sinks.iter_mut() {
        let tx = sink.client.transaction().await?;
        for s in &ddl {
            tx.batch_execute(s).await.map_err(|e| {
                Error::Other(format!(
                    "cannot follow a schema change of {source} in the target: {e}; statement: {s}; fix it and run dbtool sync again"
                ))
            })?;
        }
        tx.execute(
            "UPDATE dbtool.syncs SET plan = $3, updated_at = now() WHERE source_path = $1 AND shard = $2",
            &[&source, &sink.shard, &plan_json],
        )
        .await?;
        // `dbtool verify` casts with the run's plan: keep it the same.
        tx.execute(
            "UPDATE dbtool.runs SET plan = $3 WHERE id = (SELECT run_id FROM dbtool.syncs WHERE source_path = $1 AND shard = $2)",
            &[&source, &sink.shard, &plan_json],
        )
        .await?;
        tx.commit().await?;
        sink.reset();
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
