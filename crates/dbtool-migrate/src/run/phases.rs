//! The load phase of a run: tables in foreign-key waves for a data-only
//! load, chunks handed to the workers, the finish steps started as tables
//! complete, and the per-table summary of the checkpoints.

use super::*;

/// The tables of `plan` in waves (lowercased source names), each wave's
/// foreign keys pointing only at tables of earlier waves (or at themselves,
/// or outside the plan): the load order `--data-only` needs. Tables on a
/// cycle of foreign keys share the last wave.
pub(super) fn fk_waves(plan: &Plan) -> Vec<Option<std::collections::HashSet<String>>> {
    use std::collections::HashSet;
    let names: HashSet<String> = plan
        .tables
        .iter()
        .map(|t| t.source_name.to_lowercase())
        .collect();
    let mut placed: HashSet<String> = HashSet::new();
    let mut waves = Vec::new();
    while placed.len() < names.len() {
        let wave: HashSet<String> = plan
            .tables
            .iter()
            .map(|t| (t, t.source_name.to_lowercase()))
            .filter(|(_, n)| !placed.contains(n))
            .filter(|(t, n)| {
                t.foreign_keys.iter().all(|fk| {
                    let parent = fk.ref_table.to_lowercase();
                    fk.sql.is_none()
                        || &parent == n
                        || !names.contains(&parent)
                        || placed.contains(&parent)
                })
            })
            .map(|(_, n)| n)
            .collect();
        if wave.is_empty() {
            let rest: HashSet<String> = names.difference(&placed).cloned().collect();
            waves.push(Some(rest));
            break;
        }
        placed.extend(wave.iter().cloned());
        waves.push(Some(wave));
    }
    waves
}

pub(super) struct LoadPhase<'a> {
    pub(super) run_id: i64,
    pub(super) plan: &'a Plan,
    pub(super) chunks: Vec<ChunkState>,
    pub(super) read_path: &'a Path,
    pub(super) fingerprint: &'a Fingerprint,
    pub(super) opts: &'a Options,
    pub(super) jobs: usize,
    pub(super) settings: Settings,
    pub(super) progress: &'a dyn Progress,
    /// See [`load::Job::slots`].
    pub(super) slots: Option<Arc<tokio::sync::Semaphore>>,
    /// See [`load::Job::table_done`].
    pub(super) table_done: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// The load, with the finish phase running alongside it: each table's
/// keys, indexes, CHECKs, foreign keys and ANALYZE start as soon as its data
/// (and, for a foreign key, the referenced table's) is in, while other
/// tables still COPY. Loading readers and finish tasks share `jobs` permits,
/// so the two together never run more than `jobs` things at once. Tables
/// complete from an earlier attempt of the run are finished first. When the
/// load succeeds the run is marked finishing at once, as after a plain load:
/// a kill from then on resumes with the finish phase alone (every step is
/// idempotent); a kill before resumes the load and finishes what is left.
/// Returns the load's and the finish phase's outcomes, and adds the
/// phases' times to `phases` (the finish's: its time after the load).
pub(super) async fn load_and_finish(
    mut p: LoadPhase<'_>,
    client: &tokio_postgres::Client,
    phases: &mut crate::report::Phases,
) -> (
    Result<(), Error>,
    Result<crate::finish::FinishReport, Error>,
) {
    let plan = p.plan;
    let progress = p.progress;
    let jobs = p.jobs.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(jobs));
    let abort = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (name_tx, mut name_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for (i, t) in plan.tables.iter().enumerate() {
        if p.chunks
            .iter()
            .filter(|c| c.spec.table == t.source_name)
            .all(|c| c.done)
        {
            let _ = ready_tx.send(i);
        }
    }
    p.slots = Some(slots.clone());
    p.table_done = Some(name_tx);
    let run_id = p.run_id;
    let target = p.opts.to.clone();
    let source = p.read_path.to_path_buf();
    let t0 = Instant::now();
    let load = {
        let abort = abort.clone();
        async move {
            let r = async {
                load_phase(p).await?;
                checkpoint::set_status(client, run_id, Status::Finishing).await?;
                progress.phase(Phase::Finish);
                Ok(())
            }
            .await;
            if r.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            (r, t0.elapsed())
        }
    };
    let forward = async move {
        while let Some(name) = name_rx.recv().await {
            if let Some(i) = plan.tables.iter().position(|t| t.source_name == name) {
                let _ = ready_tx.send(i);
            }
        }
    };
    let finish_opts = crate::finish::FinishOptions {
        target: Some(target),
        jobs,
        source: Some(source),
    };
    let finish = crate::finish::finish_during_load(
        plan,
        &finish_opts,
        crate::finish::Feed {
            loaded: ready_rx,
            slots,
            abort,
            progress,
        },
    );
    let ((loaded, load_time), (), fin) = tokio::join!(load, forward, finish);
    phases.data += load_time.as_secs_f64();
    phases.finish += (t0.elapsed() - load_time).as_secs_f64();
    (loaded, fin)
}

