//! `dbtool verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::Context;

/// Arguments of `dbtool verify`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes:
  0  source and target are equal (rejected rows and rows written after the watermark do not count)
  1  differences found: rows missing, extra or changed, or structure problems
     (with --shards also rows on the wrong shard: kind `misplaced`)
  2  could not run: source missing or unreadable, no target given, target
     unreachable, bad options, a schema mismatch that prevents comparison, or
     the target's migration run is of another source file or unfinished

Before comparing, verify reads the migration runs recorded in the target: when
they are all of another file, or this file's latest run is unfinished, it says
so and exits 2 instead of reporting every row as a difference.

Output: the summary goes to stdout; errors to stderr. With -q only a
DIFFERENT verdict (and errors) is printed, on stderr.

Examples:
  # Right after `dbtool migrate`: plan, rejects from the run recorded in the target
  dbtool verify --from forums.db --to postgres://app@db/forums

  # Over TLS with the server's certificate checked, as a read-only role
  dbtool verify --from forums.db \\
      --to 'postgres://verifier@db/forums?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem'

  # After cutover, from a replica: rows beyond the run's watermark are new writes
  dbtool verify --from forums.db --to postgres://app@replica1/forums --watermark auto

  # A quick check of 5% of the key ranges of two tables, full JSON report
  dbtool verify --from forums.db --to $DATABASE_URL --tables posts users \\
      --sample 5 --report verify.json

  # The run record is gone: name the reject file of the migration
  dbtool verify --from forums.db --to $DATABASE_URL --rejects rejects.jsonl

  # Shards: each shard against the source rows routed to it; a row on the
  # wrong shard is a difference of kind `misplaced` (exit 1)
  dbtool verify --from forums.db --shards dbtool.toml")]
pub struct Args {
    #[command(flatten)]
    pub endpoints: super::args::Endpoints,
    #[command(flatten)]
    pub tables: super::args::TableFilter,
    /// Write the full JSON report (every differing row, up to --max-diffs) here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Compare up to the watermarks of a migration run (a run id, or `auto` for the latest).
    #[arg(long, value_name = "RUN|auto")]
    pub watermark: Option<String>,
    /// Checksum only this percentage of key ranges (a deterministic sample).
    #[arg(long, value_name = "PCT")]
    pub sample: Option<f64>,
    /// List at most N differing rows (detection is never capped). Default from [verify] max_diffs.
    #[arg(long, value_name = "N")]
    pub max_diffs: Option<u64>,
    /// The migration's reject file (JSON lines), when the run record is not in the target.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Tables compared at once. Default from [verify] jobs.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// Runs `dbtool verify`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let cfg = &ctx.config.verify;
    super::check_source(&args.endpoints.from)?;
    let shards = match &args.endpoints.shards {
        Some(path) => Some(super::sharded::load(path).await?),
        None => None,
    };
    let target = match &shards {
        Some(s) => s.targets[0].1.clone(),
        None => super::target(args.endpoints.to.as_deref(), &ctx.config)?.0,
    };
    let tables = tables(&args.endpoints.from, &args.tables).await?;
    let mut opts = dbtool_verify::Options::new(
        args.endpoints.from.clone(),
        dbtool_pool::display_config(&target),
    );
    opts.target_config = Some(target);
    opts.schema = args.endpoints.schema.clone();
    opts.tables = tables;
    opts.sample = args.sample;
    opts.max_diffs = args.max_diffs.unwrap_or(cfg.max_diffs);
    opts.jobs = args.jobs.unwrap_or(cfg.jobs);
    opts.rejects = args.rejects;
    opts.plan_config = ctx.config.migrate.plan.clone();
    opts.watermark = match args.watermark.as_deref() {
        None => None,
        Some("auto") => Some(dbtool_verify::RunChoice::Auto),
        Some(s) => Some(dbtool_verify::RunChoice::Id(s.parse().map_err(|_| {
            super::usage(anyhow::anyhow!(
                "--watermark takes a run id or `auto`, got {s:?}"
            ))
        })?)),
    };
    if let Some(shards) = shards {
        let report = dbtool_verify::shard::verify_sharded(
            &opts,
            &shards.verify_targets(),
            &shards.map,
            &shards.sharding,
        )
        .await
        .map_err(|e| {
            super::usage(anyhow::Error::new(e).context(format!(
                "verify of the shards of {} could not run",
                shards.file
            )))
        })?;
        if let Some(path) = &args.report {
            let json = serde_json::to_vec_pretty(&report)?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write report {}", path.display()))
                .map_err(super::usage)?;
        }
        if !ctx.quiet {
            report.write_summary(std::io::stdout().lock())?;
        }
        return Ok(ExitCode::from(report.exit_code()));
    }
    if !matches!(opts.watermark, Some(dbtool_verify::RunChoice::Id(_))) {
        check_run(&opts).await?;
    }
    let report = match dbtool_verify::verify(&opts).await {
        Ok(r) => r,
        // Every error means "could not compare": exit 2, as documented.
        Err(e) => {
            return Err(super::usage(
                anyhow::Error::new(e).context("verify could not run"),
            ))
        }
    };
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write report {}", path.display()))
            .map_err(super::usage)?;
    }
    if !ctx.quiet {
        report.write_summary(std::io::stdout().lock())?;
    } else if !report.is_equal() {
        quiet_verdict(&report);
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// `-q` keeps errors, and a difference is one: one line on stderr.
fn quiet_verdict(report: &dbtool_verify::Report) {
    let differ: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| t.differs())
        .map(|t| t.table.as_str())
        .collect();
    let structure = report.structure.iter().filter(|s| !s.warning).count();
    eprintln!(
        "DIFFERENT: {} of {} tables differ{}{}; run without -q (or with --report FILE) for the rows",
        differ.len(),
        report.tables.len(),
        if differ.is_empty() {
            String::new()
        } else {
            format!(" ({})", differ.join(", "))
        },
        if structure > 0 {
            format!(", {structure} structure problems")
        } else {
            String::new()
        }
    );
}

