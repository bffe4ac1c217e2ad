//! Comparing the rows of one table: checksums per range or bucket on both
//! sides at once, bisection of differing ranges, and the exact rows at the end.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dbtool_migrate::value::Value;
use rusqlite::Connection;
use tokio_postgres::Client;
use xxhash_rust::xxh3::xxh3_64;

use crate::pg;
use crate::report::{ColumnDiff, DiffKind, Method, RowDiff, TableReport};
use crate::spec::{Key, TableSpec};
use crate::sqlite::{self, Filter};
use crate::Error;

/// Aim for this many source rows per first-pass range or bucket.
const ROWS_PER_RANGE: u64 = 1024;
/// At most this many first-pass ranges or buckets per table (16 bytes each).
const MAX_RANGES: u64 = 1 << 16;
/// A differing key range with at most this many rows on each side is read
/// key by key instead of being split further.
const LEAF_ROWS: u64 = 256;
/// How many ways a differing key range is split per bisection step.
const FANOUT: i64 = 16;
/// Rows (per side) held in memory to resolve differing hash buckets; buckets
/// beyond it are reported as unresolved.
const RESOLVE_BUDGET: u64 = 500_000;
/// Bytea values longer than this are shown as their length and hash.
const BYTEA_MASK: usize = 32;
/// Other values are cut at this many characters in the report.
const SHOW_CHARS: usize = 200;

/// Read-only SQLite connections, reused across blocking tasks.
pub(crate) struct Sources {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Sources {
    pub(crate) fn new(path: PathBuf) -> Sources {
        Sources {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Opens the source read-only (one more connection), the way the
    /// migrator does: custom collations registered, WAL files without their
    /// `-wal` opened immutable.
    pub(crate) fn open(&self) -> Result<Connection, Error> {
        dbtool_migrate::source::open(&self.path).map_err(|e| Error::Source {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Runs `f` with a source connection on a blocking thread.
    pub(crate) async fn run<R, F>(self: &Arc<Self>, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, Error> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match this.idle.lock().map(|mut v| v.pop()) {
                Ok(Some(c)) => c,
                _ => this.open()?,
            };
            let out = f(&conn);
            if let Ok(mut v) = this.idle.lock() {
                v.push(conn);
            }
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("source reader task failed: {e}")))?
    }
}

/// The shared list of differing rows, capped at `max` listed.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub(crate) diffs: Vec<RowDiff>,
    pub(crate) not_listed: u64,
    pub(crate) max: u64,
    listed: u64,
    rejected_listed: u64,
}

impl Sink {
    pub(crate) fn new(max: u64) -> Sink {
        Sink {
            max,
            ..Sink::default()
        }
    }

    fn push(&mut self, d: RowDiff) {
        if d.kind == DiffKind::Rejected {
            if self.rejected_listed < self.max {
                self.rejected_listed += 1;
                self.diffs.push(d);
            }
        } else if self.listed < self.max {
            self.listed += 1;
            self.diffs.push(d);
        } else {
            self.not_listed += 1;
        }
    }

    fn has_room(&self) -> bool {
        self.listed < self.max
    }
}

/// Everything a table comparison needs.
pub(crate) struct Ctx {
    pub(crate) schema: String,
    pub(crate) sources: Arc<Sources>,
    pub(crate) sample: Option<f64>,
    pub(crate) sink: Mutex<Sink>,
}

impl Ctx {
    fn push(&self, d: RowDiff) {
        if let Ok(mut s) = self.sink.lock() {
            s.push(d);
        }
    }

    fn has_room(&self) -> bool {
        self.sink.lock().map(|s| s.has_room()).unwrap_or(false)
    }

    /// Whether bucket `i` of `table` is in the deterministic sample.
    fn sampled(&self, table: &str, i: u64) -> bool {
        match self.sample {
            None => true,
            Some(pct) => {
                let mut b = table.as_bytes().to_vec();
                b.extend_from_slice(&i.to_le_bytes());
                ((xxh3_64(&b) % 1_000_000) as f64) < pct * 10_000.0
            }
        }
    }
}

/// A table to compare, with what the run record says about it.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) spec: Arc<TableSpec>,
    pub(crate) watermark: Option<i64>,
    /// Rowids the migration rejected, with the reason.
    pub(crate) rejects: HashMap<i64, String>,
}

/// Count and wrapping sum of row hashes per range or bucket.
#[derive(Debug, Clone)]
struct Sums {
    count: Vec<u64>,
    sum: Vec<u64>,
}

impl Sums {
    fn new(n: usize) -> Sums {
        Sums {
            count: vec![0; n],
            sum: vec![0; n],
        }
    }

