//! `dbtool migrate`.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dbtool_migrate::run::{self, Options, Phase, Progress, TableStart};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Context;

const AFTER_HELP: &str = "\
Examples:
  dbtool migrate --from forums.db --to postgres://app@localhost/forums
  DATABASE_URL=postgres://app@db/forums dbtool migrate --from forums.db --rejects rejects.jsonl --report report.json
  dbtool migrate --from forums.db --to $URL --schema staging --jobs 4 --include users posts
  dbtool migrate --from live.db --to $URL --snapshot     # copy a live file with VACUUM INTO first
  dbtool migrate --from forums.db --to $URL --resume     # continue an interrupted run
  dbtool migrate --from forums.db --to $URL --if-exists drop      # replace tables left by an earlier attempt
  dbtool migrate --from forums.db --to $URL --max-rejects 100     # stop early when many rows do not fit
  dbtool migrate --from forums.db --shards dbtool.toml   # each team's rows to its shard
  dbtool migrate --from forums.db \\
    --to 'postgres://app@db/forums?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem&password_file=/run/secrets/db'

Target: --to, else DATABASE_URL, else [pool] primary in dbtool.toml, else libpq's
PGHOST, PGPORT, PGUSER, PGDATABASE (with PGPASSWORD, PGSSLMODE, PGSSLROOTCERT).
With none of them migrate refuses (exit 2): it never guesses a database. The
target is printed (password masked) before anything is written. TLS as libpq:
sslmode (default prefer; use verify-full in production) and sslrootcert; the
password may come from password_file=FILE instead of the URL. It is never printed.
connect_timeout (default 10 s) bounds the whole connection attempt.

Resume: every batch of rows commits together with its checkpoint in the dbtool
schema of the target, so after a crash, kill -9, Ctrl-C or SIGTERM the same
command continues where the run stopped (it says it is resuming), with no
duplicates and no gaps. A resume with other --include, --exclude, --strict,
--data-only or --schema-only is refused, naming them. --restart abandons an
unfinished run and starts over. `dbtool runs` lists the runs of a target.

One run at a time: a run holds a Postgres advisory lock for its source file and
target schema while it runs. A second run of the same file into the same schema
exits 5 naming the running one (host, pid, start time), or waits with --wait. A
run that crashed or was killed releases the lock when its connection closes.

Shards: --shards FILE reads [[shard.shards]], the map ([shard.map] or the
[shard] catalog) and [migrate.sharding] from FILE, and migrates each shard in
turn with its own run (and resume); rows that cannot be routed are rejected
on the first shard. See docs/sharding.md.

Output: the summary goes to stdout; progress, messages and errors to stderr.

Exit codes:
  0  every row migrated, every key built
  3  completed, but some rows were rejected or values nulled (see the reject file)
  4  rows loaded, but a primary key, unique constraint or foreign key failed to
     build (named in the summary): the target is not a complete copy
  1  failed (the message says what to do next; committed rows are kept for a resume)
  2  usage or configuration error (bad option, no target given, unknown override,
     missing source file, resume with other options)
  5  another dbtool migrate of the same file into the same schema is running";

/// `--if-exists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IfExists {
    /// Drop the existing tables of the plan (CASCADE: with their dependent
    /// views and foreign keys) and create them anew.
    Drop,
    /// Empty the existing tables and load into them (with --data-only).
    Truncate,
}

