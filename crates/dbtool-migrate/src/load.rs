//! The parallel binary-COPY loader.
//!
//! ```text
//! chunk queue (biggest tables first)
//!     |            reader thread per worker           async writer per worker
//!     +--> [SQLite read-only conn, read txn] --batch--> [Postgres conn]
//!          rows in key order, cast per column,  (cap 1)  BEGIN; COPY .. FROM STDIN BINARY;
//!          encoded as binary COPY tuples                 rejects; checkpoint; COMMIT
//! ```
//!
//! Why this shape:
//! - The reader thread casts each value and encodes the binary COPY tuple
//!   itself (with [`Value`]'s `ToSql`, exactly what `BinaryCopyInWriter`
//!   writes), so the CPU work is spread over the workers' threads and a batch
//!   crosses the channel as one buffer whose size is known: the byte cap is
//!   exact and memory stays flat (at most three batches per worker exist).
//! - Every worker's SQLite connection opened its read transaction before any
//!   worker started, with no commit to the file in between, so all read the
//!   same snapshot (see `run`).
//! - A batch, its reject records and its checkpoint commit in one
//!   transaction: after a crash the checkpoint says exactly which rows the
//!   target holds. The load sessions use `synchronous_commit = off`: a server
//!   crash can lose the last few commits, but each loses its rows and its
//!   checkpoint together, so a resume still copies every row exactly once.
//! - Large rowid tables are split into rowid ranges so one big table keeps
//!   every worker busy; WITHOUT ROWID tables are read in primary-key order
//!   (keyset pagination) in one chunk; a table with no usable key (no rowid
//!   and no primary key, e.g. some virtual tables) is copied in ONE
//!   transaction, so after a crash it is either complete or absent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::checkpoint::{
    self, Advance, ChunkSpec, ChunkState, Key, KeyKind, PendingReject, Reject, RejectAction,
};
use crate::plan::{Policy, ReadKey, TablePlan};
use crate::progress::Progress;
use crate::shard::{Decision, Rule, ShardFilter};
use crate::value::Value;
use crate::Error;

/// Default rows per batch (one COPY + checkpoint transaction). Measured on
/// the 100k-row sample (scale 1, 56 MB; debug build, shared 2-core machine):
/// 1,000 rows 5.3-6.3 s, 5,000 rows 4.2-6.3 s, 20,000 rows 5.2-5.7 s end to
/// end, peak RSS 38, 42 and 62 MB: no speed difference above the noise, so
/// the smaller memory wins; per-commit cost is already negligible at 5,000.
pub const DEFAULT_BATCH_ROWS: usize = 5_000;
/// Default byte cap per batch (encoded COPY data): bounds memory when rows are wide.
pub const DEFAULT_BATCH_BYTES: usize = 8 << 20;
/// Default smallest rowid range worth its own chunk.
pub const DEFAULT_CHUNK_ROWS: u64 = 100_000;

/// Batching and parallelism (`[migrate]` in `dbtool.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoadConfig {
    /// Parallel workers; 0 means one per CPU core.
    pub jobs: usize,
    /// Rows per batch (one transaction: COPY, rejects, checkpoint).
    pub batch_rows: usize,
    /// Cap on a batch's encoded size in bytes; a batch ends at whichever comes first.
    pub batch_bytes: usize,
    /// Smallest rowid range worth splitting a big table into.
    pub chunk_rows: u64,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            jobs: 0,
            batch_rows: DEFAULT_BATCH_ROWS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            chunk_rows: DEFAULT_CHUNK_ROWS,
        }
    }
}

