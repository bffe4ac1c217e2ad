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
use dbtool_migrate::value::Value;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;
use tokio_postgres::types::ToSql;

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
        &opts, &source, &sync_id, &reader, &writer, &mut sinks, &applier, width, version, t0, obs,
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
    let problems = check(reader, applier, sinks, source, &mut report, t0, budget)
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

fn canon(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    v.canonical(&mut out);
    out
}

/// Compares, by key, every row changed since the sync started (the keys in
/// `_dbtool_touched` and in the log), and each table's row count.
async fn check(
    reader: &Connection,
    applier: &Applier,
    sinks: &[Sink],
    source: &str,
    report: &mut Report,
    t0: Instant,
    budget: Duration,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let captured = capture::captured(reader)?;
    // Rows with a rejected value are reported in the reject file, not here.
    let mut rejected: HashSet<(String, String)> = HashSet::new();
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
        if !map.keyed || cap.key.is_empty() || cap.key.len() > capture::TOUCHED_WIDTH {
            continue;
        }
        // Keys changed since the sync started.
        let kcols: Vec<String> = (0..cap.key.len()).map(|i| format!("k{i}")).collect();
        let lcols: Vec<String> = cap.key.iter().map(|i| format!("c{i}")).collect();
        let mut stmt = reader.prepare(&format!(
            "SELECT {} FROM _dbtool_touched WHERE tbl = ?1 UNION SELECT {} FROM {LOG} WHERE tbl = ?1",
            kcols.join(", "),
            lcols.join(", ")
        ))?;
        let keys: Vec<Vec<SqlValue>> = stmt
            .query_map([&cap.name], |r| {
                (0..cap.key.len())
                    .map(|i| r.get::<_, SqlValue>(i))
                    .collect()
            })?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        // Plan column of each captured key column.
        let pk_plan: Vec<usize> = t.primary_key.clone();
        let cols_sql: Vec<String> = t
            .columns
            .iter()
            .map(|c| capture::quote(&c.source_name))
            .collect();
        let where_sql: Vec<String> = pk_plan
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "{} IS ?{}",
                    capture::quote(&t.columns[i].source_name),
                    n + 1
                )
            })
            .collect();
        let mut src_stmt = reader.prepare(&format!(
            "SELECT {} FROM {} WHERE {}",
            cols_sql.join(", "),
            capture::quote(&cap.name),
            where_sql.join(" AND ")
        ))?;
        for chunk in keys.chunks(500) {
            if t0.elapsed() > budget {
                return Err(Error::CutoverAborted(format!(
                    "over the --max-freeze budget of {} ms while checking the changed rows of table {} ({} checked so far)",
                    budget.as_millis(),
                    cap.name,
                    report.keys_checked
                )));
            }
            // Source rows, cast through the plan.
            let mut want: HashMap<Vec<u8>, (Vec<u8>, String)> = HashMap::new();
            let mut params: Vec<Value> = Vec::new();
            let mut usable = Vec::new();
            for key in chunk {
                let mut kv = Vec::new();
                let mut kc = Vec::new();
                let mut ok = true;
                for (n, &i) in pk_plan.iter().enumerate() {
                    match t.columns[i].cast(ValueRef::from(&key[n])) {
                        Ok(v) => {
                            kc.extend(canon(&v));
                            kv.push(v);
                        }
                        Err(_) => ok = false,
                    }
                }
                let kjson = {
                    let mut m = serde_json::Map::new();
                    for (n, &i) in pk_plan.iter().enumerate() {
                        m.insert(
                            t.columns[i].source_name.clone(),
                            json_of(ValueRef::from(&key[n])),
                        );
                    }
                    serde_json::Value::Object(m).to_string()
                };
                if !ok || rejected.contains(&(cap.name.to_lowercase(), kjson.clone())) {
                    continue;
                }
                let row: Option<Vec<u8>> = {
                    let ps: Vec<&dyn rusqlite::ToSql> =
                        key.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
                    let mut rows = src_stmt.query(ps.as_slice())?;
                    match rows.next()? {
                        Some(r) => {
                            let mut out = Vec::new();
                            for (i, c) in t.columns.iter().enumerate() {
                                match c.cast(r.get_ref(i)?) {
                                    Ok(v) => out.extend(canon(&v)),
                                    Err(_) => out.extend(b"\xffuncastable"),
                                }
                            }
                            Some(out)
                        }
                        None => None,
                    }
                };
                if let Some(r) = row {
                    want.insert(kc.clone(), (r, kjson));
                } else {
                    want.insert(kc.clone(), (Vec::new(), kjson));
                }
                params.extend(kv);
                usable.push(kc);
            }
            if usable.is_empty() {
                continue;
            }
            report.keys_checked += usable.len() as u64;
            // Target rows by key, over every target.
            let w = pk_plan.len();
            let tuples: Vec<String> = (0..usable.len())
                .map(|r| {
                    let ps: Vec<String> = (0..w).map(|c| format!("${}", r * w + c + 1)).collect();
                    format!("({})", ps.join(", "))
                })
                .collect();
            let keys_sql: Vec<String> = pk_plan
                .iter()
                .map(|&i| ident::quote(&t.columns[i].target_name))
                .collect();
            let all_sql: Vec<String> = t
                .columns
                .iter()
                .map(|c| ident::quote(&c.target_name))
                .collect();
            let sql = format!(
                "SELECT {} FROM {target} WHERE ({}) IN ({})",
                all_sql.join(", "),
                keys_sql.join(", "),
                tuples.join(", ")
            );
            let types: Vec<_> = (0..usable.len())
                .flat_map(|_| pk_plan.iter().map(|&i| t.columns[i].pg_type.pg_type()))
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            let mut got: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for s in sinks {
                let stmt = s.client.prepare_typed(&sql, &types).await?;
                for r in s.client.query(&stmt, &refs).await? {
                    let mut row = Vec::new();
                    let mut key = Vec::new();
                    for i in 0..t.columns.len() {
                        let v: Value = r.get(i);
                        row.extend(canon(&v));
                    }
                    for &i in &pk_plan {
                        let v: Value = r.get(i);
                        key.extend(canon(&v));
                    }
                    got.insert(key, row);
                }
            }
            for (k, (row, kjson)) in &want {
                match (row.is_empty(), got.get(k)) {
                    (true, None) => {}
                    (true, Some(_)) => problems.push(format!(
                        "table {} key {kjson}: deleted in the file, present in the target",
                        cap.name
                    )),
                    (false, None) => problems.push(format!(
                        "table {} key {kjson}: in the file, missing in the target",
                        cap.name
                    )),
                    (false, Some(g)) if g != row => {
                        problems.push(format!("table {} key {kjson}: values differ", cap.name))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(problems)
}
