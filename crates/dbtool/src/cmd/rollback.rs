//! `dbtool rollback`: back from Postgres to the SQLite file after a cutover.

use std::process::ExitCode;

use anyhow::Context as _;

use super::sync::{duration, from, map_err, targets, Common};
use super::Context;

/// Arguments of `dbtool rollback`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  dbtool rollback --from forums.db --to postgres://app@db/forums --max-freeze 2s
  dbtool rollback --from forums.db --shards dbtool.toml

Applies the reverse stream (every change committed in Postgres since the
cutover) to the file while the app keeps writing Postgres, then freezes the
app's Postgres writes to the migrated tables (LOCK TABLE ... IN EXCLUSIVE MODE:
writers wait, readers do not), drains the rest, compares the rows changed since
the cutover and every table's count, marks the Postgres tables moved back (a
later write there fails naming the file), releases, lifts the file's moved mark
and drops the replication slot. Prints `freeze: N ms`; point the app back at
the file. Over budget or a failed check: nothing switches, writes continue on
Postgres, nothing is lost, exit 1 with the reason. See docs/rollback.md.

Exit codes: 0 rolled back, 1 aborted or failed (the message says why), 2 usage.")]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Longest freeze of the app's Postgres writes (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub max_freeze: String,
}

/// Runs `dbtool rollback`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let file = from(&args.common)?;
    let max_freeze = duration(&args.max_freeze, "--max-freeze")?;
    let (targets, _) = targets(&args.common).await?;
    let opts = dbtool_sync::reverse::RollbackOptions {
        file: file.clone(),
        targets: targets
            .into_iter()
            .map(|t| {
                let name = if t.shard.is_empty() {
                    "target".to_string()
                } else {
                    t.shard
                };
                (name, t.to)
            })
            .collect(),
        max_freeze,
    };
    let report = dbtool_sync::reverse::rollback(&opts)
        .await
        .map_err(map_err)
        .with_context(|| format!("dbtool rollback of {}", file.display()))?;
    if !ctx.quiet {
        eprintln!(
            "rolled back to {}: applied {} row changes ({} under the freeze), checked {} changed rows and every table's count; dropped slot(s) {}",
            file.display(),
            report.rows_applied,
            report.rows_drained,
            report.rows_checked,
            report.slots_dropped.join(", ")
        );
    }
    println!("freeze: {} ms", report.freeze.as_millis());
    Ok(ExitCode::SUCCESS)
}