/// Arguments of `dbtool migrate`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub endpoints: super::args::Endpoints,
    #[command(flatten)]
    pub tables: super::args::TableFilter,
    /// Reject file, JSON lines [default: <FILE name>.rejects.jsonl, only written when there are rejects].
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Write a JSON report (per table counts and times, the cast plan) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Copy rows into tables that already exist; create nothing.
    #[arg(long, conflicts_with = "schema_only")]
    pub data_only: bool,
    /// Create tables, constraints and indexes; copy no rows.
    #[arg(long)]
    pub schema_only: bool,
    /// What to do with target tables that already exist [default: refuse].
    #[arg(long, value_enum, value_name = "WHAT")]
    pub if_exists: Option<IfExists>,
    /// Resume the unfinished run of this file (fails when there is none).
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Abandon an unfinished run of this file into this schema and start over.
    #[arg(long)]
    pub restart: bool,
    /// When another run of this file into this schema is running, wait for it
    /// instead of exiting 5.
    #[arg(long)]
    pub wait: bool,
    /// Stop the run (exit 1) once more than N rows were rejected.
    #[arg(long, value_name = "N")]
    pub max_rejects: Option<u64>,
    /// Parallel workers [default: one per CPU core].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<NonZeroU32>,
    /// Rows per batch (one transaction with its checkpoint) [default: 5000].
    #[arg(long, value_name = "N")]
    pub batch_rows: Option<NonZeroU32>,
    /// Byte cap per batch [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    pub batch_bytes: Option<NonZeroU32>,
    /// Stop at the first value that cannot be cast (policy `fail` for every column).
    #[arg(long)]
    pub strict: bool,
    /// Copy the source with VACUUM INTO to a temporary file first and read that
    /// (for a file an application is still writing).
    #[arg(long)]
    pub snapshot: bool,
}

/// Runs `dbtool migrate`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let from = args.endpoints.from.clone();
    super::check_source(&from)?;
    super::overrides::check_file(&ctx.config.migrate.plan, &from).await?;
    let shards = match &args.endpoints.shards {
        Some(path) => Some(super::sharded::load(path).await?),
        None => None,
    };
    let (to, to_from) = match &shards {
        Some(s) => (s.targets[0].1.clone(), format!("--shards {}", s.file)),
        None => {
            let (t, f) = super::target(args.endpoints.to.as_deref(), &ctx.config)?;
            (t, f.to_string())
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    // The target as `postgres://user@host:port/db`, never with the password.
    let to_shown = to.to_string();
    let schema = args.endpoints.schema_or_public();
    if !ctx.quiet {
        match &shards {
            Some(s) => eprintln!(
                "migrating {} into the {} shards of {}, schema {schema}",
                from.display(),
                s.targets.len(),
                s.file
            ),
            None => eprintln!(
                "migrating {} into {to_shown} (from {to_from}), schema {schema}",
                from.display()
            ),
        }
    }
    let mut opts = Options::new(&from, to);
    opts.schema = schema;
    opts.rejects = args.rejects;
    opts.report = args.report;
    opts.include = args.tables.include;
    opts.exclude = args.tables.exclude;
    opts.data_only = args.data_only;
    opts.schema_only = args.schema_only;
    opts.resume = args.resume;
    opts.restart = args.restart;
    opts.wait = args.wait;
    opts.max_rejects = args.max_rejects;
    opts.if_exists = args.if_exists.map(|w| match w {
        IfExists::Drop => run::IfExists::Drop,
        IfExists::Truncate => run::IfExists::Truncate,
    });
    opts.jobs = args.jobs.map(|n| n.get() as usize);
    opts.batch_rows = args.batch_rows.map(|n| n.get() as usize);
    opts.batch_bytes = args.batch_bytes.map(|n| n.get() as usize);
    opts.strict = args.strict;
    opts.snapshot = args.snapshot;
    opts.cancel = cancel.clone();
    let from_shown = from.display().to_string();

    // Ctrl-C or SIGTERM: stop at the next batch boundary; a second signal
    // exits at once (still safe: uncommitted batches roll back and the run
    // resumes).
    super::on_interrupt(cancel.clone(), ctx.quiet);

    let progress: Box<dyn Progress> = if ctx.quiet {
        Box::new(run::Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines::new())
    };
    if let Some(shards) = shards {
        let report = opts.report.clone();
        let result = dbtool_migrate::sharded::migrate_sharded(
            opts,
            &shards.migrate_targets(),
            &shards.map,
            &shards.sharding,
            &ctx.config.migrate,
            progress.as_ref(),
        )
        .await;
        drop(progress);
        let report_data = match result {
            Ok(r) => r,
            Err(dbtool_migrate::Error::Usage(msg)) => {
                return Err(super::usage(anyhow::anyhow!(
                    "--shards {}: {msg}",
                    shards.file
                )))
            }
            Err(e) => {
                return Err(migrate_error(
                    e,
                    &from_shown,
                    &format!("the shards of {}", shards.file),
                ))
            }
        };
        if let Some(path) = report {
            let json = serde_json::to_string_pretty(&report_data)?;
            std::fs::write(&path, json)
                .with_context(|| format!("cannot write the report {}", path.display()))?;
        }
        if !ctx.quiet {
            print!("{}", report_data.render_summary());
        }
        return Ok(ExitCode::from(report_data.exit_code));
    }
    let result = run::migrate(opts, &ctx.config.migrate, progress.as_ref()).await;
    drop(progress);
    let report = match result {
        Ok(o) => o,
        Err(e) => return Err(migrate_error(e, &from_shown, &to_shown)),
    };
    tracing::info!("{}", report.render_summary());
    if !ctx.quiet {
        print!("{}", report.render_summary());
    } else if report.exit_code == dbtool_migrate::report::EXIT_KEYS {
        // -q keeps errors, and a target without its keys is one.
        for line in report
            .render_summary()
            .lines()
            .filter(|l| l.starts_with("FAILED"))
        {
            eprintln!("{line}");
        }
    }
    Ok(ExitCode::from(report.exit_code))
}

/// The migrator's error with its exit code, naming the source and the
/// target once.
fn migrate_error(e: dbtool_migrate::Error, from: &str, to: &str) -> anyhow::Error {
    use dbtool_migrate::Error as E;
    match e {
        E::Usage(msg) => super::usage(anyhow::anyhow!(msg)),
        e @ E::Locked { .. } => anyhow::Error::new(super::Exit {
            code: super::EXIT_LOCKED,
            error: anyhow::Error::new(e),
        }),
        e @ (E::Cancelled { .. } | E::RejectLimit { .. }) => {
            anyhow::Error::new(e).context(format!("migration of {from} stopped"))
        }
        e => {
            let text = e.to_string();
            let hint = super::sqlite_lock_hint(&text, from);
            // Errors that already name the target (connection, target
            // errors) are not told it again.
            let context = if text.contains(to) {
                format!("cannot migrate {from}")
            } else {
                format!("cannot migrate {from} into {to}")
            };
            match hint {
                Some(h) => anyhow::anyhow!("{context}: {text}; {h}"),
                None => anyhow::Error::new(e).context(context),
            }
        }
    }
}

fn phase_line(phase: Phase) -> &'static str {
    match phase {
        Phase::Plan => "planning: reading the schema and profiling values",
        Phase::Schema => "creating the target tables",
        Phase::Load => "loading rows",
        Phase::Finish => "finishing: constraints, indexes, foreign keys, sequences, ANALYZE",
    }
}

