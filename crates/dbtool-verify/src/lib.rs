//! Prove a SQLite source and a PostgreSQL target hold the same rows, and name
//! the rows that do not.
//!
//! Both sides are streamed at once and every row is hashed (xxh3) from one
//! canonical encoding of its target-typed values: SQLite values go through the
//! migrator's own casts first ([`dbtool_migrate::value::Value::canonical`]),
//! Postgres values are read in binary. Checksums per key range (or per key-hash
//! bucket) are compared; differing ranges are split until the exact rows are
//! known, and only those rows are read in full. Structure (tables, columns,
//! keys, indexes, FKs, sequences) is checked from the target's catalog.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbtool_verify::Error> {
//! let opts = dbtool_verify::Options::new("forums.db", "postgres://app@db/forums");
//! let report = dbtool_verify::verify(&opts).await?;
//! report.write_summary(std::io::stdout()).ok();
//! std::process::exit(report.exit_code().into());
//! # }
//! ```

mod canon;
mod compare;
mod error;
pub mod keys;
mod pg;
mod planned;
mod report;
pub mod shard;
mod spec;
mod sqlite;
mod structure;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dbtool_catalog::{checkpoints, rejects, runs};
use dbtool_pool::ConnectError;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

pub use error::{mask_url, Error};
pub use report::{ColumnDiff, DiffKind, Method, Report, RowDiff, StructureIssue, TableReport};

use compare::{Ctx, Job, Sink, Sources};

/// Settings for this crate, the `[verify]` table of `dbtool.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Tables compared at once (each uses one source reader and one target
    /// connection). Default 2: one table's two streams already keep two cores busy.
    pub jobs: usize,
    /// At most this many differing rows listed in the report (detection is not capped).
    pub max_diffs: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            jobs: 2,
            max_diffs: 1000,
        }
    }
}

/// Which migration run's record to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunChoice {
    /// The newest completed run of this source into the schema.
    Auto,
    /// This run id.
    Id(i64),
}

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite source file.
    pub source: PathBuf,
    /// The target URL (a replica is fine: verify only reads). Used for
    /// connecting unless `target_config` is set; printed with the password masked.
    pub target: String,
    /// The target as a parsed config (e.g. resolved from `PG*` variables);
    /// takes precedence over `target` for connecting.
    pub target_config: Option<dbtool_pool::Target>,
    /// The target schema (default: the run's, else `public`).
    pub schema: Option<String>,
    /// Only these source tables (default: every planned table).
    pub tables: Vec<String>,
    /// Compare only up to the watermarks of this run (after cutover).
    pub watermark: Option<RunChoice>,
    /// Check only this percentage of key ranges (a deterministic sample).
    pub sample: Option<f64>,
    /// At most this many differing rows listed.
    pub max_diffs: u64,
    /// A reject file (JSON lines) from the migration, when the run record is not in the target.
    pub rejects: Option<PathBuf>,
    /// Tables compared at once.
    pub jobs: usize,
    /// The migrator's settings, for recomputing the plan when no run recorded one.
    pub plan_config: dbtool_migrate::plan::PlanConfig,
    /// Sharded verify: compare with only the source rows of this shard (see [`shard`]).
    pub shard: Option<Arc<dbtool_migrate::shard::ShardFilter>>,
}

impl Options {
    /// Options with defaults for `source` and `target`.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<String>) -> Options {
        let c = Config::default();
        Options {
            source: source.into(),
            target: target.into(),
            target_config: None,
            schema: None,
            tables: Vec::new(),
            watermark: None,
            sample: None,
            max_diffs: c.max_diffs,
            rejects: None,
            jobs: c.jobs,
            plan_config: dbtool_migrate::plan::PlanConfig::default(),
            shard: None,
        }
    }
}

