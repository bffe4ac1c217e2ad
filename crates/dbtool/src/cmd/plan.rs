//! `dbtool plan`: what `migrate` would do, without writing anything.

use std::process::ExitCode;

use anyhow::Context as _;
use dbtool_migrate::{ddl, plan, report, source};

use super::Context;

/// Arguments of `dbtool plan`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  dbtool plan --from forums.db
      DDL, each column's cast with its evidence, predicted rejects
  dbtool plan --from forums.db --json > plan.json
      the full plan as JSON (the same plan `migrate` stores in its run record)
  dbtool plan --from forums.db --to postgres://app@db/forums --schema forums
      also check the target: which of the tables already exist there

Nothing is written to the source or the target. Per-column overrides go in
dbtool.toml, e.g.:
  [migrate.columns.\"posts.created_at\"]
  type = \"timestamp\"     # or timestamptz, text, bigint, numeric, boolean, bytea, date, ...
  policy = \"null\"        # reject (default) | null | fail
Keys name a source table and column; one that names neither is an error (exit 2).

Exit codes: 0 plan printed, no rejects predicted; 3 plan printed, some rows
would be rejected or nulled; 1 the source cannot be read; 2 usage error.")]
pub struct Args {
    #[command(flatten)]
    pub endpoints: super::args::Endpoints,
    #[command(flatten)]
    pub tables: super::args::TableFilter,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dbtool plan`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    if args.endpoints.shards.is_some() {
        return Err(super::usage(anyhow::anyhow!(
            "plan reads no shards: it plans from the source alone; give --to one shard's URL to check which tables exist there"
        )));
    }
    super::check_source(&args.endpoints.from)?;
    let mut config = ctx.config.migrate.plan.clone();
    config.include.extend(args.tables.include.iter().cloned());
    config.exclude.extend(args.tables.exclude.iter().cloned());
    let path = args.endpoints.from.clone();
    let schema = args.endpoints.schema_or_public();
    let plan_schema = schema.clone();
    let the_plan = tokio::task::spawn_blocking(move || -> anyhow::Result<plan::Plan> {
        let conn = source::open(&path)?;
        let src = source::inspect(&conn, &path)?;
        super::overrides::check(&config, &src)?;
        Ok(plan::plan(&conn, &src, &config, &plan_schema)?)
    })
    .await
    .context("the planning thread panicked")?
    .map_err(|e| match e.downcast_ref::<dbtool_migrate::Error>() {
        Some(dbtool_migrate::Error::Usage(_)) => super::usage(e),
        _ => e,
    })?;

    let mut existing: Vec<String> = Vec::new();
    if let Some(url) = &args.endpoints.to {
        let client = super::pg_config(Some(url))?.connect().await?;
        let rows = client
            .query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                &[&schema],
            )
            .await
            .context("cannot list the target's tables")?;
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        existing = the_plan
            .tables
            .iter()
            .filter(|t| names.contains(&t.target_name))
            .map(|t| t.target_name.clone())
            .collect();
    }

    let predicted: u64 = the_plan
        .tables
        .iter()
        .map(|t| {
            t.columns
                .iter()
                .flat_map(|c| c.predicted.iter())
                .filter(|p| p.kind != dbtool_migrate::profile::Kind::Null)
                .map(|p| p.count)
                .sum::<u64>()
        })
        .sum();
    if args.json {
        let mut v = serde_json::to_value(&the_plan)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "ddl".into(),
                serde_json::json!(ddl::create_statements(&the_plan)),
            );
            obj.insert(
                "after_load".into(),
                serde_json::json!(ddl::finish_statements(&the_plan)),
            );
            obj.insert("existing_target_tables".into(), serde_json::json!(existing));
            obj.insert(
                "predicted_problem_values".into(),
                serde_json::json!(predicted),
            );
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "-- dbtool plan for {} -> schema {}",
            the_plan.source, the_plan.schema
        );
        println!(
            "-- tables are created without keys; keys, indexes, FKs and views follow the load\n"
        );
        for stmt in ddl::create_statements(&the_plan) {
            println!("{stmt};");
        }
        println!("\n-- after the load:");
        for stmt in ddl::finish_statements(&the_plan) {
            println!("{stmt};");
        }
        println!("\n-- casts and evidence:");
        for line in report::render_plan(&the_plan).lines() {
            println!("-- {line}");
        }
        if !existing.is_empty() {
            println!(
                "-- WARNING: these tables already exist in the target schema: {}",
                existing.join(", ")
            );
        }
        println!(
            "-- {} tables, {} rows; {} values predicted not to fit (rejected or nulled by policy)",
            the_plan.tables.len(),
            the_plan.tables.iter().map(|t| t.rows).sum::<u64>(),
            predicted
        );
    }
    Ok(if predicted > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
