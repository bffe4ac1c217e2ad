//! `dbtool sync` (with `status` and `stop`) and `dbtool cutover`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dbtool_sync::state::Target;
use dbtool_sync::sync::{Observer, Outcome, Stats};

use super::Context;

const AFTER_HELP: &str = "\
Examples:
  dbtool sync --from forums.db --to postgres://app@db/forums      # copy, then follow the file
  dbtool sync --from forums.db --shards dbtool.toml               # each change to its team's shard
  dbtool sync status --from forums.db --to postgres://app@db/forums [--json]
  dbtool cutover --from forums.db --to postgres://app@db/forums --max-freeze 2s
  dbtool sync stop --from forums.db                               # remove capture from the file

The app keeps writing to the file. sync adds triggers and tables named _dbtool*
to it that log every change in the writer's own transaction; it copies the file
consistently, loads the copy like dbtool migrate, then applies the logged
changes in commit order. Ctrl-C, SIGTERM or kill -9: run the same command to
resume. See docs/sync.md and docs/cutover-runbook.md.

Exit codes: 0 stopped or cut over, 1 failed (the message says what to do), 2 usage.";

/// Arguments of `dbtool sync`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// `status` or `stop`; without one, sync runs.
    #[command(subcommand)]
    pub command: Option<SyncCommand>,
    #[command(flatten)]
    pub common: Common,
    /// Reject file, JSON lines [default: <FILE name>.rejects.jsonl, only written when there are rejects].
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Target schema.
    #[arg(long, default_value = "public", value_name = "NAME")]
    pub schema: String,
    /// Changes per applied batch.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub batch: usize,
    /// Stop once every logged change is applied (for scripts and tests).
    #[arg(long, hide = true)]
    pub until_idle: bool,
}

/// Source and target options shared by the sync commands.
#[derive(Debug, clap::Args, Clone)]
pub struct Common {
    /// The SQLite file the app writes.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Target PostgreSQL URL or libpq string [default: DATABASE_URL, then PG* variables].
    #[arg(long, value_name = "URL", conflicts_with = "shards")]
    pub to: Option<String>,
    /// Sync into the shards of this dbtool.toml, each change to its team's shard.
    #[arg(long, value_name = "FILE")]
    pub shards: Option<PathBuf>,
}

/// `dbtool sync` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SyncCommand {
    /// Show position, backlog, lag and apply rate (from the target's dbtool schema and the file's log).
    Status {
        #[command(flatten)]
        common: Common,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove every _dbtool trigger and table from the file (its schema is as before the sync).
    Stop {
        /// The SQLite file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Also drop dbtool's replication slots and publications in this target.
        #[arg(long, value_name = "URL", conflicts_with = "shards")]
        to: Option<String>,
        /// Also drop dbtool's replication slots and publications in these shards.
        #[arg(long, value_name = "FILE")]
        shards: Option<PathBuf>,
    },
}

/// Arguments of `dbtool cutover`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Waits until the predicted drain fits half the budget, takes the file's write lock
(app writers with a busy timeout wait), drains the log, compares the rows changed
since the sync started and every table's row count, marks the file moved (a later
write there fails naming the target), starts the reverse stream and releases.
Over budget at any step: it rolls back, the app keeps writing to SQLite, exit 1.
Prints `freeze: N ms`.")]
pub struct CutoverArgs {
    #[command(flatten)]
    pub common: Common,
    /// Longest freeze of the app's writes (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub max_freeze: String,
    /// How long to wait for the backlog to fit the budget before giving up.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub wait: String,
}

