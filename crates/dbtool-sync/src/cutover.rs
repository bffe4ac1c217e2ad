//! `dbtool cutover`: catch up, freeze the file's writes, drain, check, mark
//! the file moved, start the reverse stream, release: within a budget.
//!
//! The freeze is SQLite's own write lock: `BEGIN IMMEDIATE` on dbtool's
//! connection. App writers with a busy timeout wait on it; readers go on.
//! Everything the cutover writes to the file (the moved mark) is inside that
//! transaction, so an abort (ROLLBACK) leaves the file as it was and the app
//! simply continues writing to SQLite, with capture still running.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dbtool_migrate::ident;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;

use crate::apply::{self, json_of, Applier, Sink};
use crate::capture::{self, LOG};
use crate::state::{self, Target};
use crate::sync::{Observer, Sharded};
use crate::Error;

/// What to cut over.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub from: PathBuf,
    /// The targets (as given to `dbtool sync`).
    pub targets: Vec<Target>,
    /// Routing with `--shards`.
    pub sharded: Option<Sharded>,
    /// The longest the app's writes may be frozen.
    pub max_freeze: Duration,
    /// How long to wait for the backlog to fit the budget before giving up.
    pub wait: Duration,
    /// Changes per batch while draining.
    pub batch: usize,
}

/// What a cutover did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// How long the app's writes were frozen, ms.
    pub freeze_ms: u64,
    /// Changes drained under the lock.
    pub drained: u64,
    /// Rows compared by key under the lock.
    pub keys_checked: u64,
    /// Rows compared by key before the lock and found equal (not compared
    /// again under it unless written since).
    pub keys_prechecked: u64,
    /// The log position of the switch.
    pub position: i64,
    /// Per target: the reverse stream's start LSN, or why there is none.
    pub reverse: Vec<(String, Result<String, String>)>,
}

