//! The migration plan, as verify needs it: from the run record or recomputed.

use std::sync::Arc;

use dbtool_migrate::plan::{Plan, PlanConfig, ReadKey, TablePlan};
use dbtool_migrate::source::Source;
use rusqlite::Connection;

use crate::spec::{ColSpec, Key, TableSpec};
use crate::Error;

/// Table specs from a plan recorded (as JSON) by a migration run.
pub(crate) fn from_json(plan: &serde_json::Value) -> Result<Vec<TableSpec>, Error> {
    let plan: Plan = serde_json::from_value(plan.clone()).map_err(|e| {
        Error::Plan(format!(
            "the plan recorded by the run cannot be read ({e}); was it written by another dbtool version? \
             Re-run without --watermark to recompute it"
        ))
    })?;
    Ok(specs(&plan))
}

/// Table specs from a plan recomputed from the source.
pub(crate) fn recompute(
    conn: &Connection,
    source: &Source,
    config: &PlanConfig,
    schema: &str,
) -> Result<Vec<TableSpec>, Error> {
    let plan = dbtool_migrate::plan::plan(conn, source, config, schema)
        .map_err(|e| Error::Plan(e.to_string()))?;
    Ok(specs(&plan))
}

fn specs(plan: &Plan) -> Vec<TableSpec> {
    plan.tables.iter().map(spec).collect()
}

/// Whether the plan made the SQLite primary key a UNIQUE constraint because
/// it holds NULLs (Postgres forbids them in a primary key).
pub(crate) fn pk_planned_unique(t: &TablePlan) -> bool {
    t.indexes.iter().any(|ix| {
        ix.kind == dbtool_migrate::plan::IndexKind::PrimaryKey
            && ix.sql.as_deref().is_some_and(|sql| {
                sql.contains(&format!(
                    " ADD CONSTRAINT {} UNIQUE (",
                    dbtool_migrate::ident::quote(&ix.target_name)
                ))
            })
    })
}

/// What verify compares of one planned table.
pub(crate) fn spec(t: &TablePlan) -> TableSpec {
    let key = match (&t.key, t.identity) {
        (ReadKey::Rowid, Some((i, _))) if t.primary_key == [i] => Key::Rowid(i),
        // A key holding NULLs identifies no row (several rows may share the
        // NULL key): compared as a multiset, like a table without a key.
        _ if pk_planned_unique(t) => Key::None,
        _ if !t.primary_key.is_empty() => Key::Columns(t.primary_key.clone()),
        _ => Key::None,
    };
    let plan = Arc::new(t.clone());
    let casts = Arc::clone(&plan);
    TableSpec {
        source: t.source_name.clone(),
        target: t.target_name.clone(),
        columns: t
            .columns
            .iter()
            .map(|c| ColSpec {
                source: c.source_name.clone(),
                target: c.target_name.clone(),
                pg_type: c.pg_type,
                not_null: c.not_null,
            })
            .collect(),
        key,
        rowid_expr: t.rowid_expr(),
        cast: Arc::new(move |i, v| casts.columns[i].cast(v).map_err(|e| e.reason)),
        plan,
        route: None,
    }
}