pub(crate) fn duration(s: &str, what: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        super::usage(anyhow::anyhow!(
            "invalid {what} {s:?}: use a duration like 2s or 500ms"
        ))
    })?;
    if !(v.is_finite() && v > 0.0) {
        return Err(super::usage(anyhow::anyhow!(
            "invalid {what} {s:?}: must be positive"
        )));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

pub(crate) async fn targets(
    c: &Common,
) -> anyhow::Result<(Vec<Target>, Option<dbtool_sync::sync::Sharded>)> {
    match &c.shards {
        Some(f) => {
            let s = super::sharded::load(f).await?;
            let targets = s
                .targets
                .iter()
                .map(|(name, to)| Target {
                    shard: name.clone(),
                    to: to.clone(),
                })
                .collect();
            Ok((
                targets,
                Some(dbtool_sync::sync::Sharded {
                    map: s.map,
                    sharding: s.sharding,
                }),
            ))
        }
        None => Ok((
            vec![Target {
                shard: String::new(),
                to: super::pg_config(c.to.as_deref())?,
            }],
            None,
        )),
    }
}

pub(crate) fn from(c: &Common) -> anyhow::Result<PathBuf> {
    c.from
        .clone()
        .ok_or_else(|| super::usage(anyhow::anyhow!("--from FILE is required")))
}

pub(crate) fn map_err(e: dbtool_sync::Error) -> anyhow::Error {
    match e {
        dbtool_sync::Error::Usage(_) => super::usage(e.into()),
        e => e.into(),
    }
}

struct Lines {
    quiet: bool,
}

impl Observer for Lines {
    fn message(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
    fn tick(&self, s: &Stats) {
        if !self.quiet {
            eprintln!(
                "applied {:.0}/s (capacity {:.0}/s), backlog {} changes ({:.1} s behind), drain ~{:.1} s, position {}",
                s.rate, s.capacity, s.backlog, s.lag, s.drain, s.position
            );
        }
    }
}

/// Runs `dbtool sync`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(SyncCommand::Status { common, json }) => return status(&common, json).await,
        Some(SyncCommand::Stop { from, to, shards }) => {
            if to.is_some() || shards.is_some() {
                drop_slots(&Common {
                    from: None,
                    to,
                    shards,
                })
                .await?;
            }
            return stop(&from);
        }
        None => {}
    }
    let file = from(&args.common)?;
    let (targets, sharded) = targets(&args.common).await?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            cancel.store(true, Ordering::SeqCst);
        });
    }
    let mut opts = dbtool_sync::sync::Options::new(&file, targets);
    opts.sharded = sharded;
    opts.schema = args.schema;
    opts.rejects = args.rejects;
    opts.batch = args.batch.max(1);
    opts.cancel = cancel;
    opts.until_idle = args.until_idle;
    opts.config = ctx.config.migrate.clone();
    let obs = Lines { quiet: ctx.quiet };
    let outcome = dbtool_sync::sync::run(opts, &obs)
        .await
        .map_err(map_err)
        .with_context(|| format!("dbtool sync of {}", file.display()))?;
    if !ctx.quiet {
        match outcome {
            Outcome::Stopped => eprintln!(
                "sync stopped; run the same command to resume (capture stays in the file; dbtool sync stop removes it)"
            ),
            Outcome::CutOver => eprintln!("sync done: the file was cut over"),
            Outcome::Idle => eprintln!("sync idle: every logged change is applied"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(c: &Common, json: bool) -> anyhow::Result<ExitCode> {
    let (targets, _) = targets(c).await?;
    let source = match &c.from {
        Some(f) => Some(dbtool_sync::sync::canonical(f).map_err(map_err)?),
        None => None,
    };
    let mut out = Vec::new();
    for t in &targets {
        let client = dbtool_sync::state::connect(t).await.map_err(map_err)?;
        let first = out.len();
        for r in dbtool_sync::state::all(&client).await.map_err(map_err)? {
            if source.as_ref().is_some_and(|s| *s != r.source_path) || r.shard != t.shard {
                continue;
            }
            // The file's own log head, when it can be read.
            let head = rusqlite::Connection::open_with_flags(
                &r.source_path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()
            .and_then(|conn| {
                conn.query_row(
                    "SELECT coalesce(max(seq), 0) FROM _dbtool_changes",
                    [],
                    |x| x.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(r.head);
            let backlog = (head - r.position).max(0);
            let drain = if backlog == 0 {
                0.0
            } else {
                backlog as f64 / r.rate.max(1.0)
            };
            out.push(serde_json::json!({
                "source": r.source_path,
                "shard": r.shard,
                "target": dbtool_pool::display_config(&t.to),
                "phase": r.phase,
                "position": r.position,
                "head": head,
                "backlog": backlog,
                "rate": r.rate,
                "drain_seconds": drain,
                "applied": r.applied,
                "rejected": r.rejected,
                "seam": r.seam,
                "updated_seconds_ago": r.updated_ago,
                "cutover_position": r.cutover_position,
                "cutover_lsn": r.cutover_lsn,
                "reverse_slot": r.reverse_slot,
            }));
        }
        // Replication slots dbtool left in this database, with the WAL each
        // keeps on the primary (a forgotten slot fills its disk).
        let slots = dbtool_sync::reverse::slots(&client)
            .await
            .map_err(map_err)?;
        if !slots.is_empty() {
            let slots = serde_json::to_value(&slots)?;
            if out.len() == first {
                out.push(serde_json::json!({
                    "target": dbtool_pool::display_config(&t.to),
                    "shard": t.shard,
                    "reverse_slots": slots,
                }));
            } else {
                for o in &mut out[first..] {
                    o["reverse_slots"] = slots.clone();
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if out.is_empty() {
        println!("no sync recorded in the target");
    } else {
        for s in &out {
            for slot in s["reverse_slots"].as_array().into_iter().flatten() {
                println!(
                    "replication slot {} in {}: retains {:.1} MB of WAL on the primary ({}; dbtool rollback or dbtool sync stop --to removes it)",
                    slot["name"].as_str().unwrap_or(""),
                    s["target"].as_str().unwrap_or(""),
                    slot["retained_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                    if slot["active"].as_bool() == Some(true) { "being read" } else { "not being read" },
                );
            }
            if s.get("phase").is_none() {
                continue;
            }
            println!(
                "{}{} -> {}: {}, position {} of {}, backlog {} changes, apply rate {:.0}/s, drain ~{:.1} s, {} applied, {} rejected, updated {:.0} s ago",
                s["source"].as_str().unwrap_or(""),
                s["shard"].as_str().filter(|x| !x.is_empty()).map(|x| format!(" [{x}]")).unwrap_or_default(),
                s["target"].as_str().unwrap_or(""),
                s["phase"].as_str().unwrap_or(""),
                s["position"],
                s["head"],
                s["backlog"],
                s["rate"].as_f64().unwrap_or(0.0),
                s["drain_seconds"].as_f64().unwrap_or(0.0),
                s["applied"],
                s["rejected"],
                s["updated_seconds_ago"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dbtool sync stop --to/--shards`: drops dbtool's replication slots and
/// publications in the targets.
async fn drop_slots(c: &Common) -> anyhow::Result<()> {
    let (targets, _) = targets(c).await?;
    for t in &targets {
        let client = dbtool_sync::state::connect(t).await.map_err(map_err)?;
        let dropped = dbtool_sync::reverse::drop_all(&client)
            .await
            .map_err(map_err)?;
        println!(
            "dropped {} replication slot(s) in {}{}",
            dropped.len(),
            dbtool_pool::display_config(&t.to),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(": {}", dropped.join(", "))
            }
        );
    }
    Ok(())
}

fn stop(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let conn = dbtool_sync::capture::open_rw(file).map_err(map_err)?;
    let n = dbtool_sync::capture::remove_all(&conn).map_err(map_err)?;
    println!(
        "removed {n} dbtool object(s) from {} (its schema is as before the sync); the target keeps what was applied",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `dbtool cutover`.
pub async fn cutover(args: CutoverArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let file = from(&args.common)?;
    let (targets, sharded) = targets(&args.common).await?;
    let opts = dbtool_sync::cutover::Options {
        from: file.clone(),
        targets,
        sharded,
        max_freeze: duration(&args.max_freeze, "--max-freeze")?,
        wait: duration(&args.wait, "--wait")?,
        batch: 5000,
    };
    let obs = Lines { quiet: ctx.quiet };
    let report = dbtool_sync::cutover::cutover(opts, &obs)
        .await
        .map_err(map_err)
        .with_context(|| format!("dbtool cutover of {}", file.display()))?;
    println!(
        "cut over {} at log position {}: drained {} changes, checked {} changed rows and every table's count",
        file.display(),
        report.position,
        report.drained,
        report.keys_checked
    );
    println!("freeze: {} ms", report.freeze_ms);
    Ok(ExitCode::SUCCESS)
}