/// Runs the cutover (see the module docs).
pub async fn cutover(opts: Options, obs: &dyn Observer) -> Result<Report, Error> {
    let source = crate::sync::canonical(&opts.from)?;
    let mut sinks = Vec::new();
    let mut plan = None;
    let mut sync_id = String::new();
    for t in &opts.targets {
        let c = state::connect(t).await?;
        let row = state::load(&c, &source, &t.shard).await?.ok_or_else(|| {
            Error::Usage(format!(
                "no sync of {source} into {}: start one with dbtool sync --from {} first",
                t.shown(),
                opts.from.display()
            ))
        })?;
        if row.phase != "streaming" {
            return Err(Error::Usage(format!(
                "the sync of {source} into {} is {}, not streaming: {}",
                t.shown(),
                row.phase,
                if row.phase == "copying" {
                    "wait until dbtool sync status says streaming"
                } else {
                    "it was already cut over"
                }
            )));
        }
        sync_id = row.source_id.clone();
        if plan.is_none() {
            plan = state::plan(&c, &source, &t.shard).await?;
        }
        sinks.push(Sink::new(t.shard.clone(), c, row.position));
    }
    let plan =
        plan.ok_or_else(|| Error::Other(format!("no stored plan for the sync of {source}")))?;
    let path = PathBuf::from(&source);
    let reader = capture::open_rw(&path)?;
    let writer = capture::open_rw(&path)?;
    let sync_opts = crate::sync::Options {
        sharded: opts.sharded.clone(),
        ..crate::sync::Options::new(&opts.from, opts.targets.clone())
    };
    let applier = crate::sync::build_applier(&sync_opts, &source, plan, &reader)?;
    let width = capture::log_width(&reader)?;
    let version: i64 = reader.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    let budget = opts.max_freeze;
    let mut pre = None;

    // 1. Catch up without the lock until the predicted drain fits the budget.
    let deadline = Instant::now() + opts.wait;
    let mut capacity = 0.0f64;
    loop {
        let from = sinks.iter().map(|s| s.position).min().unwrap_or(0);
        let t0 = Instant::now();
        let (v, batch) = apply::read_batch(&reader, width, from, opts.batch)?;
        if v != version {
            return Err(Error::CutoverAborted(format!(
                "the schema of {source} changed; let dbtool sync follow it first, then run the cutover again"
            )));
        }
        let n = batch.len();
        for s in &mut sinks {
            applier.apply(s, &batch).await?;
        }
        if n > 0 {
            let c = n as f64 / t0.elapsed().as_secs_f64().max(1e-6);
            capacity = if capacity == 0.0 {
                c
            } else {
                0.5 * capacity + 0.5 * c
            };
        }
        let pos = sinks.iter().map(|s| s.position).min().unwrap_or(0);
        let (head, _) = apply::head(&reader, pos)?;
        let backlog = (head - pos).max(0) as f64;
        let predicted = if backlog == 0.0 {
            0.0
        } else {
            backlog / capacity.max(1.0)
        };
        // Half the budget for the drain: the check and the switch need the rest.
        if predicted <= budget.as_secs_f64() / 2.0 {
            if pre.is_none() {
                // The changed rows so far are compared now, with the app
                // writing; the freeze compares only those written since.
                pre = Some(pre_check(&reader, &writer, &applier, &sinks, &source, obs).await?);
                continue;
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::CutoverAborted(format!(
                "the backlog ({backlog} changes, about {predicted:.1} s to drain at {capacity:.0} changes/s) did not fall within half the --max-freeze budget ({} ms) in {} s; the file was not locked",
                budget.as_millis(),
                opts.wait.as_secs()
            )));
        }
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // 2. Freeze: take the write lock. SQLite's own busy handler sleeps in
    // growing steps (up to 100 ms) and loses the lock to app writers that
    // commit every millisecond; polling with a 1 ms timeout takes it right
    // after one of their commits. The freeze starts once it is held.
    let asked = Instant::now();
    writer.busy_timeout(Duration::from_millis(1))?;
    loop {
        match writer.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => break,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && asked.elapsed() < budget =>
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => {
                return Err(Error::CutoverAborted(format!(
                    "could not take the write lock of {source} within --max-freeze ({} ms): {e}",
                    budget.as_millis()
                )))
            }
        }
    }
    let t0 = Instant::now();
    // The commit may wait for readers (rollback-journal mode).
    writer.busy_timeout(budget)?;
    let result = frozen(
        &opts,
        &source,
        &sync_id,
        &reader,
        &writer,
        &mut sinks,
        &applier,
        width,
        version,
        t0,
        obs,
        pre.as_ref(),
    )
    .await;
    match result {
        Ok(mut report) => {
            if let Err(e) = writer.execute_batch("COMMIT") {
                revert(&mut sinks, &source, &report).await;
                let _ = writer.execute_batch("ROLLBACK");
                return Err(Error::CutoverAborted(format!(
                    "cannot commit the moved mark: {e}"
                )));
            }
            report.freeze_ms = t0.elapsed().as_millis() as u64;
            Ok(report)
        }
        Err((e, report)) => {
            let _ = writer.execute_batch("ROLLBACK");
            if let Some(r) = report {
                revert(&mut sinks, &source, &r).await;
            }
            Err(match e {
                Error::CutoverAborted(m) => Error::CutoverAborted(format!(
                    "{m} (held the write lock {} ms)",
                    t0.elapsed().as_millis()
                )),
                e => Error::CutoverAborted(format!(
                    "{e} (held the write lock {} ms)",
                    t0.elapsed().as_millis()
                )),
            })
        }
    }
}

/// Puts the targets back to streaming and drops reverse slots after an abort
/// that got as far as recording the switch.
async fn revert(sinks: &mut [Sink], source: &str, report: &Report) {
    for s in sinks.iter() {
        let _ = s
            .client
            .execute(
                "UPDATE dbtool.syncs SET phase = 'streaming', cutover_position = NULL, cutover_lsn = NULL, reverse_slot = NULL, cut_over_at = NULL \
                 WHERE source_path = $1 AND shard = $2",
                &[&source, &s.shard],
            )
            .await;
    }
    for (shard, r) in &report.reverse {
        if r.is_ok() {
            if let Some(s) = sinks.iter().find(|s| &s.shard == shard) {
                let _ = s
                    .client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot_name(source, shard)],
                    )
                    .await;
            }
        }
    }
}