impl LoadConfig {
    /// The number of workers: `jobs`, or the CPU count when 0.
    pub fn workers(&self) -> usize {
        if self.jobs > 0 {
            self.jobs
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

/// Quotes a Postgres or SQLite identifier.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQLite expression naming the rowid of `table`: `rowid`, unless a column
/// shadows it (then `_rowid_` or `oid`).
pub(crate) fn rowid_expr(table: &TablePlan) -> Option<&'static str> {
    ["rowid", "_rowid_", "oid"].into_iter().find(|alias| {
        !table
            .columns
            .iter()
            .any(|c| c.source_name.eq_ignore_ascii_case(alias))
    })
}

/// How `table` is read.
pub(crate) fn key_kind(table: &TablePlan) -> KeyKind {
    match &table.key {
        ReadKey::Rowid if rowid_expr(table).is_some() => KeyKind::Rowid,
        ReadKey::PrimaryKey(cols) if !cols.is_empty() => KeyKind::PrimaryKey,
        _ => KeyKind::None,
    }
}

/// Splits `table` into chunks: rowid ranges of about `chunk_rows` rows
/// between the table's smallest and largest rowid (the first and last
/// ranges open-ended, so no row can fall outside), or one chunk.
pub(crate) fn plan_chunks(
    conn: &rusqlite::Connection,
    table: &TablePlan,
    chunk_rows: u64,
) -> Result<Vec<ChunkSpec>, Error> {
    let one = |range| {
        vec![ChunkSpec {
            table: table.source_name.clone(),
            chunk: 0,
            range,
        }]
    };
    if key_kind(table) != KeyKind::Rowid {
        return Ok(one(None));
    }
    let rid = rowid_expr(table).unwrap_or("rowid");
    let n = (table.rows / chunk_rows.max(1)).max(1);
    if n <= 1 {
        return Ok(one(Some((i64::MIN, i64::MAX))));
    }
    let (lo, hi): (Option<i64>, Option<i64>) = conn.query_row(
        &format!(
            "SELECT min({rid}), max({rid}) FROM {}",
            quote(&table.source_name)
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(one(Some((i64::MIN, i64::MAX))));
    };
    let span = (hi as i128 - lo as i128 + 1).max(1);
    let n = (n as i128).min(span).max(1);
    let mut out = Vec::new();
    let mut start = i64::MIN;
    for i in 0..n {
        let end = if i == n - 1 {
            i64::MAX
        } else {
            (lo as i128 + span * (i + 1) / n - 1) as i64
        };
        out.push(ChunkSpec {
            table: table.source_name.clone(),
            chunk: i as i32,
            range: Some((start, end)),
        });
        start = end.saturating_add(1);
    }
    Ok(out)
}

/// Settings for one load.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub strict: bool,
    /// Sharded runs: only the rows of this shard (see `crate::shard`).
    pub filter: Option<Arc<ShardFilter>>,
}

/// A batch on its way from a reader to its writer.
struct Batch {
    /// Index into the job's chunk list.
    chunk: usize,
    /// Binary COPY tuples (no header or trailer).
    data: Bytes,
    /// The checkpoint advance (rows, last key, done); `elapsed_ms` filled by the writer.
    advance: Advance,
    rejects: Vec<PendingReject>,
}

/// Why the load stopped early.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    flag: AtomicBool,
    source_changed: Mutex<Option<String>>,
}

impl Stop {
    /// Asks every worker to stop at its next batch boundary.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked.
    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Stops because the source changed.
    pub fn source_changed(&self, detail: String) {
        let mut g = self
            .source_changed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        g.get_or_insert(detail);
        self.stop();
    }
    /// What changed in the source, if that is why the load stopped.
    pub fn changed(&self) -> Option<String> {
        self.source_changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything one load needs.
pub(crate) struct Job<'a> {
    pub run: i64,
    pub schema: &'a str,
    pub tables: Vec<Arc<TablePlan>>,
    pub chunks: Vec<ChunkState>,
    /// One SQLite connection per worker, each already inside its read transaction.
    pub readers: Vec<rusqlite::Connection>,
    pub target: &'a dbtool_pool::Target,
    pub settings: Settings,
    pub progress: &'a dyn Progress,
    pub stop: Arc<Stop>,
    /// Shared with the finish phase when it runs during the load: a reader
    /// holds a permit while it reads a chunk, so loads and finish steps
    /// together never exceed the permits. `None`: no bound but the workers.
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Told the name of each table whose last chunk was committed.
    pub table_done: Option<mpsc::UnboundedSender<String>>,
}

/// Loads every unfinished chunk of the job. Returns when all are done, or
/// with the first error (every other worker stops at its next batch boundary).
pub(crate) async fn load(job: Job<'_>) -> Result<(), Error> {
    let Job {
        run,
        schema,
        tables,
        chunks,
        readers,
        target,
        settings,
        progress,
        stop,
        slots,
        table_done,
    } = job;
    // Biggest tables first, so the longest work starts early and the small
    // tables fill the gaps at the end.
    let table_of = |c: &ChunkState| {
        tables
            .iter()
            .position(|t| t.source_name == c.spec.table)
            .expect("every chunk belongs to a planned table")
    };
    let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| !chunks[i].done).collect();
    order.sort_by_key(|&i| {
        let t = &tables[table_of(&chunks[i])];
        (
            std::cmp::Reverse(t.rows),
            t.source_name.clone(),
            chunks[i].spec.chunk,
        )
    });
    let queue = Arc::new(Mutex::new(order.into_iter().collect::<VecDeque<usize>>()));
    let chunk_tables: Arc<Vec<Arc<TablePlan>>> =
        Arc::new(chunks.iter().map(|c| tables[table_of(c)].clone()).collect());
    // Chunks left per table: a table is complete when its count reaches 0.
    let mut left = std::collections::HashMap::<String, usize>::new();
    for c in chunks.iter().filter(|c| !c.done) {
        *left.entry(c.spec.table.clone()).or_default() += 1;
    }
    let complete = Arc::new(Complete {
        left: Mutex::new(left),
        tx: table_done,
    });
    let chunks = Arc::new(chunks);

    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for conn in readers {
        // One batch in flight between reader and writer: the reader prepares
        // the next batch while the writer commits this one.
        let (tx, rx) = mpsc::channel::<Result<Batch, Error>>(1);
        let queue = queue.clone();
        let tables_r = chunk_tables.clone();
        let chunks_r = chunks.clone();
        let stop_r = stop.clone();
        let settings_r = settings.clone();
        let slots_r = slots.clone();
        threads.push(std::thread::spawn(move || {
            reader(
                conn,
                &queue,
                &tables_r,
                &chunks_r,
                &settings_r,
                &stop_r,
                slots_r.as_deref(),
                &tx,
            )
        }));
        workers.push(writer(
            run,
            schema,
            target,
            rx,
            chunk_tables.clone(),
            chunks.clone(),
            progress,
            stop.clone(),
            complete.clone(),
        ));
    }
    let results = futures::future::join_all(workers).await;
    for t in threads {
        // A reader ends when its queue is empty, its writer is gone, or a stop was asked.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let mut first_err = None;
    for r in results {
        if let Err(e) = r {
            // Prefer a real failure over the "stopped because another failed" ones.
            if first_err.is_none() || matches!(first_err, Some(Error::Other(ref m)) if m == STOPPED)
            {
                first_err = Some(e);
            }
        }
    }
    match first_err {
        Some(e) if !(matches!(e, Error::Other(ref m) if m == STOPPED)) => Err(e),
        _ => Ok(()),
    }
}

/// Marker for a worker that stopped because a stop was asked.
const STOPPED: &str = "stopped";

/// Which tables are complete, told to whoever waits for them.
struct Complete {
    left: Mutex<std::collections::HashMap<String, usize>>,
    tx: Option<mpsc::UnboundedSender<String>>,
}

impl Complete {
    /// A chunk of `table` was committed done.
    fn chunk_done(&self, table: &str) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = left.get_mut(table) {
            *n -= 1;
            if *n == 0 {
                left.remove(table);
                if let Some(tx) = &self.tx {
                    let _ = tx.send(table.to_owned());
                }
            }
        }
    }
}

/// The reader of one worker: takes chunks from the queue, reads them in key
/// order and sends encoded batches until the queue is empty. With `slots`,
/// it holds one permit while it reads a chunk.
#[allow(clippy::too_many_arguments)]
fn reader(
    conn: rusqlite::Connection,
    queue: &Mutex<VecDeque<usize>>,
    chunk_tables: &[Arc<TablePlan>],
    chunks: &[ChunkState],
    settings: &Settings,
    stop: &Stop,
    slots: Option<&tokio::sync::Semaphore>,
    tx: &mpsc::Sender<Result<Batch, Error>>,
) {
    loop {
        if stop.stopped() {
            return;
        }
        // The permit before the chunk: a finish step waiting for one is
        // served in turn (the semaphore is fair), between two chunks.
        let _permit = match slots {
            Some(s) => match futures::executor::block_on(s.acquire()) {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some(i) = next else { return };
        let mut send = |b: Batch| tx.blocking_send(Ok(b)).is_ok() && !stop.stopped();
        if let Err(e) = read_chunk(&conn, i, &chunk_tables[i], &chunks[i], settings, &mut send) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    }
}

/// Reads chunk `idx` from where its checkpoint left off, calling `send` with
/// each batch; stops early (Ok) when `send` returns false.
fn read_chunk(
    conn: &rusqlite::Connection,
    idx: usize,
    table: &TablePlan,
    state: &ChunkState,
    settings: &Settings,
    send: &mut dyn FnMut(Batch) -> bool,
) -> Result<(), Error> {
    let kind = key_kind(table);
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| quote(&c.source_name))
        .collect();
    let from = quote(&table.source_name);
    let pk_cols: Vec<usize> = match &table.key {
        ReadKey::PrimaryKey(k) => k.clone(),
        _ => Vec::new(),
    };
    let types: Vec<Type> = table.columns.iter().map(|c| c.pg_type.pg_type()).collect();
    let route = match &settings.filter {
        Some(f) => Some((f.as_ref(), f.rule_for(table)?)),
        None => None,
    };
    let mut params: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    // Column values start after the rowid in the select list (rowid tables).
    let (sql, offset) = match kind {
        KeyKind::Rowid => {
            let rid = rowid_expr(table).unwrap_or("rowid");
            let (lo, hi) = state.spec.range.unwrap_or((i64::MIN, i64::MAX));
            let lo = match &state.last_key {
                Some(Key::Rowid(last)) => match last.checked_add(1) {
                    Some(n) => n,
                    None => {
                        send(done_batch(idx));
                        return Ok(());
                    }
                },
                _ => lo,
            };
            params.push(Box::new(lo));
            params.push(Box::new(hi));
            (
                format!(
                    "SELECT {rid}, {} FROM {from} WHERE {rid} >= ?1 AND {rid} <= ?2 ORDER BY {rid}",
                    cols.join(", ")
                ),
                1,
            )
        }
        KeyKind::PrimaryKey => {
            let keys: Vec<&str> = pk_cols.iter().map(|&i| cols[i].as_str()).collect();
            let order = keys.join(", ");
            let filter = match &state.last_key {
                Some(Key::Pk(vals)) => {
                    for v in vals {
                        params.push(Box::new(checkpoint::SqliteKey(v.clone())));
                    }
                    let marks: Vec<String> = (1..=vals.len()).map(|i| format!("?{i}")).collect();
                    format!(" WHERE ({order}) > ({})", marks.join(", "))
                }
                _ => String::new(),
            };
            (
                format!(
                    "SELECT {} FROM {from}{filter} ORDER BY {order}",
                    cols.join(", ")
                ),
                0,
            )
        }
        KeyKind::None => (format!("SELECT {} FROM {from}", cols.join(", ")), 0),
    };
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(
        params.iter().map(|p| p.as_ref()),
    ))?;

    let mut started = Instant::now();
    let mut buf = BytesMut::with_capacity(settings.batch_bytes.min(1 << 20) + (64 << 10));
    let mut adv = Advance::default();
    let mut rejects = Vec::new();
    let mut ordinal = state.rows_read as i64;
    let mut nulls: Vec<PendingReject> = Vec::new();
    while let Some(row) = rows.next()? {
        let rowid = if kind == KeyKind::Rowid {
            Some(row.get::<_, i64>(0)?)
        } else {
            None
        };
        // Sharded runs: rows of other shards are not this run's rows at all;
        // a key that cannot be routed is rejected like a bad value.
        let unroutable = match &route {
            Some((f, rule)) => match f.decide_row(rule, |i| row.get_ref(offset + i))? {
                Decision::Keep => None,
                Decision::Skip => continue,
                Decision::Reject(reason) => Some(reason),
            },
            None => None,
        };
        let row_start = buf.len();
        buf.put_i16(table.columns.len() as i16);
        nulls.clear();
        let mut rejected = false;
        if let (Some(reason), Some((_, Rule::Key(k, column)))) = (unroutable, &route) {
            rejects.push(PendingReject {
                ordinal,
                reject: Reject {
                    table: table.source_name.clone(),
                    rowid,
                    pk: pk_object(table, &pk_cols, row, offset, rowid),
                    column: column.clone(),
                    reason,
                    value: original(row.get_ref(offset + k)?),
                    action: RejectAction::Rejected,
                },
            });
            rejected = true;
        }
        for (j, col) in table.columns.iter().enumerate() {
            if rejected {
                buf.truncate(row_start);
                break;
            }
            let raw = row.get_ref(offset + j)?;
            let failure = match col.cast(raw) {
                Ok(v) => match encode_field(&v, &types[j], &mut buf) {
                    Ok(()) => continue,
                    Err(reason) => reason,
                },
                Err(e) => e.reason.to_string(),
            };
            let policy = if settings.strict {
                Policy::Fail
            } else {
                col.policy
            };
            let pk = pk_object(table, &pk_cols, row, offset, rowid);
            match policy {
                Policy::Fail => {
                    return Err(Error::RowFailed {
                        table: table.source_name.clone(),
                        row: match (rowid, &pk) {
                            (Some(r), _) => format!("rowid {r}"),
                            (None, Some(pk)) => format!("pk {pk}"),
                            (None, None) => format!("#{}", ordinal + 1),
                        },
                        column: col.source_name.clone(),
                        reason: failure,
                    })
                }
                Policy::Null => {
                    buf.put_i32(-1);
                    nulls.push(PendingReject {
                        ordinal,
                        reject: Reject {
                            table: table.source_name.clone(),
                            rowid,
                            pk,
                            column: col.source_name.clone(),
                            reason: failure,
                            value: original(raw),
                            action: RejectAction::Nulled,
                        },
                    });
                }
                Policy::Reject => {
                    buf.truncate(row_start);
                    rejects.push(PendingReject {
                        ordinal,
                        reject: Reject {
                            table: table.source_name.clone(),
                            rowid,
                            pk,
                            column: col.source_name.clone(),
                            reason: failure,
                            value: original(raw),
                            action: RejectAction::Rejected,
                        },
                    });
                    rejected = true;
                    break;
                }
            }
        }
        adv.rows_read += 1;
        if rejected {
            adv.rows_rejected += 1;
        } else {
            adv.rows_written += 1;
            adv.rows_nulled += nulls.len() as u64;
            rejects.append(&mut nulls);
        }
        ordinal += 1;
        adv.last_key = match kind {
            KeyKind::Rowid => rowid.map(Key::Rowid),
            KeyKind::PrimaryKey => Some(Key::Pk(
                pk_cols
                    .iter()
                    .map(|&i| row.get_ref(offset + i).map(checkpoint::key_value))
                    .collect::<Result<_, _>>()?,
            )),
            KeyKind::None => None,
        };
        if adv.rows_read as usize >= settings.batch_rows || buf.len() >= settings.batch_bytes {
            adv.elapsed_ms = started.elapsed().as_millis() as u64;
            let b = Batch {
                chunk: idx,
                data: buf.split().freeze(),
                advance: std::mem::take(&mut adv),
                rejects: std::mem::take(&mut rejects),
            };
            if !send(b) {
                return Ok(());
            }
            started = Instant::now();
        }
    }
    adv.done = true;
    adv.elapsed_ms = started.elapsed().as_millis() as u64;
    send(Batch {
        chunk: idx,
        data: buf.split().freeze(),
        advance: adv,
        rejects,
    });
    Ok(())
}

fn done_batch(chunk: usize) -> Batch {
    Batch {
        chunk,
        data: Bytes::new(),
        advance: Advance {
            done: true,
            ..Advance::default()
        },
        rejects: Vec::new(),
    }
}

/// Appends one binary COPY field (length, then bytes; -1 for NULL).
fn encode_field(v: &Value, ty: &Type, buf: &mut BytesMut) -> Result<(), String> {
    let at = buf.len();
    buf.put_i32(0);
    match v.to_sql_checked(ty, buf) {
        Ok(IsNull::Yes) => {
            buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
            Ok(())
        }
        Ok(IsNull::No) => {
            let len = buf.len() - at - 4;
            let len = i32::try_from(len).map_err(|_| {
                buf.truncate(at);
                format!("value of {len} bytes is larger than Postgres can hold (1 GB)")
            })?;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            buf.truncate(at);
            Err(e.to_string())
        }
    }
}

/// The original SQLite value for the reject file: JSON text, number or null,
/// `{"base64": ..}` for a BLOB or for TEXT that is not UTF-8.
pub(crate) fn original(v: ValueRef<'_>) -> serde_json::Value {
    use serde_json::{json, Value as J};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match v {
        ValueRef::Null => J::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => {
            serde_json::Number::from_f64(f).map_or_else(|| json!(f.to_string()), J::Number)
        }
        // jsonb cannot hold NUL (\u0000) nor invalid UTF-8: such text is
        // kept exactly, as base64 of its bytes.
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) if !s.contains('\0') => J::String(s.to_owned()),
            _ => json!({ "base64": b64(t), "storage": "text" }),
        },
        ValueRef::Blob(b) => json!({ "base64": b64(b) }),
    }
}

