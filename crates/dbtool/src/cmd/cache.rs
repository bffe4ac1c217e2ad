//! `dbtool cache`: what operators need of the Redis Cluster cache.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use dbtool_cache::{Cache, Inspection, NodeInfo, Stats};

use super::Context;

const EXAMPLES: &str = "Examples:
  dbtool cache stats                                   # nodes and namespace from [cache] in dbtool.toml
  dbtool cache stats --nodes 10.0.0.1:7000,10.0.0.2:7000 --namespace forums --json
  dbtool cache get topic:42                            # value, TTL, tags and whether a reader would hit
  dbtool cache invalidate --key topic:42
  dbtool cache invalidate --tag team:7                 # every entry tagged team:7, O(1)

Exit codes: 0 done (get: key found), 1 failure (get: key not cached), 2 usage or config error.";

/// Subcommands of `dbtool cache`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = EXAMPLES)]
pub enum Command {
    /// Hit rate, loads and errors of a namespace (summed over every process),
    /// and each master's INFO.
    #[command(after_help = EXAMPLES)]
    Stats(StatsArgs),
    /// Show one key: value, TTL, tags, and whether a reader would get a hit.
    #[command(after_help = EXAMPLES)]
    Get(GetArgs),
    /// Invalidate a key or a tag (and every process's L1 copy).
    #[command(after_help = EXAMPLES)]
    Invalidate(InvalidateArgs),
}

/// Where the cache is: overrides of the [cache] table.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Seed nodes, `host:port`, comma separated (default: `nodes` in [cache]).
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    pub nodes: Vec<String>,
    /// Namespace (default: `namespace` in [cache], else "dbtool").
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `dbtool cache stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    target: Target,
}

/// Arguments of `dbtool cache get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The cache key, as the service uses it (without the namespace).
    key: String,
    #[command(flatten)]
    target: Target,
}

