//! `dbtool sync`: install capture, take a consistent copy, load it with the
//! migrator, then follow the change log until stopped or cut over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_migrate::shard::{ShardFilter, Sharding};
use rusqlite::Connection;

use crate::apply::{self, Applier, Sink};
use crate::capture::{self, Captured};
use crate::state::{self, Target};
use crate::{schema, txn, Error};

/// The shard map and rules, with `--shards`.
#[derive(Debug, Clone)]
pub struct Sharded {
    /// The map.
    pub map: dbtool_shard::ShardMap,
    /// `[migrate.sharding]`.
    pub sharding: Sharding,
}

/// What to sync and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub from: PathBuf,
    /// The target databases (one, or one per shard).
    pub targets: Vec<Target>,
    /// Routing with `--shards`.
    pub sharded: Option<Sharded>,
    /// Target schema.
    pub schema: String,
    /// Reject file (default `<file name>.rejects.jsonl` when there are rejects).
    pub rejects: Option<PathBuf>,
    /// Changes per batch.
    pub batch: usize,
    /// Set to stop at the next batch boundary (Ctrl-C, SIGTERM).
    pub cancel: Arc<AtomicBool>,
    /// Stop once the log is drained (benchmarks, tests); normally false.
    pub until_idle: bool,
    /// The migrator's settings for the initial copy.
    pub config: dbtool_migrate::Config,
}

impl Options {
    /// Defaults for one file and its targets.
    pub fn new(from: impl Into<PathBuf>, targets: Vec<Target>) -> Options {
        Options {
            from: from.into(),
            targets,
            sharded: None,
            schema: "public".into(),
            rejects: None,
            batch: 5000,
            cancel: Arc::new(AtomicBool::new(false)),
            until_idle: false,
            config: dbtool_migrate::Config::default(),
        }
    }
}

/// The numbers reported every second.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Changes applied since this process started.
    pub applied: u64,
    /// Changes applied per second over the last interval.
    pub rate: f64,
    /// Apply capacity: changes per second of apply time.
    pub capacity: f64,
    /// Changes in the log not yet applied everywhere.
    pub backlog: i64,
    /// Age of the oldest unapplied change, seconds.
    pub lag: f64,
    /// Predicted time to apply the backlog, seconds.
    pub drain: f64,
    /// Lowest applied position over the targets.
    pub position: i64,
    /// Highest sequence in the log.
    pub head: i64,
    /// Values rejected since this process started.
    pub rejected: u64,
}

/// Receives progress; the library prints nothing itself.
pub trait Observer: Send + Sync {
    /// A line worth showing.
    fn message(&self, _text: &str) {}
    /// The per-second numbers.
    fn tick(&self, _stats: &Stats) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;
impl Observer for Quiet {}

/// How a sync ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request; the same command resumes.
    Stopped,
    /// A cutover completed; the forward stream is done.
    CutOver,
    /// `until_idle`: the log was drained.
    Idle,
}

/// Publishes the per-second numbers as metrics (the `metrics` facade; a
/// no-op unless the binary installs a recorder).
fn publish_metrics(s: &Stats) {
    metrics::gauge!("dbtool_sync_apply_rate").set(s.rate);
    metrics::gauge!("dbtool_sync_apply_capacity").set(s.capacity);
    metrics::gauge!("dbtool_sync_backlog_changes").set(s.backlog as f64);
    metrics::gauge!("dbtool_sync_lag_seconds").set(s.lag);
    metrics::gauge!("dbtool_sync_drain_seconds").set(s.drain);
    metrics::gauge!("dbtool_sync_position").set(s.position as f64);
}

/// The canonical path and its display form.
pub fn canonical(from: &Path) -> Result<String, Error> {
    std::fs::canonicalize(from)
        .map(|p| p.display().to_string())
        .map_err(|e| Error::Source {
            path: from.display().to_string(),
            reason: format!("{e} (check the path)"),
        })
}