/// A rejected row as recorded by the migration (run record or reject file).
#[derive(Debug, Clone, Deserialize)]
struct RejectLine {
    table: String,
    #[serde(default)]
    rowid: Option<i64>,
    #[serde(default)]
    column: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// What the run record in the target says.
#[derive(Debug, Default)]
struct RunInfo {
    id: Option<i64>,
    schema: Option<String>,
    plan: Option<serde_json::Value>,
    watermarks: HashMap<String, i64>,
    rejects: Vec<RejectLine>,
}

/// Connects to the target read-only (every transaction of the session is
/// READ ONLY, so verify cannot write even by mistake).
async fn connect(opts: &Options) -> Result<Client, Error> {
    let url = opts.target.as_str();
    let target = match &opts.target_config {
        Some(t) => t.clone(),
        None => url
            .parse()
            .map_err(|e| Error::Usage(format!("target {}: {e}", mask_url(url))))?,
    };
    let client = target.connect().await.map_err(|e| match e {
        ConnectError::Postgres { source, .. } => Error::Connect {
            url: mask_url(url),
            source,
        },
ConnectError::Io { source, .. } => Error::Unreachable {
            url: mask_url(url),
            reason: format!("{source} (is the server up and the URL right?)"),
        },
        ConnectError::Timeout { after, .. } => Error::Unreachable {
            url: mask_url(url),
            reason: format!(
                "no answer within {}s (connect_timeout); is the server up and is this its address and port?",
                after.as_secs()
            ),
        },
        tls => Error::Usage(tls.to_string()),
    })?;
    client
        .batch_execute(
            "SET default_transaction_read_only = on; SET application_name = 'dbtool verify'",
        )
        .await
        .map_err(|source| Error::Connect {
            url: mask_url(url),
            source,
        })?;
    Ok(client)
}

fn watermark_of(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::Object(m) => m.get("rowid").and_then(serde_json::Value::as_i64),
        _ => None,
    }
}

async fn load_run(client: &Client, opts: &Options) -> Result<RunInfo, Error> {
    let has_runs = dbtool_catalog::exists(client)
        .await
        .map_err(Error::catalog("looking for migration runs"))?;
    if !has_runs {
        if let Some(RunChoice::Id(id)) = &opts.watermark {
            return Err(Error::RunNotFound {
                run: id.to_string(),
            });
        }
        if opts.watermark == Some(RunChoice::Auto) {
            return Err(Error::RunNotFound { run: "auto".into() });
        }
        return Ok(RunInfo::default());
    }
    let path = std::fs::canonicalize(&opts.source)
        .unwrap_or_else(|_| opts.source.clone())
        .display()
        .to_string();
    let run = match &opts.watermark {
        Some(RunChoice::Id(id)) => runs::by_id(client, *id)
            .await
            .map_err(Error::catalog("reading the migration run"))?,
        _ => runs::latest_done(client, opts.schema.as_deref(), &path)
            .await
            .map_err(Error::catalog("reading the migration runs"))?,
    };
    let Some(run) = run else {
        return match &opts.watermark {
            Some(RunChoice::Id(id)) => Err(Error::RunNotFound {
                run: id.to_string(),
            }),
            Some(RunChoice::Auto) => Err(Error::RunNotFound { run: "auto".into() }),
            None => Ok(RunInfo::default()),
        };
    };
    let id = run.id;
    let mut info = RunInfo {
        id: Some(id),
        schema: Some(run.schema),
        plan: Some(run.plan),
        ..RunInfo::default()
    };
    if opts.watermark.is_some() {
        for (table, w) in checkpoints::watermarks(client, id)
            .await
            .map_err(Error::catalog("reading the run's watermarks"))?
        {
            if let Some(w) = watermark_of(&w) {
                info.watermarks.insert(table, w);
            }
        }
    }
    for r in rejects::rejects(client, id)
        .await
        .map_err(Error::catalog("reading the run's rejected rows"))?
    {
        info.rejects.push(RejectLine {
            table: r.table,
            rowid: r.rowid,
            column: Some(r.column),
            reason: Some(r.reason),
            action: Some(r.action.as_str().to_owned()),
        });
    }
    Ok(info)
}

fn read_reject_file(path: &Path) -> Result<Vec<RejectLine>, Error> {
    let err = |reason: String| Error::Rejects {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| err(format!("line {}: {e}", i + 1))))
        .collect()
}

