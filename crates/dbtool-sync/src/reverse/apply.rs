//! Applying decoded Postgres transactions to the SQLite file.
//!
//! A batch of whole transactions, the keys it touched and the stream's
//! position (`_dbtool_meta('reverse_lsn:<slot>')`) commit in ONE SQLite
//! transaction, so after a kill -9 at any point the file holds exactly the
//! transactions up to its recorded position: the rerun skips what the
//! position covers and applies the rest. Inside that transaction
//! `_dbtool_meta('echo_off')` is 1, which turns off every dbtool trigger in
//! the file (the forward capture, so nothing echoes back to Postgres, and the
//! moved mark, which would refuse the write); it is 0 again before COMMIT, so
//! no other connection ever sees it set.

use std::collections::{HashMap, HashSet};

use dbtool_migrate::plan::{Plan, TablePlan};
use dbtool_migrate::uncast::{uncast, SqliteValue};
use dbtool_migrate::value::Value;
use rusqlite::{params_from_iter, Connection, TransactionBehavior};

use super::decode::{Cell, Change, Decoder, Relation, Txn};
use crate::Error;

/// Keys of rows changed since the cutover, kept with the rows so that the
/// rollback checks exactly those (see [`super::check`]).
pub(crate) const CHANGED_TABLE: &str = "_dbtool_reverse_changed";

/// How one published table maps onto the plan.
#[derive(Debug, Clone)]
struct TableMap {
    /// Index into `plan.tables`.
    table: usize,
    /// Relation column -> plan column.
    cols: Vec<Option<usize>>,
    /// Relation columns of the replica identity.
    key: Vec<usize>,
    /// The table has no primary key: identified by all its columns.
    full: bool,
}

/// A changed row's key: the SQLite table and its primary-key values.
pub(crate) type ChangedKey = (String, String);

/// Applies transactions to the SQLite file through the plan's inverse casts.
pub(crate) struct Applier<'p> {
    plan: &'p Plan,
    maps: HashMap<u32, TableMap>,
    /// Keys applied by this process (the rollback rechecks these in the freeze).
    pub changed: HashSet<ChangedKey>,
}

impl<'p> Applier<'p> {
    pub fn new(plan: &'p Plan) -> Applier<'p> {
        Applier {
            plan,
            maps: HashMap::new(),
            changed: HashSet::new(),
        }
    }

    /// Creates dbtool's bookkeeping tables in the file if missing.
    pub fn prepare(conn: &Connection) -> Result<(), Error> {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS _dbtool_meta (key TEXT PRIMARY KEY, value);
             CREATE TABLE IF NOT EXISTS {CHANGED_TABLE} (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;"
        ))?;
        Ok(())
    }

    /// The position recorded for `slot`, if any.
    pub fn position(conn: &Connection, slot: &str) -> Result<Option<u64>, Error> {
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM _dbtool_meta WHERE key = ?1",
                [format!("reverse_lsn:{slot}")],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        Ok(v.as_deref().and_then(super::decode::parse_lsn))
    }

    /// Applies `txns` (in commit order) and records `slot`'s position as the
    /// last one's end, in one SQLite transaction. Returns the rows changed.
    pub fn apply(
        &mut self,
        conn: &mut Connection,
        dec: &Decoder,
        txns: &[Txn],
        slot: &str,
    ) -> Result<u64, Error> {
        let Some(last) = txns.last() else {
            return Ok(0);
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Under the write lock, the file's position decides: another process
        // applying the same slot (a `dbtool sync` next to `dbtool rollback`)
        // may have applied some of these since they were read.
        let done = Applier::position(&tx, slot)?.unwrap_or(0);
        if last.end_lsn <= done {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO _dbtool_meta (key, value) VALUES ('echo_off', 1)
             ON CONFLICT (key) DO UPDATE SET value = 1",
            [],
        )?;
        let mut rows = 0;
        for t in txns.iter().filter(|t| t.end_lsn > done) {
            for c in &t.changes {
                rows += self.change(&tx, dec, c)?;
            }
        }
        tx.execute(
            "INSERT INTO _dbtool_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [
                format!("reverse_lsn:{slot}"),
                super::decode::format_lsn(last.end_lsn),
            ],
        )?;
        tx.execute(
            "UPDATE _dbtool_meta SET value = 0 WHERE key = 'echo_off'",
            [],
        )?;
        tx.commit()?;
        Ok(rows)
    }