/// Progress bars on a terminal: one overall, one per table being loaded.
struct Bars {
    multi: MultiProgress,
    state: Mutex<BarState>,
}

#[derive(Default)]
struct BarState {
    overall: Option<ProgressBar>,
    tables: HashMap<String, (ProgressBar, usize)>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            state: Mutex::new(BarState::default()),
        }
    }
}

/// A bar style with `{rate}` (whole rows per second) and `{left}` (the
/// time left), both `-` until the bar has moved: indicatif's own
/// `{per_sec}` prints four decimals and `{eta}` says 0s for a table not
/// started.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = match st.per_sec() {
                    r if st.pos() > 0 && r.is_finite() && r >= 1.0 => {
                        write!(w, "{} rows/s", indicatif::HumanCount(r as u64))
                    }
                    _ => write!(w, "- rows/s"),
                };
            },
        )
        .with_key(
            "left",
            |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = if st.pos() > 0 && st.per_sec() >= 1.0 {
                    write!(w, "{:#}", indicatif::HumanDuration(st.eta()))
                } else {
                    write!(w, "-")
                };
            },
        )
        .progress_chars("=> ")
}

impl Progress for Bars {
    fn message(&self, text: &str) {
        tracing::info!("{text}");
        let _ = self.multi.println(text);
    }
    fn phase(&self, phase: Phase) {
        tracing::info!("{}", phase_line(phase));
        let _ = self.multi.println(phase_line(phase));
    }
    fn load_start(&self, tables: &[TableStart]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let total: u64 = tables.iter().map(|t| t.rows.max(t.rows_done)).sum();
        let done: u64 = tables.iter().map(|t| t.rows_done).sum();
        let overall = self.multi.add(ProgressBar::new(total));
        overall.set_style(style(
            "{prefix:>24.bold} [{bar:30}] {human_pos}/{human_len} rows  {rate}  ETA {left}",
        ));
        overall.set_prefix("all tables");
        overall.set_position(done);
        overall.reset_eta();
        st.overall = Some(overall);
        for t in tables {
            let bar = self.multi.add(ProgressBar::new(t.rows.max(t.rows_done)));
            bar.set_style(style(
                "{prefix:>24} [{bar:30}] {human_pos}/{human_len}  {rate}  ETA {left}",
            ));
            let mut name = t.table.clone();
            if name.chars().count() > 24 {
                name = name.chars().take(23).collect::<String>() + "~";
            }
            bar.set_prefix(name);
            bar.set_position(t.rows_done);
            bar.reset_eta();
            st.tables.insert(t.table.clone(), (bar, t.chunks_left));
        }
    }
    fn rows(&self, table: &str, rows: u64, _rejected: u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = &st.overall {
            o.inc(rows);
        }
        if let Some((b, _)) = st.tables.get(table) {
            b.inc(rows);
        }
    }
    fn chunk_done(&self, table: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let finished = match st.tables.get_mut(table) {
            Some((_, left)) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
            None => false,
        };
        if finished {
            if let Some((b, _)) = st.tables.remove(table) {
                b.finish_and_clear();
                self.multi.remove(&b);
                let _ = self
                    .multi
                    .println(format!("  {table}: {} rows", b.position()));
            }
        }
    }
    fn load_end(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (b, _)) in st.tables.drain() {
            b.abandon();
        }
        if let Some(o) = st.overall.take() {
            o.finish_and_clear();
        }
    }
}