    fn add(&mut self, i: usize, h: u64) {
        self.count[i] += 1;
        self.sum[i] = self.sum[i].wrapping_add(h);
    }

    fn differs(&self, other: &Sums, i: usize) -> bool {
        self.count[i] != other.count[i] || self.sum[i] != other.sum[i]
    }
}

/// Compares one table; rows that differ go to the context's sink.
pub(crate) async fn table(ctx: Arc<Ctx>, job: Job, client: &Client) -> Result<TableReport, Error> {
    let started = Instant::now();
    let spec = Arc::clone(&job.spec);
    let method = match spec.key {
        Key::Rowid(_) => Method::KeyRange,
        Key::Columns(_) => Method::KeyHash,
        Key::None => Method::Multiset,
    };
    let mut rep = TableReport::new(&spec.source, &spec.target, method);
    rep.sampled_pct = ctx.sample;
    let result = match method {
        Method::KeyRange => key_range(&ctx, &job, client, &mut rep).await,
        _ => hashed(&ctx, &job, client, &mut rep).await,
    };
    if let Err(e) = result {
        match e {
            // The table could not be read on the target (missing, wrong
            // type): a difference, reported, while the other tables go on.
            // A lost connection is not a difference: it stops the run (exit 2).
            Error::Target { .. } | Error::Plan(_) if !client.is_closed() => {
                rep.skipped = Some(e.to_string())
            }
            e => return Err(e),
        }
    }
    rep.equal = rep.rows_compared.saturating_sub(rep.missing + rep.changed);
    rep.time_ms = started.elapsed().as_millis() as u64;
    Ok(rep)
}

/// The reject records of this table that exist in the source: listed as
/// rejected, and left out of every checksum on both sides.
struct Rejected {
    /// Source rowids to skip.
    rowids: HashSet<i64>,
    /// Key hashes (keyed tables) to skip on the target.
    key_hashes: HashSet<u64>,
    /// Row hashes (tables without a key) to skip on the target, with copies.
    row_hashes: HashMap<u64, u64>,
}

async fn load_rejected(
    ctx: &Arc<Ctx>,
    job: &Job,
    rep: &mut TableReport,
) -> Result<Rejected, Error> {
    let mut out = Rejected {
        rowids: HashSet::new(),
        key_hashes: HashSet::new(),
        row_hashes: HashMap::new(),
    };
    if job.rejects.is_empty() || !job.spec.has_rowid() {
        return Ok(out);
    }
    let spec = Arc::clone(&job.spec);
    let mut ids: Vec<i64> = job.rejects.keys().copied().collect();
    ids.sort_unstable();
    let found = ctx
        .sources
        .run(move |c| {
            let mut rows = Vec::new();
            for chunk in ids.chunks(10_000) {
                sqlite::scan(c, &spec, &Filter::Keys(chunk.to_vec()), &mut |r| {
                    rows.push((
                        r.rowid.unwrap_or(0),
                        r.key_hash,
                        r.hash,
                        pk_json(&spec, &r.values(), r.rowid),
                    ));
                })?;
            }
            Ok(rows)
        })
        .await?;
    for (rowid, key_hash, hash, pk) in found {
        out.rowids.insert(rowid);
        out.key_hashes.insert(key_hash);
        *out.row_hashes.entry(hash).or_default() += 1;
        rep.rejected += 1;
        ctx.push(RowDiff {
            table: job.spec.source.clone(),
            pk,
            rowid: Some(rowid),
            kind: DiffKind::Rejected,
            columns: Vec::new(),
            row: None,
            reason: job.rejects.get(&rowid).cloned(),
            copies: None,
        });
    }
    Ok(out)
}

/// Tables keyed by the rowid: checksums over key ranges, both sides reading
/// only the range asked for (the key is indexed on both), bisected down to
/// ranges small enough to compare key by key.
async fn key_range(
    ctx: &Arc<Ctx>,
    job: &Job,
    client: &Client,
    rep: &mut TableReport,
) -> Result<(), Error> {
    let spec = Arc::clone(&job.spec);
    let rejected = Arc::new(load_rejected(ctx, job, rep).await?);
    let s2 = Arc::clone(&spec);
    let (smin, smax, scount) = ctx.sources.run(move |c| sqlite::bounds(c, &s2)).await?;
    let (tmin, tmax) = pg::bounds(client, &ctx.schema, &spec).await?;
    let lo = match (smin, tmin) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => match a.or(b) {
            Some(v) => v,
            None => return Ok(()), // both empty
        },
    };
    let mut hi = smax.max(tmax).unwrap_or(lo).saturating_add(1);
    if let Some(w) = job.watermark {
        rep.watermark = Some(w);
        rep.new_since_watermark = pg::count_above(client, &ctx.schema, &spec, w).await?;
        hi = hi.min(w.saturating_add(1));
    }
    if hi <= lo {
        return Ok(());
    }
    let span = (i128::from(hi) - i128::from(lo)) as u128;
    let want = (scount / ROWS_PER_RANGE).clamp(1, MAX_RANGES) as u128;
    let width = span.div_ceil(want).max(1);
    let n = span.div_ceil(width) as usize;
    let range_of = move |i: usize| -> (i64, i64) {
        let a = i128::from(lo) + (i as i128) * width as i128;
        let b = (a + width as i128).min(i128::from(hi));
        (a as i64, b as i64)
    };
    // The ranges to read in the first pass: everything, or the sampled
    // buckets merged into runs.
    let sampled: Vec<bool> = (0..n)
        .map(|i| ctx.sampled(&spec.source, i as u64))
        .collect();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    let mut i = 0;
    while i < n {
        if !sampled[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && sampled[i] {
            i += 1;
        }
        runs.push((range_of(start).0, range_of(i - 1).1));
    }
    let (s_sums, t_sums, src_rows) =
        range_sums(ctx, &spec, client, &rejected, &runs, lo, width as u64, n).await?;
    rep.rows_compared = src_rows;
    let mut queue: Vec<(i64, i64, u64, u64)> = (0..n)
        .filter(|&i| sampled[i] && s_sums.differs(&t_sums, i))
        .map(|i| {
            let (a, b) = range_of(i);
            (a, b, s_sums.count[i], t_sums.count[i])
        })
        .collect();
    queue.reverse();
    while let Some((a, b, cs, ct)) = queue.pop() {
        if cs.max(ct) <= LEAF_ROWS || b - a <= FANOUT {
            leaf(ctx, &spec, client, &rejected, a, b, rep).await?;
            continue;
        }
        let w = ((i128::from(b) - i128::from(a)) as u128).div_ceil(FANOUT as u128) as u64;
        let parts = ((i128::from(b) - i128::from(a)) as u128).div_ceil(u128::from(w)) as usize;
        let (s, t, _) = range_sums(ctx, &spec, client, &rejected, &[(a, b)], a, w, parts).await?;
        for j in (0..parts).rev() {
            if s.differs(&t, j) {
                let sa = a + (j as i64) * w as i64;
                let sb = (sa + w as i64).min(b);
                queue.push((sa, sb, s.count[j], t.count[j]));
            }
        }
    }
    Ok(())
}

/// Checksums of both sides over `runs`, bucketed by `(key - lo) / width`.
#[allow(clippy::too_many_arguments)]
async fn range_sums(
    ctx: &Arc<Ctx>,
    spec: &Arc<TableSpec>,
    client: &Client,
    rejected: &Arc<Rejected>,
    runs: &[(i64, i64)],
    lo: i64,
    width: u64,
    n: usize,
) -> Result<(Sums, Sums, u64), Error> {
    let bucket = move |k: i64| -> usize {
        (((i128::from(k) - i128::from(lo)) as u128) / u128::from(width)) as usize
    };
    let src = {
        let spec = Arc::clone(spec);
        let rejected = Arc::clone(rejected);
        let runs = runs.to_vec();
        ctx.sources.run(move |c| {
            let mut sums = Sums::new(n);
            let mut rows = 0u64;
            for (a, b) in runs {
                sqlite::scan(c, &spec, &Filter::Range(a, b), &mut |r| {
                    let k = r.rowid.unwrap_or(0);
                    if rejected.rowids.contains(&k) {
                        return;
                    }
                    rows += 1;
                    sums.add(bucket(k).min(n - 1), r.hash);
                })?;
            }
            Ok((sums, rows))
        })
    };
    let tgt = async {
        let mut sums = Sums::new(n);
        for &(a, b) in runs {
            pg::scan(client, &ctx.schema, spec, &Filter::Range(a, b), &mut |r| {
                let Some(k) = r.ikey else { return };
                if rejected.rowids.contains(&k) {
                    return;
                }
                sums.add(bucket(k).min(n - 1), r.hash);
            })
            .await?;
        }
        Ok::<_, Error>(sums)
    };
    let (src, tgt) = tokio::join!(src, tgt);
    let (s, rows) = src?;
    Ok((s, tgt?, rows))
}

/// A small differing key range: compare key by key, then read only the
/// differing rows in full.
async fn leaf(
    ctx: &Arc<Ctx>,
    spec: &Arc<TableSpec>,
    client: &Client,
    rejected: &Arc<Rejected>,
    a: i64,
    b: i64,
    rep: &mut TableReport,
) -> Result<(), Error> {
    let src = {
        let spec = Arc::clone(spec);
        let rejected = Arc::clone(rejected);
        ctx.sources.run(move |c| {
            let mut rows: HashMap<i64, (u64, Option<String>)> = HashMap::new();
            sqlite::scan(c, &spec, &Filter::Range(a, b), &mut |r| {
                let k = r.rowid.unwrap_or(0);
                if !rejected.rowids.contains(&k) {
                    rows.insert(k, (r.hash, r.cast_error.map(str::to_owned)));
                }
            })?;
            Ok(rows)
        })
    };
    let tgt = async {
        let mut rows: HashMap<i64, u64> = HashMap::new();
        pg::scan(client, &ctx.schema, spec, &Filter::Range(a, b), &mut |r| {
            if let Some(k) = r.ikey {
                if !rejected.rowids.contains(&k) {
                    rows.insert(k, r.hash);
                }
            }
        })
        .await?;
        Ok::<_, Error>(rows)
    };
    let (src, tgt) = tokio::join!(src, tgt);
    let (src, tgt) = (src?, tgt?);
    let mut keys: Vec<i64> = src.keys().chain(tgt.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut changed = Vec::new();
    let key_name = spec.columns[spec.key_columns()[0]].target.clone();
    let pk = |k: i64| serde_json::json!({ key_name.as_str(): k });
    for k in keys {
        match (src.get(&k), tgt.get(&k)) {
            (Some((sh, _)), Some(th)) if sh == th => {}
            (Some(_), Some(_)) => {
                rep.changed += 1;
                changed.push(k);
            }
            (Some((_, err)), None) => {
                let kind = if err.is_some() {
                    rep.rejected += 1;
                    rep.rows_compared = rep.rows_compared.saturating_sub(1);
                    DiffKind::Rejected
                } else {
                    rep.missing += 1;
                    DiffKind::Missing
                };
                ctx.push(RowDiff {
                    table: spec.source.clone(),
                    pk: pk(k),
                    rowid: Some(k),
                    kind,
                    columns: Vec::new(),
                    row: None,
                    reason: err.clone(),
                    copies: None,
                });
            }
            (None, Some(_)) => {
                rep.extra += 1;
                ctx.push(RowDiff {
                    table: spec.source.clone(),
                    pk: pk(k),
                    rowid: None,
                    kind: DiffKind::Extra,
                    columns: Vec::new(),
                    row: None,
                    reason: None,
                    copies: None,
                });
            }
            (None, None) => {}
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    if !ctx.has_room() {
        for _ in &changed {
            ctx.push(placeholder(spec));
        }
        return Ok(());
    }
    // Only now are the differing rows read in full, by key.
    let (src_vals, tgt_vals) = {
        let spec2 = Arc::clone(spec);
        let keys = changed.clone();
        let src = ctx.sources.run(move |c| {
            let mut m: HashMap<i64, Vec<Value>> = HashMap::new();
            sqlite::scan(c, &spec2, &Filter::Keys(keys), &mut |r| {
                m.insert(r.rowid.unwrap_or(0), r.values());
            })?;
            Ok(m)
        });
        let tgt = async {
            let mut m: HashMap<i64, Vec<Value>> = HashMap::new();
            pg::scan(
                client,
                &ctx.schema,
                spec,
                &Filter::Keys(changed.clone()),
                &mut |r| {
                    if let Some(k) = r.ikey {
                        m.insert(k, r.values());
                    }
                },
            )
            .await?;
            Ok::<_, Error>(m)
        };
        let (s, t) = tokio::join!(src, tgt);
        (s?, t?)
    };
    for k in changed {
        let columns = match (src_vals.get(&k), tgt_vals.get(&k)) {
            (Some(s), Some(t)) => column_diffs(spec, s, t),
            _ => Vec::new(),
        };
        ctx.push(RowDiff {
            table: spec.source.clone(),
            pk: pk(k),
            rowid: Some(k),
            kind: DiffKind::Changed,
            columns,
            row: None,
            reason: None,
            copies: None,
        });
    }
    Ok(())
}

/// A differing row counted past `max_diffs` (not listed).
fn placeholder(spec: &TableSpec) -> RowDiff {
    RowDiff {
        table: spec.source.clone(),
        pk: serde_json::Value::Null,
        rowid: None,
        kind: DiffKind::Changed,
        columns: Vec::new(),
        row: None,
        reason: None,
        copies: None,
    }
}

/// One row held while resolving a differing hash bucket.
#[derive(Debug)]
struct Held {
    hash: u64,
    values: Vec<Value>,
    rowid: Option<i64>,
    copies: u64,
    cast_error: Option<String>,
}

/// Tables without an integer key: checksums over buckets of the key's hash
/// (or the row's hash without a key, so duplicates count), then a second
/// pass that holds only the rows of differing buckets.
async fn hashed(
    ctx: &Arc<Ctx>,
    job: &Job,
    client: &Client,
    rep: &mut TableReport,
) -> Result<(), Error> {
    let spec = Arc::clone(&job.spec);
    let keyed = matches!(spec.key, Key::Columns(_));
    let rejected = Arc::new(load_rejected(ctx, job, rep).await?);
    let s2 = Arc::clone(&spec);
    let (_, _, scount) = ctx.sources.run(move |c| sqlite::bounds(c, &s2)).await?;
    let n = (scount / (ROWS_PER_RANGE / 4)).clamp(1, MAX_RANGES) as usize;
    let sampled: Arc<Vec<bool>> = Arc::new(
        (0..n)
            .map(|i| ctx.sampled(&spec.source, i as u64))
            .collect(),
    );
    let bucket = move |h: u64| (h % n as u64) as usize;

    // Pass 1: checksums per bucket, both sides at once.
    let src = {
        let spec = Arc::clone(&spec);
        let rejected = Arc::clone(&rejected);
        let sampled = Arc::clone(&sampled);
        ctx.sources.run(move |c| {
            let mut sums = Sums::new(n);
            let mut rows = 0u64;
            sqlite::scan(c, &spec, &Filter::All, &mut |r| {
                if r.rowid.is_some_and(|id| rejected.rowids.contains(&id)) {
                    return;
                }
                let i = bucket(r.key_hash);
                if sampled[i] {
                    rows += 1;
                    sums.add(i, r.hash);
                }
            })?;
            Ok((sums, rows))
        })
    };
    let tgt = async {
        let mut sums = Sums::new(n);
        let mut skip = rejected.row_hashes.clone();
        pg::scan(client, &ctx.schema, &spec, &Filter::All, &mut |r| {
            if keyed && rejected.key_hashes.contains(&r.key_hash) {
                return;
            }
            if !keyed {
                if let Some(c) = skip.get_mut(&r.hash).filter(|c| **c > 0) {
                    *c -= 1;
                    return;
                }
            }
            let i = bucket(r.key_hash);
            if sampled[i] {
                sums.add(i, r.hash);
            }
        })
        .await?;
        Ok::<_, Error>(sums)
    };
    let (src, tgt) = tokio::join!(src, tgt);
    let ((s_sums, rows), t_sums) = (src?, tgt?);
    rep.rows_compared = rows;
    let differing: Vec<usize> = (0..n).filter(|&i| s_sums.differs(&t_sums, i)).collect();
    if differing.is_empty() {
        return Ok(());
    }

    // Pass 2: hold the rows of differing buckets, within the memory budget.
    let mut chosen = vec![false; n];
    let mut held_rows = 0u64;
    for &i in &differing {
        let rows = s_sums.count[i].max(t_sums.count[i]);
        if held_rows + rows > RESOLVE_BUDGET && held_rows > 0 {
            rep.unresolved_buckets += 1;
            // A lower bound for what the bucket holds.
            if s_sums.count[i] > t_sums.count[i] {
                rep.missing += s_sums.count[i] - t_sums.count[i];
            } else {
                rep.extra += t_sums.count[i] - s_sums.count[i];
            }
            continue;
        }
        held_rows += rows;
        chosen[i] = true;
    }
    let chosen = Arc::new(chosen);
    let src = {
        let spec = Arc::clone(&spec);
        let rejected = Arc::clone(&rejected);
        let chosen = Arc::clone(&chosen);
        ctx.sources.run(move |c| {
            let mut held: HashMap<Vec<u8>, Held> = HashMap::new();
            sqlite::scan(c, &spec, &Filter::All, &mut |r| {
                if r.rowid.is_some_and(|id| rejected.rowids.contains(&id))
                    || !chosen[bucket(r.key_hash)]
                {
                    return;
                }
                let id = if keyed {
                    r.key_bytes.to_vec()
                } else {
                    r.hash.to_le_bytes().to_vec()
                };
                held.entry(id)
                    .and_modify(|h| h.copies += 1)
                    .or_insert_with(|| Held {
                        hash: r.hash,
                        values: r.values(),
                        rowid: r.rowid,
                        copies: 1,
                        cast_error: r.cast_error.map(str::to_owned),
                    });
            })?;
            Ok(held)
        })
    };
    let tgt = async {
        let mut held: HashMap<Vec<u8>, Held> = HashMap::new();
        let mut skip = rejected.row_hashes.clone();
        pg::scan(client, &ctx.schema, &spec, &Filter::All, &mut |r| {
            if keyed && rejected.key_hashes.contains(&r.key_hash) {
                return;
            }
            if !keyed {
                if let Some(c) = skip.get_mut(&r.hash).filter(|c| **c > 0) {
                    *c -= 1;
                    return;
                }
            }
            if !chosen[bucket(r.key_hash)] {
                return;
            }
            let id = if keyed {
                r.key_bytes.to_vec()
            } else {
                r.hash.to_le_bytes().to_vec()
            };
            held.entry(id)
                .and_modify(|h| h.copies += 1)
                .or_insert_with(|| Held {
                    hash: r.hash,
                    values: r.values(),
                    rowid: None,
                    copies: 1,
                    cast_error: None,
                });
        })
        .await?;
        Ok::<_, Error>(held)
    };
    let (src, tgt) = tokio::join!(src, tgt);
    let (src, tgt) = (src?, tgt?);
    let mut ids: Vec<&Vec<u8>> = src.keys().chain(tgt.keys()).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let (s, t) = (src.get(id), tgt.get(id));
        if keyed {
            let diff = match (s, t) {
                (Some(s), Some(t)) if s.hash == t.hash => continue,
                (Some(s), Some(t)) => {
                    rep.changed += 1;
                    RowDiff {
                        table: spec.source.clone(),
                        pk: pk_json(&spec, &s.values, s.rowid),
                        rowid: s.rowid,
                        kind: DiffKind::Changed,
                        columns: column_diffs(&spec, &s.values, &t.values),
                        row: None,
                        reason: None,
                        copies: None,
                    }
                }
                (Some(s), None) => {
                    let kind = if s.cast_error.is_some() {
                        rep.rejected += 1;
                        rep.rows_compared = rep.rows_compared.saturating_sub(1);
                        DiffKind::Rejected
                    } else {
                        rep.missing += 1;
                        DiffKind::Missing
                    };
                    RowDiff {
                        table: spec.source.clone(),
                        pk: pk_json(&spec, &s.values, s.rowid),
                        rowid: s.rowid,
                        kind,
                        columns: Vec::new(),
                        row: None,
                        reason: s.cast_error.clone(),
                        copies: None,
                    }
                }
                (None, Some(t)) => {
                    rep.extra += 1;
                    RowDiff {
                        table: spec.source.clone(),
                        pk: pk_json(&spec, &t.values, None),
                        rowid: None,
                        kind: DiffKind::Extra,
                        columns: Vec::new(),
                        row: None,
                        reason: None,
                        copies: None,
                    }
                }
                (None, None) => continue,
            };
            ctx.push(diff);
        } else {
            let sc = s.map_or(0, |h| h.copies);
            let tc = t.map_or(0, |h| h.copies);
            if sc == tc {
                continue;
            }
            let (held, kind, copies) = if sc > tc {
                let h = s.expect("source copies > 0");
                if h.cast_error.is_some() {
                    rep.rejected += sc - tc;
                    rep.rows_compared = rep.rows_compared.saturating_sub(sc - tc);
                    (h, DiffKind::Rejected, sc - tc)
                } else {
                    rep.missing += sc - tc;
                    (h, DiffKind::Missing, sc - tc)
                }
            } else {
                rep.extra += tc - sc;
                (t.expect("target copies > 0"), DiffKind::Extra, tc - sc)
            };
            ctx.push(RowDiff {
                table: spec.source.clone(),
                pk: serde_json::Value::Null,
                rowid: if kind == DiffKind::Extra {
                    None
                } else {
                    held.rowid
                },
                kind,
                columns: Vec::new(),
                row: Some(row_json(&spec, &held.values)),
                reason: held.cast_error.clone(),
                copies: Some(copies),
            });
        }
    }
    Ok(())
}

/// The differing columns of a changed row, with both values rendered.
fn column_diffs(spec: &TableSpec, s: &[Value], t: &[Value]) -> Vec<ColumnDiff> {
    let mut out = Vec::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, col) in spec.columns.iter().enumerate() {
        let (sv, tv) = (
            s.get(i).unwrap_or(&Value::Null),
            t.get(i).unwrap_or(&Value::Null),
        );
        a.clear();
        b.clear();
        sv.canonical(&mut a);
        tv.canonical(&mut b);
        if a != b {
            out.push(ColumnDiff {
                column: col.target.clone(),
                source: show(sv),
                target: show(tv),
            });
        }
    }
    out
}

/// Renders a value for the report; long bytea is masked to its length and hash.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Bytes(b) if b.len() > BYTEA_MASK => {
            format!("<bytea {} bytes, xxh3 {:016x}>", b.len(), xxh3_64(b))
        }
        v => v.display_short(SHOW_CHARS),
    }
}

pub(crate) fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) if f.is_finite() => (*f).into(),
        Value::Text(s) if s.chars().count() <= SHOW_CHARS => s.clone().into(),
        v => show(v).into(),
    }
}

/// The primary key of a row as `{target column: value}` (the rowid for a keyless table).
fn pk_json(spec: &TableSpec, values: &[Value], rowid: Option<i64>) -> serde_json::Value {
    let cols = spec.key_columns();
    if cols.is_empty() {
        return rowid.map_or(
            serde_json::Value::Null,
            |r| serde_json::json!({ "rowid": r }),
        );
    }
    let mut m = serde_json::Map::new();
    for i in cols {
        m.insert(
            spec.columns[i].target.clone(),
            values.get(i).map_or(serde_json::Value::Null, json_of),
        );
    }
    serde_json::Value::Object(m)
}

/// A whole row as `{target column: value}`.
fn row_json(spec: &TableSpec, values: &[Value]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (i, c) in spec.columns.iter().enumerate() {
        m.insert(
            c.target.clone(),
            values.get(i).map_or(serde_json::Value::Null, json_of),
        );
    }
    serde_json::Value::Object(m)
}