/// Runs the verification described by `opts`.
///
/// Differences are in the returned [`Report`]; an [`Error`] means the
/// comparison could not run (exit code 2).
pub async fn verify(opts: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    if let Some(p) = opts.sample {
        if !(p > 0.0 && p <= 100.0) {
            return Err(Error::Usage(format!(
                "--sample must be in (0, 100], got {p}"
            )));
        }
    }
    let sources = Arc::new(Sources::new(opts.source.clone()));
    let src_conn = sources.open()?;
    let source =
        dbtool_migrate::source::inspect(&src_conn, &opts.source).map_err(|e| Error::Source {
            path: opts.source.display().to_string(),
            reason: e.to_string(),
        })?;
    let client = connect(opts).await?;
    let run = load_run(&client, opts).await?;
    let schema = opts
        .schema
        .clone()
        .or_else(|| run.schema.clone())
        .unwrap_or_else(|| "public".to_owned());
    let (specs, plan_source) = match &run.plan {
        Some(plan) => (
            planned::from_json(plan)?,
            format!("recorded by run {}", run.id.unwrap_or_default()),
        ),
        None => (
            planned::recompute(&src_conn, &source, &opts.plan_config, &schema)?,
            "recomputed from the source".to_owned(),
        ),
    };
    let mut specs = specs;
    if let Some(filter) = &opts.shard {
        for s in &mut specs {
            let rule = filter
                .rule_for(&s.plan)
                .map_err(|e| Error::Usage(e.to_string()))?;
            s.route = Some(spec::Route {
                filter: Arc::clone(filter),
                rule,
            });
        }
    }
    let mut specs: Vec<Arc<spec::TableSpec>> = specs.into_iter().map(Arc::new).collect();
    if !opts.tables.is_empty() {
        for t in &opts.tables {
            if !specs
                .iter()
                .any(|s| s.source.eq_ignore_ascii_case(t) || s.target == *t)
            {
                return Err(Error::UnknownTable(t.clone()));
            }
        }
        specs.retain(|s| {
            opts.tables
                .iter()
                .any(|t| s.source.eq_ignore_ascii_case(t) || s.target == *t)
        });
    }

    // Rejected rows: the run record's, else the reject file's.
    let mut rejects = run.rejects;
    if let Some(path) = &opts.rejects {
        rejects.extend(read_reject_file(path)?);
    }
    let mut by_table: HashMap<String, HashMap<i64, String>> = HashMap::new();
    for r in rejects {
        if r.action.as_deref() == Some("nulled") {
            continue; // loaded with a NULL: compared like any row
        }
        if let Some(rowid) = r.rowid {
            by_table
                .entry(r.table.to_ascii_lowercase())
                .or_default()
                .insert(
                    rowid,
                    format!(
                        "{}{}",
                        r.column.map(|c| format!("{c}: ")).unwrap_or_default(),
                        r.reason.unwrap_or_default()
                    ),
                );
        }
    }

    drop(src_conn);

    let ctx = Arc::new(Ctx {
        schema: schema.clone(),
        sources,
        sample: opts.sample,
        sink: Mutex::new(Sink::new(opts.max_diffs)),
    });
    // Biggest tables first, so the last one to finish is a small one.
    let mut jobs: Vec<Job> = specs
        .iter()
        .map(|s| Job {
            spec: Arc::clone(s),
            watermark: run.watermarks.get(&s.source).copied(),
            rejects: by_table
                .remove(&s.source.to_ascii_lowercase())
                .unwrap_or_default(),
        })
        .collect();
    let size = |j: &Job| {
        source
            .table(&j.spec.source)
            .and_then(|t| t.rows)
            .unwrap_or(0)
    };
    jobs.sort_by_key(|j| std::cmp::Reverse(size(j)));
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));

    let structure_task = {
        let specs = specs.clone();
        let schema = schema.clone();
        async move { structure::check(&client, &schema, &specs).await }
    };
    let mut workers = Vec::new();
    for _ in 0..opts.jobs.max(1).min(specs.len().max(1)) {
        let client = connect(opts).await?;
        let queue = Arc::clone(&queue);
        let ctx = Arc::clone(&ctx);
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let job = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(job) = job else { break };
                out.push(compare::table(Arc::clone(&ctx), job, &client).await?);
            }
            Ok::<_, Error>(out)
        }));
    }
    let structure = structure_task.await?;
    let mut tables = Vec::new();
    for w in workers {
        tables.extend(
            w.await
                .map_err(|e| Error::Internal(format!("table worker failed: {e}")))??,
        );
    }
    let order: BTreeMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.source.as_str(), i))
        .collect();
    tables.sort_by_key(|t| order.get(t.table.as_str()).copied().unwrap_or(usize::MAX));
    let sink = std::mem::take(
        &mut *ctx
            .sink
            .lock()
            .map_err(|_| Error::Internal("diff list poisoned".into()))?,
    );
    let mut diffs = sink.diffs;
    diffs.sort_by(|a, b| {
        let ka = order.get(a.table.as_str()).copied().unwrap_or(usize::MAX);
        let kb = order.get(b.table.as_str()).copied().unwrap_or(usize::MAX);
        ka.cmp(&kb)
            .then_with(|| a.rowid.cmp(&b.rowid))
            .then_with(|| a.pk.to_string().cmp(&b.pk.to_string()))
    });
    Ok(Report {
        run: run.id.map(|i| i.to_string()),
        plan_source,
        schema,
        tables,
        structure,
        diffs,
        diffs_not_listed: sink.not_listed,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod send_tests {
    /// Services may `tokio::spawn` a verification.
    #[test]
    fn verify_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let o = super::Options::new("a.db", "postgres://x/y");
        let f = super::verify(&o);
        is_send(&f);
    }
}
