//! The source side: stream a SQLite table through the migrator's casts and
//! hash each row's canonical encoding.
//!
//! The hot path writes the canonical bytes of a cast straight from SQLite's
//! borrowed cell ([`append_cast`]) for the pairs that need no parsing (an
//! integer into `bigint`, UTF-8 text into `text`, ...): no `Value` is built
//! and nothing is copied but into the row buffer. Every other pair goes
//! through the migrator's own cast; a unit test holds the two byte-equal.
//! The cast values themselves are built only for the rows a caller lists
//! ([`SrcRow::values`]).

use dbtool_migrate::value::{PgType, Value};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, Row, Rows};
use xxhash_rust::xxh3::xxh3_64;

use crate::spec::{quote, Key, TableSpec};
use crate::Error;

/// Which rows of a table to read.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    /// Every row.
    All,
    /// Integer key in `[lo, hi)` (tables with a rowid key only).
    Range(i64, i64),
    /// These rowids (source) or integer keys (target).
    Keys(Vec<i64>),
    /// These primary keys, as target-typed values in key order (target only).
    Tuples(Vec<Vec<Value>>),
}

/// One hashed source row, borrowed for the callback.
pub(crate) struct SrcRow<'a, 'r> {
    /// The rowid, when the table has one.
    pub(crate) rowid: Option<i64>,
    /// xxh3 of the whole row's canonical encoding.
    pub(crate) hash: u64,
    /// xxh3 of the key columns' canonical encoding (the row hash without a key).
    pub(crate) key_hash: u64,
    /// The key columns' canonical encoding.
    pub(crate) key_bytes: &'a [u8],
    /// The first cast error in this row, if any (that cell hashed as NULL).
    pub(crate) cast_error: Option<&'a str>,
    row: &'a Row<'r>,
    spec: &'a TableSpec,
    off: usize,
}

impl SrcRow<'_, '_> {
    /// The row's cast values (a failed cast is NULL), built on demand: only
    /// rows that differ are listed.
    pub(crate) fn values(&self) -> Vec<Value> {
        (0..self.spec.columns.len())
            .map(|i| match self.row.get_ref(i + self.off) {
                Ok(cell) => (self.spec.cast)(i, cell).unwrap_or(Value::Null),
                Err(_) => Value::Null,
            })
            .collect()
    }
}

/// Appends what `cast(v)?.canonical(out)` appends for a column planned as
/// `ty`, without building a [`Value`] where the cast is a plain copy; other
/// pairs are left to the migrator's cast (`Ok(false)`: nothing appended).
pub(crate) fn append_cast(ty: PgType, v: ValueRef<'_>, out: &mut Vec<u8>) -> bool {
    match (ty, v) {
        (_, ValueRef::Null) => out.push(0),
        (PgType::Int8, ValueRef::Integer(i)) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        (PgType::Int4, ValueRef::Integer(i)) if i32::try_from(i).is_ok() => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        (PgType::Bool, ValueRef::Integer(i @ (0 | 1))) => {
            out.push(1);
            out.push(i as u8);
        }
        (PgType::Float8, ValueRef::Real(f)) => {
            let bits = if f.is_nan() {
                f64::NAN.to_bits()
            } else {
                f.to_bits()
            };
            out.push(3);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        (PgType::Text, ValueRef::Text(b) | ValueRef::Blob(b))
            if !b.contains(&0) && std::str::from_utf8(b).is_ok() =>
        {
            put_bytes(out, 5, b)
        }
        (PgType::Bytea, ValueRef::Text(b) | ValueRef::Blob(b)) => put_bytes(out, 6, b),
        _ => return false,
    }
    true
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// The SELECT list of a scan: the rowid first (when the table has one),
/// then the planned columns.
fn select(t: &TableSpec) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.source)).collect();
    let rowid_sel = if t.has_rowid() {
        format!("{}, ", t.rowid_expr.unwrap_or("rowid"))
    } else {
        String::new()
    };
    format!(
        "SELECT {rowid_sel}{} FROM {}",
        if cols.is_empty() {
            "NULL".to_owned()
        } else {
            cols.join(", ")
        },
        quote(&t.source)
    )
}

