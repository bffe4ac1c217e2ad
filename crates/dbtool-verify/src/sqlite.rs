//! The source side: stream a SQLite table through the migrator's casts and
//! hash each row's canonical encoding.

use dbtool_migrate::value::Value;
use rusqlite::Connection;
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
}

/// One hashed source row, borrowed for the callback.
#[derive(Debug)]
pub(crate) struct SrcRow<'a> {
    /// The rowid, when the table has one.
    pub(crate) rowid: Option<i64>,
    /// xxh3 of the whole row's canonical encoding.
    pub(crate) hash: u64,
    /// xxh3 of the key columns' canonical encoding (the row hash without a key).
    pub(crate) key_hash: u64,
    /// The key columns' canonical encoding.
    pub(crate) key_bytes: &'a [u8],
    /// The cast values.
    pub(crate) values: &'a [Value],
    /// The first cast error in this row, if any (that cell hashed as NULL).
    pub(crate) cast_error: Option<&'a str>,
}

/// Streams the rows of `t` matching `filter` to `f`. Never holds more than one row.
pub(crate) fn scan(
    conn: &Connection,
    t: &TableSpec,
    filter: &Filter,
    f: &mut dyn FnMut(&SrcRow<'_>),
) -> Result<(), Error> {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.source)).collect();
    let rowid = t.rowid_expr.unwrap_or("rowid");
    let rowid_sel = if t.has_rowid() {
        format!("{rowid}, ")
    } else {
        String::new()
    };
    let mut sql = format!(
        "SELECT {rowid_sel}{} FROM {}",
        if cols.is_empty() {
            "NULL".to_owned()
        } else {
            cols.join(", ")
        },
        quote(&t.source)
    );
    match filter {
        Filter::All => {}
        Filter::Range(lo, hi) => {
            sql.push_str(&format!(" WHERE {rowid} >= {lo} AND {rowid} < {hi}"))
        }
        Filter::Keys(keys) => {
            let list: Vec<String> = keys.iter().map(i64::to_string).collect();
            sql.push_str(&format!(" WHERE {rowid} IN ({})", list.join(",")));
        }
    }
    let what = || format!("reading table {}", t.source);
    let mut stmt = conn.prepare(&sql).map_err(Error::sqlite(what()))?;
    let mut rows = stmt.query([]).map_err(Error::sqlite(what()))?;
    let off = usize::from(t.has_rowid());
    let ncols = t.columns.len();
    let key_cols = t.key_columns();
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut key_buf: Vec<u8> = Vec::with_capacity(32);
    let mut values: Vec<Value> = Vec::with_capacity(ncols);
    let mut ends: Vec<usize> = vec![0; ncols + 1];
    while let Some(row) = rows.next().map_err(Error::sqlite(what()))? {
        buf.clear();
        values.clear();
        let mut err: Option<String> = None;
        let rowid = if t.has_rowid() {
            Some(row.get::<_, i64>(0).map_err(Error::sqlite(what()))?)
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
                .map_err(Error::sqlite(what()))?
            {
                dbtool_migrate::shard::Decision::Skip => continue,
                dbtool_migrate::shard::Decision::Reject(why) => err = Some(why),
                dbtool_migrate::shard::Decision::Keep => {}
            }
        }
        for i in 0..ncols {
            let cell = row.get_ref(i + off).map_err(Error::sqlite(what()))?;
            let v = match (t.cast)(i, cell) {
                Ok(v) => v,
                Err(e) => {
                    if err.is_none() {
                        err = Some(format!("{}: {e}", t.columns[i].source));
                    }
                    Value::Null
                }
            };
            v.canonical(&mut buf);
            ends[i + 1] = buf.len();
            values.push(v);
        }
        let hash = xxh3_64(&buf);
        let (key_hash, key_bytes): (u64, &[u8]) = match &t.key {
            Key::Rowid(_) => (0, &[]),
            Key::Columns(_) => {
                key_buf.clear();
                for &k in &key_cols {
                    key_buf.extend_from_slice(&buf[ends[k]..ends[k + 1]]);
                }
                (xxh3_64(&key_buf), &key_buf)
            }
            Key::None => (hash, &[]),
        };
        f(&SrcRow {
            rowid,
            hash,
            key_hash,
            key_bytes,
            values: &values,
            cast_error: err.as_deref(),
        });
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
