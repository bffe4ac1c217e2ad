//! Reading the change log and applying it to the target(s).
//!
//! A batch is read in `seq` order; each change is cast through the run's
//! plan ([`ColumnPlan::cast`], as `migrate` does) and sent as one prepared
//! single-row statement (upsert by key, delete by key, or for tables without
//! a key insert / delete the first equal row). The statements of a batch are
//! pipelined on one connection in log order inside one transaction that also
//! advances the position row (`dbtool.syncs.position`), so a crash replays at
//! most one batch, and replaying converges (upserts and deletes by key).

use std::collections::HashMap;
use std::sync::Arc;

use dbtool_migrate::ident;
use dbtool_migrate::plan::{Plan, Policy, TablePlan};
use dbtool_migrate::shard::{Rule, ShardFilter};
use dbtool_migrate::value::Value;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use crate::capture::{Captured, LOG};
use crate::Error;

/// One change read from the log.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its position in the log (commit order).
    pub seq: i64,
    /// The table (source name).
    pub table: Arc<str>,
    /// `U` upsert, `I` insert, `D` delete.
    pub op: u8,
    /// When it was written (Unix seconds).
    pub ts: f64,
    /// The row's values in capture order.
    pub values: Vec<SqlValue>,
}

/// Reads up to `limit` changes after `after`, with the schema version the
/// same snapshot saw.
pub fn read_batch(
    conn: &Connection,
    width: usize,
    after: i64,
    limit: usize,
) -> Result<(i64, Vec<Change>), Error> {
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        let version: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        let cols: String = (0..width).map(|i| format!(", c{i}")).collect();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT seq, tbl, op, (ts - 2440587.5) * 86400.0{cols} FROM {LOG} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let mut rows = stmt.query(rusqlite::params![after, limit as i64])?;
        let mut out = Vec::new();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        while let Some(r) = rows.next()? {
            let tbl: String = r.get(1)?;
            let table = names
                .entry(tbl.clone())
                .or_insert_with(|| Arc::from(tbl.as_str()))
                .clone();
            let op: String = r.get(2)?;
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(r.get::<_, SqlValue>(4 + i)?);
            }
            out.push(Change {
                seq: r.get(0)?,
                table,
                op: op.as_bytes().first().copied().unwrap_or(b'U'),
                ts: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                values,
            });
        }
        Ok::<_, Error>((version, out))
    })();
    let _ = conn.execute_batch("COMMIT");
    result
}

/// The highest sequence in the log (0 when empty), and the write time of the
/// oldest change after `after` (Unix seconds), if any.
pub fn head(conn: &Connection, after: i64) -> Result<(i64, Option<f64>), Error> {
    let head: i64 = conn.query_row(
        &format!("SELECT coalesce(max(seq), 0) FROM {LOG}"),
        [],
        |r| r.get(0),
    )?;
    let oldest: Option<f64> = conn
        .query_row(
            &format!(
                "SELECT (ts - 2440587.5) * 86400.0 FROM {LOG} WHERE seq > ?1 ORDER BY seq LIMIT 1"
            ),
            [after],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok((head, oldest))
}

/// How one source table maps onto the plan and the log.
#[derive(Debug, Clone)]
pub struct TableMap {
    /// The table's plan.
    pub plan: Arc<TablePlan>,
    /// For each plan column, its column in the log (None: not captured).
    pub log_cols: Vec<Option<usize>>,
    /// Whether the target has a key to upsert and delete by.
    pub keyed: bool,
    /// How rows are routed to shards.
    pub rule: Rule,
}

/// One target database (a shard, or the plain target with shard `""`).
pub struct Sink {
    /// The shard's name (`""` for a plain target).
    pub shard: String,
    /// The connection.
    pub client: tokio_postgres::Client,
    /// Its applied position.
    pub position: i64,
    stmts: HashMap<(String, u8), Statement>,
}

impl Sink {
    /// A sink at `position`.
    pub fn new(shard: String, client: tokio_postgres::Client, position: i64) -> Sink {
        Sink {
            shard,
            client,
            position,
            stmts: HashMap::new(),
        }
    }

    /// Forgets the prepared statements (after the target's tables changed).
    pub fn reset(&mut self) {
        self.stmts.clear();
    }
}

/// A value that could not be cast, for the reject records.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The change.
    pub seq: i64,
    /// Source table.
    pub table: String,
    /// Key columns and values.
    pub pk: serde_json::Value,
    /// Source column.
    pub column: String,
    /// Why.
    pub reason: String,
    /// The original value.
    pub value: serde_json::Value,
    /// `rejected` or `nulled`.
    pub action: &'static str,
}