/// The captured tables with the route columns of `sharded` set.
fn capture_list(conn: &Connection, sharded: Option<&Sharded>) -> Result<Vec<Captured>, Error> {
    let mut tables = capture::app_tables(conn)?;
    if let Some(s) = sharded {
        let first = s.map.shards().first().cloned().unwrap_or_default();
        let filter = ShardFilter::new(Arc::new(s.map.clone()), s.sharding.clone(), &first, true)?;
        for t in &mut tables {
            let cols: Vec<&str> = t.columns.iter().map(String::as_str).collect();
            if let Ok(dbtool_migrate::shard::Rule::Key(i, _)) = filter.rule(&t.name, &cols) {
                if !t.key.contains(&i) {
                    t.route = vec![i];
                }
            }
        }
    }
    Ok(tables)
}

/// Installs (or refreshes) capture on every application table, holding the
/// write lock for the few statements it takes.
///
/// In rollback-journal mode SQLite answers "busy" without waiting when
/// waiting could deadlock (another connection holds a read lock and wants
/// to write); the attempt is then repeated, for up to 30 s.
pub fn install_capture(conn: &Connection, sharded: Option<&Sharded>) -> Result<(), Error> {
    txn::immediate(conn, Duration::from_secs(30), |tx| {
        capture::install(tx, &capture_list(tx, sharded)?)
    })
}

/// Runs the write transaction `f` on `conn`, polling for the write lock
/// with a 1 ms busy timeout for up to `limit`. SQLite's own busy handler
/// sleeps in growing steps (up to 100 ms) and starves against an app that
/// writes back to back; polling takes the lock right after one of its commits.
pub fn write_polling<T>(
    conn: &Connection,
    limit: Duration,
    mut f: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    conn.busy_timeout(Duration::from_millis(1))?;
    let t0 = Instant::now();
    let r = loop {
        match f() {
            Err(e) if e.is_busy() && t0.elapsed() <= limit => {
                std::thread::sleep(Duration::from_micros(200));
            }
            r => break r,
        }
    };
    conn.busy_timeout(Duration::from_secs(10))?;
    r
}

/// Repeats `f` while SQLite answers "busy", for up to 10 s.
pub fn busy_retry<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let t0 = Instant::now();
    loop {
        match f() {
            Err(e) if e.is_busy() && t0.elapsed() <= Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Takes a consistent copy of the file with SQLite's online backup (which
/// keeps every rowid), returns the seam (highest change in the copy) after
/// removing dbtool's objects from the copy.
pub fn make_copy(src: &Connection, dest: &Path) -> Result<i64, Error> {
    let _ = std::fs::remove_file(dest);
    let mut dst = Connection::open(dest)?;
    {
        let backup = rusqlite::backup::Backup::new(src, &mut dst)?;
        // One step of all pages: the copy is one read transaction on the
        // source, so it is a consistent snapshot (a step that meets the
        // app's lock is retried).
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let seam: i64 = dst.query_row(
        &format!("SELECT coalesce(max(seq), 0) FROM {}", capture::LOG),
        [],
        |r| r.get(0),
    )?;
    capture::remove_all(&dst)?;
    dst.execute_batch("PRAGMA journal_mode = DELETE")?;
    Ok(seam)
}

fn copy_path_for(source: &str) -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    let dir = Path::new(source)
        .parent()
        .map_or_else(std::env::temp_dir, Path::to_path_buf);
    let name = Path::new(source)
        .file_name()
        .map_or_else(|| "source".into(), |n| n.to_string_lossy().into_owned());
    dir.join(format!(".{name}.dbtool-copy-{:08x}.db", h.finish() as u32))
}

/// Runs `dbtool sync` (see the module docs).
pub async fn run(opts: Options, obs: &dyn Observer) -> Result<Outcome, Error> {
    if opts.targets.is_empty() {
        return Err(Error::Usage(
            "no target: give --to URL or --shards FILE".into(),
        ));
    }
    let source = canonical(&opts.from)?;
    let path = PathBuf::from(&source);
    let mut clients = Vec::new();
    for t in &opts.targets {
        let c = state::connect(t).await?;
        state::prepare(t).await?;
        clients.push(c);
    }
    let mut rows = Vec::new();
    for (t, c) in opts.targets.iter().zip(&clients) {
        rows.push(state::load(c, &source, &t.shard).await?);
    }
    if rows.iter().flatten().any(|r| r.phase == "cut_over") {
        // After the switch the same command streams Postgres -> SQLite.
        return crate::reverse::run::from_sync(&opts, obs).await;
    }
    if rows.iter().flatten().any(|r| r.phase == "rolled_back") {
        return Err(Error::Usage(format!(
            "the sync of {source} is marked rolled_back in the target: the target no longer follows the file; start over into a fresh target (drop its tables and its dbtool.syncs rows), or run dbtool rollback to completion"
        )));
    }
    let writer = capture::open_rw(&path)?;
    // A file replaced by another under the same name must not be streamed
    // into a target that holds the old one.
    let file_id = busy_retry(|| capture::get_meta(&writer, "sync_id"))
        .map_err(|e| at("reading the sync id", e))?;
    if let Some(r) = rows.iter().flatten().next() {
        if file_id.as_deref() != Some(r.source_id.as_str()) {
            return Err(Error::Source {
                path: source.clone(),
                reason: format!(
                    "the target holds a sync of this path with id {}, but the file's id is {}: it is another file, or capture was removed with `dbtool sync stop`; drop the target's tables and its row in dbtool.syncs (or use another target) to start over",
                    r.source_id,
                    file_id.as_deref().unwrap_or("none")
                ),
            });
        }
    }
    install_capture(&writer, opts.sharded.as_ref()).map_err(|e| at("installing capture", e))?;
    let sync_id = busy_retry(|| capture::get_meta(&writer, "sync_id"))?.unwrap_or_default();

    let streaming = rows
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.phase == "streaming"));
    if !streaming {
        initial_copy(&opts, &source, &sync_id, &writer, &clients, &rows, obs)
            .await
            .map_err(|e| at("taking the initial copy", e))?;
    }
    if opts.cancel.load(Ordering::SeqCst) {
        return Ok(Outcome::Stopped);
    }
    stream(&opts, &source, &path, writer, clients, obs).await
}

