//! `dbtool.checkpoints` and `dbtool.run_tables`: how far each chunk of a
//! run's tables has got, and each table's watermark.
//!
//! A batch of rows, its reject records ([`crate::rejects`]) and its chunk's
//! new checkpoint commit in one transaction, so the checkpoints always say
//! exactly which source rows the target holds: a resume continues after
//! them, and no row is copied twice or skipped, whenever the previous
//! process died.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use tokio_postgres::GenericClient;

use crate::Error;

/// A source key value: one column of a primary key, as SQLite stored it.
///
/// Kept with its storage class so a resume binds exactly the value it read
/// (an integer 1 and a text '1' order differently in SQLite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyValue {
    /// NULL (only in tables whose key allows it).
    Null,
    /// INTEGER
    Int(i64),
    /// REAL
    Real(f64),
    /// TEXT that is valid UTF-8 without NUL.
    Text(String),
    /// Any other TEXT (invalid UTF-8, or holding NUL, which `jsonb` cannot
    /// store): its bytes, base64, bound back as TEXT.
    TextBytes(String),
    /// BLOB, base64
    Blob(String),
}

/// Where a chunk has got to: the last key it committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// A rowid.
    Rowid(i64),
    /// The primary-key columns, in key order.
    Pk(Vec<KeyValue>),
}

/// How a table is read, as recorded in `dbtool.run_tables.key_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// By rowid, in ranges.
    Rowid,
    /// By primary key (WITHOUT ROWID tables), in one chunk.
    PrimaryKey,
    /// No usable key: the whole table in one transaction.
    None,
}

impl KeyKind {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Rowid => "rowid",
            KeyKind::PrimaryKey => "primary_key",
            KeyKind::None => "none",
        }
    }
}

/// A chunk of a table, as planned when the run starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkSpec {
    /// Source table name.
    pub table: String,
    /// Chunk number within the table, from 0.
    pub chunk: i32,
    /// Inclusive rowid bounds (rowid tables only).
    pub range: Option<(i64, i64)>,
}

/// A chunk and how far it has got.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkState {
    /// What it is.
    pub spec: ChunkSpec,
    /// Last key committed.
    pub last_key: Option<Key>,
    /// Rows read from the source so far.
    pub rows_read: u64,
    /// Rows written to the target so far.
    pub rows_written: u64,
    /// Rows rejected so far.
    pub rows_rejected: u64,
    /// Values stored as NULL so far.
    pub rows_nulled: u64,
    /// Load time so far, ms.
    pub elapsed_ms: u64,
    /// Complete.
    pub done: bool,
}

/// Records a table of the run and its chunks (all not started).
pub async fn insert_table(
    client: &impl GenericClient,
    run: i64,
    table: &str,
    target_name: &str,
    kind: KeyKind,
    chunks: &[ChunkSpec],
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO dbtool.run_tables (run_id, table_name, target_name, key_kind) VALUES ($1, $2, $3, $4)",
            &[&run, &table, &target_name, &kind.as_str()],
        )
        .await?;
    for c in chunks {
        client
            .execute(
                "INSERT INTO dbtool.checkpoints (run_id, table_name, chunk, range_start, range_end)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &run,
                    &c.table,
                    &c.chunk,
                    &c.range.map(|r| r.0),
                    &c.range.map(|r| r.1),
                ],
            )
            .await?;
    }
    Ok(())
}

/// Every chunk of a run, in table and chunk order.
pub async fn chunks(client: &impl GenericClient, run: i64) -> Result<Vec<ChunkState>, Error> {
    let rows = client
        .query(
            "SELECT table_name, chunk, range_start, range_end, last_key, rows_read, rows_written,
                    rows_rejected, rows_nulled, elapsed_ms, done
               FROM dbtool.checkpoints WHERE run_id = $1 ORDER BY table_name, chunk",
            &[&run],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let start: Option<i64> = r.get(2);
        let end: Option<i64> = r.get(3);
        let last_key: Option<Json<Key>> = r.get(4);
        let n = |i: usize| r.get::<_, i64>(i) as u64;
        out.push(ChunkState {
            spec: ChunkSpec {
                table: r.get(0),
                chunk: r.get(1),
                range: start.zip(end),
            },
            last_key: last_key.map(|k| k.0),
            rows_read: n(5),
            rows_written: n(6),
            rows_rejected: n(7),
            rows_nulled: n(8),
            elapsed_ms: n(9),
            done: r.get(10),
        });
    }
    Ok(out)
}