pub(super) async fn load_phase(p: LoadPhase<'_>) -> Result<(), Error> {
    let left = p.chunks.iter().filter(|c| !c.done).count();
    if left == 0 {
        return Ok(());
    }
    let shown = p.read_path.display().to_string();
    // The watcher connection sees every commit to the file (data_version)
    // from the moment it opens; the readers' snapshots are taken after it,
    // and checked to be the same state below.
    let watcher = crate::source::open(p.read_path)?;
    let dv0: i64 = watcher.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    let changed = |detail: String| Error::SourceChanged {
        path: shown.clone(),
        detail,
    };
    let diff = p.fingerprint.differences(&Fingerprint::of(p.read_path)?);
    if !diff.is_empty() {
        return Err(changed(diff.join(", ")));
    }
    let workers = p.jobs.clamp(1, left);
    let mut readers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let conn = crate::source::open(p.read_path)?;
        // Holding a read transaction pins this connection to one snapshot
        // for the whole load (and, in rollback-journal mode, keeps writers out).
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        readers.push(conn);
    }
    let dv1: i64 = watcher.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    let diff = p.fingerprint.differences(&Fingerprint::of(p.read_path)?);
    if dv1 != dv0 || !diff.is_empty() {
        return Err(changed(if diff.is_empty() {
            "a write was committed while the readers opened".into()
        } else {
            diff.join(", ")
        }));
    }

    let tables: Vec<Arc<TablePlan>> = p.plan.tables.iter().cloned().map(Arc::new).collect();
    let starts: Vec<TableStart> = p
        .plan
        .tables
        .iter()
        .filter_map(|t| {
            let mine: Vec<&ChunkState> = p
                .chunks
                .iter()
                .filter(|c| c.spec.table == t.source_name)
                .collect();
            let left = mine.iter().filter(|c| !c.done).count();
            (left > 0).then(|| TableStart {
                table: t.source_name.clone(),
                rows: t.rows,
                rows_done: mine.iter().map(|c| c.rows_read).sum(),
                chunks_left: left,
            })
        })
        .collect();
    p.progress.phase(Phase::Load);
    p.progress.load_start(&starts);

    let stop = Arc::new(Stop::default());
    // Watch the source and the cancel flag while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        let done = done.clone();
        let cancel = p.opts.cancel.clone();
        let path = p.read_path.to_path_buf();
        let fp = p.fingerprint.clone();
        std::thread::spawn(move || {
            let mut last_file_check = Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if cancel.load(Ordering::SeqCst) {
                    stop.stop();
                }
                if last_file_check.elapsed() < Duration::from_millis(250) {
                    continue;
                }
                last_file_check = Instant::now();
                let dv: Option<i64> = watcher
                    .query_row("PRAGMA data_version", [], |r| r.get(0))
                    .ok();
                if dv != Some(dv0) {
                    stop.source_changed("a write was committed to it".into());
                    continue;
                }
                match Fingerprint::of(&path) {
                    Ok(now) => {
                        let diff = fp.differences(&now);
                        if !diff.is_empty() {
                            stop.source_changed(diff.join(", "));
                        }
                    }
                    Err(e) => stop.source_changed(format!("cannot stat it: {e}")),
                }
            }
        })
    };
    let result = load::load(load::Job {
        run: p.run_id,
        schema: &p.plan.schema,
        tables,
        chunks: p.chunks,
        readers,
        target: &p.opts.to,
        settings: p.settings,
        progress: p.progress,
        stop: stop.clone(),
        slots: p.slots,
        table_done: p.table_done,
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || watch.join()).await;
    p.progress.load_end();
    if let Some(detail) = stop.changed() {
        return Err(changed(detail));
    }
    result?;
    if stop.stopped() {
        return Err(Error::Cancelled { run: p.run_id });
    }
    Ok(())
}

/// Rows per chunk: enough chunks that every worker has several to take
/// (balancing a big table against small ones), never below `min`.
pub(super) fn chunk_rows(plan: &Plan, jobs: usize, min: u64) -> u64 {
    let total: u64 = plan.tables.iter().map(|t| t.rows).sum();
    (total / (jobs as u64 * 4).max(1)).max(min).max(1)
}

/// Per-table totals and watermarks from the checkpoints.
pub(super) fn summarize(
    plan: &Plan,
    chunks: &[ChunkState],
) -> (Vec<TableReport>, Vec<Option<Key>>) {
    let mut tables = Vec::new();
    let mut marks = Vec::new();
    for t in &plan.tables {
        let mut out = TableReport {
            source_name: t.source_name.clone(),
            target_name: t.target_name.clone(),
            ..TableReport::default()
        };
        let mut mark: Option<Key> = None;
        let mut ms = 0;
        for c in chunks.iter().filter(|c| c.spec.table == t.source_name) {
            out.rows_read += c.rows_read;
            out.rows_written += c.rows_written;
            out.rows_rejected += c.rows_rejected;
            out.values_nulled += c.rows_nulled;
            ms += c.elapsed_ms;
            mark = match (mark.take(), &c.last_key) {
                (None, k) => k.clone(),
                (Some(w), None) => Some(w),
                (Some(Key::Rowid(a)), Some(Key::Rowid(b))) => Some(Key::Rowid(a.max(*b))),
                // Key-ordered tables have one chunk: its last key is the highest.
                (Some(_), Some(k)) => Some(k.clone()),
            };
        }
        out.seconds = ms as f64 / 1000.0;
        if load::key_kind(t) == KeyKind::None {
            mark = None;
        }
        tables.push(out);
        marks.push(mark);
    }
    (tables, marks)
}
