//! The target side: stream a Postgres table (binary format, through a
//! server-side portal with backpressure) and hash each row's canonical
//! encoding, computed straight from the wire bytes.

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};
use xxhash_rust::xxh3::xxh3_64;

use dbtool_migrate::value::Value;

use crate::canon::{self, RawCell};
use crate::spec::{quote, Key, TableSpec};
use crate::sqlite::Filter;
use crate::Error;

/// One hashed target row, borrowed for the callback.
pub(crate) struct TgtRow<'a> {
    /// The integer key (tables keyed by rowid).
    pub(crate) ikey: Option<i64>,
    /// xxh3 of the whole row's canonical encoding.
    pub(crate) hash: u64,
    /// xxh3 of the key columns' canonical encoding (the row hash without a key).
    pub(crate) key_hash: u64,
    /// The key columns' canonical encoding.
    pub(crate) key_bytes: &'a [u8],
    /// The row, to decode in full when it differs.
    pub(crate) row: &'a Row,
    /// The column types.
    pub(crate) types: &'a [Type],
}

impl TgtRow<'_> {
    /// Decodes the row into values (only for rows that differ).
    pub(crate) fn values(&self) -> Vec<Value> {
        (0..self.types.len())
            .map(|i| {
                let cell: RawCell<'_> = self.row.try_get(i).unwrap_or(RawCell(None));
                canon::decode(&self.types[i], cell)
            })
            .collect()
    }
}

/// The schema-qualified, quoted name of the target table.
pub(crate) fn qualified(schema: &str, t: &TableSpec) -> String {
    format!("{}.{}", quote(schema), quote(&t.target))
}

/// Streams the rows of `t` matching `filter` to `f`.
pub(crate) async fn scan(
    client: &Client,
    schema: &str,
    t: &TableSpec,
    filter: &Filter,
    f: &mut (dyn FnMut(&TgtRow<'_>) + Send),
) -> Result<(), Error> {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.target)).collect();
    let mut sql = format!(
        "SELECT {} FROM {}",
        if cols.is_empty() {
            "NULL".to_owned()
        } else {
            cols.join(", ")
        },
        qualified(schema, t)
    );
    let key_col = match &t.key {
        Key::Rowid(i) => Some(quote(&t.columns[*i].target)),
        _ => None,
    };
    let lo_hi: [i64; 2];
    let keys: Vec<i64>;
    let arrays: Vec<Vec<Value>>;
    let params: Vec<&(dyn ToSql + Sync)> = match (filter, &key_col) {
        (Filter::All, _) => Vec::new(),
        (Filter::Tuples(rows), _) if !t.key_columns().is_empty() => {
            // One array parameter per key column, joined back into rows by
            // unnest: an index lookup per key, however many columns the key has.
            let kc = t.key_columns();
            let names: Vec<String> = kc.iter().map(|&i| quote(&t.columns[i].target)).collect();
            let arrs: Vec<String> = kc
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("${}::{}[]", n + 1, t.columns[i].pg_type.sql_name()))
                .collect();
            sql.push_str(&format!(
                " WHERE ({}) IN (SELECT * FROM unnest({}))",
                names.join(", "),
                arrs.join(", ")
            ));
            arrays = (0..kc.len())
                .map(|n| {
                    rows.iter()
                        .map(|r| r.get(n).cloned().unwrap_or(Value::Null))
                        .collect()
                })
                .collect();
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
        }
        (Filter::Range(lo, hi), Some(k)) => {
            sql.push_str(&format!(" WHERE {k} >= $1::int8 AND {k} < $2::int8"));
            lo_hi = [*lo, *hi];
            vec![&lo_hi[0], &lo_hi[1]]
        }
        (Filter::Keys(ks), Some(k)) => {
            sql.push_str(&format!(" WHERE {k} = ANY($1::int8[])"));
            keys = ks.clone();
            vec![&keys]
        }
        _ => {
            return Err(Error::Internal(format!(
                "key filter on table {} without an integer key",
                t.source
            )))
        }
    };
    let what = || format!("reading table {}", qualified(schema, t));
    let stmt = client.prepare(&sql).await.map_err(Error::target(what()))?;
    let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    if let Some((i, ty)) = types
        .iter()
        .enumerate()
        .find(|(_, ty)| !canon::supported(ty))
    {
        return Err(Error::Plan(format!(
            "column {} of {} has type {ty}, which verify cannot compare",
            t.columns.get(i).map_or("?", |c| c.target.as_str()),
            qualified(schema, t)
        )));
    }
    let stream = client
        .query_raw(&stmt, params)
        .await
        .map_err(Error::target(what()))?;
    pin_mut!(stream);
    let ncols = types.len().min(t.columns.len());
    let key_cols = t.key_columns();
    let key_idx = match t.key {
        Key::Rowid(i) => Some(i),
        _ => None,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut key_buf: Vec<u8> = Vec::with_capacity(32);
    let mut ends: Vec<usize> = vec![0; ncols + 1];
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| Error::target(what())(e))?
    {
        buf.clear();
        let mut ikey = None;
        for i in 0..ncols {
            let cell: RawCell<'_> = row.try_get(i).map_err(|e| Error::target(what())(e))?;
            if key_idx == Some(i) {
                ikey = canon::int_key(cell);
            }
            canon::append(&types[i], cell, &mut buf)
                .map_err(|e| Error::Plan(format!("cannot read {}: {e}", qualified(schema, t))))?;
            ends[i + 1] = buf.len();
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
        f(&TgtRow {
            ikey,
            hash,
            key_hash,
            key_bytes,
            row: &row,
            types: &types,
        });
    }
    Ok(())
}

/// `(min(key), max(key))` of a rowid-keyed target table (index lookups).
pub(crate) async fn bounds(
    client: &Client,
    schema: &str,
    t: &TableSpec,
) -> Result<(Option<i64>, Option<i64>), Error> {
    let Key::Rowid(i) = t.key else {
        return Ok((None, None));
    };
    let k = quote(&t.columns[i].target);
    let sql = format!(
        "SELECT min({k})::int8, max({k})::int8 FROM {}",
        qualified(schema, t)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(Error::target(format!(
            "reading key bounds of {}",
            qualified(schema, t)
        )))?;
    Ok((row.get(0), row.get(1)))
}

/// Rows of a rowid-keyed target table with a key above `watermark`.
pub(crate) async fn count_above(
    client: &Client,
    schema: &str,
    t: &TableSpec,
    watermark: i64,
) -> Result<u64, Error> {
    let Key::Rowid(i) = t.key else {
        return Ok(0);
    };
    let k = quote(&t.columns[i].target);
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {k} > $1::int8",
        qualified(schema, t)
    );
    let row = client
        .query_one(&sql, &[&watermark])
        .await
        .map_err(Error::target(format!(
            "counting new rows of {}",
            qualified(schema, t)
        )))?;
    Ok(row.get::<_, i64>(0) as u64)
}