/// The row's primary key as a JSON object (source column names), when the
/// table has one: its declared key columns, else `{"rowid": n}` is left to
/// the `rowid` field.
fn pk_object(
    table: &TablePlan,
    pk_cols: &[usize],
    row: &rusqlite::Row<'_>,
    offset: usize,
    _rowid: Option<i64>,
) -> Option<serde_json::Value> {
    let cols: Vec<usize> = if pk_cols.is_empty() {
        table.pk_columns()
    } else {
        pk_cols.to_vec()
    };
    if cols.is_empty() {
        return None;
    }
    let mut obj = serde_json::Map::new();
    for i in cols {
        let v = row.get_ref(offset + i).map(original).unwrap_or_default();
        obj.insert(table.columns[i].source_name.clone(), v);
    }
    Some(serde_json::Value::Object(obj))
}

/// Binary COPY file header: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Binary COPY trailer: a field count of -1.
const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// The writer of one worker: commits each batch from its reader in one
/// transaction with its rejects and checkpoint.
#[allow(clippy::too_many_arguments)]
async fn writer(
    run: i64,
    schema: &str,
    target: &dbtool_pool::Target,
    mut rx: mpsc::Receiver<Result<Batch, Error>>,
    chunk_tables: Arc<Vec<Arc<TablePlan>>>,
    chunks: Arc<Vec<ChunkState>>,
    progress: &dyn Progress,
    stop: Arc<Stop>,
    complete: Arc<Complete>,
) -> Result<(), Error> {
    let result = async {
        let mut client = crate::target::connect(target).await?;
        while let Some(first) = rx.recv().await {
            let first = first?;
            let table = chunk_tables[first.chunk].clone();
            let chunk = &chunks[first.chunk];
            let keyless = key_kind(&table) == KeyKind::None;
            let load_err =
                |reason: &str, e: tokio_postgres::Error| load_error(&table.source_name, reason, e);
            let t0 = Instant::now();
            let tx = client
                .transaction()
                .await
                .map_err(|e| load_err("cannot begin a transaction", e))?;
            let mut adv = first.advance.clone();
            let mut rejects = first.rejects;
            if adv.rows_written > 0 || keyless {
                let cols: Vec<String> = table
                    .columns
                    .iter()
                    .map(|c| quote(&c.target_name))
                    .collect();
                let copy = format!(
                    "COPY {}.{} ({}) FROM STDIN (FORMAT binary)",
                    quote(schema),
                    quote(&table.target_name),
                    cols.join(", ")
                );
                let sink = tx
                    .copy_in::<_, Bytes>(&copy)
                    .await
                    .map_err(|e| load_err("cannot start COPY", e))?;
                futures::pin_mut!(sink);
                let send_err = |e| load_err("COPY failed", e);
                sink.feed(Bytes::from_static(COPY_HEADER))
                    .await
                    .map_err(send_err)?;
                sink.feed(first.data).await.map_err(send_err)?;
                // A table without a usable key is copied in one transaction:
                // keep streaming its batches into the same COPY.
                while keyless && !adv.done {
                    let Some(next) = rx.recv().await else { break };
                    let next = next?;
                    sink.feed(next.data).await.map_err(send_err)?;
                    merge(&mut adv, &next.advance);
                    rejects.extend(next.rejects);
                }
                if keyless && !adv.done {
                    // The reader stopped (cancel or error) mid-table: roll back.
                    return Err(Error::Other(STOPPED.into()));
                }
                sink.feed(Bytes::from_static(COPY_TRAILER))
                    .await
                    .map_err(send_err)?;
                let n = sink.finish().await.map_err(send_err)?;
                debug_assert_eq!(n, adv.rows_written);
            }
            checkpoint::insert_rejects(&tx, run, chunk.spec.chunk, &rejects)
                .await
                .map_err(|e| pg_context(e.into(), &table.source_name))?;
            adv.elapsed_ms += t0.elapsed().as_millis() as u64;
            checkpoint::advance(&tx, run, &table.source_name, chunk.spec.chunk, &adv)
                .await
                .map_err(|e| pg_context(e.into(), &table.source_name))?;
            tx.commit()
                .await
                .map_err(|e| load_err("commit failed", e))?;
            progress.rows(&table.source_name, adv.rows_read, adv.rows_rejected);
            if adv.done {
                progress.chunk_done(&table.source_name);
                complete.chunk_done(&table.source_name);
            }
            if stop.stopped() {
                return Err(Error::Other(STOPPED.into()));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        if !matches!(e, Error::Other(m) if m == STOPPED) {
            stop.stop();
        }
    }
    result
}

fn merge(acc: &mut Advance, next: &Advance) {
    if next.last_key.is_some() {
        acc.last_key = next.last_key.clone();
    }
    acc.rows_read += next.rows_read;
    acc.rows_written += next.rows_written;
    acc.rows_rejected += next.rows_rejected;
    acc.rows_nulled += next.rows_nulled;
    acc.elapsed_ms += next.elapsed_ms;
    acc.done = next.done;
}

fn pg_context(e: Error, table: &str) -> Error {
    match e {
        Error::Postgres(e) => load_error(table, "cannot record the checkpoint", e),
        other => other,
    }
}

/// A load error with what to do next, by the kind of failure.
fn load_error(table: &str, what: &str, e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let code = e.code();
    let next = if e.is_closed() || code.is_none() && e.to_string().contains("connection") {
        "the connection to Postgres was lost (server restart or network); committed batches are kept: run the same command again to resume"
    } else if code == Some(&SqlState::DISK_FULL) || code == Some(&SqlState::OUT_OF_MEMORY) {
        "the Postgres server is out of disk space or memory; free some, then run the same command again to resume"
    } else if code.is_some_and(|c| c.code().starts_with("57")) {
        "the Postgres server is shutting down or cancelled the query; committed batches are kept: run the same command again to resume"
    } else if code == Some(&SqlState::UNDEFINED_TABLE) || code == Some(&SqlState::UNDEFINED_COLUMN)
    {
        "the target table or column does not exist (with --data-only, create the schema first with --schema-only)"
    } else {
        "committed batches are kept: fix the cause, then run the same command again to resume"
    };
    Error::Load {
        table: table.to_owned(),
        reason: format!("{what} ({next})"),
        source: e,
    }
}
