//! `dbtool pool`: what the read/write-splitting pool sees.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use dbtool_pool::{Health, HostStatus, Role, RwPool};

use super::Context;

const STATUS_EXAMPLES: &str = "Examples:
  dbtool pool status                                  # hosts from [pool] in dbtool.toml
  dbtool pool status --config prod.toml --json
  dbtool pool status --primary postgres://app@db1/forums \\
                     --replica postgres://app@db2/forums --replica postgres://app@db3/forums

Exit codes: 0 the primary answers, 1 the primary is unreachable or more than one host
accepts writes (split brain), 2 usage or config error.";

/// Subcommands of `dbtool pool`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = STATUS_EXAMPLES)]
pub enum Command {
    /// Check every host once: role, health, replication lag, connections.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
}

/// Arguments of `dbtool pool status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The primary's URL (default: `primary` in [pool], else DATABASE_URL).
    /// Given on the command line, it replaces the hosts of the config file.
    #[arg(long, value_name = "URL")]
    pub primary: Option<String>,
    /// A replica's URL; repeat for several (default: `replicas` in [pool]).
    #[arg(long = "replica", value_name = "URL")]
    pub replicas: Vec<String>,
    /// Print JSON (one object per host) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `dbtool pool`.
pub async fn run(command: Command, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status(args) => status(args, ctx).await,
    }
}

async fn status(args: StatusArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut config = ctx.config.pool.clone();
    if args.primary.is_some() {
        config.primary = args.primary;
        config.replicas = args.replicas;
    } else if !args.replicas.is_empty() {
        config.replicas = args.replicas;
    }
    if config.primary.is_none() {
        config.primary = std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty());
    }
    if config.primary.is_none() {
        return Err(super::usage(anyhow::anyhow!(
            "no primary to check: pass --primary URL, set `primary` in the [pool] table of dbtool.toml, or set DATABASE_URL"
        )));
    }
    let pool = match RwPool::from_config(config).await {
        Ok(p) => p,
        Err(e @ (dbtool_pool::Error::Config(_) | dbtool_pool::Error::Url { .. })) => {
            return Err(super::usage(anyhow::Error::new(e)));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot check the pool's hosts")),
    };
    let hosts = pool.status();
    if args.json {
        let text =
            serde_json::to_string_pretty(&hosts).context("cannot render the status as JSON")?;
        println!("{text}");
    } else if !ctx.quiet {
        print!("{}", table(&hosts));
    }
    if let Some(message) = split_brain(&hosts) {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(1));
    }
    if hosts.iter().any(|h| h.writes) {
        return Ok(ExitCode::SUCCESS);
    }
    let primary = &hosts[0];
    let why = primary
        .last_error
        .clone()
        .unwrap_or_else(|| format!("it reports itself as {}", primary.role));
    eprintln!(
        "error: the primary {} is unreachable ({why}) and no other host accepts writes; check that the server runs and the URL is right",
        primary.url
    );
    Ok(ExitCode::from(1))
}

/// What to say when more than one host accepts writes.
fn split_brain(hosts: &[HostStatus]) -> Option<String> {
    let claims: Vec<&HostStatus> = hosts.iter().filter(|h| h.split_brain).collect();
    if claims.len() < 2 {
        return None;
    }
    let timeline = |h: &HostStatus| h.timeline.map_or("unknown".to_string(), |t| t.to_string());
    let list: Vec<String> = claims
        .iter()
        .map(|h| format!("{} (timeline {})", h.host, timeline(h)))
        .collect();
    let list = list.join(", ");
    Some(match claims.iter().find(|h| h.writes) {
        Some(w) => {
            let stale: Vec<&str> = claims
                .iter()
                .filter(|h| !h.writes)
                .map(|h| h.host.as_str())
                .collect();
            format!(
                "split brain: {list} all accept writes; the pool writes to {} (the newest timeline); stop {} or rebuild it as a replica of {} before anything else writes to it",
                w.host,
                stale.join(" and "),
                w.host
            )
        }
        None => format!(
            "split brain: {list} all accept writes and none is on a newer timeline; the pool refuses writes until only one does: stop the stale primary or rebuild it as a replica"
        ),
    })
}