/// Plain progress lines when stderr is not a terminal: phases, each table as
/// it completes, and an overall line every few seconds.
struct Lines {
    state: Mutex<LineState>,
}

struct LineState {
    total: u64,
    done: u64,
    start_done: u64,
    started: Instant,
    last: Instant,
    left: HashMap<String, (usize, u64)>,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            state: Mutex::new(LineState {
                total: 0,
                done: 0,
                start_done: 0,
                started: Instant::now(),
                last: Instant::now(),
                left: HashMap::new(),
            }),
        }
    }
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress for Lines {
    fn message(&self, text: &str) {
        tracing::info!("{text}");
        eprintln!("{text}");
    }
    fn phase(&self, phase: Phase) {
        tracing::info!("{}", phase_line(phase));
        eprintln!("{}", phase_line(phase));
    }
    fn load_start(&self, tables: &[TableStart]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.total = tables.iter().map(|t| t.rows.max(t.rows_done)).sum();
        st.done = tables.iter().map(|t| t.rows_done).sum();
        st.start_done = st.done;
        st.started = Instant::now();
        st.last = Instant::now();
        st.left = tables
            .iter()
            .map(|t| (t.table.clone(), (t.chunks_left, t.rows_done)))
            .collect();
        eprintln!(
            "{} tables, {} rows to load",
            tables.len(),
            st.total - st.done
        );
    }
    fn rows(&self, table: &str, rows: u64, _rejected: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.done += rows;
        if let Some((_, n)) = st.left.get_mut(table) {
            *n += rows;
        }
        if st.last.elapsed() >= LINE_EVERY {
            st.last = Instant::now();
            let secs = st.started.elapsed().as_secs_f64().max(0.001);
            let rate = (st.done - st.start_done) as f64 / secs;
            let pct = (st.done * 100).checked_div(st.total).unwrap_or(100);
            let eta = if rate > 0.0 {
                format!("{:.0}s", st.total.saturating_sub(st.done) as f64 / rate)
            } else {
                "?".into()
            };
            eprintln!(
                "loaded {}/{} rows ({pct}%), {:.0} rows/s, ETA {eta}",
                st.done, st.total, rate
            );
        }
    }
    fn chunk_done(&self, table: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let finished = match st.left.get_mut(table) {
            Some((left, rows)) => {
                *left = left.saturating_sub(1);
                (*left == 0).then_some(*rows)
            }
            None => None,
        };
        if let Some(rows) = finished {
            st.left.remove(table);
            eprintln!("  {table}: {rows} rows");
        }
    }
}
