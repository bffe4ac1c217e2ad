//! Run records and exactly-once checkpoints in the target's `dbtool` schema.
//!
//! A run (`dbtool.runs`) is one migration of one source file into one target
//! schema. Its tables are read in chunks (`dbtool.checkpoints`): a rowid range
//! of a table, or a whole table read in primary-key order. Each batch of rows,
//! the reject records it produced (`dbtool.rejects`) and its chunk's new
//! checkpoint commit in one transaction, so the checkpoints always say exactly
//! which source rows the target holds: a resume continues after them, and no
//! row is copied twice or skipped, whenever the previous process died.

use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use tokio_postgres::GenericClient;

use crate::Error;

/// What identifies the exact contents of a source file, cheaply.
///
/// A resume compares the file with the fingerprint its run recorded and
/// refuses to continue when anything differs: rows copied from two different
/// versions of a file are not a consistent copy of either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// File size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// SQLite header "file change counter" (bytes 24..28), bumped by every
    /// rollback-journal commit.
    pub change_counter: u32,
    /// SQLite header schema cookie (bytes 40..44), bumped by every schema change.
    pub schema_cookie: u32,
    /// Size and mtime of the `-wal` file when there is one: WAL-mode commits
    /// change it, not the main file.
    pub wal: Option<(u64, i128)>,
}

impl Fingerprint {
    /// Reads the fingerprint of the SQLite file at `path`.
    pub fn of(path: &Path) -> Result<Fingerprint, Error> {
        let source_err = |reason: String| Error::Source {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| source_err(e.to_string()))?;
        let mut header = [0u8; 100];
        let mut f = std::fs::File::open(path).map_err(|e| source_err(e.to_string()))?;
        // A file shorter than a header is not a database; the planner says so
        // with a better message, so read what there is and carry on.
        let mut got = 0;
        while got < header.len() {
            match f.read(&mut header[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(source_err(e.to_string())),
            }
        }
        let be =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = std::fs::metadata(&wal_path)
            .ok()
            .map(|m| (m.len(), mtime_ns(&m)));
        Ok(Fingerprint {
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            change_counter: be(24),
            schema_cookie: be(40),
            wal,
        })
    }

    /// What differs between `self` (recorded) and `now`, in words; empty when equal.
    pub fn differences(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.size != now.size {
            out.push(format!("size {} -> {} bytes", self.size, now.size));
        }
        if self.mtime_ns != now.mtime_ns {
            out.push("modification time changed".to_owned());
        }
        if self.change_counter != now.change_counter {
            out.push(format!(
                "change counter {} -> {}",
                self.change_counter, now.change_counter
            ));
        }
        if self.schema_cookie != now.schema_cookie {
            out.push("schema changed".to_owned());
        }
        if self.wal != now.wal {
            out.push("write-ahead log changed".to_owned());
        }
        out
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

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

impl KeyValue {
    /// The key value of a SQLite value.
    pub fn from_ref(v: rusqlite::types::ValueRef<'_>) -> KeyValue {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => KeyValue::Null,
            ValueRef::Integer(i) => KeyValue::Int(i),
            ValueRef::Real(f) => KeyValue::Real(f),
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) if !s.contains('\0') => KeyValue::Text(s.to_owned()),
                _ => KeyValue::TextBytes(base64::engine::general_purpose::STANDARD.encode(t)),
            },
            ValueRef::Blob(b) => {
                KeyValue::Blob(base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }
}

impl rusqlite::ToSql for KeyValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value};
        Ok(match self {
            KeyValue::Null => ToSqlOutput::Owned(Value::Null),
            KeyValue::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            KeyValue::Real(f) => ToSqlOutput::Owned(Value::Real(*f)),
            KeyValue::Text(s) => {
                ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(s.as_bytes()))
            }
            KeyValue::Blob(b) => ToSqlOutput::Owned(Value::Blob(decode64(b)?)),
            KeyValue::TextBytes(b) => {
                // Bind the exact bytes as TEXT (rusqlite's Value::Text needs UTF-8).
                let bytes = decode64(b)?;
                match String::from_utf8(bytes) {
                    Ok(s) => ToSqlOutput::Owned(Value::Text(s)),
                    Err(e) => ToSqlOutput::Owned(Value::Blob(e.into_bytes())),
                }
            }
        })
    }
}

