//! One migration, end to end: plan (or the interrupted run's plan), schema,
//! parallel load with exactly-once checkpoints, finish, reject file, report.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbtool_migrate::Error> {
//! use dbtool_migrate::run::{migrate, Options, Quiet};
//! let to = "postgres://app@localhost/forums?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem".parse().unwrap();
//! let report = migrate(Options::new("forums.db", to), &Default::default(), &Quiet).await?;
//! println!("exit code {}", report.exit_code);
//! # Ok(()) }
//! ```
//!
//! A run is recorded in `dbtool.runs` (source path and fingerprint, target
//! schema, plan, status). Running the same command again after a crash, a
//! kill or Ctrl-C finds the unfinished run of the same source into the same
//! schema and resumes it with the plan it started with; a source that
//! changed since is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, ChunkState, Fingerprint, Key, KeyKind, Status};
use crate::load::{self, Settings, Stop};
use crate::plan::{Plan, TablePlan};
use crate::report::{Report, TableReport};
use crate::{Config, Error};

pub use crate::progress::{Phase, Progress, Quiet, TableStart};

mod options;
mod phases;

use options::*;
pub use options::{IfExists, Options};
use phases::*;

/// Runs (or resumes) a migration; see the module docs.
pub async fn migrate(
    opts: Options,
    config: &Config,
    progress: &dyn Progress,
) -> Result<Report, Error> {
    let started = Instant::now();
    if opts.data_only && opts.schema_only {
        return Err(Error::Usage(
            "--data-only and --schema-only exclude each other".into(),
        ));
    }
    if opts.resume && opts.restart {
        return Err(Error::Usage(
            "--resume and --restart exclude each other".into(),
        ));
    }
    match opts.if_exists {
        Some(IfExists::Drop) if opts.data_only => {
            return Err(Error::Usage(
                "--if-exists drop cannot be used with --data-only (it would drop the tables to load into); use --if-exists truncate".into(),
            ))
        }
        Some(IfExists::Truncate) if !opts.data_only => {
            return Err(Error::Usage(
                "--if-exists truncate needs --data-only (it empties existing tables and loads into them); to replace the tables use --if-exists drop".into(),
            ))
        }
        _ => {}
    }
    let source_path = std::fs::canonicalize(&opts.from).map_err(|e| Error::Source {
        path: opts.from.display().to_string(),
        reason: format!("{e} (check the path)"),
    })?;
    let shown_source = source_path.display().to_string();
    let target_shown = dbtool_pool::display_config(&opts.to);
    let target_err = |reason: String| Error::Target {
        target: target_shown.clone(),
        reason,
    };
    // Output paths and the source are checked before the target is touched:
    // an unreadable source creates no `dbtool` schema, and an unwritable
    // report is found before the load, not after it.
    if let Some(p) = &opts.report {
        check_writable(p, "report")?;
    }
    match &opts.rejects {
        Some(p) => check_writable(p, "reject file")?,
        None => check_writable(
            &default_rejects_path(&opts.from),
            "reject file (default name; choose one with --rejects)",
        )?,
    }
    drop(crate::source::open(&source_path)?);

    // One run at a time per source and schema; held until this returns.
    let _lock = crate::lock::acquire(
        &opts.to,
        &shown_source,
        &opts.schema,
        opts.wait,
        &|m: &str| progress.message(m),
    )
    .await?;

    let mut client = crate::target::connect(&opts.to).await.map_err(|e| {
        target_err(format!(
            "{e} (check --to, DATABASE_URL or the PG* variables, and that the server is running)"
        ))
    })?;
    dbtool_catalog::migrate(&opts.to).await.map_err(|e| {
        target_err(format!(
            "cannot create dbtool's bookkeeping tables in schema dbtool: {e}"
        ))
    })?;

    if opts.restart {
        let n = checkpoint::abandon(&client, &shown_source, &opts.schema).await?;
        if n > 0 {
            progress.message(&format!(
                "abandoned {n} unfinished run(s) of {shown_source}; starting over (tables already created are not dropped)"
            ));
        }
    }
    let unfinished = checkpoint::find_unfinished(&client, &shown_source, &opts.schema).await?;
    if opts.resume && unfinished.is_none() {
        return Err(Error::Usage(format!(
            "nothing to resume: no unfinished run of {shown_source} into schema {}; run without --resume to start one",
            opts.schema
        )));
    }

    let settings = Settings {
        batch_rows: opts
            .batch_rows
            .filter(|&n| n > 0)
            .unwrap_or(config.load.batch_rows)
            .max(1),
        batch_bytes: opts
            .batch_bytes
            .filter(|&n| n > 0)
            .unwrap_or(config.load.batch_bytes)
            .max(1024),
        strict: opts.strict,
        filter: opts.filter.clone(),
    };
    let jobs = match opts.jobs.filter(|&n| n > 0) {
        Some(n) => n,
        None => config.load.workers(),
    };

    // Either resume the run we found, or plan and start a new one.
    let mut phases = crate::report::Phases::default();
    let (run_id, plan, run_opts, read_path, fingerprint, mut status, resumed) = match unfinished {
        Some(rec) => {
            let run_opts: RunOptions =
                serde_json::from_value(rec.options.clone()).unwrap_or_default();
            let differ = run_opts.differences(&opts);
            if !differ.is_empty() {
                return Err(Error::Usage(format!(
                    "run {} of {shown_source} into schema {} is unfinished and was started with other options: {}; run the same command as before to resume it, or add --restart to start over with these options",
                    rec.id,
                    rec.schema,
                    differ.join(", ")
                )));
            }
            let plan: Plan = serde_json::from_value(rec.plan.clone()).map_err(|e| {
                Error::Other(format!(
                    "cannot read the plan of unfinished run {} ({e}); it was made by another dbtool version: start over with --restart",
                    rec.id
                ))
            })?;
            let read_path = match &run_opts.snapshot {
                Some(snap) if !snap.exists() => {
                    return Err(Error::Other(format!(
                        "cannot resume run {}: its snapshot {} is gone; start over with --restart",
                        rec.id,
                        snap.display()
                    )))
                }
                Some(snap) => snap.clone(),
                None => source_path.clone(),
            };
            let now = Fingerprint::of(&read_path)?;
            let diff = rec.fingerprint.differences(&now);
            if !diff.is_empty() {
                return Err(Error::SourceChanged {
                    path: read_path.display().to_string(),
                    detail: format!(
                        "since run {} started at {}: {}",
                        rec.id,
                        rec.started_at,
                        diff.join(", ")
                    ),
                });
            }
            checkpoint::note_resume(&client, rec.id).await?;
            let chunks = checkpoint::chunks(&client, rec.id).await?;
            let done_rows: u64 = chunks.iter().map(|c| c.rows_read).sum();
            let tables_done = plan
                .tables
                .iter()
                .filter(|t| {
                    chunks
                        .iter()
                        .filter(|c| c.spec.table == t.source_name)
                        .all(|c| c.done)
                })
                .count();
            progress.message(&format!(
                "resuming run {} of {} into schema {} (started {}): {} of {} tables done, {} rows already copied",
                rec.id,
                shown_source,
                rec.schema,
                rec.started_at,
                tables_done,
                plan.tables.len(),
                done_rows
            ));
            (
                rec.id,
                plan,
                run_opts,
                read_path,
                rec.fingerprint,
                rec.status,
                true,
            )
        }
        None => {
            let original = Fingerprint::of(&source_path)?;
            let (read_path, run_opts) = if opts.snapshot {
                let snap = snapshot(&source_path, &shown_source)?;
                let opts_rec = RunOptions {
                    data_only: opts.data_only,
                    schema_only: opts.schema_only,
                    strict: opts.strict,
                    snapshot: Some(snap.clone()),
                    original: Some(original.clone()),
                    include: opts.include.clone(),
                    exclude: opts.exclude.clone(),
                };
                (snap, opts_rec)
            } else {
                (
                    source_path.clone(),
                    RunOptions {
                        data_only: opts.data_only,
                        schema_only: opts.schema_only,
                        strict: opts.strict,
                        snapshot: None,
                        original: None,
                        include: opts.include.clone(),
                        exclude: opts.exclude.clone(),
                    },
                )
            };
            let fingerprint = Fingerprint::of(&read_path)?;
            progress.phase(Phase::Plan);
            let t0 = Instant::now();
            let conn = crate::source::open(&read_path)?;
            let source = crate::source::inspect(&conn, &read_path)?;
            phases.inspect = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            for name in opts.include.iter().chain(&opts.exclude) {
                if source.table(name).is_none() {
                    return Err(Error::Usage(format!(
                        "no table named {name:?} in {shown_source} (see `dbtool plan --from FILE` for the table names)"
                    )));
                }
            }
            let mut plan_config = config.plan.clone();
            plan_config.include.extend(opts.include.iter().cloned());
            plan_config.exclude.extend(opts.exclude.iter().cloned());
            // The load casts every value, so the plan it follows need not
            // classify every text first (see `Profiling::Load`).
            let (plan, timings) = crate::plan::plan_timed_with(
                &conn,
                &source,
                &plan_config,
                &opts.schema,
                crate::plan::Profiling::Load,
            )?;
            let chunk_rows = chunk_rows(&plan, jobs, config.load.chunk_rows);
            let mut chunk_specs = Vec::new();
            for t in &plan.tables {
                chunk_specs.push(load::plan_chunks(&conn, t, chunk_rows)?);
            }
            drop(conn);
            phases.profile = timings.profile.as_secs_f64();
            phases.plan = t0.elapsed().as_secs_f64() - phases.profile;
            let t0 = Instant::now();
            // `--if-exists`: the statements that clear the way, run in the
            // transaction that records the run.
            let mut clear: Vec<String> = Vec::new();
            if !opts.data_only || opts.if_exists == Some(IfExists::Truncate) {
                let mut existing = Vec::new();
                for t in &plan.tables {
                    let name = format!(
                        "{}.{}",
                        load::quote(&opts.schema),
                        load::quote(&t.target_name)
                    );
                    let exists: bool = client
                        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                        .await?
                        .get(0);
                    if exists {
                        existing.push(name);
                    }
                }
                match (opts.if_exists, existing.first()) {
                    (_, None) => {}
                    (None, Some(name)) => {
                        return Err(target_err(format!(
                            "table {name} already exists; drop it (or the schema), choose another --schema, add --if-exists drop to replace it, or use --data-only to load into existing tables"
                        )));
                    }
                    (Some(IfExists::Drop), Some(_)) => {
                        progress.message(&format!(
                            "--if-exists drop: dropping {} (with what depends on them)",
                            existing.join(", ")
                        ));
                        clear.push(format!("DROP TABLE {} CASCADE", existing.join(", ")));
                    }
                    (Some(IfExists::Truncate), Some(_)) => {
                        progress.message(&format!(
                            "--if-exists truncate: emptying {}",
                            existing.join(", ")
                        ));
                        clear.push(format!("TRUNCATE {}", existing.join(", ")));
                    }
                }
            }
            if !opts.data_only {
                progress.phase(Phase::Schema);
            }
            let plan_json = serde_json::to_value(&plan)
                .map_err(|e| Error::Other(format!("cannot serialize the plan: {e}")))?;
            let opts_json = serde_json::to_value(&run_opts).unwrap_or_default();
            // The run record, the tables and every chunk commit together with
            // the DDL: a kill before the commit leaves nothing behind, and the
            // next attempt simply starts over.
            let tx = client.transaction().await?;
            let id = checkpoint::create_run(
                &tx,
                &shown_source,
                &fingerprint,
                &opts.schema,
                &plan_json,
                &opts_json,
            )
            .await?;
            for stmt in &clear {
                tx.batch_execute(stmt)
                    .await
                    .map_err(|e| target_err(format!("{stmt} failed: {e}")))?;
            }
            if !opts.data_only {
                crate::ddl::ensure_schema(&tx, &opts.schema).await?;
                for stmt in crate::ddl::create_tables(&plan) {
                    tx.batch_execute(&stmt).await.map_err(|e| {
                        Error::Other(format!(
                            "cannot create the target tables: {e}; statement: {stmt}"
                        ))
                    })?;
                }
            }
            for (t, specs) in plan.tables.iter().zip(&chunk_specs) {
                checkpoint::insert_table(
                    &tx,
                    id,
                    &t.source_name,
                    &t.target_name,
                    load::key_kind(t),
                    specs,
                )
                .await?;
            }
            tx.commit().await?;
            phases.data = t0.elapsed().as_secs_f64();
            (
                id,
                plan,
                run_opts,
                read_path,
                fingerprint,
                Status::Loading,
                false,
            )
        }
    };
    if status == Status::Done {
        status = Status::Finishing;
    }
    continue_run(
        Continue {
            client,
            run_id,
            plan,
            run_opts,
            read_path,
            fingerprint,
            status,
            resumed,
            started,
            source_shown: shown_source,
            jobs,
            settings,
            phases,
        },
        &opts,
        progress,
    )
    .await
}