/// Refuses (exit 2) to compare against a migration run that cannot be the
/// right one: every run recorded in the target is of another source file,
/// or this file's latest run is unfinished. Without this, verify would
/// compare against the wrong plan or half-loaded tables and report
/// thousands of differences that are not.
///
/// A run is this file's when it recorded this path, or when its recorded
/// fingerprint has this file's size, change counter and schema cookie (the
/// same data copied elsewhere: the modification time is not compared).
async fn check_run(opts: &dbtool_verify::Options) -> anyhow::Result<()> {
    let Some(target) = &opts.target_config else {
        return Ok(());
    };
    // Exit 2 (could not compare), as for every failure of verify to read the
    // target; exit 1 means differences.
    let could_not_run = |e: tokio_postgres::Error| {
        super::usage(anyhow::Error::new(e).context("verify could not run"))
    };
    let client = target
        .connect()
        .await
        .map_err(|e| super::usage(anyhow::Error::new(e).context("verify could not run")))?;
    let has_runs: bool = client
        .query_one("SELECT to_regclass('dbtool.runs') IS NOT NULL", &[])
        .await
        .map_err(could_not_run)?
        .get(0);
    if !has_runs {
        return Ok(());
    }
    let path = std::fs::canonicalize(&opts.source)
        .unwrap_or_else(|_| opts.source.clone())
        .display()
        .to_string();
    let rows = client
        .query(
            "SELECT id, source_path, target_schema, status, source_fingerprint FROM dbtool.runs
              WHERE status <> 'abandoned' AND ($1::text IS NULL OR target_schema = $1)
              ORDER BY id DESC",
            &[&opts.schema],
        )
        .await
        .map_err(could_not_run)?;
    let now = dbtool_catalog::runs::Fingerprint::of(&opts.source).ok();
    let same_data = |recorded: serde_json::Value| {
        let recorded: Option<dbtool_catalog::runs::Fingerprint> =
            serde_json::from_value(recorded).ok();
        match (recorded, &now) {
            (Some(r), Some(n)) => {
                r.size == n.size
                    && r.change_counter == n.change_counter
                    && r.schema_cookie == n.schema_cookie
            }
            _ => false,
        }
    };
    let runs: Vec<(i64, String, String, String, bool)> = rows
        .iter()
        .map(|r| {
            let tokio_postgres::types::Json(fp): tokio_postgres::types::Json<serde_json::Value> =
                r.get(4);
            let path_: String = r.get(1);
            let mine = path_ == path || same_data(fp);
            (r.get(0), path_, r.get(2), r.get(3), mine)
        })
        .collect();
    let Some(latest) = runs.first() else {
        return Ok(());
    };
    match runs.iter().find(|r| r.4).map(|r| (&r.0, &r.1, &r.2, &r.3)) {
        None => Err(super::usage(anyhow::anyhow!(
            "the migration runs recorded in the target are of another source file (latest: run {} of {} into schema {}), not {path}; verify --from the file that was migrated, or migrate this one first",
            latest.0, latest.1, latest.2
        ))),
        Some((id, _, schema, status)) if status.as_str() != "done" => Err(super::usage(anyhow::anyhow!(
            "run {id} of {path} into schema {schema} is unfinished (status {status}): the target holds only part of the rows. Finish it first (the same dbtool migrate command resumes it), then verify"
        ))),
        Some(_) => Ok(()),
    }
}

/// The `--include` list verify compares, with `--exclude` applied: the
/// source's tables minus the excluded ones when only `--exclude` is given.
async fn tables(
    from: &std::path::Path,
    filter: &super::args::TableFilter,
) -> anyhow::Result<Vec<String>> {
    if filter.exclude.is_empty() {
        return Ok(filter.include.clone());
    }
    let path = from.to_path_buf();
    let source = tokio::task::spawn_blocking(move || {
        let conn = dbtool_migrate::source::open(&path)?;
        dbtool_migrate::source::inspect(&conn, &path)
    })
    .await
    .context("the inspecting thread panicked")?
    .map_err(|e| super::usage(anyhow::Error::new(e).context("verify could not run")))?;
    for name in &filter.exclude {
        if source.table(name).is_none() {
            return Err(super::usage(anyhow::anyhow!(
                "--exclude {name}: no table of that name in {}",
                from.display()
            )));
        }
    }
    let excluded = |t: &str| filter.exclude.iter().any(|x| x.eq_ignore_ascii_case(t));
    let mut out: Vec<String> = if filter.include.is_empty() {
        source
            .tables
            .iter()
            .filter(|t| matches!(t.kind, dbtool_migrate::source::TableKind::Ordinary))
            .map(|t| t.name.clone())
            .collect()
    } else {
        filter.include.clone()
    };
    out.retain(|t| !excluded(t));
    Ok(out)
}