fn table(hosts: &[HostStatus]) -> String {
    let rows: Vec<[String; 8]> = hosts
        .iter()
        .map(|h| {
            let health = match h.health {
                Health::Up => "up",
                Health::Down => "down",
                Health::Unknown => "unknown",
            };
            let serves = if h.writes {
                "writes".to_string()
            } else if h.split_brain {
                "none (stale primary)".to_string()
            } else if h.reads {
                "reads".to_string()
            } else if let Some(e) = h.ejected {
                format!(
                    "ejected ({:?}, {}s)",
                    e.reason,
                    e.remaining_ms.div_ceil(1000)
                )
                .to_lowercase()
            } else {
                "-".to_string()
            };
            let lag = match (h.lag_bytes, h.lag_ms) {
                // A replica that does not answer: its lag is not known.
                (None, None)
                    if !h.writes
                        && h.health != Health::Up
                        && (h.role == Role::Replica || h.configured_role == Role::Replica) =>
                {
                    "unknown".to_string()
                }
                (None, None) => "-".to_string(),
                (b, t) => {
                    let mut s = b.map_or("?".to_string(), |b| format!("{b} B"));
                    let _ = write!(s, " / {}", t.map_or("?".to_string(), |t| format!("{t} ms")));
                    if h.replay_paused == Some(true) {
                        s.push_str(" (paused)");
                    }
                    s
                }
            };
            let pool = format!(
                "{}/{} (idle {}, active {}, waiting {})",
                h.pool.size, h.pool.max_size, h.pool.idle, h.pool.active, h.pool.waiting
            );
            [
                h.host.clone(),
                h.role.to_string(),
                health.to_string(),
                serves,
                lag,
                h.lsn.clone().unwrap_or_else(|| "-".to_string()),
                h.timeline.map_or("-".to_string(), |t| t.to_string()),
                pool,
            ]
        })
        .collect();
    let header = [
        "HOST", "ROLE", "HEALTH", "SERVES", "LAG", "LSN", "TL", "POOL",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for (r, h) in rows.iter().zip(hosts) {
        line(&mut out, &r.iter().map(String::as_str).collect::<Vec<_>>());
        if let Some(e) = &h.last_error {
            let _ = writeln!(out, "  {}: {e}", h.url);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbtool_pool::PoolState;

    fn host(name: &str, role: Role, writes: bool) -> HostStatus {
        HostStatus {
            host: name.to_string(),
            url: format!("postgres://app:***@{name}/forums"),
            configured_role: role,
            role,
            health: Health::Up,
            writes,
            reads: !writes,
            ejected: None,
            consecutive_failures: 0,
            last_error: None,
            lsn: Some("0/3000060".to_string()),
            lag_bytes: (!writes).then_some(0),
            lag_ms: (!writes).then_some(0),
            replay_paused: None,
            checked_ms_ago: Some(3),
            timeline: Some(1),
            split_brain: false,
            pool: PoolState {
                max_size: 16,
                size: 1,
                idle: 1,
                active: 0,
                waiting: 0,
            },
        }
    }

    #[test]
    fn status_table_has_one_aligned_row_per_host() {
        let t = table(&[
            host("db1:5432", Role::Primary, true),
            host("db2:5432", Role::Replica, false),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("HOST"));
        assert!(
            lines[1].starts_with("db1:5432  primary  up      writes"),
            "{t}"
        );
        assert!(
            lines[2].contains("replica  up      reads   0 B / 0 ms"),
            "{t}"
        );
    }

    #[test]
    fn status_table_shows_a_down_replicas_lag_as_unknown() {
        let mut r = host("db2:5432", Role::Replica, false);
        r.health = Health::Down;
        r.reads = false;
        (r.lag_bytes, r.lag_ms) = (None, None);
        let t = table(&[host("db1:5432", Role::Primary, true), r]);
        let line = t.lines().nth(2).unwrap();
        assert!(line.contains("replica  down    -       unknown"), "{t}");
    }

    #[test]
    fn split_brain_names_both_hosts_and_where_writes_go() {
        let mut old = host("db1:5432", Role::Primary, false);
        old.reads = false;
        old.split_brain = true;
        let mut new = host("db2:5432", Role::Primary, true);
        new.timeline = Some(2);
        new.split_brain = true;
        let hosts = [old, new];
        assert_eq!(
            split_brain(&hosts).unwrap(),
            "split brain: db1:5432 (timeline 1), db2:5432 (timeline 2) all accept writes; \
             the pool writes to db2:5432 (the newest timeline); stop db1:5432 or rebuild it \
             as a replica of db2:5432 before anything else writes to it"
        );
        let t = table(&hosts);
        assert!(
            t.lines().nth(1).unwrap().contains("none (stale primary)"),
            "{t}"
        );
        assert_eq!(split_brain(&hosts[1..]), None);
    }
}
