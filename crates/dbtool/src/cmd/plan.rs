//! `dbtool plan`: what `migrate` would do, without writing anything.

use std::path::PathBuf;
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
  type = \"timestamptz\"   # or text, bigint, numeric, boolean, bytea, date, ...
  policy = \"null\"        # reject (default) | null | fail

Exit codes: 0 plan printed, no rejects predicted; 3 plan printed, some rows
would be rejected or nulled; 1 the source cannot be read; 2 usage error.")]
pub struct Args {
    /// The SQLite file to plan from (opened read-only).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Target PostgreSQL URL (optional): report tables that already exist.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Target schema.
    #[arg(long, default_value = "public", value_name = "NAME")]
    pub schema: String,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only these tables (repeatable).
    #[arg(long, value_name = "TABLE")]
    pub include: Vec<String>,
    /// Not these tables (repeatable).
    #[arg(long, value_name = "TABLE")]
    pub exclude: Vec<String>,
}

/// Runs `dbtool plan`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut config = ctx.config.migrate.plan.clone();
    config.include.extend(args.include.iter().cloned());
    config.exclude.extend(args.exclude.iter().cloned());
    let path = args.from.clone();
    let schema = args.schema.clone();
    let the_plan = tokio::task::spawn_blocking(move || -> anyhow::Result<plan::Plan> {
        let conn = source::open(&path)?;
        let src = source::inspect(&conn, &path)?;
        Ok(plan::plan(&conn, &src, &config, &schema)?)
    })
    .await
    .context("the planning thread panicked")?
    .map_err(|e| match e.downcast_ref::<dbtool_migrate::Error>() {
        Some(dbtool_migrate::Error::Usage(_)) => super::usage(e),
        _ => e,
    })?;

    let mut existing: Vec<String> = Vec::new();
    if let Some(url) = &args.to {
        let client = super::pg_config(Some(url))?.connect().await?;
        let rows = client
            .query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                &[&args.schema],
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
