//! What a run is asked to do: the options of `dbtool migrate`, the subset a
//! run records so a resume loads the same way, and the checks made on them
//! before the first row is read.

use super::*;

/// What to migrate and how: the command line of `dbtool migrate`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub from: PathBuf,
    /// The target database, with its TLS settings (`sslmode`, `sslrootcert`).
    pub to: dbtool_pool::Target,
    /// Target schema (created when missing).
    pub schema: String,
    /// Reject file (JSON lines). Default: `<FILE>.rejects.jsonl` in the
    /// current directory, written only when there are rejects.
    pub rejects: Option<PathBuf>,
    /// JSON report file.
    pub report: Option<PathBuf>,
    /// Only these source tables (empty: all).
    pub include: Vec<String>,
    /// Not these source tables.
    pub exclude: Vec<String>,
    /// Copy rows into existing tables: no DDL, no finish.
    pub data_only: bool,
    /// Create tables, constraints and indexes; copy no rows.
    pub schema_only: bool,
    /// Require an unfinished run to resume (without it, one is resumed when found).
    pub resume: bool,
    /// Abandon an unfinished run of the same source and schema and start over.
    pub restart: bool,
    /// Workers (overrides the config; 0 or None: the config, then one per core).
    pub jobs: Option<usize>,
    /// Rows per batch (overrides the config).
    pub batch_rows: Option<usize>,
    /// Byte cap per batch (overrides the config).
    pub batch_bytes: Option<usize>,
    /// Any value that cannot be cast stops the run (policy `fail` everywhere).
    pub strict: bool,
    /// Copy the source with `VACUUM INTO` first and read the copy.
    pub snapshot: bool,
    /// Set to true (e.g. on Ctrl-C) to stop at the next batch boundary.
    pub cancel: Arc<AtomicBool>,
    /// Only the rows this filter keeps (one shard's share, see [`crate::shard`]).
    pub filter: Option<Arc<crate::shard::ShardFilter>>,
    /// When another run of the same source into the same schema holds the
    /// run lock: wait for it (true) or fail with [`Error::Locked`] (false).
    pub wait: bool,
    /// Stop the run once more rows than this were rejected
    /// ([`Error::RejectLimit`]); `None`: no limit.
    pub max_rejects: Option<u64>,
    /// What to do with target tables that already exist (never by default).
    pub if_exists: Option<IfExists>,
}

/// `--if-exists`: what a new run does with target tables that already exist.
/// Without it, an existing table stops the run before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// `DROP TABLE ... CASCADE` each existing table of the plan (with the
    /// views and foreign keys that depend on it), in the transaction that
    /// creates the new ones. Not with `data_only`.
    Drop,
    /// `TRUNCATE` the plan's tables before loading into them; only with
    /// `data_only` (the tables and their keys are kept).
    Truncate,
}

impl Options {
    /// Options with defaults: schema `public`, everything else off.
    pub fn new(from: impl Into<PathBuf>, to: dbtool_pool::Target) -> Options {
        Options {
            from: from.into(),
            to,
            schema: "public".into(),
            rejects: None,
            report: None,
            include: Vec::new(),
            exclude: Vec::new(),
            data_only: false,
            schema_only: false,
            resume: false,
            restart: false,
            jobs: None,
            batch_rows: None,
            batch_bytes: None,
            strict: false,
            snapshot: false,
            cancel: Arc::new(AtomicBool::new(false)),
            filter: None,
            wait: false,
            max_rejects: None,
            if_exists: None,
        }
    }
}

/// The options a run keeps in `dbtool.runs.options`, so a resume loads the
/// same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RunOptions {
    pub(super) data_only: bool,
    pub(super) schema_only: bool,
    pub(super) strict: bool,
    /// The snapshot file read instead of the source (`--snapshot`).
    pub(super) snapshot: Option<PathBuf>,
    /// The source's own fingerprint when a snapshot is read.
    pub(super) original: Option<Fingerprint>,
    /// `--include` as given (a resume with other tables is refused).
    pub(super) include: Vec<String>,
    /// `--exclude` as given.
    pub(super) exclude: Vec<String>,
}

impl RunOptions {
    /// The options of `opts` that decide what a run does, named as on the
    /// command line, where they differ from this (the interrupted run's).
    pub(super) fn differences(&self, opts: &Options) -> Vec<String> {
        let list = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_lowercase()).collect();
            v.sort();
            v.dedup();
            v
        };
        let show = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(" ")
            }
        };
        let flag = |b: bool| if b { "on" } else { "off" };
        let mut out = Vec::new();
        for (name, run, now) in [
            ("--include", &self.include, &opts.include),
            ("--exclude", &self.exclude, &opts.exclude),
        ] {
            let (run, now) = (list(run), list(now));
            if run != now {
                out.push(format!("{name} {} (now {})", show(&run), show(&now)));
            }
        }
        for (name, run, now) in [
            ("--strict", self.strict, opts.strict),
            ("--data-only", self.data_only, opts.data_only),
            ("--schema-only", self.schema_only, opts.schema_only),
        ] {
            if run != now {
                out.push(format!("{name} {} (now {})", flag(run), flag(now)));
            }
        }
        out
    }
}

/// Fails before anything is read or written when an output file cannot be
/// written: a report or reject file found unwritable only after the load
/// would be lost with the run already marked done.
pub(super) fn check_writable(path: &Path, what: &str) -> Result<(), Error> {
    let err = |e: std::io::Error| {
        Error::Usage(format!(
            "cannot write the {what} {}: {e} (choose a writable path)",
            path.display()
        ))
    };
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(err)?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A [`Progress`] that counts rejected rows and raises `stop` once there are
/// more than `limit` (`--max-rejects`); everything is passed on to `inner`.
pub(super) struct RejectLimit<'a> {
    pub(super) inner: &'a dyn Progress,
    pub(super) limit: u64,
    pub(super) rejected: std::sync::atomic::AtomicU64,
    pub(super) stop: Arc<AtomicBool>,
}

impl RejectLimit<'_> {
    pub(super) fn exceeded(&self) -> Option<u64> {
        let n = self.rejected.load(Ordering::SeqCst);
        (n > self.limit).then_some(n)
    }
}

impl Progress for RejectLimit<'_> {
    fn message(&self, text: &str) {
        self.inner.message(text);
    }
    fn phase(&self, phase: Phase) {
        self.inner.phase(phase);
    }
    fn load_start(&self, tables: &[TableStart]) {
        self.inner.load_start(tables);
    }
    fn rows(&self, table: &str, rows: u64, rejected: u64) {
        let n = self.rejected.fetch_add(rejected, Ordering::SeqCst) + rejected;
        if n > self.limit {
            self.stop.store(true, Ordering::SeqCst);
        }
        self.inner.rows(table, rows, rejected);
    }
    fn chunk_done(&self, table: &str) {
        self.inner.chunk_done(table);
    }
    fn load_end(&self) {
        self.inner.load_end();
    }
    fn finish_task(&self, kind: &str, table: &str, name: &str) {
        self.inner.finish_task(kind, table, name);
    }
}
