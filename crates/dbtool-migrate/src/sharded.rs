//! Sharded migration: one source, several target databases, each row on the
//! shard its team maps to.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbtool_migrate::Error> {
//! use dbtool_migrate::run::{Options, Quiet};
//! use dbtool_migrate::shard::Sharding;
//! use dbtool_migrate::sharded::{migrate_sharded, Target};
//! use dbtool_shard::{Scheme, ShardMap};
//!
//! let map = ShardMap::even_n(Scheme::Buckets, 2).unwrap();
//! let targets = vec![
//!     Target { name: "shard-0".into(), to: "postgres://app@pg0/forums".parse().unwrap() },
//!     Target { name: "shard-1".into(), to: "postgres://app@pg1/forums".parse().unwrap() },
//! ];
//! let template = Options::new("forums.db", targets[0].to.clone());
//! let report = migrate_sharded(template, &targets, &map, &Sharding::default(), &Default::default(), &Quiet).await?;
//! println!("exit code {}", report.exit_code);
//! # Ok(()) }
//! ```
//!
//! How: each shard gets its own run of the single-target pipeline
//! ([`run::migrate`]) with a [`ShardFilter`] in the
//! loader that keeps the rows of that shard. Every shard's run has its own
//! record and checkpoints in the shard's `dbtool` schema, so a killed sharded
//! migration resumes every shard where it stopped. Reading the source once
//! per shard costs N scans of the file; it keeps each shard's run exactly the
//! single-target run that is already tested for exactly-once resume.
//!
//! Which rows go where is [`crate::shard`]; this module runs the shards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::progress::{Phase, Progress, TableStart};
use crate::report::{self, Report, TableReport};
use crate::run::{self, Options};
use crate::shard::{Rule, ShardFilter, Sharding};
use crate::{Config, Error};
use dbtool_catalog::checkpoints;
use dbtool_catalog::runs::{self, Fingerprint, Status};

/// One shard to migrate into.
#[derive(Debug, Clone)]
pub struct Target {
    /// The shard's name in the map.
    pub name: String,
    /// Its primary.
    pub to: dbtool_pool::Target,
}

/// The numbers of one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardReport {
    /// The shard's name.
    pub shard: String,
    /// Its target, password masked.
    pub target: String,
    /// The run in the shard's `dbtool.runs`.
    pub run_id: Option<i64>,
    /// True when the shard was already migrated (by an earlier, completed run
    /// of this same source) and was left as it was.
    pub already_done: bool,
    /// Rows of this shard read from the source (rows of other shards are not counted).
    pub rows_read: u64,
    /// Rows written to the shard.
    pub rows_written: u64,
    /// Rows rejected (the first shard also holds the rows that cannot be routed).
    pub rows_rejected: u64,
    /// Values nulled by a `null` policy.
    pub values_nulled: u64,
    /// Per-table numbers.
    pub tables: Vec<TableReport>,
    /// The shard's reject file, when it has rejects.
    pub rejects_file: Option<String>,
    /// What the finish phase could not do on this shard (constraints left
    /// NOT VALID, skipped objects): one line each.
    pub finish_problems: Vec<String>,
    /// 0, or 3 with rejects.
    pub exit_code: u8,
}

/// The report of a sharded migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardedReport {
    /// The source file.
    pub source: String,
    /// The map version used.
    pub map_version: u64,
    /// The routing scheme.
    pub scheme: String,
    /// Where each table went: `every`, `home <shard>`, or `key <column>`.
    pub rules: BTreeMap<String, String>,
    /// One entry per shard, in order.
    pub shards: Vec<ShardReport>,
    /// Total seconds.
    pub seconds: f64,
    /// 0 every row migrated, 3 some rejected.
    pub exit_code: u8,
}