    fn map(&mut self, dec: &Decoder, rel: u32) -> Result<(TableMap, &'p TablePlan), Error> {
        if let Some(m) = self.maps.get(&rel) {
            return Ok((m.clone(), &self.plan.tables[m.table]));
        }
        let r = dec
            .relation(rel)
            .ok_or_else(|| Error::Reverse(format!("change for unknown relation {rel}")))?;
        let m = table_map(self.plan, r)?;
        let t = &self.plan.tables[m.table];
        self.maps.insert(rel, m.clone());
        Ok((m, t))
    }

    fn change(&mut self, tx: &Connection, dec: &Decoder, c: &Change) -> Result<u64, Error> {
        match c {
            Change::Insert { rel, new } => {
                let (m, t) = self.map(dec, *rel)?;
                let (cols, vals) = values(t, &m, new)?;
                insert(tx, t, &m, &cols, &vals)?;
                self.touch(tx, t, &m, &cols, &vals)?;
                Ok(1)
            }
            Change::Update { rel, old, new } => {
                let (m, t) = self.map(dec, *rel)?;
                let (cols, vals) = values(t, &m, new)?;
                let where_src = old.as_ref().unwrap_or(new);
                let (kcols, kvals) = key_values(t, &m, where_src)?;
                if old.is_some() {
                    self.touch(tx, t, &m, &kcols, &kvals)?;
                }
                let set: Vec<String> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| format!("{} = ?{}", q(&t.columns[c].source_name), i + 1))
                    .collect();
                let n = if set.is_empty() {
                    0
                } else {
                    let sql = format!(
                        "UPDATE {} SET {} WHERE {}",
                        q(&t.source_name),
                        set.join(", "),
                        where_clause(t, &m, &kcols, cols.len())
                    );
                    let mut st = tx.prepare_cached(&sql)?;
                    st.execute(params_from_iter(vals.iter().chain(kvals.iter())))?
                };
                let complete = new.iter().all(|c| *c != Cell::Unchanged);
                if n == 0 && complete {
                    // Not in the file (it cannot be, short of a hand edit):
                    // the new row is what Postgres holds.
                    insert(tx, t, &m, &cols, &vals)?;
                } else if n == 0 {
                    return Err(Error::Reverse(format!(
                        "an update in Postgres to table {} names a row the SQLite file does not hold (key {}); the file was changed by hand since the cutover: restore it from the cutover backup",
                        t.target_name,
                        key_json(&kvals)
                    )));
                }
                self.touch(tx, t, &m, &cols, &vals)?;
                Ok(1)
            }
            Change::Delete { rel, old } => {
                let (m, t) = self.map(dec, *rel)?;
                let (kcols, kvals) = key_values(t, &m, old)?;
                let sql = if m.full {
                    format!(
                        "DELETE FROM {0} WHERE rowid = (SELECT rowid FROM {0} WHERE {1} LIMIT 1)",
                        q(&t.source_name),
                        where_clause(t, &m, &kcols, 0)
                    )
                } else {
                    format!(
                        "DELETE FROM {} WHERE {}",
                        q(&t.source_name),
                        where_clause(t, &m, &kcols, 0)
                    )
                };
                tx.prepare_cached(&sql)?
                    .execute(params_from_iter(kvals.iter()))?;
                self.touch(tx, t, &m, &kcols, &kvals)?;
                Ok(1)
            }
            Change::Truncate { rels } => {
                for rel in rels {
                    let (_, t) = self.map(dec, *rel)?;
                    tx.execute_batch(&format!("DELETE FROM {}", q(&t.source_name)))?;
                }
                Ok(rels.len() as u64)
            }
        }
    }

    /// Records the key of a changed row (tables with a primary key).
    fn touch(
        &mut self,
        tx: &Connection,
        t: &TablePlan,
        m: &TableMap,
        cols: &[usize],
        vals: &[SqliteValue],
    ) -> Result<(), Error> {
        if m.full {
            return Ok(());
        }
        let mut key = Vec::with_capacity(t.primary_key.len());
        for pk in &t.primary_key {
            match cols.iter().position(|c| c == pk) {
                Some(i) => key.push(vals[i].clone()),
                None => return Ok(()),
            }
        }
        let k = key_json(&key);
        tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO {CHANGED_TABLE} (tbl, key) VALUES (?1, ?2)"
        ))?
        .execute([&t.source_name, &k])?;
        self.changed.insert((t.source_name.clone(), k));
        Ok(())
    }
}