async fn initial_copy(
    opts: &Options,
    source: &str,
    sync_id: &str,
    writer: &Connection,
    clients: &[tokio_postgres::Client],
    rows: &[Option<state::SyncRow>],
    obs: &dyn Observer,
) -> Result<(), Error> {
    let existing = rows
        .iter()
        .flatten()
        .find_map(|r| r.copy_path.clone())
        .filter(|p| Path::new(p).exists());
    let (copy, seam) = match (existing, rows.iter().flatten().next()) {
        (Some(p), Some(r)) => {
            obs.message(&format!("resuming the initial copy of {source} from {p}"));
            (PathBuf::from(p), r.seam)
        }
        _ => {
            let dest = copy_path_for(source);
            let t0 = Instant::now();
            let seam = make_copy(writer, &dest).map_err(|e| at("copying the file", e))?;
            obs.message(&format!(
                "took a consistent copy of {source} in {:.1}s (changes after log position {seam} will be streamed)",
                t0.elapsed().as_secs_f64()
            ));
            for (t, c) in opts.targets.iter().zip(clients) {
                c.execute(
                    "INSERT INTO dbtool.syncs (source_path, shard, source_id, target_schema, phase, copy_path, seam, position) \
                     VALUES ($1, $2, $3, $4, 'copying', $5, $6, $6) \
                     ON CONFLICT (source_path, shard) DO UPDATE SET source_id = $3, target_schema = $4, phase = 'copying', \
                     copy_path = $5, seam = $6, position = $6, updated_at = now()",
                    &[&source, &t.shard, &sync_id, &opts.schema, &dest.display().to_string(), &seam],
                )
                .await?;
            }
            (dest, seam)
        }
    };
    let _ = seam;
    let mut template = dbtool_migrate::run::Options::new(&copy, opts.targets[0].to.clone());
    template.schema = opts.schema.clone();
    template.rejects = opts.rejects.clone();
    template.cancel = opts.cancel.clone();
    let copy_done = match (&opts.sharded, clients.first()) {
        (None, Some(c)) => c
            .query_opt(
                "SELECT id FROM dbtool.runs WHERE source_path = $1 AND status = 'done' ORDER BY id DESC LIMIT 1",
                &[&copy.display().to_string()],
            )
            .await?
            .map(|r| r.get::<_, i64>(0)),
        _ => None,
    };
    let run_ids: Vec<Option<i64>> = match &opts.sharded {
        None if copy_done.is_some() => vec![copy_done],
        None => {
            let report =
                dbtool_migrate::run::migrate(template, &opts.config, &dbtool_migrate::run::Quiet)
                    .await?;
            obs.message(&format!(
                "initial copy loaded: {} rows in {:.1}s{}",
                report.tables.iter().map(|t| t.rows_written).sum::<u64>(),
                report.seconds,
                if report.exit_code == 3 {
                    " (some rows rejected: see the reject file)"
                } else {
                    ""
                }
            ));
            vec![report.run_id]
        }
        Some(s) => {
            let targets: Vec<dbtool_migrate::sharded::Target> = opts
                .targets
                .iter()
                .map(|t| dbtool_migrate::sharded::Target {
                    name: t.shard.clone(),
                    to: t.to.clone(),
                })
                .collect();
            let report = dbtool_migrate::sharded::migrate_sharded(
                template,
                &targets,
                &s.map,
                &s.sharding,
                &opts.config,
                &dbtool_migrate::run::Quiet,
            )
            .await?;
            obs.message(&format!(
                "initial copy loaded into {} shards in {:.1}s",
                report.shards.len(),
                report.seconds
            ));
            opts.targets
                .iter()
                .map(|t| {
                    report
                        .shards
                        .iter()
                        .find(|r| r.shard == t.shard)
                        .and_then(|r| r.run_id)
                })
                .collect()
        }
    };
    let _ = run_ids;
    for (c, t) in clients.iter().zip(&opts.targets) {
        // In one statement: the sync streams from the copy's run, and that
        // run is recorded as the migration of the file itself (what
        // `dbtool verify --from FILE` looks for).
        let done = c
            .query_opt(
                "WITH r AS (SELECT id, plan FROM dbtool.runs WHERE source_path = $3 AND status = 'done' ORDER BY id DESC LIMIT 1), \
                 s AS (UPDATE dbtool.syncs SET phase = 'streaming', plan = (SELECT plan FROM r), run_id = (SELECT id FROM r), \
                       copy_path = NULL, updated_at = now() \
                       WHERE source_path = $1 AND shard = $2 AND phase = 'copying' AND EXISTS (SELECT 1 FROM r) RETURNING 1) \
                 UPDATE dbtool.runs SET source_path = $1 WHERE id = (SELECT id FROM r) AND EXISTS (SELECT 1 FROM s) RETURNING id",
                &[&source, &t.shard, &copy.display().to_string()],
            )
            .await?;
        if done.is_none() {
            return Err(Error::Other(format!(
                "the initial copy of {source} left no finished migration run in {}; run dbtool sync again",
                t.shown()
            )));
        }
    }
    let _ = std::fs::remove_file(&copy);
    Ok(())
}

