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
  2  could not run: source unreadable, target unreachable, bad options, or a
     schema mismatch that prevents comparison

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
    }
    Ok(ExitCode::from(report.exit_code()))
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
