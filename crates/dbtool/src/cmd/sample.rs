//! `dbtool sample`: write a deterministic sample forums.db.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::Context;

/// Arguments of `dbtool sample`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  dbtool sample --out forums.db                     # scale 1: about 100k rows, ~56 MB, a few seconds
  dbtool sample --scale 11 --out bench.db           # the benchmark file: about 1.1M rows, ~600 MB
  dbtool sample --scale 0.1 --seed 7 --out small.db # 10k rows with another seed
  dbtool sample --out forums.db --force             # replace an existing file

The same --scale and --seed always give the same file, byte for byte.
Tables: teams, users, forums, topics, posts, wiki_pages (all with team_id) and settings (global).")]
pub struct Args {
    /// Size multiplier: 1 is about 100k rows; fractions allowed (0.01 is about 1k rows).
    #[arg(long, default_value_t = 1.0, value_name = "N")]
    pub scale: f64,
    /// Seed of the random generator; the same seed gives the same file.
    #[arg(long, default_value_t = dbtool_sample::DEFAULT_SEED, value_name = "S")]
    pub seed: u64,
    /// The SQLite file to write.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs `dbtool sample`.
pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let options = dbtool_sample::Options {
        scale: args.scale,
        seed: args.seed,
        out: args.out,
        overwrite: args.force,
    };
    let out = options.out.clone();
    // Writing SQLite is blocking work; keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || dbtool_sample::generate(&options))
        .await
        .context("sample generator task failed")?;
    let summary = match result {
        Ok(s) => s,
        Err(e @ (dbtool_sample::Error::Exists { .. } | dbtool_sample::Error::Scale { .. })) => {
            return Err(super::usage(e.into()))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("cannot generate {}", out.display()))
        }
    };
    if !ctx.quiet {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}