impl ShardedReport {
    /// The plain-text summary: one line per shard, then totals per table.
    pub fn render_summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sharded migration of {} (map version {}, scheme {})",
            self.source, self.map_version, self.scheme
        );
        let _ = writeln!(
            s,
            "{:<16}  {:>10}  {:>10}  {:>9}  {:>7}  note",
            "shard", "read", "written", "rejected", "nulled"
        );
        for sh in &self.shards {
            let _ = writeln!(
                s,
                "{:<16}  {:>10}  {:>10}  {:>9}  {:>7}  {}{}",
                sh.shard,
                sh.rows_read,
                sh.rows_written,
                sh.rows_rejected,
                sh.values_nulled,
                if sh.already_done {
                    "already migrated, left as is"
                } else {
                    ""
                },
                sh.rejects_file
                    .as_deref()
                    .map(|f| format!(" rejects: {f}"))
                    .unwrap_or_default()
            );
            for p in &sh.finish_problems {
                let _ = writeln!(s, "  {}: {p}", sh.shard);
            }
        }
        let _ = writeln!(s, "per table (rows written on each shard):");
        let tables: Vec<&str> = self
            .shards
            .first()
            .map(|sh| sh.tables.iter().map(|t| t.source_name.as_str()).collect())
            .unwrap_or_default();
        for t in tables {
            let counts: Vec<String> = self
                .shards
                .iter()
                .map(|sh| {
                    sh.tables
                        .iter()
                        .find(|x| x.source_name == t)
                        .map_or(0, |x| x.rows_written)
                        .to_string()
                })
                .collect();
            let _ = writeln!(
                s,
                "  {t} ({}): {}",
                self.rules.get(t).map_or("", String::as_str),
                counts.join(" / ")
            );
        }
        let _ = writeln!(
            s,
            "{} in {:.1}s",
            if self.exit_code == report::EXIT_OK {
                "done"
            } else {
                "done, with rejected rows"
            },
            self.seconds
        );
        s
    }
}

/// Migrates `template.from` into every target, each row to its shard. The
/// template's `to` and `report` are ignored (each shard is its target; the
/// caller writes the returned report); its `rejects`, when set, is the
/// pattern for each shard's reject file (`rejects.jsonl` ->
/// `rejects.shard-0.jsonl`).
///
/// Run the same call again after a crash or kill: shards with a completed run
/// of this source are left as they are, the others resume.
///
/// # Errors
/// [`Error::Usage`] for a bad `[migrate.sharding]` or shard list; any error of
/// a shard's run, with the shard named.
pub async fn migrate_sharded(
    template: Options,
    targets: &[Target],
    map: &dbtool_shard::ShardMap,
    sharding: &Sharding,
    config: &Config,
    progress: &dyn Progress,
) -> Result<ShardedReport, Error> {
    let started = Instant::now();
    if targets.is_empty() {
        return Err(Error::Usage(
            "no shards to migrate into: list them in [[shard.shards]]".into(),
        ));
    }
    for name in map.shards() {
        if !targets.iter().any(|t| t.name == *name) {
            return Err(Error::Usage(format!(
                "shard map version {} names shard {name:?}, which has no server in [[shard.shards]]",
                map.version()
            )));
        }
    }
    if template.snapshot {
        // One VACUUM INTO per shard would copy the file at N different
        // moments: the shards would not hold one consistent state.
        return Err(Error::Usage(
            "--snapshot is not supported with --shards: copy the file once (sqlite3 forums.db \".backup copy.db\") and migrate the copy".into(),
        ));
    }
    let map = Arc::new(map.clone());
    let source_path = std::fs::canonicalize(&template.from).map_err(|e| Error::Source {
        path: template.from.display().to_string(),
        reason: format!("{e} (check the path)"),
    })?;
    let shown_source = source_path.display().to_string();

    // Check every table's rule before touching any shard.
    let conn = crate::source::open(&source_path)?;
    let source = crate::source::inspect(&conn, &source_path)?;
    drop(conn);
    let probe = ShardFilter::new(map.clone(), sharding.clone(), &targets[0].name, true)?;
    let mut rules = BTreeMap::new();
    for t in &source.tables {
        let cols: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        let r = probe.rule(&t.name, &cols)?;
        rules.insert(
            t.name.clone(),
            match r {
                Rule::Every => "every".to_owned(),
                Rule::Home(h) => format!("home {h}"),
                Rule::Key(_, c) => format!("key {c}"),
            },
        );
    }

    if template.resume && !template.restart {
        // `--resume` means "there is a sharded run to continue": some shard
        // must hold a run of this source. Each shard then resumes, is left
        // as it is, or starts, as without the flag.
        let mut any = false;
        for t in targets {
            any |= has_run(&t.to, &shown_source, &template.schema).await?;
        }
        if !any {
            return Err(Error::Usage(format!(
                "nothing to resume: no shard holds a run of {shown_source} into schema {}; run without --resume to start one",
                template.schema
            )));
        }
    }
    let mut shards = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let shown = target.to.to_string();
        let in_shard = |e: Error| match e {
            Error::Usage(m) => Error::Usage(format!("shard {}: {m}", target.name)),
            Error::Other(m) => Error::Other(format!("shard {} ({shown}): {m}", target.name)),
            Error::Target { target: t, reason } => Error::Target {
                target: format!("{t} (shard {})", target.name),
                reason,
            },
            e => Error::Other(format!("shard {} ({shown}): {e}", target.name)),
        };
        if let Some(done) = completed_run(&target.to, &shown_source, &template.schema)
            .await
            .map_err(in_shard)?
        {
            if done
                .fingerprint
                .differences(&Fingerprint::of(&source_path)?)
                .is_empty()
            {
                progress.message(&format!(
                    "shard {} ({shown}): already migrated by run {}; left as it is",
                    target.name, done.id
                ));
                shards.push(match &done.report {
                    Some(r) => shard_report(&target.name, &shown, r, true),
                    None => {
                        let mut r = ShardReport::from_tables(&target.name, &shown, done.tables);
                        r.run_id = Some(done.id);
                        r
                    }
                });
                continue;
            }
            return Err(Error::Usage(format!(
                "shard {} ({shown}) holds a completed migration (run {}) of an older version of {shown_source}: drop its tables (or use another --schema) to migrate the new one",
                target.name, done.id
            )));
        }
        progress.message(&format!("shard {} ({shown}):", target.name));
        let filter = ShardFilter::new(map.clone(), sharding.clone(), &target.name, i == 0)?;
        let mut opts = template.clone();
        opts.to = target.to.clone();
        opts.report = None;
        opts.resume = false;
        let own_rejects = rejects_path(template.rejects.as_ref(), &template.from, &target.name);
        opts.rejects = Some(own_rejects.clone());
        opts.filter = Some(Arc::new(filter));
        let rep = run::migrate(
            opts,
            config,
            &Named {
                shard: &target.name,
                inner: progress,
            },
        )
        .await
        .map_err(in_shard)?;
        let mut sr = shard_report(&target.name, &shown, &rep, false);
        if sr.rows_rejected == 0 && sr.values_nulled == 0 {
            // Nothing rejected here: no empty reject file left behind.
            let _ = std::fs::remove_file(&own_rejects);
            sr.rejects_file = None;
        }
        shards.push(sr);
    }
    let exit_code = if shards.iter().any(|s| s.exit_code == report::EXIT_REJECTS) {
        report::EXIT_REJECTS
    } else {
        report::EXIT_OK
    };
    Ok(ShardedReport {
        source: shown_source,
        map_version: map.version(),
        scheme: map.scheme().to_string(),
        rules,
        shards,
        seconds: started.elapsed().as_secs_f64(),
        exit_code,
    })
}