fn table_map(plan: &Plan, r: &Relation) -> Result<TableMap, Error> {
    let table = plan
        .tables
        .iter()
        .position(|t| t.target_name == r.name)
        .ok_or_else(|| {
            Error::Reverse(format!(
                "table {}.{} is in the reverse stream but not in the migration plan: was it created after the cutover? Remove it from the publication or add it to the SQLite file by hand",
                r.schema, r.name
            ))
        })?;
    let t = &plan.tables[table];
    let mut cols = Vec::with_capacity(r.columns.len());
    for c in &r.columns {
        let i = t.columns.iter().position(|p| p.target_name == c.name);
        if i.is_none() {
            return Err(Error::Reverse(format!(
                "column {}.{} was added in Postgres after the cutover and has no place in the SQLite file; add it there (ALTER TABLE {} ADD COLUMN ...) or drop it in Postgres, then rerun",
                r.name, c.name, t.source_name
            )));
        }
        cols.push(i);
    }
    let full = t.primary_key.is_empty();
    let key = if full {
        (0..r.columns.len()).collect()
    } else {
        t.primary_key
            .iter()
            .map(|pk| {
                cols.iter().position(|c| *c == Some(*pk)).ok_or_else(|| {
                    Error::Reverse(format!(
                        "the primary key of {} is not in the reverse stream",
                        t.target_name
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(TableMap {
        table,
        cols,
        key,
        full,
    })
}

/// The sent cells of a tuple as (plan column, SQLite value) pairs.
fn values(
    t: &TablePlan,
    m: &TableMap,
    cells: &[Cell],
) -> Result<(Vec<usize>, Vec<SqliteValue>), Error> {
    let mut cols = Vec::with_capacity(cells.len());
    let mut vals = Vec::with_capacity(cells.len());
    for (i, cell) in cells.iter().enumerate() {
        if let (Cell::Value(v), Some(Some(c))) = (cell, m.cols.get(i)) {
            vals.push(to_sqlite(t, *c, v)?);
            cols.push(*c);
        }
    }
    Ok((cols, vals))
}

/// The key cells of a tuple (all columns for a table without primary key).
fn key_values(
    t: &TablePlan,
    m: &TableMap,
    cells: &[Cell],
) -> Result<(Vec<usize>, Vec<SqliteValue>), Error> {
    let mut cols = Vec::with_capacity(m.key.len());
    let mut vals = Vec::with_capacity(m.key.len());
    for &i in &m.key {
        let c = m.cols[i].expect("mapped");
        match cells.get(i) {
            Some(Cell::Value(v)) => {
                vals.push(to_sqlite(t, c, v)?);
                cols.push(c);
            }
            _ => {
                return Err(Error::Reverse(format!(
                    "a change to {} arrived without its key column {}",
                    t.target_name, t.columns[c].target_name
                )))
            }
        }
    }
    Ok((cols, vals))
}

fn to_sqlite(t: &TablePlan, c: usize, v: &Value) -> Result<SqliteValue, Error> {
    uncast(&t.columns[c], v).map_err(|e| {
        Error::Reverse(format!(
            "cannot write a Postgres change back to {}.{}: {e}",
            t.source_name, t.columns[c].source_name
        ))
    })
}

/// Inserts a row. A key the file already holds is a no-op when the row
/// there is the same (a table copied to every shard gets the same write from
/// each), and an error otherwise: the file and Postgres disagree (with
/// shards: two shards generated the same id), and overwriting would lose a row.
fn insert(
    tx: &Connection,
    t: &TablePlan,
    m: &TableMap,
    cols: &[usize],
    vals: &[SqliteValue],
) -> Result<(), Error> {
    let names: Vec<String> = cols.iter().map(|&c| q(&t.columns[c].source_name)).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        q(&t.source_name),
        names.join(", "),
        marks.join(", ")
    );
    if !m.full {
        sql.push_str(" ON CONFLICT DO NOTHING");
    }
    let n = tx
        .prepare_cached(&sql)?
        .execute(params_from_iter(vals.iter()))?;
    if n == 1 {
        return Ok(());
    }
    let mut key = Vec::with_capacity(t.primary_key.len());
    for pk in &t.primary_key {
        match cols.iter().position(|c| c == pk) {
            Some(i) => key.push(vals[i].clone()),
            None => return Ok(()),
        }
    }
    let select = format!(
        "SELECT {} FROM {} WHERE {}",
        names.join(", "),
        q(&t.source_name),
        t.primary_key
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("{} = ?{}", q(&t.columns[c].source_name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    );
    let mut st = tx.prepare_cached(&select)?;
    let mut rows = st.query(params_from_iter(key.iter()))?;
    let Some(row) = rows.next()? else {
        return Err(Error::Reverse(format!(
            "a row inserted in Postgres into {} (key {}) conflicts with another row of the file on a unique column: the file and Postgres disagree; run dbtool verify",
            t.target_name,
            key_json(&key)
        )));
    };
    for (i, &c) in cols.iter().enumerate() {
        let col = &t.columns[c];
        let here = col.cast(row.get_ref(i)?);
        let there = col.cast(vals[i].as_ref());
        let same = match (here, there) {
            (Ok(a), Ok(b)) => {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                a.canonical(&mut x);
                b.canonical(&mut y);
                x == y
            }
            _ => false,
        };
        if !same {
            return Err(Error::Reverse(format!(
                "a row inserted in Postgres into {} has key {}, which the file already holds with a different {}: with shards, two shards generated the same id (give each shard its own id range, see docs/rollback.md); without, the file was written since the cutover. Nothing was applied from this batch",
                t.target_name,
                key_json(&key),
                col.source_name
            )));
        }
    }
    Ok(())
}

fn where_clause(t: &TablePlan, m: &TableMap, kcols: &[usize], offset: usize) -> String {
    let op = if m.full { "IS" } else { "=" };
    kcols
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} {op} ?{}", q(&t.columns[c].source_name), offset + i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// SQLite identifier quoting.
pub(crate) fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A key as JSON text: integers as numbers, text as strings, reals and blobs
/// tagged (`{"r": 1.5}`, `{"b": "00ff"}`).
pub(crate) fn key_json(vals: &[SqliteValue]) -> String {
    let arr: Vec<serde_json::Value> = vals
        .iter()
        .map(|v| match v {
            SqliteValue::Null => serde_json::Value::Null,
            SqliteValue::Integer(i) => (*i).into(),
            SqliteValue::Real(f) => serde_json::json!({ "r": f }),
            SqliteValue::Text(b) => String::from_utf8_lossy(b).into_owned().into(),
            SqliteValue::Blob(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                serde_json::json!({ "b": hex })
            }
        })
        .collect();
    serde_json::Value::Array(arr).to_string()
}

/// The inverse of [`key_json`].
pub(crate) fn parse_key(s: &str) -> Option<Vec<SqliteValue>> {
    let arr: Vec<serde_json::Value> = serde_json::from_str(s).ok()?;
    arr.into_iter()
        .map(|v| match v {
            serde_json::Value::Null => Some(SqliteValue::Null),
            serde_json::Value::Number(n) => n.as_i64().map(SqliteValue::Integer),
            serde_json::Value::String(s) => Some(SqliteValue::Text(s.into_bytes())),
            serde_json::Value::Object(o) => {
                if let Some(f) = o.get("r") {
                    f.as_f64().map(SqliteValue::Real)
                } else {
                    let hex = o.get("b")?.as_str()?;
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                        .map(SqliteValue::Blob)
                }
            }
            _ => None,
        })
        .collect()
}