struct Meter {
    window_start: Instant,
    window_applied: u64,
    busy: Duration,
    busy_applied: u64,
    capacity: f64,
}

async fn stream(
    opts: &Options,
    source: &str,
    path: &Path,
    writer: Connection,
    clients: Vec<tokio_postgres::Client>,
    obs: &dyn Observer,
) -> Result<Outcome, Error> {
    let reader = capture::open_rw(path)?;
    let mut sinks = Vec::new();
    let mut plan: Option<dbtool_migrate::plan::Plan> = None;
    for (t, c) in opts.targets.iter().zip(clients) {
        let row = state::load(&c, source, &t.shard)
            .await?
            .ok_or_else(|| Error::Other(format!("no sync state for {source} in {}", t.shown())))?;
        // The targets store the plan one transaction each when a schema
        // change is followed: after a crash between two of them, the
        // smallest plan is the one every target has, and following the
        // change again brings the others level (see schema::follow).
        if let Some(p) = state::plan(&c, source, &t.shard).await? {
            if plan.as_ref().is_none_or(|q| plan_size(&p) < plan_size(q)) {
                plan = Some(p);
            }
        }
        sinks.push(Sink::new(t.shard.clone(), c, row.position));
    }
    let plan =
        plan.ok_or_else(|| Error::Other(format!("no stored plan for the sync of {source}")))?;
    let mut applier = build_applier(opts, source, plan, &reader)?;
    // -1: compare the schema with the plan before the first batch.
    let mut version: i64 = -1;
    let mut width = busy_retry(|| capture::log_width(&reader))?;
    let mut stats = Stats::default();
    let mut meter = Meter {
        window_start: Instant::now(),
        window_applied: 0,
        busy: Duration::ZERO,
        busy_applied: 0,
        capacity: 0.0,
    };
    let mut last_trim = Instant::now();
    let mut rejected_seen = 0u64;
    let mut sequences_at = 0u64;
    let mut pending: Vec<schema::PendingIndex> = Vec::new();
    loop {
        if opts.cancel.load(Ordering::SeqCst) {
            report(&mut stats, &mut meter, &reader, &sinks, source, obs).await?;
            set_sequences(&sinks, &applier).await?;
            return Ok(Outcome::Stopped);
        }
        if meter.window_start.elapsed() >= Duration::from_secs(1) {
            report(&mut stats, &mut meter, &reader, &sinks, source, obs).await?;
            if stats.applied != sequences_at {
                set_sequences(&sinks, &applier).await?;
                sequences_at = stats.applied;
            }
            if let Some(r) = state::load(&sinks[0].client, source, &sinks[0].shard).await? {
                if r.phase == "cut_over" {
                    obs.message(&format!(
                        "{source} was cut over to the target at log position {}; the forward stream is done (run dbtool sync again to stream Postgres changes back)",
                        r.cutover_position.unwrap_or(r.position)
                    ));
                    return Ok(Outcome::CutOver);
                }
            }
        }
        let from = sinks.iter().map(|s| s.position).min().unwrap_or(0);
        let (snap, batch) = apply::read_snapshot(&reader, width, from, opts.batch)
            .map_err(|e| at("reading the change log", e))?;
        if snap.renumbered {
            renumbered(&writer, &applier, source, obs)
                .map_err(|e| at("re-arming the VACUUM canary", e))?;
            continue;
        }
        let v = snap.schema_version;
        if v != version {
            let captured = busy_retry(|| capture_list(&reader, opts.sharded.as_ref()))
                .map_err(|e| at("reading the schema", e))?;
            let cx = schema::Context {
                source,
                config: &opts.config.plan,
                from,
                obs,
            };
            let changed = schema::follow(
                &reader,
                &writer,
                &mut sinks,
                &mut applier,
                &captured,
                &mut pending,
                &cx,
            )
            .await
            .map_err(|e| at("following a schema change", e))?;
            if changed {
                width = busy_retry(|| capture::log_width(&reader))?;
                let plan = applier.plan.clone();
                applier = build_applier(opts, source, plan, &reader)?;
            }
            version = v;
            continue;
        }
        if !pending.is_empty()
            && schema::create_pending(&mut sinks, &mut applier, &mut pending, source, obs).await?
        {
            let plan = applier.plan.clone();
            applier = build_applier(opts, source, plan, &reader)?;
        }
        if batch.is_empty() {
            if opts.until_idle {
                report(&mut stats, &mut meter, &reader, &sinks, source, obs).await?;
                set_sequences(&sinks, &applier).await?;
                return Ok(Outcome::Idle);
            }
            if last_trim.elapsed() > Duration::from_millis(250) {
                trim(&writer, from).map_err(|e| at("trimming the change log", e))?;
                last_trim = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let t0 = Instant::now();
        let mut n = 0;
        for sink in &mut sinks {
            let a = applier.apply(sink, &batch).await?;
            n = n.max(a.changes);
            stats.rejected += a.rejected;
        }
        let n = batch.len() as u64;
        meter.busy += t0.elapsed();
        meter.busy_applied += n;
        meter.window_applied += n;
        stats.applied += n;
        if stats.rejected > rejected_seen {
            rejected_seen = stats.rejected;
            write_rejects(opts, source, &sinks).await?;
        }
        if last_trim.elapsed() > Duration::from_millis(250) {
            let upto = sinks.iter().map(|s| s.position).min().unwrap_or(0);
            trim(&writer, upto).map_err(|e| at("trimming the change log", e))?;
            last_trim = Instant::now();
        }
    }
}

/// Tables, then columns, then indexes of a plan: how far it was extended.
fn plan_size(p: &dbtool_migrate::plan::Plan) -> (usize, usize, usize) {
    (
        p.tables.len(),
        p.tables.iter().map(|t| t.columns.len()).sum(),
        p.tables.iter().map(|t| t.indexes.len()).sum(),
    )
}

/// A `VACUUM` renumbered the file's rowid-only tables: says so, naming
/// them, and re-arms the canary. Sync goes on: their changes are matched by
/// content, never by rowid (docs/sync.md, "VACUUM and rowid-only tables").
fn renumbered(
    writer: &Connection,
    applier: &Applier,
    source: &str,
    obs: &dyn Observer,
) -> Result<(), Error> {
    let mut tables: Vec<String> = applier
        .tables
        .values()
        .filter(|m| !m.keyed)
        .map(|m| m.plan.source_name.clone())
        .collect();
    tables.sort();
    if !tables.is_empty() {
        let text = capture::renumbered_message(source, &tables);
        tracing::info!("{text}");
        obs.message(&text);
    }
    txn::immediate(writer, Duration::from_secs(30), |tx| capture::rearm(tx))
}

/// Moves the targets' identity sequences past the streamed ids (the app
/// inserts there after the cutover; `dbtool verify` checks them).
async fn set_sequences(sinks: &[Sink], applier: &Applier) -> Result<(), Error> {
    for s in sinks {
        let failed = dbtool_migrate::set_sequences(&s.client, &applier.plan).await?;
        if let Some(f) = failed.first() {
            return Err(Error::Other(format!(
                "cannot set the identity sequence of {}: {}",
                f.table,
                f.error.as_deref().unwrap_or("unknown error")
            )));
        }
    }
    Ok(())
}

/// Adds what sync was doing to a SQLite error.
fn at(step: &str, e: Error) -> Error {
    match e {
        Error::Sqlite(e) => Error::Other(format!("sqlite error while {step}: {e}")),
        e => e,
    }
}

pub(crate) fn build_applier(
    opts: &Options,
    source: &str,
    plan: dbtool_migrate::plan::Plan,
    conn: &Connection,
) -> Result<Applier, Error> {
    let captured = busy_retry(|| capture::captured(conn))?;
    let (router, first) = match &opts.sharded {
        Some(s) => {
            let first = opts.targets[0].shard.clone();
            (
                Some(ShardFilter::new(
                    Arc::new(s.map.clone()),
                    s.sharding.clone(),
                    &first,
                    true,
                )?),
                first,
            )
        }
        None => (None, String::new()),
    };
    Applier::new(source.to_owned(), plan, &captured, router, first)
}

async fn report(
    stats: &mut Stats,
    meter: &mut Meter,
    reader: &Connection,
    sinks: &[Sink],
    source: &str,
    obs: &dyn Observer,
) -> Result<(), Error> {
    let secs = meter.window_start.elapsed().as_secs_f64().max(1e-3);
    stats.rate = meter.window_applied as f64 / secs;
    if meter.busy_applied > 0 {
        let c = meter.busy_applied as f64 / meter.busy.as_secs_f64().max(1e-6);
        meter.capacity = if meter.capacity == 0.0 {
            c
        } else {
            0.7 * meter.capacity + 0.3 * c
        };
    }
    stats.capacity = meter.capacity;
    stats.position = sinks.iter().map(|s| s.position).min().unwrap_or(0);
    let (head, oldest) = busy_retry(|| apply::head(reader, stats.position))
        .map_err(|e| at("reading the log head", e))?;
    stats.head = head;
    stats.backlog = (head - stats.position).max(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    stats.lag = oldest.map_or(0.0, |t| (now - t).max(0.0));
    stats.drain = if stats.backlog == 0 {
        0.0
    } else {
        stats.backlog as f64 / meter.capacity.max(1.0)
    };
    for s in sinks {
        s.client
            .execute(
                "UPDATE dbtool.syncs SET rate = $3, backlog = $4, head = $5, updated_at = now() WHERE source_path = $1 AND shard = $2",
                &[&source, &s.shard, &stats.capacity, &stats.backlog, &stats.head],
            )
            .await
            .ok();
    }
    publish_metrics(stats);
    obs.tick(stats);
    meter.window_start = Instant::now();
    meter.window_applied = 0;
    meter.busy = Duration::ZERO;
    meter.busy_applied = 0;
    Ok(())
}

/// Trims the applied part of the log (keeping the highest row, so `seq`
/// never goes back), first recording the applied keys in `_dbtool_touched`
/// for the cutover's check. One short write transaction; skipped when the
/// app holds the write lock (tried again a moment later).
pub fn trim(writer: &Connection, upto: i64) -> Result<(), Error> {
    let r = txn::immediate(writer, Duration::from_millis(100), |tx| {
        for t in capture::captured(tx)? {
            if t.key.is_empty() || t.key.len() > capture::TOUCHED_WIDTH {
                continue;
            }
            let mut ks: Vec<String> = t.key.iter().map(|i| format!("c{i}")).collect();
            while ks.len() < capture::TOUCHED_WIDTH {
                ks.push("NULL".into());
            }
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO _dbtool_touched(tbl, k0, k1, k2, k3) SELECT tbl, {} FROM {} WHERE seq <= ?1 AND tbl = ?2",
                    ks.join(", "),
                    capture::LOG
                ),
                rusqlite::params![upto, t.name],
            )?;
        }
        tx.execute(
            &format!(
                "DELETE FROM {log} WHERE seq <= ?1 AND seq < (SELECT max(seq) FROM {log})",
                log = capture::LOG
            ),
            [upto],
        )?;
        Ok(())
    });
    match r {
        Err(e) if e.is_busy() => Ok(()),
        r => r,
    }
}

/// Rewrites the reject file from the committed records of the initial copy
/// and of the stream.
async fn write_rejects(opts: &Options, source: &str, sinks: &[Sink]) -> Result<(), Error> {
    use std::io::Write as _;
    let path = opts.rejects.clone().unwrap_or_else(|| {
        let name = opts
            .from
            .file_name()
            .map_or_else(|| "source".into(), |n| n.to_string_lossy().into_owned());
        PathBuf::from(format!("{name}.rejects.jsonl"))
    });
    let mut lines = Vec::new();
    for s in sinks {
        for r in s
            .client
            .query(
                "SELECT json_build_object('table', table_name, 'rowid', NULL, 'pk', pk, 'column', column_name, 'reason', reason, 'value', value, 'action', action) \
                 FROM dbtool.rejects WHERE run_id = (SELECT run_id FROM dbtool.syncs WHERE source_path = $1 AND shard = $2) \
                 ORDER BY table_name, chunk, ordinal",
                &[&source, &s.shard],
            )
            .await?
        {
            lines.push(r.get::<_, serde_json::Value>(0).to_string());
        }
        for r in s
            .client
            .query(
                "SELECT json_build_object('table', table_name, 'seq', seq, 'pk', pk, 'column', column_name, 'reason', reason, 'value', value, 'action', action) \
                 FROM dbtool.sync_rejects WHERE source_path = $1 AND shard = $2 ORDER BY seq, column_name",
                &[&source, &s.shard],
            )
            .await?
        {
            lines.push(r.get::<_, serde_json::Value>(0).to_string());
        }
    }
    let err = |e: std::io::Error| {
        Error::Other(format!(
            "cannot write the reject file {}: {e}",
            path.display()
        ))
    };
    let mut f = std::fs::File::create(&path).map_err(err)?;
    for l in lines {
        writeln!(f, "{l}").map_err(err)?;
    }
    Ok(())
}