/// The state of a run that has its tables and chunks recorded.
struct Continue {
    client: tokio_postgres::Client,
    run_id: i64,
    plan: Plan,
    run_opts: RunOptions,
    read_path: PathBuf,
    fingerprint: Fingerprint,
    status: Status,
    resumed: bool,
    started: Instant,
    source_shown: String,
    jobs: usize,
    settings: Settings,
    phases: crate::report::Phases,
}

async fn continue_run(
    c: Continue,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Report, Error> {
    let Continue {
        client,
        run_id,
        plan,
        run_opts,
        read_path,
        fingerprint,
        mut status,
        resumed,
        started,
        source_shown,
        jobs,
        mut settings,
        mut phases,
    } = c;
    // A resumed run keeps the strictness it started with: the rows already
    // committed were judged by it.
    settings.strict = run_opts.strict;

    let t0 = Instant::now();
    let mut finish = None;
    if status == Status::Loading {
        if !run_opts.schema_only {
            let chunks = checkpoint::chunks(&client, run_id).await?;
            // `--max-rejects`: counted from the rows every attempt of this
            // run rejected, checked at each batch.
            let limit = opts.max_rejects.map(|limit| RejectLimit {
                inner: progress,
                limit,
                rejected: std::sync::atomic::AtomicU64::new(
                    chunks.iter().map(|c| c.rows_rejected).sum(),
                ),
                stop: opts.cancel.clone(),
            });
            let over = |limit: &Option<RejectLimit<'_>>| {
                limit.as_ref().and_then(|l| {
                    l.exceeded().map(|rejected| Error::RejectLimit {
                        run: run_id,
                        rejected,
                        limit: l.limit,
                    })
                })
            };
            if let Some(e) = over(&limit) {
                return Err(e);
            }
            let load_progress: &dyn Progress = match &limit {
                Some(l) => l,
                None => progress,
            };
            // A full run adds foreign keys after the data, so any order is
            // fine. `--data-only` loads into tables whose foreign keys exist
            // and check every row: parents first, one wave at a time.
            let waves = if run_opts.data_only {
                fk_waves(&plan)
            } else {
                vec![None]
            };
            // A full run finishes each table while the others still load
            // (see `load_and_finish`).
            let overlap = !run_opts.data_only && crate::finish::can_overlap(&plan);
            if overlap {
                let (loaded, fin) = load_and_finish(
                    LoadPhase {
                        run_id,
                        plan: &plan,
                        chunks: chunks.clone(),
                        read_path: &read_path,
                        fingerprint: &fingerprint,
                        opts,
                        jobs,
                        settings: settings.clone(),
                        progress: load_progress,
                        slots: None,
                        table_done: None,
                    },
                    &client,
                    &mut phases,
                )
                .await;
                if let Some(e) = over(&limit) {
                    return Err(e);
                }
                loaded?;
                finish = Some(fin.map_err(|e| Error::Other(format!("{e}; the rows are loaded: run the same command again to retry the finish phase")))?);
            }
            for wave in waves.into_iter().filter(|_| !overlap) {
                let chunks = match &wave {
                    Some(w) => chunks
                        .iter()
                        .filter(|c| w.contains(&c.spec.table.to_lowercase()))
                        .cloned()
                        .collect(),
                    None => chunks.clone(),
                };
                let loaded = load_phase(LoadPhase {
                    run_id,
                    plan: &plan,
                    chunks,
                    read_path: &read_path,
                    fingerprint: &fingerprint,
                    opts,
                    jobs,
                    settings: settings.clone(),
                    progress: load_progress,
                    slots: None,
                    table_done: None,
                })
                .await;
                if let Some(e) = over(&limit) {
                    return Err(e);
                }
                loaded?;
            }
        }
        checkpoint::set_status(&client, run_id, Status::Finishing).await?;
        status = Status::Finishing;
    }
    if finish.is_none() {
        phases.data += t0.elapsed().as_secs_f64();
    }
    let t0 = Instant::now();
    let chunks = checkpoint::chunks(&client, run_id).await?;
    let (tables, watermarks) = summarize(&plan, &chunks);
    for (t, w) in tables.iter().zip(&watermarks) {
        checkpoint::set_watermark(&client, run_id, &t.source_name, w.as_ref()).await?;
    }
    if finish.is_none() && status == Status::Finishing && !run_opts.data_only {
        progress.phase(Phase::Finish);
        let finish_opts = crate::finish::FinishOptions {
            target: Some(opts.to.clone()),
            jobs,
            source: Some(read_path.clone()),
        };
        finish = Some(
            crate::finish::finish_with(&client, &plan, &finish_opts, progress)
                .await
                .map_err(|e| Error::Other(format!("{e}; the rows are loaded: run the same command again to retry the finish phase")))?,
        );
    }
    if status == Status::Finishing && run_opts.data_only {
        // Rows were added to existing tables: their identity sequences must
        // move past them, or the app's next insert collides.
        let failed = crate::finish::set_sequences(&client, &plan).await?;
        if let Some(s) = failed.first() {
            return Err(Error::Other(format!(
                "the rows are loaded, but the identity sequence of {} could not be set: {}; run the same command again to retry",
                s.table,
                s.error.as_deref().unwrap_or("unknown error")
            )));
        }
    }
    phases.finish += t0.elapsed().as_secs_f64();

    // The reject file comes from the committed records, so a run resumed any
    // number of times lists each rejected row exactly once.
    let rejects = checkpoint::rejects(&client, run_id).await?;
    let rejects_file = match (&opts.rejects, rejects.is_empty()) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(default_rejects_path(&opts.from)),
        (None, true) => None,
    };
    if let Some(path) = &rejects_file {
        write_rejects(path, &rejects)?;
    }
    let mut plan = plan;
    if let Some(f) = finish.as_ref().filter(|f| f.has_orphans()) {
        // Into the stored plan too: verify compares the target's NOT VALID
        // keys with the orphans the plan says the source has.
        f.record_orphans(&mut plan);
        let json = serde_json::to_value(&plan)
            .map_err(|e| Error::Other(format!("cannot serialize the plan: {e}")))?;
        checkpoint::store_plan(&client, run_id, &json).await?;
    }
    let mut report = Report::new(plan, &dbtool_pool::display_config(&opts.to));
    report.source = source_shown;
    report.run_id = Some(run_id);
    report.tables = tables;
    report.finish = finish;
    report.rejects_file = rejects_file.map(|p| p.display().to_string());
    report.seconds = started.elapsed().as_secs_f64();
    if resumed {
        // A resumed run's tables count the time of every attempt, so its
        // total is the time since the run began (pauses included), not
        // this attempt's alone, which could be less than one table's.
        let since: f64 = client
            .query_one(
                "SELECT extract(epoch FROM clock_timestamp() - started_at)::float8 FROM dbtool.runs WHERE id = $1",
                &[&run_id],
            )
            .await?
            .get(0);
        report.seconds = report.seconds.max(since);
    }
    report.phases = phases;
    report.compute_exit_code();
    // The report file is written before the run is marked done: a run
    // whose report could not be written stays unfinished, and the same
    // command run again finishes it and writes the report.
    if let Some(path) = &opts.report {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Other(format!("cannot serialize the report: {e}")))?;
        std::fs::write(path, json).map_err(|e| {
            Error::Other(format!(
                "cannot write the report {}: {e}; the rows are loaded and the run is not marked done: run the same command again (with a writable --report) to finish it",
                path.display()
            ))
        })?;
    }
    checkpoint::set_status(&client, run_id, Status::Done).await?;
    if let Some(snap) = &run_opts.snapshot {
        let _ = std::fs::remove_file(snap);
    }
    if resumed {
        progress.message(&format!("run {run_id} resumed and completed"));
    }
    if let Ok(json) = serde_json::to_value(&report) {
        checkpoint::store_report(&client, run_id, &json).await?;
    }
    Ok(report)
}