/// Applies changes to sinks.
pub struct Applier {
    /// Canonical source path (the state rows' key).
    pub source_path: String,
    /// The plan.
    pub plan: Plan,
    /// Per source table.
    pub tables: HashMap<String, TableMap>,
    /// Routing, with `--shards`.
    pub router: Option<ShardFilter>,
    /// The first shard (takes the rows that cannot be routed).
    pub first_shard: String,
}

/// A SQLite value as JSON for reject records and key display (blobs as hex).
pub fn json_of(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map_or_else(|| f.to_string().into(), serde_json::Value::Number),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "hex": hex })
        }
    }
}

/// What a batch did on one sink.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// Changes sent to this sink.
    pub changes: u64,
    /// Rejected values recorded.
    pub rejected: u64,
}

impl Applier {
    /// An applier for `plan`, given the captured tables.
    pub fn new(
        source_path: String,
        plan: Plan,
        captured: &[Captured],
        router: Option<ShardFilter>,
        first_shard: String,
    ) -> Result<Applier, Error> {
        let mut tables = HashMap::new();
        for t in &plan.tables {
            let Some(cap) = captured
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&t.source_name))
            else {
                continue;
            };
            let log_cols = t
                .columns
                .iter()
                .map(|c| {
                    cap.columns
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(&c.source_name))
                })
                .collect();
            let rule = match &router {
                Some(r) => r.rule_for(t)?,
                None => Rule::Every,
            };
            tables.insert(
                cap.name.clone(),
                TableMap {
                    plan: Arc::new(t.clone()),
                    log_cols,
                    keyed: !t.primary_key.is_empty(),
                    rule,
                },
            );
        }
        Ok(Applier {
            source_path,
            plan,
            tables,
            router,
            first_shard,
        })
    }

    /// Where a change goes: `None` every shard; `Some(Ok(shard))`; `Some(Err(why))`.
    fn route(&self, map: &TableMap, ch: &Change) -> Option<Result<String, String>> {
        let router = self.router.as_ref()?;
        let v = match &map.rule {
            Rule::Key(i, _) => map.log_cols[*i]
                .and_then(|l| ch.values.get(l))
                .map_or(ValueRef::Null, ValueRef::from),
            _ => ValueRef::Null,
        };
        match router.shard_of(&map.rule, v) {
            Ok(None) => None,
            Ok(Some(s)) => Some(Ok(s.to_owned())),
            Err(e) => Some(Err(e)),
        }
    }

    async fn statement(&self, sink: &mut Sink, map: &TableMap, op: u8) -> Result<Statement, Error> {
        let key = (map.plan.source_name.clone(), op);
        if let Some(s) = sink.stmts.get(&key) {
            return Ok(s.clone());
        }
        let t = &map.plan;
        let name = ident::qualified(&self.plan.schema, &t.target_name);
        let q = |i: usize| ident::quote(&t.columns[i].target_name);
        let all: Vec<usize> = (0..t.columns.len()).collect();
        let (sql, cols): (String, Vec<usize>) = match (op, map.keyed) {
            (b'D', true) => {
                let w: Vec<String> = t
                    .primary_key
                    .iter()
                    .enumerate()
                    .map(|(n, &i)| format!("{} = ${}", q(i), n + 1))
                    .collect();
                (
                    format!("DELETE FROM {name} WHERE {}", w.join(" AND ")),
                    t.primary_key.clone(),
                )
            }
            (b'D', false) => {
                let w: Vec<String> = all
                    .iter()
                    .map(|&i| format!("{} IS NOT DISTINCT FROM ${}", q(i), i + 1))
                    .collect();
                (
                    format!(
                        "DELETE FROM {name} WHERE ctid = (SELECT ctid FROM {name} WHERE {} LIMIT 1)",
                        w.join(" AND ")
                    ),
                    all.clone(),
                )
            }
            (_, keyed) => {
                let names: Vec<String> = all.iter().map(|&i| q(i)).collect();
                let ps: Vec<String> = all.iter().map(|&i| format!("${}", i + 1)).collect();
                let mut sql = format!(
                    "INSERT INTO {name} ({}) VALUES ({})",
                    names.join(", "),
                    ps.join(", ")
                );
                if keyed {
                    let keys: Vec<String> = t.primary_key.iter().map(|&i| q(i)).collect();
                    let sets: Vec<String> = all
                        .iter()
                        .filter(|i| !t.primary_key.contains(i))
                        .map(|&i| format!("{} = EXCLUDED.{}", q(i), q(i)))
                        .collect();
                    if sets.is_empty() {
                        sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
                    } else {
                        sql.push_str(&format!(
                            " ON CONFLICT ({}) DO UPDATE SET {}",
                            keys.join(", "),
                            sets.join(", ")
                        ));
                    }
                }
                (sql, all.clone())
            }
        };
        let types: Vec<_> = cols
            .iter()
            .map(|&i| t.columns[i].pg_type.pg_type())
            .collect();
        let stmt = sink.client.prepare_typed(&sql, &types).await.map_err(|e| {
            Error::Other(format!(
                "cannot prepare the change statement for table {name}: {e}; statement: {sql}"
            ))
        })?;
        sink.stmts.insert(key, stmt.clone());
        Ok(stmt)
    }

    /// Applies the changes of `batch` that belong to `sink` and are above its
    /// committed position, and advances the position to the batch's last
    /// sequence, in one transaction. Returns what it did.
    pub async fn apply(&self, sink: &mut Sink, batch: &[Change]) -> Result<Applied, Error> {
        let Some(last) = batch.last().map(|c| c.seq) else {
            return Ok(Applied::default());
        };
        let mut out = Applied::default();
        // Statements first (prepare outside the transaction's pipeline).
        let mut work: Vec<(Statement, Vec<Value>)> = Vec::new();
        let mut rejects: Vec<Rejected> = Vec::new();
        let pos = {
            let row = sink
                .client
                .query_opt(
                    "SELECT position FROM dbtool.syncs WHERE source_path = $1 AND shard = $2",
                    &[&self.source_path, &sink.shard],
                )
                .await?;
            row.map_or(sink.position, |r| r.get::<_, i64>(0))
        };
        for ch in batch.iter().filter(|c| c.seq > pos) {
            let Some(map) = self.tables.get(&*ch.table) else {
                continue;
            };
            match self.route(map, ch) {
                None => {}
                Some(Ok(s)) if s == sink.shard => {}
                Some(Ok(_)) => continue,
                Some(Err(why)) => {
                    if sink.shard == self.first_shard {
                        rejects.push(self.reject(map, ch, "(shard key)", why, "rejected"));
                    }
                    continue;
                }
            }
            let cols: Vec<usize> = if ch.op == b'D' && map.keyed {
                map.plan.primary_key.clone()
            } else {
                (0..map.plan.columns.len()).collect()
            };
            let mut params = Vec::with_capacity(cols.len());
            let mut skip = false;
            for &i in &cols {
                let col = &map.plan.columns[i];
                let v = map.log_cols[i]
                    .and_then(|l| ch.values.get(l))
                    .map_or(ValueRef::Null, ValueRef::from);
                match col.cast(v) {
                    Ok(x) => params.push(x),
                    Err(e) => match col.policy {
                        Policy::Null if !col.not_null => {
                            rejects.push(self.reject_value(map, ch, &col.source_name, e.reason, v, "nulled"));
                            params.push(Value::Null);
                        }
                        Policy::Fail => {
                            return Err(Error::Other(format!(
                                "cannot apply change {} to table {}, column {}: {}; the policy for this column is fail: fix the value in the source or set the policy to reject or null, then run the same command again",
                                ch.seq, map.plan.source_name, col.source_name, e.reason
                            )))
                        }
                        _ => {
                            rejects.push(self.reject_value(map, ch, &col.source_name, e.reason, v, "rejected"));
                            skip = true;
                            break;
                        }
                    },
                }
            }
            if skip {
                continue;
            }
            let stmt = self.statement(sink, map, ch.op).await?;
            work.push((stmt, params));
        }
        let tx = sink.client.transaction().await?;
        let locked: Option<i64> = tx
            .query_opt(
                "SELECT position FROM dbtool.syncs WHERE source_path = $1 AND shard = $2 FOR UPDATE",
                &[&self.source_path, &sink.shard],
            )
            .await?
            .map(|r| r.get(0));
        let locked = locked.ok_or_else(|| {
            Error::Other(format!(
                "no sync state for {} in the target (dbtool.syncs); run dbtool sync first",
                self.source_path
            ))
        })?;
        if locked != pos {
            // Another applier (the cutover) moved the position meanwhile:
            // let the caller read again from the new position.
            tx.rollback().await?;
            sink.position = locked;
            return Ok(out);
        }
        {
            let futs = work.iter().map(|(stmt, params)| {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let tx = &tx;
                async move { tx.execute(stmt, &refs).await }
            });
            let results = futures::future::join_all(futs).await;
            for (r, (_, _)) in results.into_iter().zip(&work) {
                if let Err(e) = r {
                    return Err(Error::Other(format!(
                        "applying a batch of changes up to log position {last} failed: {e}; nothing of the batch was committed: fix the cause and run dbtool sync again"
                    )));
                }
            }
        }
        for r in &rejects {
            tx.execute(
                "INSERT INTO dbtool.sync_rejects (source_path, shard, seq, table_name, pk, column_name, reason, value, action) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[
                    &self.source_path,
                    &sink.shard,
                    &r.seq,
                    &r.table,
                    &r.pk,
                    &r.column,
                    &r.reason,
                    &r.value,
                    &r.action,
                ],
            )
            .await?;
        }
        out.changes = work.len() as u64;
        out.rejected = rejects.len() as u64;
        tx.execute(
            "UPDATE dbtool.syncs SET position = $3, applied = applied + $4, rejected = rejected + $5, updated_at = now() \
             WHERE source_path = $1 AND shard = $2",
            &[
                &self.source_path,
                &sink.shard,
                &last,
                &(out.changes as i64),
                &(out.rejected as i64),
            ],
        )
        .await?;
        tx.commit().await?;
        sink.position = last;
        Ok(out)
    }

    fn key_json(&self, map: &TableMap, ch: &Change) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for &i in &map.plan.primary_key {
            let v = map.log_cols[i]
                .and_then(|l| ch.values.get(l))
                .map_or(ValueRef::Null, ValueRef::from);
            m.insert(map.plan.columns[i].source_name.clone(), json_of(v));
        }
        serde_json::Value::Object(m)
    }

    fn reject(
        &self,
        map: &TableMap,
        ch: &Change,
        column: &str,
        reason: String,
        action: &'static str,
    ) -> Rejected {
        Rejected {
            seq: ch.seq,
            table: map.plan.source_name.clone(),
            pk: self.key_json(map, ch),
            column: column.to_owned(),
            reason,
            value: serde_json::Value::Null,
            action,
        }
    }

    fn reject_value(
        &self,
        map: &TableMap,
        ch: &Change,
        column: &str,
        reason: String,
        v: ValueRef<'_>,
        action: &'static str,
    ) -> Rejected {
        let mut r = self.reject(map, ch, column, reason, action);
        r.value = json_of(v);
        r
    }
}