fn decode64(b: &str) -> rusqlite::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(b)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
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

/// Status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Tables created, rows being copied.
    Loading,
    /// Rows copied; constraints, indexes, FKs, sequences being built.
    Finishing,
    /// Complete.
    Done,
    /// Replaced by a later run started with `--restart`.
    Abandoned,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Loading => "loading",
            Status::Finishing => "finishing",
            Status::Done => "done",
            Status::Abandoned => "abandoned",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "loading" => Status::Loading,
            "finishing" => Status::Finishing,
            "done" => Status::Done,
            _ => Status::Abandoned,
        }
    }
}

/// A row of `dbtool.runs`.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run id.
    pub id: i64,
    /// The source's fingerprint when the run started.
    pub fingerprint: Fingerprint,
    /// Target schema.
    pub schema: String,
    /// The cast plan, as JSON.
    pub plan: serde_json::Value,
    /// The options the run started with, as JSON.
    pub options: serde_json::Value,
    /// Where it is.
    pub status: Status,
    /// When it started, RFC 3339.
    pub started_at: String,
}

/// The unfinished run (loading or finishing) of `source_path` into `schema`, if any.
pub async fn find_unfinished(
    client: &impl GenericClient,
    source_path: &str,
    schema: &str,
) -> Result<Option<RunRecord>, Error> {
    let row = client
        .query_opt(
            "SELECT id, source_path, source_fingerprint, target_schema, plan, options, status,
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM dbtool.runs
              WHERE source_path = $1 AND target_schema = $2 AND status IN ('loading', 'finishing')
              ORDER BY id DESC LIMIT 1",
            &[&source_path, &schema],
        )
        .await?;
    row.map(|r| run_record(&r)).transpose()
}

fn run_record(r: &tokio_postgres::Row) -> Result<RunRecord, Error> {
    let Json(fingerprint): Json<Fingerprint> = r.get(2);
    let Json(plan): Json<serde_json::Value> = r.get(4);
    let Json(options): Json<serde_json::Value> = r.get(5);
    Ok(RunRecord {
        id: r.get(0),
        fingerprint,
        schema: r.get(3),
        plan,
        options,
        status: Status::parse(r.get(6)),
        started_at: r.get(7),
    })
}

/// Marks every unfinished run of `source_path` into `schema` abandoned (for `--restart`);
/// returns how many.
pub async fn abandon(
    client: &impl GenericClient,
    source_path: &str,
    schema: &str,
) -> Result<u64, Error> {
    Ok(client
        .execute(
            "UPDATE dbtool.runs SET status = 'abandoned', updated_at = now()
              WHERE source_path = $1 AND target_schema = $2 AND status IN ('loading', 'finishing')",
            &[&source_path, &schema],
        )
        .await?)
}

/// Inserts a new run in status `loading`; returns its id.
pub async fn create_run(
    client: &impl GenericClient,
    source_path: &str,
    fingerprint: &Fingerprint,
    schema: &str,
    plan: &serde_json::Value,
    options: &serde_json::Value,
) -> Result<i64, Error> {
    let row = client
        .query_one(
            "INSERT INTO dbtool.runs (source_path, source_fingerprint, target_schema, plan, options)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&source_path, &Json(fingerprint), &schema, &Json(plan), &Json(options)],
        )
        .await?;
    Ok(row.get(0))
}

/// Sets a run's status (and its finish time when done).
pub async fn set_status(
    client: &impl GenericClient,
    run: i64,
    status: Status,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET status = $2, updated_at = now(),
                    finished_at = CASE WHEN $2 = 'done' THEN now() ELSE finished_at END
              WHERE id = $1",
            &[&run, &status.as_str()],
        )
        .await?;
    Ok(())
}

/// Counts a resume of the run.
pub async fn note_resume(client: &impl GenericClient, run: i64) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET resumes = resumes + 1, updated_at = now() WHERE id = $1",
            &[&run],
        )
        .await?;
    Ok(())
}

/// Stores the final report of a run.
pub async fn store_report(
    client: &impl GenericClient,
    run: i64,
    report: &serde_json::Value,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET report = $2, updated_at = now() WHERE id = $1",
            &[&run, &Json(report)],
        )
        .await?;
    Ok(())
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
    fn as_str(self) -> &'static str {
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

