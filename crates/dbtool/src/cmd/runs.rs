//! `dbtool runs` (the migration runs recorded in a target and their state)
//! and `dbtool clean` (remove dbtool's own `dbtool` schema after cutover).

use std::process::ExitCode;

use anyhow::Context as _;

use super::Context;

/// Arguments of `dbtool runs`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  dbtool runs --to postgres://app@db/forums
  DATABASE_URL=postgres://app@db/forums dbtool runs

One line per `dbtool migrate` run recorded in the target's dbtool schema: id,
status (loading, finishing, done, abandoned), source file, target schema, start
and finish times, resumes, rows written and rejected. An unfinished run is
resumed by running the same migrate command again.

Exit codes: 0 listed (also when there are none); 1 the target cannot be read;
2 usage error (no target given).")]
pub struct RunsArgs {
    /// Target PostgreSQL URL [default: DATABASE_URL, then [pool] primary, then PG* variables].
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
}

/// Arguments of `dbtool clean`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  dbtool clean --to postgres://app@db/forums          # shows what would be dropped
  dbtool clean --to postgres://app@db/forums --yes    # drops it

Drops the target's `dbtool` schema: the migration runs, checkpoints, reject
records and watermarks (and the shard map, when one was published there).
The migrated tables are not touched. Do it after cutover, once verify with
--watermark is no longer needed. Refused while a run is unfinished or when the
schema holds a shard map, unless --force.

Exit codes: 0 dropped (or nothing to drop); 1 the target refused; 2 usage error,
--yes missing, or refused (unfinished run, shard map) without --force.")]
pub struct CleanArgs {
    /// Target PostgreSQL URL [default: DATABASE_URL, then [pool] primary, then PG* variables].
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Really drop the schema (without it, only say what would be dropped).
    #[arg(long)]
    pub yes: bool,
    /// Drop it even with unfinished runs or a shard map in it.
    #[arg(long)]
    pub force: bool,
}

async fn connect(
    to: Option<&str>,
    ctx: &Context,
) -> anyhow::Result<(tokio_postgres::Client, String)> {
    let (target, _) = super::target(to, &ctx.config)?;
    let shown = target.to_string();
    let client = target.connect().await?;
    Ok((client, shown))
}

async fn has_runs(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    Ok(client
        .query_one("SELECT to_regclass('dbtool.runs') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Runs `dbtool runs`.
pub async fn runs(args: RunsArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (client, shown) = connect(args.to.as_deref(), ctx).await?;
    if !has_runs(&client).await? {
        println!("no migration runs recorded in {shown} (no dbtool schema)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = client
        .query(
            "SELECT r.id, r.status, r.source_path, r.target_schema,
                    to_char(r.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    coalesce(to_char(r.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '-'),
                    r.resumes,
                    coalesce(sum(c.rows_written), 0)::bigint,
                    coalesce(sum(c.rows_rejected), 0)::bigint
               FROM dbtool.runs r LEFT JOIN dbtool.checkpoints c ON c.run_id = r.id
              GROUP BY r.id ORDER BY r.id",
            &[],
        )
        .await
        .with_context(|| format!("cannot read dbtool.runs in {shown}"))?;
    if rows.is_empty() {
        println!("no migration runs recorded in {shown}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>4}  {:<9}  {:<20}  {:<20}  {:>7}  {:>10}  {:>8}  {:<10}  source",
        "id", "status", "started", "finished", "resumes", "written", "rejected", "schema"
    );
    for r in &rows {
        let id: i64 = r.get(0);
        let status: String = r.get(1);
        let source: String = r.get(2);
        let schema: String = r.get(3);
        let started: String = r.get(4);
        let finished: String = r.get(5);
        let resumes: i32 = r.get(6);
        let written: i64 = r.get(7);
        let rejected: i64 = r.get(8);
        println!(
            "{id:>4}  {status:<9}  {started:<20}  {finished:<20}  {resumes:>7}  {written:>10}  {rejected:>8}  {schema:<10}  {source}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `dbtool clean`.
pub async fn clean(args: CleanArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (client, shown) = connect(args.to.as_deref(), ctx).await?;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'dbtool')",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        println!("nothing to clean: {shown} has no dbtool schema");
        return Ok(ExitCode::SUCCESS);
    }
    let mut held = Vec::new();
    if has_runs(&client).await? {
        let rows = client
            .query(
                "SELECT id, source_path, target_schema, status FROM dbtool.runs
                  WHERE status IN ('loading', 'finishing') ORDER BY id",
                &[],
            )
            .await?;
        for r in &rows {
            let (id, source, schema, status): (i64, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            held.push(format!(
                "run {id} of {source} into schema {schema} is unfinished ({status})"
            ));
        }
    }
    let has_map: bool = client
        .query_one("SELECT to_regclass('dbtool.shard_map') IS NOT NULL", &[])
        .await?
        .get(0);
    if has_map {
        let versions: i64 = client
            .query_one("SELECT count(*) FROM dbtool.shard_map", &[])
            .await?
            .get(0);
        if versions > 0 {
            held.push(format!(
                "the schema holds the shard map ({versions} versions) that routers read"
            ));
        }
    }
    if !held.is_empty() && !args.force {
        return Err(super::usage(anyhow::anyhow!(
            "not dropping schema dbtool in {shown}: {}; add --force to drop it anyway",
            held.join("; ")
        )));
    }
    let tables: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'dbtool' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !args.yes {
        return Err(super::usage(anyhow::anyhow!(
            "would drop schema dbtool in {shown} with its tables ({}); the migrated tables are kept. Add --yes to drop it",
            tables.join(", ")
        )));
    }
    client
        .batch_execute("DROP SCHEMA dbtool CASCADE")
        .await
        .with_context(|| format!("cannot drop schema dbtool in {shown}"))?;
    if !ctx.quiet {
        println!(
            "dropped schema dbtool in {shown} ({} tables: {})",
            tables.len(),
            tables.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