/// What one committed batch adds to its chunk's checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advance {
    /// The last key read (None when the batch read no rows).
    pub last_key: Option<Key>,
    /// Rows read.
    pub rows_read: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
    /// Values stored as NULL.
    pub rows_nulled: u64,
    /// Time spent, ms.
    pub elapsed_ms: u64,
    /// The chunk is complete.
    pub done: bool,
}

/// Advances a chunk's checkpoint; call inside the batch's transaction.
pub async fn advance(
    client: &impl GenericClient,
    run: i64,
    table: &str,
    chunk: i32,
    a: &Advance,
) -> Result<(), Error> {
    let n = |v: u64| v as i64;
    client
        .execute(
            "UPDATE dbtool.checkpoints
                SET last_key = COALESCE($4, last_key),
                    rows_read = rows_read + $5, rows_written = rows_written + $6,
                    rows_rejected = rows_rejected + $7, rows_nulled = rows_nulled + $8,
                    elapsed_ms = elapsed_ms + $9, done = $10, updated_at = now()
              WHERE run_id = $1 AND table_name = $2 AND chunk = $3",
            &[
                &run,
                &table,
                &chunk,
                &a.last_key.as_ref().map(Json),
                &n(a.rows_read),
                &n(a.rows_written),
                &n(a.rows_rejected),
                &n(a.rows_nulled),
                &n(a.elapsed_ms),
                &a.done,
            ],
        )
        .await?;
    Ok(())
}

/// Records a table's watermark (the highest source key loaded), for `verify`.
pub async fn set_watermark(
    client: &impl GenericClient,
    run: i64,
    table: &str,
    watermark: Option<&Key>,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.run_tables SET watermark = $3 WHERE run_id = $1 AND table_name = $2",
            &[&run, &table, &watermark.map(Json)],
        )
        .await?;
    Ok(())
}

/// Per-table sums of a run's checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Source table name.
    pub table: String,
    /// Rows read.
    pub rows_read: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
    /// Values stored as NULL.
    pub rows_nulled: u64,
}

/// The per-table sums of run `run`'s checkpoints, by table name.
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn table_counts(
    client: &impl GenericClient,
    run: i64,
) -> Result<Vec<TableCounts>, Error> {
    Ok(client
        .query(
            "SELECT table_name, sum(rows_read)::bigint, sum(rows_written)::bigint,
                    sum(rows_rejected)::bigint, sum(rows_nulled)::bigint
               FROM dbtool.checkpoints WHERE run_id = $1
              GROUP BY table_name ORDER BY table_name",
            &[&run],
        )
        .await?
        .into_iter()
        .map(|t| TableCounts {
            table: t.get(0),
            rows_read: t.get::<_, i64>(1) as u64,
            rows_written: t.get::<_, i64>(2) as u64,
            rows_rejected: t.get::<_, i64>(3) as u64,
            rows_nulled: t.get::<_, i64>(4) as u64,
        })
        .collect())
}

/// The watermarks of run `run`'s tables (table name, JSON key), where set.
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn watermarks(
    client: &impl GenericClient,
    run: i64,
) -> Result<Vec<(String, serde_json::Value)>, Error> {
    Ok(client
        .query(
            "SELECT table_name, watermark FROM dbtool.run_tables WHERE run_id = $1",
            &[&run],
        )
        .await?
        .into_iter()
        .filter_map(|r| {
            let w: Option<Json<serde_json::Value>> = r.get(1);
            w.map(|Json(w)| (r.get(0), w))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_json_with_their_storage_class() {
        let k = Key::Pk(vec![
            KeyValue::Int(1),
            KeyValue::Text("1".into()),
            KeyValue::Real(0.5),
            KeyValue::Blob("AAE=".into()),
        ]);
        let j = serde_json::to_value(&k).unwrap();
        assert_eq!(serde_json::from_value::<Key>(j).unwrap(), k);
        assert_eq!(
            serde_json::to_value(Key::Rowid(7)).unwrap(),
            serde_json::json!({"rowid": 7})
        );
    }
}