impl ShardReport {
    /// The report of an already migrated shard from its per-table counts.
    fn from_tables(shard: &str, target: &str, tables: Vec<TableReport>) -> ShardReport {
        let sum = |f: fn(&TableReport) -> u64| tables.iter().map(f).sum::<u64>();
        let (rows_rejected, values_nulled) = (sum(|t| t.rows_rejected), sum(|t| t.values_nulled));
        ShardReport {
            shard: shard.to_owned(),
            target: target.to_owned(),
            run_id: None,
            already_done: true,
            rows_read: sum(|t| t.rows_read),
            rows_written: sum(|t| t.rows_written),
            rows_rejected,
            values_nulled,
            tables,
            rejects_file: None,
            finish_problems: Vec::new(),
            exit_code: if rows_rejected + values_nulled > 0 {
                report::EXIT_REJECTS
            } else {
                report::EXIT_OK
            },
        }
    }
}

/// A shard's progress: its messages say which shard they are about.
struct Named<'a> {
    shard: &'a str,
    inner: &'a dyn Progress,
}

impl Progress for Named<'_> {
    fn message(&self, text: &str) {
        self.inner.message(&format!("{}: {text}", self.shard));
    }
    fn phase(&self, phase: Phase) {
        self.inner.phase(phase);
    }
    fn load_start(&self, tables: &[TableStart]) {
        self.inner.load_start(tables);
    }
    fn rows(&self, table: &str, rows: u64, rejected: u64) {
        self.inner.rows(table, rows, rejected);
    }
    fn chunk_done(&self, table: &str) {
        self.inner.chunk_done(table);
    }
    fn load_end(&self) {
        self.inner.load_end();
    }
}