/// `<file name>.rejects.jsonl` in the current directory.
fn default_rejects_path(from: &Path) -> PathBuf {
    let name = from
        .file_name()
        .map_or_else(|| "source".into(), |n| n.to_string_lossy().into_owned());
    PathBuf::from(format!("{name}.rejects.jsonl"))
}

/// Writes the reject file: one JSON object per line.
fn write_rejects(path: &Path, rejects: &[checkpoint::Reject]) -> Result<(), Error> {
    use std::io::Write as _;
    let err = |e: std::io::Error| {
        Error::Other(format!(
            "cannot write the reject file {}: {e}",
            path.display()
        ))
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    for r in rejects {
        let line = serde_json::json!({
            "table": r.table,
            "rowid": r.rowid,
            "pk": r.pk,
            "column": r.column,
            "reason": r.reason,
            "value": r.value,
            "action": r.action,
        });
        writeln!(f, "{line}").map_err(err)?;
    }
    f.flush().map_err(err)
}

/// Copies `source` with `VACUUM INTO` to a file in the temp directory and
/// returns its path. The copy is one transaction on the source, so it is a
/// consistent snapshot even while an application writes; it is kept until
/// the run is done so a resume reads the same snapshot.
fn snapshot(source: &Path, shown: &str) -> Result<PathBuf, Error> {
    let name = format!(
        "dbtool-snapshot-{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let dest = std::env::temp_dir().join(name);
    let conn = crate::source::open(source)?;
    conn.execute("VACUUM INTO ?1", [dest.to_string_lossy().as_ref()])
        .map_err(|e| Error::Source {
            path: shown.to_owned(),
            reason: format!("cannot snapshot it into {} with VACUUM INTO: {e} (is there enough space in the temp directory? set TMPDIR)", dest.display()),
        })?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_reject_file_is_named_after_the_source() {
        assert_eq!(
            default_rejects_path(Path::new("/data/forums.db")),
            PathBuf::from("forums.db.rejects.jsonl")
        );
    }
}