/// Arguments of `dbtool cache invalidate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["key", "tag"])))]
pub struct InvalidateArgs {
    /// Delete this key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Invalidate every entry tagged with this tag.
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Runs `dbtool cache`.
pub async fn run(command: Command, ctx: &Context) -> anyhow::Result<ExitCode> {
    let target = match &command {
        Command::Stats(a) => &a.target,
        Command::Get(a) => &a.target,
        Command::Invalidate(a) => &a.target,
    };
    let cache = connect(target, ctx).await?;
    let result = match command {
        Command::Stats(a) => stats(&cache, a, ctx).await,
        Command::Get(a) => get(&cache, a, ctx).await,
        Command::Invalidate(a) => invalidate(&cache, a, ctx).await,
    };
    // Close before the runtime shuts down, so the QUIT is answered and not
    // reported as a failure on stderr.
    cache.close().await;
    result
}

async fn connect(target: &Target, ctx: &Context) -> anyhow::Result<Cache> {
    let mut config = ctx.config.cache.clone();
    if !target.nodes.is_empty() {
        config.nodes = target.nodes.clone();
    }
    if let Some(ns) = &target.namespace {
        config.namespace = ns.clone();
    }
    // An operator's one-shot process: no L1, no periodic stats flush.
    config.l1.enabled = false;
    config.stats_flush_secs = 0;
    // Operators would rather wait a little than see a spurious timeout.
    config.command_timeout_ms = config.command_timeout_ms.max(2000);
    match Cache::connect(config).await {
        Ok(c) => Ok(c),
        Err(e @ dbtool_cache::Error::Config(_)) => Err(super::usage(anyhow::Error::new(e))),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

async fn stats(cache: &Cache, args: StatsArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let shared = cache
        .shared_stats()
        .await
        .context("cannot read the namespace's stats")?;
    let nodes = cache
        .nodes()
        .await
        .context("cannot read the masters' INFO")?;
    if args.target.json {
        let v = serde_json::json!({ "namespace": shared, "hit_rate": shared.hit_rate(), "masters": nodes });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !ctx.quiet {
        print!("{}", stats_text(&shared, &nodes));
    }
    Ok(ExitCode::SUCCESS)
}

fn stats_text(s: &Stats, nodes: &[NodeInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "namespace {} (all processes, since their counters were first flushed)",
        s.namespace
    );
    let _ = writeln!(
        out,
        "  hit rate      {:.1}%  ({} hits, {} misses, {} from L1)",
        s.hit_rate() * 100.0,
        s.hits,
        s.misses,
        s.l1_hits
    );
    let _ = writeln!(
        out,
        "  loads         {} ({} failed, {} answered stale)",
        s.loads, s.load_errors, s.stale_served
    );
    let _ = writeln!(
        out,
        "  redis errors  {} ({} timeouts, {} calls skipped by the breaker)",
        s.errors, s.timeouts, s.breaker_skips
    );
    let _ = writeln!(
        out,
        "  redis calls   {} (mean {} us)",
        s.redis_calls,
        s.mean_latency().as_micros()
    );
    let _ = writeln!(out, "masters (server-wide, all namespaces):");
    let _ = writeln!(
        out,
        "  {:<22} {:>10} {:>12} {:>12} {:>8} {:>10}",
        "node", "keys", "kspc hits", "kspc misses", "clients", "memory"
    );
    for n in nodes {
        let _ = writeln!(
            out,
            "  {:<22} {:>10} {:>12} {:>12} {:>8} {:>9}M",
            n.node,
            n.keys,
            n.keyspace_hits,
            n.keyspace_misses,
            n.connected_clients,
            n.used_memory / (1024 * 1024)
        );
    }
    out
}

async fn get(cache: &Cache, args: GetArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let found = cache
        .inspect(&args.key)
        .await
        .with_context(|| format!("cannot read {:?}", args.key))?;
    let Some(info) = found else {
        if !ctx.quiet {
            eprintln!(
                "{:?} is not cached (namespace {})",
                args.key,
                cache.config().namespace
            );
        }
        return Ok(ExitCode::from(1));
    };
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else if !ctx.quiet {
        print!("{}", inspection_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}

fn inspection_text(i: &Inspection) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "redis key  {}", i.redis_key);
    let _ = writeln!(out, "redis ttl  {} ms", i.pttl_ms);
    if !i.envelope {
        let _ = writeln!(
            out,
            "format     not a dbtool-cache entry (written by something else)"
        );
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "state      {}",
            if i.valid {
                "valid: a reader gets a hit"
            } else {
                "invalid: a reader misses"
            }
        );
        let _ = writeln!(out, "age        {} ms", now - i.created_ms as i64);
        let _ = writeln!(
            out,
            "expires in {} ms (logical TTL; the rest of the redis TTL is the fail-safe window)",
            i.expires_ms as i64 - now
        );
        let _ = writeln!(out, "load took  {} ms", i.delta_ms);
        for (tag, stored, current) in &i.tags {
            let state = match current {
                Some(c) if c == stored => "current".to_owned(),
                Some(_) => "invalidated since".to_owned(),
                None => "tag version gone (invalid)".to_owned(),
            };
            let _ = writeln!(out, "tag        {tag} ({state})");
        }
        if i.negative {
            let _ = writeln!(
                out,
                "negative   yes: the loader said there is no such value"
            );
        }
    }
    if !i.negative {
        let text = serde_json::to_string_pretty(&i.payload).unwrap_or_default();
        let _ = writeln!(out, "value\n{text}");
    }
    out
}

async fn invalidate(
    cache: &Cache,
    args: InvalidateArgs,
    ctx: &Context,
) -> anyhow::Result<ExitCode> {
    let ns = cache.config().namespace.clone();
    if let Some(key) = &args.key {
        cache
            .delete(key)
            .await
            .with_context(|| format!("cannot invalidate key {key:?}"))?;
        if !ctx.quiet {
            println!("invalidated key {key:?} in namespace {ns}");
        }
    }
    if let Some(tag) = &args.tag {
        cache
            .invalidate_tag(tag)
            .await
            .with_context(|| format!("cannot invalidate tag {tag:?}"))?;
        if !ctx.quiet {
            println!("invalidated every entry tagged {tag:?} in namespace {ns}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