/// Hashes rows of one table; holds the buffers reused from row to row.
struct Hasher<'t> {
    t: &'t TableSpec,
    off: usize,
    key_cols: Vec<usize>,
    buf: Vec<u8>,
    key_buf: Vec<u8>,
    ends: Vec<usize>,
}

impl<'t> Hasher<'t> {
    fn new(t: &'t TableSpec) -> Hasher<'t> {
        Hasher {
            t,
            off: usize::from(t.has_rowid()),
            key_cols: t.key_columns(),
            buf: Vec::with_capacity(256),
            key_buf: Vec::with_capacity(32),
            ends: vec![0; t.columns.len() + 1],
        }
    }

    /// Hashes one row and hands it to `f` (unless a sharded verify routes it elsewhere).
    fn row(
        &mut self,
        row: &Row<'_>,
        what: &dyn Fn() -> String,
        f: &mut dyn FnMut(&SrcRow<'_, '_>),
    ) -> Result<(), Error> {
        let t = self.t;
        let off = self.off;
        self.buf.clear();
        let mut err: Option<String> = None;
        let rowid = if t.has_rowid() {
            Some(row.get::<_, i64>(0).map_err(|e| Error::sqlite(what())(e))?)
        } else {
            None
        };
        if let Some(r) = &t.route {
            // A sharded verify sees only this shard's rows of the source; a
            // row that cannot be routed belongs to the first shard, where the
            // migration rejected it (so, like a cast error, it is expected
            // absent even without a reject record).
            match r
                .filter
                .decide_row(&r.rule, |i| row.get_ref(i + off))
                .map_err(|e| Error::sqlite(what())(e))?
            {
                dbtool_migrate::shard::Decision::Skip => return Ok(()),
                dbtool_migrate::shard::Decision::Reject(why) => err = Some(why),
                dbtool_migrate::shard::Decision::Keep => {}
            }
        }
        for (i, col) in t.columns.iter().enumerate() {
            let cell = row.get_ref(i + off).map_err(|e| Error::sqlite(what())(e))?;
            if !append_cast(col.pg_type, cell, &mut self.buf) {
                match (t.cast)(i, cell) {
                    Ok(v) => v.canonical(&mut self.buf),
                    Err(e) => {
                        if err.is_none() {
                            err = Some(format!("{}: {e}", col.source));
                        }
                        Value::Null.canonical(&mut self.buf)
                    }
                }
            }
            self.ends[i + 1] = self.buf.len();
        }
        let hash = xxh3_64(&self.buf);
        let (key_hash, key_bytes): (u64, &[u8]) = match &t.key {
            Key::Rowid(_) => (0, &[]),
            Key::Columns(_) => {
                self.key_buf.clear();
                for &k in &self.key_cols {
                    self.key_buf
                        .extend_from_slice(&self.buf[self.ends[k]..self.ends[k + 1]]);
                }
                (xxh3_64(&self.key_buf), &self.key_buf)
            }
            Key::None => (hash, &[]),
        };
        f(&SrcRow {
            rowid,
            hash,
            key_hash,
            key_bytes,
            cast_error: err.as_deref(),
            row,
            spec: t,
            off,
        });
        Ok(())
    }

    fn rows(
        &mut self,
        mut rows: Rows<'_>,
        what: &dyn Fn() -> String,
        f: &mut dyn FnMut(&SrcRow<'_, '_>),
    ) -> Result<(), Error> {
        while let Some(row) = rows.next().map_err(|e| Error::sqlite(what())(e))? {
            self.row(row, what, f)?;
        }
        Ok(())
    }
}

/// Streams the rows of `t` matching `filter` to `f`. Never holds more than one row.
pub(crate) fn scan(
    conn: &Connection,
    t: &TableSpec,
    filter: &Filter,
    f: &mut dyn FnMut(&SrcRow<'_, '_>),
) -> Result<(), Error> {
    let rowid = t.rowid_expr.unwrap_or("rowid");
    let mut sql = select(t);
    match filter {
        Filter::All => {}
        Filter::Range(lo, hi) => {
            sql.push_str(&format!(" WHERE {rowid} >= {lo} AND {rowid} < {hi}"))
        }
        Filter::Keys(keys) => {
            let list: Vec<String> = keys.iter().map(i64::to_string).collect();
            sql.push_str(&format!(" WHERE {rowid} IN ({})", list.join(",")));
        }
        Filter::Tuples(_) => {
            return Err(Error::Internal(format!(
                "key tuples filter on source table {}: use lookup",
                t.source
            )))
        }
    }
    let what = || format!("reading table {}", t.source);
    let mut stmt = conn.prepare(&sql).map_err(Error::sqlite(what()))?;
    let rows = stmt.query([]).map_err(Error::sqlite(what()))?;
    Hasher::new(t).rows(rows, &what, f)
}

/// Looks up the rows of `t` with these primary keys (the key columns'
/// values as SQLite holds them, in key order), one index lookup each, and
/// streams those found to `f` with the index of their key.
pub(crate) fn lookup(
    conn: &Connection,
    t: &TableSpec,
    keys: &[Vec<SqlValue>],
    f: &mut dyn FnMut(usize, &SrcRow<'_, '_>),
) -> Result<(), Error> {
    let key_cols = t.key_columns();
    let cond: Vec<String> = key_cols
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = ?{}", quote(&t.columns[i].source), n + 1))
        .collect();
    let sql = format!("{} WHERE {}", select(t), cond.join(" AND "));
    let what = || format!("reading table {} by key", t.source);
    let mut stmt = conn.prepare_cached(&sql).map_err(Error::sqlite(what()))?;
    let mut hasher = Hasher::new(t);
    for (n, key) in keys.iter().enumerate() {
        if key.len() != key_cols.len() {
            return Err(Error::Usage(format!(
                "a key of table {} has {} values, the table's key {} columns",
                t.source,
                key.len(),
                key_cols.len()
            )));
        }
        let rows = stmt
            .query(rusqlite::params_from_iter(key.iter()))
            .map_err(|e| Error::sqlite(what())(e))?;
        hasher.rows(rows, &what, &mut |r| f(n, r))?;
    }
    Ok(())
}

/// `(min(rowid), max(rowid), count(*))` of a table.
pub(crate) fn bounds(
    conn: &Connection,
    t: &TableSpec,
) -> Result<(Option<i64>, Option<i64>, u64), Error> {
    let sql = if let Some(r) = t.rowid_expr {
        format!(
            "SELECT min({r}), max({r}), count(*) FROM {}",
            quote(&t.source)
        )
    } else {
        format!("SELECT NULL, NULL, count(*) FROM {}", quote(&t.source))
    };
    conn.query_row(&sql, [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })
    .map_err(Error::sqlite(format!("counting table {}", t.source)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbtool_migrate::cast::cast_value;

    /// The fast path appends exactly what the migrator's cast and
    /// `Value::canonical` append, for every planned type and every kind of
    /// SQLite value (or declines and appends nothing).
    #[test]
    fn append_cast_matches_cast_then_canonical() {
        let values: Vec<SqlValue> = vec![
            SqlValue::Null,
            SqlValue::Integer(0),
            SqlValue::Integer(1),
            SqlValue::Integer(2),
            SqlValue::Integer(-7),
            SqlValue::Integer(i64::from(i32::MAX) + 1),
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(1.5),
            SqlValue::Real(-0.0),
            SqlValue::Real(f64::NAN),
            SqlValue::Real(f64::INFINITY),
            SqlValue::Text("héllo".into()),
            SqlValue::Text(String::new()),
            SqlValue::Text("12.50".into()),
            SqlValue::Text("true".into()),
            SqlValue::Text("2024-01-02 03:04:05".into()),
            SqlValue::Text("a\0b".into()),
            SqlValue::Blob(vec![0, 1, 255]),
            SqlValue::Blob(b"plain".to_vec()),
            SqlValue::Blob(vec![0xff, 0xfe]),
        ];
        for ty in PgType::ALL {
            for v in &values {
                let mut got = Vec::new();
                if !append_cast(ty, ValueRef::from(v), &mut got) {
                    assert!(got.is_empty(), "{ty} {v:?} declined after appending");
                    continue;
                }
                let mut want = Vec::new();
                match cast_value(ty, None, ValueRef::from(v)) {
                    Ok(c) => c.canonical(&mut want),
                    Err(e) => panic!("{ty} {v:?}: fast path took a failing cast: {e:?}"),
                }
                assert_eq!(got, want, "{ty} {v:?}");
            }
        }
    }
}
