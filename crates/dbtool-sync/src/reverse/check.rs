//! The rollback's checks: the rows changed since the cutover are equal on
//! both sides (compared through the same cast plan as `dbtool verify`), and
//! every table has the same number of rows.

use std::collections::{BTreeMap, BTreeSet};

use dbtool_migrate::plan::{Plan, TablePlan};
use dbtool_migrate::uncast::SqliteValue;
use dbtool_migrate::value::Value;
use futures::future::try_join_all;
use rusqlite::{params_from_iter, Connection};
use tokio_postgres::Client;

use super::apply::{parse_key, q, ChangedKey, CHANGED_TABLE};
use super::slot::quote;
use crate::Error;

/// All keys recorded in the file as changed since the cutover.
pub(crate) fn recorded_keys(conn: &Connection) -> Result<BTreeSet<ChangedKey>, Error> {
    let mut st = conn.prepare(&format!("SELECT tbl, key FROM {CHANGED_TABLE}"))?;
    let keys = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

/// Compares the rows with these keys; returns those that differ.
pub(crate) async fn compare(
    conn: &Connection,
    clients: &[&Client],
    plan: &Plan,
    keys: &BTreeSet<ChangedKey>,
) -> Result<Vec<(ChangedKey, String)>, Error> {
    let mut by_table: BTreeMap<&str, Vec<&ChangedKey>> = BTreeMap::new();
    for k in keys {
        by_table.entry(k.0.as_str()).or_default().push(k);
    }
    let mut bad = Vec::new();
    for (table, keys) in by_table {
        let Some(t) = plan.tables.iter().find(|t| t.source_name == table) else {
            continue;
        };
        let sqlite_sql = format!(
            "SELECT {} FROM {} WHERE {}",
            t.columns
                .iter()
                .map(|c| q(&c.source_name))
                .collect::<Vec<_>>()
                .join(", "),
            q(&t.source_name),
            t.primary_key
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("{} = ?{}", q(&t.columns[c].source_name), i + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let pg_sql = format!(
            "SELECT {} FROM {}.{} WHERE {}",
            t.columns
                .iter()
                .map(|c| quote(&c.target_name))
                .collect::<Vec<_>>()
                .join(", "),
            quote(&plan.schema),
            quote(&t.target_name),
            t.primary_key
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("{} = ${}", quote(&t.columns[c].target_name), i + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let types: Vec<_> = t
            .primary_key
            .iter()
            .map(|&c| t.columns[c].pg_type.pg_type())
            .collect();
        let mut stmts = Vec::with_capacity(clients.len());
        for c in clients {
            stmts.push(c.prepare_typed(&pg_sql, &types).await?);
        }
        let mut st = conn.prepare_cached(&sqlite_sql)?;
        for chunk in keys.chunks(256) {
            let mut parsed = Vec::with_capacity(chunk.len());
            for k in chunk {
                let vals = parse_key(&k.1).ok_or_else(|| {
                    Error::Reverse(format!(
                        "unreadable changed-row key {} in {CHANGED_TABLE}",
                        k.1
                    ))
                })?;
                let sqlite_row = read_sqlite(&mut st, t, &vals)?;
                let pg_key = cast_key(t, &vals)?;
                parsed.push((k, sqlite_row, pg_key));
            }
            // Fetch every key from every target concurrently (pipelined).
            let fetches = parsed.iter().flat_map(|(_, _, pg_key)| {
                clients.iter().zip(&stmts).map(move |(c, s)| {
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = pg_key
                        .iter()
                        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    async move { c.query_opt(s, &params).await }
                })
            });
            let rows = try_join_all(fetches).await?;
            for (i, (k, sqlite_row, _)) in parsed.iter().enumerate() {
                let pg_rows = &rows[i * clients.len()..(i + 1) * clients.len()];
                let mut present = 0;
                let mut differs = None;
                for row in pg_rows.iter().flatten() {
                    present += 1;
                    let vals: Vec<Value> = (0..t.columns.len())
                        .map(|j| row.try_get::<_, Value>(j))
                        .collect::<Result<_, _>>()?;
                    match sqlite_row {
                        Some(s) => {
                            if let Some(j) = (0..vals.len()).find(|&j| !same(&vals[j], &s[j])) {
                                differs = Some(format!(
                                    "column {}: SQLite {} vs Postgres {}",
                                    t.columns[j].source_name,
                                    s[j].display_short(40),
                                    vals[j].display_short(40)
                                ));
                            }
                        }
                        None => differs = Some("deleted in SQLite, present in Postgres".into()),
                    }
                }
                if present == 0 && sqlite_row.is_some() {
                    differs = Some("present in SQLite, absent in Postgres".into());
                }
                if let Some(d) = differs {
                    bad.push(((**k).clone(), d));
                }
            }
        }
    }
    Ok(bad)
}

fn same(a: &Value, b: &Value) -> bool {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.canonical(&mut x);
    b.canonical(&mut y);
    x == y
}

fn read_sqlite(
    st: &mut rusqlite::CachedStatement<'_>,
    t: &TablePlan,
    key: &[SqliteValue],
) -> Result<Option<Vec<Value>>, Error> {
    let mut rows = st.query(params_from_iter(key.iter()))?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(t.columns.len());
    for (j, c) in t.columns.iter().enumerate() {
        let v = c.cast(row.get_ref(j)?).map_err(|e| {
            Error::Reverse(format!(
                "row of {} in the SQLite file does not cast ({}): {e}",
                t.source_name, c.source_name
            ))
        })?;
        out.push(v);
    }
    Ok(Some(out))
}

fn cast_key(t: &TablePlan, key: &[SqliteValue]) -> Result<Vec<Value>, Error> {
    t.primary_key
        .iter()
        .zip(key)
        .map(|(&c, v)| {
            t.columns[c].cast(v.as_ref()).map_err(|e| {
                Error::Reverse(format!(
                    "key of {} does not cast ({}): {e}",
                    t.source_name, t.columns[c].source_name
                ))
            })
        })
        .collect()
}

/// Per-table row counts: SQLite, and the targets' (summed; a table copied
/// to every shard counts once per shard). Returns the tables that differ.
pub(crate) async fn counts(
    conn: &Connection,
    clients: &[&Client],
    plan: &Plan,
) -> Result<Vec<String>, Error> {
    let mut rejected: BTreeMap<String, i64> = BTreeMap::new();
    for c in clients {
        for (t, n) in rejected_rows(c).await? {
            *rejected.entry(t).or_default() += n;
        }
    }
    let mut bad = Vec::new();
    for t in &plan.tables {
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            quote(&plan.schema),
            quote(&t.target_name)
        );
        let pg: Vec<i64> = try_join_all(clients.iter().map(|c| {
            let sql = sql.clone();
            async move { c.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0)) }
        }))
        .await?;
        let src: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {}", q(&t.source_name)),
            [],
            |r| r.get(0),
        )?;
        let src = src - rejected.get(&t.source_name).copied().unwrap_or(0);
        let sum: i64 = pg.iter().sum();
        if sum != src && !pg.iter().all(|n| *n == src) {
            bad.push(format!(
                "{}: {src} rows in SQLite, {sum} in Postgres",
                t.source_name
            ));
        }
    }
    Ok(bad)
}

/// Rows the migration left out (rejected), per source table: they are in
/// the file but never were in Postgres.
async fn rejected_rows(client: &Client) -> Result<Vec<(String, i64)>, Error> {
    let has = client
        .query_one("SELECT to_regclass('dbtool.rejects') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if !has {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT table_name, count(DISTINCT (chunk, ordinal))::bigint FROM dbtool.rejects
             WHERE action = 'rejected'
               AND run_id = (SELECT max(id) FROM dbtool.runs WHERE status = 'done')
             GROUP BY table_name",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
