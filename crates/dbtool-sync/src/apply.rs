//! Reading the change log and applying it to the target(s).
//!
//! A batch is read in `seq` order; each change is cast through the run's
//! plan ([`ColumnPlan::cast`](dbtool_migrate::plan::ColumnPlan::cast), as `migrate` does) and sent as one prepared
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

/// What the snapshot a batch was read in says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// `PRAGMA schema_version`.
    pub schema_version: i64,
    /// A `VACUUM` renumbered the rowid-only tables since the canary was
    /// armed ([`crate::capture::renumbered`]).
    pub renumbered: bool,
}

/// Reads up to `limit` changes after `after`, with the schema version the
/// same snapshot saw.
pub fn read_batch(
    conn: &Connection,
    width: usize,
    after: i64,
    limit: usize,
) -> Result<(i64, Vec<Change>), Error> {
    read_snapshot(conn, width, after, limit).map(|(s, b)| (s.schema_version, b))
}

/// [`read_batch`], also checking the `VACUUM` canary in the same snapshot.
pub fn read_snapshot(
    conn: &Connection,
    width: usize,
    after: i64,
    limit: usize,
) -> Result<(Snapshot, Vec<Change>), Error> {
    crate::txn::snapshot(conn, std::time::Duration::from_secs(60), |conn| {
        let version: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        let renumbered = crate::capture::renumbered(conn)?;
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
        Ok((
            Snapshot {
                schema_version: version,
                renumbered,
            },
            out,
        ))
    })
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
    stmts: HashMap<(String, u8, usize), Statement>,
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

/// One cast change for a sink.
struct Item {
    table: String,
    op: u8,
    params: Vec<Value>,
}

fn batch_error(last: i64, e: tokio_postgres::Error) -> Error {
    Error::Other(format!(
        "applying a batch of changes up to log position {last} failed: {e}; nothing of the batch was committed: fix the cause and run dbtool sync again"
    ))
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
    /// Source tables, foreign-key parents before their children.
    order: Vec<String>,
}

/// The captured tables (their names in `tables`), parents before children
/// by the plan's foreign keys; tables on a cycle last.
fn fk_order(plan: &Plan, tables: &HashMap<String, TableMap>) -> Vec<String> {
    let name_of = |source: &str| {
        tables
            .keys()
            .find(|k| k.eq_ignore_ascii_case(source))
            .cloned()
    };
    let mut left: Vec<(String, Vec<String>)> = plan
        .tables
        .iter()
        .filter_map(|t| {
            let me = name_of(&t.source_name)?;
            let parents = t
                .foreign_keys
                .iter()
                .filter_map(|f| name_of(&f.ref_table))
                .filter(|p| *p != me)
                .collect();
            Some((me, parents))
        })
        .collect();
    let mut out: Vec<String> = Vec::new();
    while !left.is_empty() {
        let ready: Vec<usize> = (0..left.len())
            .filter(|&i| left[i].1.iter().all(|p| out.contains(p)))
            .collect();
        if ready.is_empty() {
            out.extend(left.drain(..).map(|(t, _)| t));
            break;
        }
        for &i in ready.iter().rev() {
            let (t, _) = left.remove(i);
            out.push(t);
        }
    }
    out
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
        let order = fk_order(&plan, &tables);
        Ok(Applier {
            source_path,
            plan,
            tables,
            router,
            first_shard,
            order,
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
        let key = (map.plan.source_name.clone(), op, 0);
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
        // The changes to send, cast; statements are prepared before the
        // transaction so that its statements pipeline.
        let mut items: Vec<Item> = Vec::new();
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
            if let Some(item) = self.cast_change(&sink.shard, ch, &mut rejects)? {
                items.push(item);
            }
        }
        // Fast path: the batch coalesced to each key's last state, sent as
        // multi-row statements, parents before children (upserts) and
        // children before parents (deletes). A constraint that this order
        // violates (a unique value moving between rows, a key reused)
        // falls back to the batch in log order, which is always valid.
        if items.len() > 1
            && items
                .iter()
                .all(|i| self.tables.get(&i.table).is_some_and(|m| m.keyed))
        {
            let work = self.coalesced(sink, &items).await?;
            match self
                .commit(sink, pos, last, &work, &rejects, items.len() as i64)
                .await
            {
                Ok(r) => return Ok(self.done(sink, r, last, items.len(), &rejects)),
                Err(e) if e.code().is_some_and(|c| c.code().starts_with("23")) => {
                    tracing::debug!("coalesced batch up to {last} violated a constraint ({e}); applying it in log order");
                }
                Err(e) => return Err(batch_error(last, e)),
            }
        }
        let mut work: Vec<(Statement, Vec<&Value>)> = Vec::with_capacity(items.len());
        for it in &items {
            let map = &self.tables[&it.table];
            let stmt = self.statement(sink, map, it.op).await?;
            work.push((stmt, it.params.iter().collect()));
        }
        match self
            .commit(sink, pos, last, &work, &rejects, items.len() as i64)
            .await
        {
            Ok(r) => Ok(self.done(sink, r, last, items.len(), &rejects)),
            Err(e) => Err(batch_error(last, e)),
        }
    }

    /// `ch` routed and cast for the shard `shard`: `None` when its table
    /// is not synced, it belongs to another shard, or a value did not cast
    /// under the reject policy (recorded in `rejects`).
    fn cast_change(
        &self,
        shard: &str,
        ch: &Change,
        rejects: &mut Vec<Rejected>,
    ) -> Result<Option<Item>, Error> {
        let Some(map) = self.tables.get(&*ch.table) else {
            return Ok(None);
        };
        match self.route(map, ch) {
            None => {}
            Some(Ok(s)) if s == shard => {}
            Some(Ok(_)) => return Ok(None),
            Some(Err(why)) => {
                if shard == self.first_shard {
                    rejects.push(self.reject(map, ch, "(shard key)", why, "rejected"));
                }
                return Ok(None);
            }
        }
        let cols: Vec<usize> = if ch.op == b'D' && map.keyed {
            map.plan.primary_key.clone()
        } else {
            (0..map.plan.columns.len()).collect()
        };
        let mut params = Vec::with_capacity(cols.len());
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
                        return Ok(None);
                    }
                },
            }
        }
        Ok(Some(Item {
            table: map.plan.source_name.clone(),
            op: ch.op,
            params,
        }))
    }

    /// Whole rows of `table` (values in capture order, as the log holds
    /// them), routed to `shard` and cast through the plan for an insert of
    /// every plan column. A row that has a value the policy rejects is left
    /// out and recorded in `rejects`, its `seq` being its index in `rows`.
    pub fn cast_rows(
        &self,
        shard: &str,
        table: &str,
        rows: &[Vec<SqlValue>],
        rejects: &mut Vec<Rejected>,
    ) -> Result<Vec<Vec<Value>>, Error> {
        let name: Arc<str> = Arc::from(table);
        let mut out = Vec::new();
        for (i, values) in rows.iter().enumerate() {
            let ch = Change {
                seq: i as i64,
                table: name.clone(),
                op: b'I',
                ts: 0.0,
                values: values.clone(),
            };
            if let Some(item) = self.cast_change(shard, &ch, rejects)? {
                out.push(item.params);
            }
        }
        Ok(out)
    }

    fn done(
        &self,
        sink: &mut Sink,
        moved: Option<i64>,
        last: i64,
        n: usize,
        rejects: &[Rejected],
    ) -> Applied {
        match moved {
            Some(p) => {
                sink.position = p;
                Applied::default()
            }
            None => {
                sink.position = last;
                Applied {
                    changes: n as u64,
                    rejected: rejects.len() as u64,
                }
            }
        }
    }

    /// The batch as multi-row statements of each key's last state.
    async fn coalesced<'a>(
        &self,
        sink: &mut Sink,
        items: &'a [Item],
    ) -> Result<Vec<(Statement, Vec<&'a Value>)>, Error> {
        let key_of = |it: &Item| -> Vec<u8> {
            let map = &self.tables[&it.table];
            let mut k = Vec::new();
            if it.op == b'D' {
                for v in &it.params {
                    v.canonical(&mut k);
                }
            } else {
                for &i in &map.plan.primary_key {
                    it.params[i].canonical(&mut k);
                }
            }
            k
        };
        let mut last_of: HashMap<(&str, Vec<u8>), usize> = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            last_of.insert((it.table.as_str(), key_of(it)), i);
        }
        let mut ups: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut dels: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut finals: Vec<usize> = last_of.into_values().collect();
        finals.sort_unstable();
        for i in finals {
            let it = &items[i];
            let bucket = if it.op == b'D' { &mut dels } else { &mut ups };
            bucket.entry(it.table.as_str()).or_default().push(i);
        }
        let mut work = Vec::new();
        for (phase, order) in [
            (b'U', self.order.clone()),
            (b'D', self.order.iter().rev().cloned().collect::<Vec<_>>()),
        ] {
            for t in &order {
                let Some(idx) = (if phase == b'U' {
                    ups.get(t.as_str())
                } else {
                    dels.get(t.as_str())
                }) else {
                    continue;
                };
                let map = &self.tables[t];
                let width = if phase == b'D' {
                    map.plan.primary_key.len()
                } else {
                    map.plan.columns.len()
                }
                .max(1);
                let mut rest: &[usize] = idx;
                while !rest.is_empty() {
                    let n = [256usize, 64, 16, 4, 1]
                        .into_iter()
                        .find(|&n| n <= rest.len() && n * width <= 65_535)
                        .unwrap_or(1);
                    let (chunk, tail) = rest.split_at(n);
                    rest = tail;
                    let stmt = self.multi(sink, map, phase, n).await?;
                    let params: Vec<&Value> =
                        chunk.iter().flat_map(|&i| items[i].params.iter()).collect();
                    work.push((stmt, params));
                }
            }
        }
        Ok(work)
    }

    /// A prepared statement upserting (`U`) or deleting (`D`) `n` rows by key.
    async fn multi(
        &self,
        sink: &mut Sink,
        map: &TableMap,
        op: u8,
        n: usize,
    ) -> Result<Statement, Error> {
        if n == 1 {
            return self.statement(sink, map, op).await;
        }
        let key = (map.plan.source_name.clone(), op | 0x80, n);
        if let Some(s) = sink.stmts.get(&key) {
            return Ok(s.clone());
        }
        let t = &map.plan;
        let name = ident::qualified(&self.plan.schema, &t.target_name);
        let q = |i: usize| ident::quote(&t.columns[i].target_name);
        let cols: Vec<usize> = if op == b'D' {
            t.primary_key.clone()
        } else {
            (0..t.columns.len()).collect()
        };
        let w = cols.len();
        let tuples: Vec<String> = (0..n)
            .map(|r| {
                let ps: Vec<String> = (0..w).map(|c| format!("${}", r * w + c + 1)).collect();
                format!("({})", ps.join(", "))
            })
            .collect();
        let keys: Vec<String> = t.primary_key.iter().map(|&i| q(i)).collect();
        let sql = if op == b'D' {
            format!(
                "DELETE FROM {name} WHERE ({}) IN ({})",
                keys.join(", "),
                tuples.join(", ")
            )
        } else {
            let names: Vec<String> = cols.iter().map(|&i| q(i)).collect();
            let sets: Vec<String> = cols
                .iter()
                .filter(|i| !t.primary_key.contains(i))
                .map(|&i| format!("{} = EXCLUDED.{}", q(i), q(i)))
                .collect();
            let conflict = if sets.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", sets.join(", "))
            };
            format!(
                "INSERT INTO {name} ({}) VALUES {} ON CONFLICT ({}) {conflict}",
                names.join(", "),
                tuples.join(", "),
                keys.join(", ")
            )
        };
        let types: Vec<_> = (0..n)
            .flat_map(|_| cols.iter().map(|&i| t.columns[i].pg_type.pg_type()))
            .collect();
        let stmt = sink.client.prepare_typed(&sql, &types).await.map_err(|e| {
            Error::Other(format!(
                "cannot prepare the change statement for table {name}: {e}"
            ))
        })?;
        sink.stmts.insert(key, stmt.clone());
        Ok(stmt)
    }

    /// One transaction: lock the position, send `work` pipelined, record
    /// rejects, advance the position. `Ok(Some(p))`: another applier had
    /// moved the position to `p`; nothing was done.
    async fn commit(
        &self,
        sink: &mut Sink,
        pos: i64,
        last: i64,
        work: &[(Statement, Vec<&Value>)],
        rejects: &[Rejected],
        n: i64,
    ) -> Result<Option<i64>, tokio_postgres::Error> {
        let tx = sink.client.transaction().await?;
        // Passes the "moved back" mark a rollback leaves on the tables
        // (crate::reverse::mark): only the app's own writes are refused.
        tx.batch_execute("SET LOCAL dbtool.apply = 'on'").await?;
        let locked: Option<i64> = tx
            .query_opt(
                "SELECT position FROM dbtool.syncs WHERE source_path = $1 AND shard = $2 FOR UPDATE",
                &[&self.source_path, &sink.shard],
            )
            .await?
            .map(|r| r.get(0));
        let Some(locked) = locked else {
            // No state row: the sync was removed under us; nothing applied.
            tx.rollback().await?;
            return Ok(Some(pos));
        };
        if locked != pos {
            // Another applier (the cutover) moved the position meanwhile:
            // let the caller read again from the new position.
            tx.rollback().await?;
            return Ok(Some(locked));
        }
        {
            let futs = work.iter().map(|(stmt, params)| {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| *v as &(dyn ToSql + Sync)).collect();
                let tx = &tx;
                async move { tx.execute(stmt, &refs).await }
            });
            for r in futures::future::join_all(futs).await {
                r?;
            }
        }
        for r in rejects {
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
        tx.execute(
            "UPDATE dbtool.syncs SET position = $3, applied = applied + $4, rejected = rejected + $5, updated_at = now() \
             WHERE source_path = $1 AND shard = $2",
            &[
                &self.source_path,
                &sink.shard,
                &last,
                &n,
                &(rejects.len() as i64),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(None)
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