/// The reverse stream's slot name for a sync (at most 63 bytes, `[a-z0-9_]`).
pub fn slot_name(sync_id: &str, shard: &str) -> String {
    let clean: String = format!("dbtool_sync_{sync_id}_{shard}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    clean.chars().take(63).collect()
}

#[allow(clippy::too_many_arguments)]
async fn frozen(
    opts: &Options,
    source: &str,
    sync_id: &str,
    reader: &Connection,
    writer: &Connection,
    sinks: &mut [Sink],
    applier: &Applier,
    width: usize,
    version: i64,
    t0: Instant,
    obs: &dyn Observer,
    pre: Option<&Prechecked>,
) -> Result<Report, (Error, Option<Report>)> {
    let budget = opts.max_freeze;
    let over = |what: &str| {
        Error::CutoverAborted(format!(
            "over the --max-freeze budget of {} ms while {what}",
            budget.as_millis()
        ))
    };
    let mut report = Report::default();
    // Drain.
    loop {
        let from = sinks.iter().map(|s| s.position).min().unwrap_or(0);
        let (v, batch) =
            apply::read_batch(reader, width, from, opts.batch).map_err(|e| (e, None))?;
        if v != version {
            return Err((
                Error::CutoverAborted(format!("the schema of {source} changed during the cutover")),
                None,
            ));
        }
        if batch.is_empty() {
            break;
        }
        for s in sinks.iter_mut() {
            applier.apply(s, &batch).await.map_err(|e| (e, None))?;
        }
        report.drained += batch.len() as u64;
        if t0.elapsed() > budget {
            return Err((over("draining the log"), None));
        }
    }
    report.position = sinks.iter().map(|s| s.position).min().unwrap_or(0);
    // Check the rows changed since the sync started, and the counts.
    let problems = check(reader, applier, sinks, source, &mut report, t0, budget, pre)
        .await
        .map_err(|e| (e, None))?;
    if !problems.is_empty() {
        return Err((
            Error::CutoverAborted(format!(
                "the target differs from {source} after the drain: {}{}; run dbtool verify for the full list",
                problems.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
                if problems.len() > 5 { format!(" (and {} more)", problems.len() - 5) } else { String::new() }
            )),
            None,
        ));
    }
    if t0.elapsed() > budget {
        return Err((over("checking the changed rows"), None));
    }
    // Mark the file moved (inside the locked transaction).
    let shown = opts
        .targets
        .iter()
        .map(|t| dbtool_pool::display_config(&t.to))
        .collect::<Vec<_>>()
        .join(", ");
    let file = opts.from.display().to_string();
    capture::mark_moved(writer, &file, &shown).map_err(|e| (e, None))?;
    // Identity sequences past the streamed ids, so the app's next insert in
    // Postgres does not collide.
    for s in sinks.iter() {
        if let Err(e) = dbtool_migrate::set_sequences(&s.client, &applier.plan).await {
            return Err((
                Error::Other(format!("cannot set the identity sequences: {e}")),
                None,
            ));
        }
    }
    // On shards, each shard then hands out ids from its own range (the
    // ranges shard moves use, see moves::ids), so rows the app creates on
    // different shards after the switch never share an id: reverse sync
    // brings every shard's rows back into the one file, and a bucket move
    // carries a team's rows to another shard, where the same id must not
    // already exist.
    if sinks.iter().any(|s| !s.shard.is_empty()) {
        for (slot, s) in sinks.iter().enumerate() {
            if let Err(e) =
                crate::moves::ids::ensure_ranges(&s.client, &s.shard, &applier.plan.schema, slot)
                    .await
            {
                return Err((
                    Error::Other(format!(
                        "cannot give shard {} its identity range: {e}",
                        s.shard
                    )),
                    None,
                ));
            }
        }
    }
    // The reverse stream's start, and the switch recorded, per target.
    let tables: Vec<String> = applier
        .plan
        .tables
        .iter()
        .map(|t| ident::qualified(&applier.plan.schema, &t.target_name))
        .collect();
    for s in sinks.iter() {
        let slot = slot_name(sync_id, &s.shard);
        let r = crate::reverse::start_at_cutover(&s.client, &slot, &tables).await;
        let (lsn, slot) = match &r {
            Ok(lsn) => (Some(lsn.clone()), Some(slot)),
            Err(e) => {
                obs.message(&format!(
                    "reverse stream not available for {}: {e}; the switch goes on without one (a rollback would lose the writes made in Postgres)",
                    if s.shard.is_empty() { "the target" } else { &s.shard }
                ));
                (None, None)
            }
        };
        report
            .reverse
            .push((s.shard.clone(), r.map_err(|e| e.to_string())));
        let upd = s
            .client
            .execute(
                "UPDATE dbtool.syncs SET phase = 'cut_over', cutover_position = $3, cutover_lsn = $4, reverse_slot = $5, \
                 cut_over_at = now(), updated_at = now() WHERE source_path = $1 AND shard = $2",
                &[&source, &s.shard, &report.position, &lsn, &slot],
            )
            .await;
        if let Err(e) = upd {
            return Err((e.into(), Some(report)));
        }
    }
    if t0.elapsed() > budget {
        return Err((over("recording the switch"), Some(report)));
    }
    Ok(report)
}

/// Keys compared per round trip.
const CHECK_CHUNK: usize = 1000;
/// Tries of one pre-check chunk when the sync's trim races it.
const PRECHECK_TRIES: usize = 3;

/// One table the check compares key by key: its capture (which log columns
/// hold the key) and verify's by-key comparison of it.
struct Keyed {
    cap: capture::Captured,
    check: dbtool_verify::keys::KeyCheck,
    /// Every target holds every row (no routing, or a table copied to every
    /// shard): each target is compared with the file on its own.
    everywhere: bool,
}

/// The tables whose changed rows are compared by key: keyed on the target,
/// with a key `_dbtool_touched` can hold. The others are checked by count.
fn keyed_tables(reader: &Connection, applier: &Applier) -> Result<Vec<Keyed>, Error> {
    let mut out = Vec::new();
    for cap in capture::captured(reader)? {
        let Some(map) = applier.tables.get(&cap.name) else {
            continue;
        };
        if !map.keyed || cap.key.is_empty() || cap.key.len() > capture::TOUCHED_WIDTH {
            continue;
        }
        if let Ok(check) = dbtool_verify::keys::KeyCheck::new(&map.plan, &applier.plan.schema) {
            let everywhere =
                applier.router.is_none() || matches!(map.rule, dbtool_migrate::shard::Rule::Every);
            out.push(Keyed {
                cap,
                check,
                everywhere,
            });
        }
    }
    Ok(out)
}

/// A key as the file holds it, as bytes that identify it (SQLite values are
/// not `Hash`: a REAL key is compared by its bits, as SQLite does).
fn key_id(key: &[SqlValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in key {
        match v {
            SqlValue::Null => out.push(0),
            SqlValue::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            SqlValue::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            SqlValue::Text(s) => {
                out.push(3);
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            SqlValue::Blob(b) => {
                out.push(4);
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// A key as the messages name it: `{"source column": value}`.
fn key_json(plan: &dbtool_migrate::plan::TablePlan, key: &[SqlValue]) -> String {
    let mut m = serde_json::Map::new();
    for (n, &i) in plan.primary_key.iter().enumerate() {
        m.insert(
            plan.columns[i].source_name.clone(),
            key.get(n)
                .map_or(serde_json::Value::Null, |v| json_of(ValueRef::from(v))),
        );
    }
    serde_json::Value::Object(m).to_string()
}

fn verify_err(e: dbtool_verify::Error) -> Error {
    match e {
        dbtool_verify::Error::Target { source, .. } => Error::Postgres(source),
        dbtool_verify::Error::Sqlite { source, .. } => Error::Sqlite(source),
        e => Error::Other(format!("comparing the changed rows: {e}")),
    }
}

/// The rows with a recorded reject, as `(table lowercased, key JSON)`: they
/// are in the reject file, not differences. A record without a key stands
/// for its whole table (checked by count only then).
async fn rejected_keys(sinks: &[Sink], source: &str) -> Result<HashSet<(String, String)>, Error> {
    let mut rejected = HashSet::new();
    for s in sinks {
        for r in s
            .client
            .query(
                "SELECT table_name, pk::text FROM dbtool.sync_rejects WHERE source_path = $1 AND shard = $2 \
                 UNION SELECT table_name, pk::text FROM dbtool.rejects WHERE run_id = (SELECT run_id FROM dbtool.syncs WHERE source_path = $1 AND shard = $2)",
                &[&source, &s.shard],
            )
            .await?
        {
            let t: String = r.get(0);
            let k: Option<String> = r.get(1);
            let k = k
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .map(|v| v.to_string())
                .unwrap_or_default();
            rejected.insert((t.to_lowercase(), k));
        }
    }
    Ok(rejected)
}

/// Keys of `t` as the file holds them, without duplicates: `_dbtool_touched`
/// (all of it) and the log after `after`.
fn read_keys(
    reader: &Connection,
    t: &Keyed,
    after: i64,
    into: &mut Vec<Vec<SqlValue>>,
    seen: &mut HashSet<Vec<u8>>,
) -> Result<(), Error> {
    let width = t.cap.key.len();
    let kcols: Vec<String> = (0..width).map(|i| format!("k{i}")).collect();
    let lcols: Vec<String> = t.cap.key.iter().map(|i| format!("c{i}")).collect();
    let mut stmt = reader.prepare_cached(&format!(
        "SELECT {} FROM _dbtool_touched WHERE tbl = ?1 UNION ALL SELECT {} FROM {LOG} WHERE tbl = ?1 AND seq > ?2",
        kcols.join(", "),
        lcols.join(", ")
    ))?;
    let mut rows = stmt.query(rusqlite::params![t.cap.name, after])?;
    while let Some(r) = rows.next()? {
        let key: Vec<SqlValue> = (0..width)
            .map(|i| r.get::<_, SqlValue>(i))
            .collect::<Result<_, _>>()?;
        if seen.insert(key_id(&key)) {
            into.push(key);
        }
    }
    Ok(())
}

/// The log's highest `seq` (0 when empty).
fn log_head(reader: &Connection) -> Result<i64, Error> {
    Ok(reader.query_row(
        &format!("SELECT coalesce(max(seq), 0) FROM {LOG}"),
        [],
        |r| r.get(0),
    )?)
}

/// Compares `keys` of one table on every target: verify's by-key check
/// (the same casts, canonical encoding and hashing as `dbtool verify`).
/// Returns the keys compared and the differences, as `(key index, kind)`.
async fn compare_keys(
    reader: &Connection,
    sinks: &[Sink],
    t: &Keyed,
    keys: &[Vec<SqlValue>],
) -> Result<(u64, Vec<(usize, dbtool_verify::DiffKind)>), Error> {
    let src = crate::txn::snapshot(reader, Duration::from_secs(60), |tx| {
        t.check.source(tx, keys).map_err(verify_err)
    })?;
    // Routed rows: the shards together hold each row once. Rows on every
    // target: each target holds all of them.
    let mut sides = Vec::new();
    let mut all = dbtool_verify::keys::TargetRows::default();
    for s in sinks {
        let rows = t.check.target(&s.client, &src).await.map_err(verify_err)?;
        if t.everywhere {
            sides.push(rows);
        } else {
            all.merge(rows);
        }
    }
    if !t.everywhere {
        sides.push(all);
    }
    let mut diffs: Vec<(usize, dbtool_verify::DiffKind)> = Vec::new();
    for side in &sides {
        for d in t.check.compare(&src, side) {
            if d.diff.kind != dbtool_verify::DiffKind::Rejected
                && !diffs.iter().any(|(i, _)| *i == d.index)
            {
                diffs.push((d.index, d.diff.kind));
            }
        }
    }
    Ok((src.len() as u64, diffs))
}

/// Keys of `t` with a change in the log after `after`.
fn log_keys(conn: &Connection, t: &Keyed, after: i64) -> Result<HashSet<Vec<u8>>, Error> {
    let lcols: Vec<String> = t.cap.key.iter().map(|i| format!("c{i}")).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM {LOG} WHERE tbl = ?1 AND seq > ?2",
        lcols.join(", ")
    ))?;
    let mut rows = stmt.query(rusqlite::params![t.cap.name, after])?;
    let mut out = HashSet::new();
    while let Some(r) = rows.next()? {
        let key: Vec<SqlValue> = (0..lcols.len())
            .map(|i| r.get::<_, SqlValue>(i))
            .collect::<Result<_, _>>()?;
        out.insert(key_id(&key));
    }
    Ok(out)
}

/// Removes from `_dbtool_touched` the keys of `t` found equal by a
/// comparison that started with the log at `head`, in one write
/// transaction, if that comparison still stands: `false` (nothing removed)
/// when the sync's trim removed log rows after `head` meanwhile. Keys with a
/// change after `head` stay.
fn forget_equal(
    writer: &Connection,
    t: &Keyed,
    head: i64,
    equal: &[&Vec<SqlValue>],
) -> Result<bool, Error> {
    let r = crate::txn::immediate(writer, Duration::from_millis(500), |tx| {
        let min: Option<i64> =
            tx.query_row(&format!("SELECT min(seq) FROM {LOG}"), [], |r| r.get(0))?;
        if min.is_some_and(|m| m > head + 1) {
            return Ok(false);
        }
        let later = log_keys(tx, t, head)?;
        let mut del = tx.prepare_cached(
            "DELETE FROM _dbtool_touched WHERE tbl = ?1 AND k0 IS ?2 AND k1 IS ?3 AND k2 IS ?4 AND k3 IS ?5",
        )?;
        for k in equal {
            if later.contains(&key_id(k)) {
                continue;
            }
            let mut p: Vec<&dyn rusqlite::ToSql> = vec![&t.cap.name];
            for i in 0..capture::TOUCHED_WIDTH {
                p.push(k.get(i).unwrap_or(&SqlValue::Null));
            }
            del.execute(p.as_slice())?;
        }
        Ok(true)
    });
    match r {
        Err(e) if e.is_busy() => Ok(false), // the app kept the lock: the keys stay for the freeze
        r => r,
    }
}

/// What the pre-check leaves to the check in the freeze.
#[derive(Debug, Default)]
pub(crate) struct Prechecked {
    /// The log position of the pre-check's snapshot: the freeze reads the
    /// log only after it (the keys before it are in `_dbtool_touched`, were
    /// found equal, or are in `pending`).
    snapshot: i64,
    /// Keys found different before the freeze (in flight, or really
    /// different), per table: compared again in the freeze.
    pending: HashMap<String, Vec<Vec<SqlValue>>>,
    /// Rows found equal before the freeze.
    checked: u64,
}

/// The pre-check, before the freeze, while the app still writes: compares
/// every key changed since the sync started (`_dbtool_touched` and the log,
/// read in one snapshot) and removes from `_dbtool_touched` each key found
/// equal, so the freeze compares only the keys written after the pre-check
/// (still in the log, or trimmed into `_dbtool_touched` again by the sync)
/// and those found different here.
///
/// A key is removed only while its comparison still stands (see
/// [`forget_equal`]): otherwise a change of it could have been trimmed
/// into `_dbtool_touched` while it was compared, and removing the key would
/// lose that change. A chunk that loses that race to the sync's trim is
/// compared again; after [`PRECHECK_TRIES`] its keys stay for the freeze.
async fn pre_check(
    reader: &Connection,
    writer: &Connection,
    applier: &Applier,
    sinks: &[Sink],
    source: &str,
    obs: &dyn Observer,
) -> Result<Prechecked, Error> {
    let t_start = Instant::now();
    let tables = keyed_tables(reader, applier)?;
    let rejected = rejected_keys(sinks, source).await?;
    let mut pre = Prechecked::default();
    let (snapshot, all) = crate::txn::snapshot(reader, Duration::from_secs(60), |tx| {
        let head = log_head(tx)?;
        let mut keys = Vec::new();
        for t in &tables {
            let mut k = Vec::new();
            read_keys(tx, t, 0, &mut k, &mut HashSet::new())?;
            keys.push(k);
        }
        Ok((head, keys))
    })?;
    pre.snapshot = snapshot;
    let mut left = 0u64;
    for (t, keys) in tables.iter().zip(all) {
        let plan = &applier.tables[&t.cap.name].plan;
        let name = t.cap.name.to_lowercase();
        let keys: Vec<Vec<SqlValue>> = keys
            .into_iter()
            .filter(|k| !rejected.contains(&(name.clone(), key_json(plan, k))))
            .collect();
        for chunk in keys.chunks(CHECK_CHUNK) {
            for attempt in 1..=PRECHECK_TRIES {
                let head = crate::sync::write_polling(reader, Duration::from_secs(60), || {
                    log_head(reader)
                })?;
                let (n, diffs) = compare_keys(reader, sinks, t, chunk).await?;
                let differ: HashSet<usize> = diffs.iter().map(|(i, _)| *i).collect();
                let equal: Vec<&Vec<SqlValue>> = chunk
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !differ.contains(i))
                    .map(|(_, k)| k)
                    .collect();
                let forgotten = forget_equal(writer, t, head, &equal)?;
                if forgotten || attempt == PRECHECK_TRIES {
                    if forgotten {
                        pre.checked += n.saturating_sub(differ.len() as u64);
                    } else {
                        left += equal.len() as u64;
                    }
                    if !differ.is_empty() {
                        let p = pre.pending.entry(t.cap.name.clone()).or_default();
                        p.extend(differ.iter().map(|&i| chunk[i].clone()));
                    }
                    break;
                }
            }
        }
    }
    let pending: usize = pre.pending.values().map(Vec::len).sum();
    obs.message(&format!(
        "pre-check: {} changed rows equal up to log position {} ({} ms, the app writing); {} different or in flight and {} left by the sync's trim are compared again in the freeze",
        pre.checked,
        pre.snapshot,
        t_start.elapsed().as_millis(),
        pending,
        left
    ));
    Ok(pre)
}

/// In the freeze, after the drain: compares by key every row changed since
/// the pre-check (the keys left in `_dbtool_touched`, the log after the
/// pre-check's snapshot and the keys the pre-check found different; without
/// a pre-check, every key changed since the sync started), and each table's
/// row count.
#[allow(clippy::too_many_arguments)]
async fn check(
    reader: &Connection,
    applier: &Applier,
    sinks: &[Sink],
    source: &str,
    report: &mut Report,
    t0: Instant,
    budget: Duration,
    pre: Option<&Prechecked>,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let captured = capture::captured(reader)?;
    // Rows with a rejected value are reported in the reject file, not here.
    let rejected = rejected_keys(sinks, source).await?;
    let mut skip_tables: HashSet<String> = HashSet::new();
    for (t, k) in &rejected {
        if k.is_empty() || k == "null" {
            skip_tables.insert(t.clone());
        }
    }
    for cap in &captured {
        let Some(map) = applier.tables.get(&cap.name) else {
            continue;
        };
        let t = &map.plan;
        let target = ident::qualified(&applier.plan.schema, &t.target_name);
        // Counts.
        let n_src: i64 = reader.query_row(
            &format!("SELECT count(*) FROM {}", capture::quote(&cap.name)),
            [],
            |r| r.get(0),
        )?;
        let mut n_dst = 0i64;
        let mut every = true;
        for s in sinks {
            let n: i64 = s
                .client
                .query_one(&format!("SELECT count(*) FROM {target}"), &[])
                .await?
                .get(0);
            n_dst += n;
            if applier.router.is_some() && !matches!(map.rule, dbtool_migrate::shard::Rule::Every) {
                every = false;
            } else if n != n_src && !skip_tables.contains(&cap.name.to_lowercase()) {
                problems.push(format!(
                    "table {}: {n_src} rows in the file, {n} in {}",
                    cap.name,
                    if s.shard.is_empty() {
                        "the target".to_string()
                    } else {
                        s.shard.clone()
                    }
                ));
            }
        }
        if !every && n_dst != n_src {
            problems.push(format!(
                "table {}: {n_src} rows in the file, {n_dst} over the shards",
                cap.name
            ));
        }
    }
    report.keys_prechecked = pre.map_or(0, |p| p.checked);
    let after = pre.map_or(0, |p| p.snapshot);
    for t in keyed_tables(reader, applier)? {
        let plan = &applier.tables[&t.cap.name].plan;
        let name = t.cap.name.to_lowercase();
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for k in pre
            .and_then(|p| p.pending.get(&t.cap.name))
            .into_iter()
            .flatten()
        {
            if seen.insert(key_id(k)) {
                keys.push(k.clone());
            }
        }
        read_keys(reader, &t, after, &mut keys, &mut seen)?;
        keys.retain(|k| !rejected.contains(&(name.clone(), key_json(plan, k))));
        for chunk in keys.chunks(CHECK_CHUNK) {
            if t0.elapsed() > budget {
                return Err(Error::CutoverAborted(format!(
                    "over the --max-freeze budget of {} ms while checking the changed rows of table {} ({} checked so far)",
                    budget.as_millis(),
                    t.cap.name,
                    report.keys_checked
                )));
            }
            let (n, diffs) = compare_keys(reader, sinks, &t, chunk).await?;
            report.keys_checked += n;
            for (i, kind) in diffs {
                let kjson = key_json(plan, &chunk[i]);
                problems.push(match kind {
                    dbtool_verify::DiffKind::Extra => format!(
                        "table {} key {kjson}: deleted in the file, present in the target",
                        t.cap.name
                    ),
                    dbtool_verify::DiffKind::Missing => format!(
                        "table {} key {kjson}: in the file, missing in the target",
                        t.cap.name
                    ),
                    _ => format!("table {} key {kjson}: values differ", t.cap.name),
                });
            }
        }
    }
    Ok(problems)
}