fn shard_report(shard: &str, target: &str, rep: &Report, already_done: bool) -> ShardReport {
    let sum = |f: fn(&TableReport) -> u64| rep.tables.iter().map(f).sum::<u64>();
    let finish_problems = rep
        .finish
        .iter()
        .flat_map(|f| f.problems())
        .map(|p| {
            format!(
                "{} {} of {}: {:?} {}",
                p.kind,
                p.name,
                p.table,
                p.outcome,
                p.error.as_deref().unwrap_or("")
            )
            .trim()
            .to_owned()
        })
        .collect();
    ShardReport {
        shard: shard.to_owned(),
        target: target.to_owned(),
        run_id: rep.run_id,
        already_done,
        rows_read: sum(|t| t.rows_read),
        rows_written: sum(|t| t.rows_written),
        rows_rejected: sum(|t| t.rows_rejected),
        values_nulled: sum(|t| t.values_nulled),
        tables: rep.tables.clone(),
        rejects_file: rep.rejects_file.clone(),
        finish_problems,
        exit_code: rep.exit_code,
    }
}

/// `rejects.jsonl` -> `rejects.<shard>.jsonl`; default
/// `<source file name>.<shard>.rejects.jsonl` in the current directory.
fn rejects_path(pattern: Option<&PathBuf>, from: &std::path::Path, shard: &str) -> PathBuf {
    match pattern {
        Some(p) => {
            let stem = p
                .file_stem()
                .map_or_else(|| "rejects".into(), |s| s.to_string_lossy().into_owned());
            let name = match p.extension() {
                Some(ext) => format!("{stem}.{shard}.{}", ext.to_string_lossy()),
                None => format!("{stem}.{shard}"),
            };
            p.with_file_name(name)
        }
        None => {
            let name = from
                .file_name()
                .map_or_else(|| "source".into(), |n| n.to_string_lossy().into_owned());
            PathBuf::from(format!("{name}.{shard}.rejects.jsonl"))
        }
    }
}

/// Connects to a shard's primary for reading its run records.
async fn shard_client(to: &dbtool_pool::Target) -> Result<tokio_postgres::Client, Error> {
    crate::target::connect(to).await.map_err(|e| Error::Target {
        target: to.to_string(),
        reason: format!("{e} (check the shard's primary URL in [[shard.shards]] and that the server is running)"),
    })
}

/// Whether the shard holds any run (unfinished or done) of `source_path` into `schema`.
async fn has_run(to: &dbtool_pool::Target, source_path: &str, schema: &str) -> Result<bool, Error> {
    let client = shard_client(to).await?;
    if !dbtool_catalog::exists(&client).await? {
        return Ok(false);
    }
    Ok(runs::any(&client, source_path, schema).await?)
}

struct Done {
    id: i64,
    fingerprint: Fingerprint,
    /// The run's stored report, when this dbtool version can read it.
    report: Option<Report>,
    /// Else the per-table counts from its checkpoints.
    tables: Vec<TableReport>,
}

/// The completed run of `source_path` into `schema` on a shard, when there is
/// one and no unfinished run after it.
async fn completed_run(
    to: &dbtool_pool::Target,
    source_path: &str,
    schema: &str,
) -> Result<Option<Done>, Error> {
    let client = shard_client(to).await?;
    if !dbtool_catalog::exists(&client).await? {
        return Ok(None);
    }
    let Some((id, status, fingerprint, report)) =
        runs::latest(&client, source_path, schema).await?
    else {
        return Ok(None);
    };
    if status != Status::Done {
        return Ok(None);
    }
    match report.and_then(|r| serde_json::from_value::<Report>(r).ok()) {
        Some(report) => Ok(Some(Done {
            id,
            fingerprint,
            report: Some(report),
            tables: Vec::new(),
        })),
        // A report another dbtool version wrote: the counts are in the checkpoints.
        None => {
            let tables = checkpoints::table_counts(&client, id)
                .await?
                .into_iter()
                .map(|t| TableReport {
                    source_name: t.table.clone(),
                    target_name: t.table,
                    rows_read: t.rows_read,
                    rows_written: t.rows_written,
                    rows_rejected: t.rows_rejected,
                    values_nulled: t.rows_nulled,
                    ..TableReport::default()
                })
                .collect();
            Ok(Some(Done {
                id,
                fingerprint,
                report: None,
                tables,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_files_are_named_per_shard() {
        let from = std::path::Path::new("/data/forums.db");
        assert_eq!(
            rejects_path(None, from, "shard-1"),
            PathBuf::from("forums.db.shard-1.rejects.jsonl")
        );
        assert_eq!(
            rejects_path(Some(&PathBuf::from("out/rej.jsonl")), from, "s2"),
            PathBuf::from("out/rej.s2.jsonl")
        );
    }
}