/// Whether a reject record means the row was left out or a value was nulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectAction {
    /// The row is not in the target.
    Rejected,
    /// The row is in the target with NULL in this column.
    Nulled,
}

impl RejectAction {
    fn as_str(self) -> &'static str {
        match self {
            RejectAction::Rejected => "rejected",
            RejectAction::Nulled => "nulled",
        }
    }
}

/// One value that could not be cast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// Source table.
    pub table: String,
    /// The row's rowid, when the table has one.
    pub rowid: Option<i64>,
    /// The row's primary key (source column name -> value), when it has one.
    pub pk: Option<serde_json::Value>,
    /// Source column.
    pub column: String,
    /// Why it could not be cast.
    pub reason: String,
    /// The original value: JSON text/number/null, or `{"base64": ...}` for bytes.
    pub value: serde_json::Value,
    /// Row left out, or value nulled.
    pub action: RejectAction,
}

/// A reject record and its position, for insertion.
#[derive(Debug, Clone)]
pub struct PendingReject {
    /// Position of the row in its chunk's read order.
    pub ordinal: i64,
    /// The record.
    pub reject: Reject,
}

/// Inserts reject records for a batch of chunk `chunk`; call inside the batch's transaction.
pub async fn insert_rejects(
    client: &impl GenericClient,
    run: i64,
    chunk: i32,
    rejects: &[PendingReject],
) -> Result<(), Error> {
    if rejects.is_empty() {
        return Ok(());
    }
    // One statement for the whole batch: arrays unnested server-side.
    let mut tables = Vec::with_capacity(rejects.len());
    let mut ordinals = Vec::with_capacity(rejects.len());
    let mut rowids = Vec::with_capacity(rejects.len());
    let mut pks = Vec::with_capacity(rejects.len());
    let mut columns = Vec::with_capacity(rejects.len());
    let mut reasons = Vec::with_capacity(rejects.len());
    let mut values = Vec::with_capacity(rejects.len());
    let mut actions = Vec::with_capacity(rejects.len());
    for p in rejects {
        let r = &p.reject;
        tables.push(r.table.as_str());
        ordinals.push(p.ordinal);
        rowids.push(r.rowid);
        pks.push(r.pk.as_ref().map(Json));
        columns.push(r.column.as_str());
        reasons.push(r.reason.as_str());
        values.push(Json(&r.value));
        actions.push(r.action.as_str());
    }
    client
        .execute(
            "INSERT INTO dbtool.rejects
                    (run_id, chunk, table_name, ordinal, rowid, pk, column_name, reason, value, action)
             SELECT $1, $2, * FROM unnest($3::text[], $4::int8[], $5::int8[], $6::jsonb[], $7::text[],
                                          $8::text[], $9::jsonb[], $10::text[])",
            &[
                &run, &chunk, &tables, &ordinals, &rowids, &pks, &columns, &reasons, &values, &actions,
            ],
        )
        .await?;
    Ok(())
}

/// Every reject record of a run, in table, chunk and row order: the reject file's contents.
pub async fn rejects(client: &impl GenericClient, run: i64) -> Result<Vec<Reject>, Error> {
    let rows = client
        .query(
            "SELECT table_name, rowid, pk, column_name, reason, value, action
               FROM dbtool.rejects WHERE run_id = $1
              ORDER BY table_name, chunk, ordinal, column_name",
            &[&run],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let pk: Option<Json<serde_json::Value>> = r.get(2);
            let value: Option<Json<serde_json::Value>> = r.get(5);
            Reject {
                table: r.get(0),
                rowid: r.get(1),
                pk: pk.map(|j| j.0),
                column: r.get(3),
                reason: r.get(4),
                value: value.map_or(serde_json::Value::Null, |j| j.0),
                action: if r.get::<_, &str>(6) == "nulled" {
                    RejectAction::Nulled
                } else {
                    RejectAction::Rejected
                },
            }
        })
        .collect())
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

    #[test]
    fn fingerprint_changes_when_the_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let before = Fingerprint::of(&path).unwrap();
        assert!(before
            .differences(&Fingerprint::of(&path).unwrap())
            .is_empty());
        c.execute_batch("INSERT INTO t VALUES (2);").unwrap();
        let after = Fingerprint::of(&path).unwrap();
        let diff = before.differences(&after);
        assert!(
            diff.iter().any(|d| d.starts_with("change counter")),
            "{diff:?}"
        );
    }
}
