//! Command-line definition and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::config::Config;

/// dbtool: move a SQLite forums.db to PostgreSQL, prove it arrived, and run the data tier after.
#[derive(Debug, Parser)]
#[command(name = "dbtool", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Run `dbtool <COMMAND> --help` for the options and examples of each command.\n\
Exit codes: 0 success, 1 failure, 2 usage or config error, 3 migration completed with rejected rows,\n\
4 migration loaded the rows but keys failed to build, 5 another migration of the same file is running.\n\
Results go to stdout; progress, messages and errors to stderr (colours only on a terminal)."
)]
pub struct Cli {
    /// Configuration file (TOML). Defaults to ./dbtool.toml when it exists.
    #[arg(long, global = true, env = "DBTOOL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors: no progress, no summary lines.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Also write the log (info level, or what -v / RUST_LOG say) and the
    /// final error to FILE, appending, without colours.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Longest one SQL statement may run on a Postgres server, in seconds
    /// (0: no limit) [default: 3600]. A server that stops answering fails
    /// the command within about min(SECS, 30) + 2 s plus connect_timeout,
    /// whatever SECS is. Overrides `statement_timeout` in dbtool.toml; a
    /// statement_timeout in the URL's options wins.
    #[arg(
        long,
        global = true,
        env = "DBTOOL_STATEMENT_TIMEOUT",
        value_name = "SECS"
    )]
    pub statement_timeout: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy a SQLite database into PostgreSQL: schema, rows (binary COPY), indexes, FKs, sequences.
    Migrate(cmd::migrate::Args),
    /// Show what `migrate` would do (DDL, casts with evidence, predicted rejects); writes nothing.
    Plan(cmd::plan::Args),
    /// Prove a SQLite source and a PostgreSQL target hold the same rows; name the rows that differ.
    Verify(cmd::verify::Args),
    /// Read/write-splitting pool: show each host's role, health, lag and pool state.
    #[command(subcommand)]
    Pool(cmd::pool::Command),
    /// Team shard router: route team ids, show the shard map.
    #[command(subcommand)]
    Shard(cmd::shard::Command),
    /// Redis Cluster cache: stats, get, invalidate.
    #[command(subcommand)]
    Cache(cmd::cache::Command),
    /// Generate a deterministic sample forums.db.
    Sample(cmd::sample::Args),
    /// List the migration runs recorded in a target and their state.
    Runs(cmd::runs::RunsArgs),
    /// Drop dbtool's own `dbtool` schema from a target (after cutover).
    Clean(cmd::runs::CleanArgs),
    /// Copy a SQLite file the app keeps writing and follow its changes (status, stop).
    Sync(cmd::sync::Args),
    /// Switch from the synced SQLite file to Postgres within a bounded write freeze.
    Cutover(cmd::sync::CutoverArgs),
    /// Switch back from Postgres to the SQLite file after a cutover, losing no write.
    Rollback(cmd::rollback::Args),
}

/// The `--log-file`, for the final error line.
static LOG_FILE: std::sync::OnceLock<std::sync::Arc<std::fs::File>> = std::sync::OnceLock::new();

/// Sets up logging on stderr (ANSI colours only when stderr is a
/// terminal) and, with `--log-file`, to that file.
pub fn init_tracing(
    verbose: u8,
    quiet: bool,
    log_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        // fred logs its own reconnects and shutdown at warn; the commands
        // report what matters to the operator themselves.
        (false, 0) => "warn,fred=error",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter());
    let file = match log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open the log file {}: {e}", path.display()))
                .map_err(cmd::usage)?;
            let f = std::sync::Arc::new(f);
            let _ = LOG_FILE.set(f.clone());
            let level = match verbose {
                0 => "info,fred=warn",
                1 => "debug",
                _ => "trace",
            };
            let file_filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(f)
                    .with_ansi(false)
                    .with_filter(file_filter),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
    Ok(())
}

/// Appends the final error (as printed on stderr) to the `--log-file`.
pub fn log_error(text: &str) {
    use std::io::Write as _;
    if let Some(f) = LOG_FILE.get() {
        let _ = writeln!(&**f, "error: {text}");
    }
}

/// Loads the configuration and runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    cmd::set_statement_timeout(cli.statement_timeout.or(config.statement_timeout));
    let ctx = cmd::Context {
        config,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Migrate(args) => cmd::migrate::run(args, &ctx).await,
        Command::Plan(args) => cmd::plan::run(args, &ctx).await,
        Command::Verify(args) => cmd::verify::run(args, &ctx).await,
        Command::Pool(c) => cmd::pool::run(c, &ctx).await,
        Command::Shard(c) => cmd::shard::run(c, &ctx).await,
        Command::Cache(c) => cmd::cache::run(c, &ctx).await,
        Command::Sample(args) => cmd::sample::run(args, &ctx).await,
        Command::Runs(args) => cmd::runs::runs(args, &ctx).await,
        Command::Clean(args) => cmd::runs::clean(args, &ctx).await,
        Command::Sync(args) => cmd::sync::run(args, &ctx).await,
        Command::Cutover(args) => cmd::sync::cutover(args, &ctx).await,
        Command::Rollback(args) => cmd::rollback::run(args, &ctx).await,
    }
}
