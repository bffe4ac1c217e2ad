//! One module per command. Each has `Args` (or a `Command` enum) and `run`.

pub mod args;
pub mod cache;
pub mod migrate;
pub mod overrides;
pub mod plan;
pub mod pool;
pub mod rollback;
pub mod runs;
pub mod sample;
pub mod shard;
pub mod sharded;
pub mod sync;
pub mod verify;

use crate::config::Config;

/// What every command gets besides its own arguments.
#[derive(Debug)]
pub struct Context {
    /// The loaded `dbtool.toml` (or defaults).
    pub config: Config,
    /// `--quiet`: no progress, no summaries.
    pub quiet: bool,
}

/// The server-side `statement_timeout` of every Postgres connection the
/// commands open, unless `--statement-timeout` (or `statement_timeout` in
/// dbtool.toml) or the URL's own `options` say otherwise. Generous because one statement of a migration can be the
/// index build or the foreign-key check of the biggest table; a frozen
/// server is caught long before it by the connection watch
/// (`dbtool_pool::watchdog`).
pub const DEFAULT_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

static STATEMENT_TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Sets the statement bound (seconds; `--statement-timeout`, else
/// dbtool.toml's `statement_timeout`) for every target resolved after.
pub fn set_statement_timeout(secs: Option<u64>) {
    if let Some(secs) = secs {
        let _ = STATEMENT_TIMEOUT.set(std::time::Duration::from_secs(secs));
    }
}

/// The bound [`set_statement_timeout`] set, else [`DEFAULT_STATEMENT_TIMEOUT`].
pub fn statement_timeout() -> std::time::Duration {
    STATEMENT_TIMEOUT
        .get()
        .copied()
        .unwrap_or(DEFAULT_STATEMENT_TIMEOUT)
}

/// Exit code: failed; the message says what to do next.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: another `dbtool migrate` holds the run lock of the same source
/// and target schema (see docs/migrate.md, "One run at a time").
pub const EXIT_LOCKED: u8 = 5;

/// An error that should exit with a specific code (2 for usage/config errors).
#[derive(Debug)]
pub struct Exit {
    /// The process exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The whole cause chain, so it is kept when this is printed inside another chain.
        f.write_str(&render(&self.error))
    }
}

/// An error and its causes, `: `-separated, each said once: a cause whose
/// text an outer message already contains (drivers repeat their source in
/// their own message: `db error: ERROR: ...` then `ERROR: ...`) is left out.
pub fn render(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for part in error.chain().map(ToString::to_string) {
        if part.is_empty() || out.contains(&part) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&part);
    }
    out
}

impl std::error::Error for Exit {}

/// Marks an error as a usage or configuration error (exit code 2).
pub fn usage(error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: EXIT_USAGE,
        error,
    })
}

/// The exit code for an error returned by a command: 2 for usage errors, else 1.
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Exit>())
        .map_or(EXIT_FAILED, |e| e.code)
}

/// A missing or unreadable source file is a usage error (exit 2) in every
/// command: the path given is wrong.
pub fn check_source(from: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::metadata(from) {
        Ok(m) if m.is_dir() => Err(usage(anyhow::anyhow!(
            "--from {}: is a directory, not a SQLite file",
            from.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(usage(anyhow::anyhow!(
            "--from {}: {e} (check the path)",
            from.display()
        ))),
    }
}

/// Ctrl-C (SIGINT) and SIGTERM: set `cancel` so the command stops at the
/// next batch boundary with its resumable state; a second signal exits at
/// once with 130 (still safe: uncommitted batches roll back).
pub fn on_interrupt(cancel: std::sync::Arc<std::sync::atomic::AtomicBool>, quiet: bool) {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        let mut first = true;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = term.recv() => {}
            }
            if !first {
                std::process::exit(130);
            }
            first = false;
            cancel.store(true, Ordering::SeqCst);
            if !quiet {
                eprintln!(
                    "\ninterrupted: stopping at the next batch boundary (Ctrl-C again to quit at once)"
                );
            }
        }
    });
}

/// For a SQLite `database is locked` error: what holds the lock (the
/// processes that have the file open, from /proc) and what to do.
pub fn sqlite_lock_hint(message: &str, file: &str) -> Option<String> {
    if !message.contains("database is locked") {
        return None;
    }
    let holders = open_by(std::path::Path::new(file));
    let who = if holders.is_empty() {
        "another process is writing to it".to_owned()
    } else {
        format!("it is open in {}", holders.join(", "))
    };
    Some(format!(
        "{file} is locked by a writer ({who}): a rollback-journal database cannot be read while a write transaction holds it. Wait for the writer to commit or stop it, then run the same command again"
    ))
}

/// `pid N (name)` of every process that has `file` open, as far as /proc
/// shows (other users' processes are not visible without privileges).
fn open_by(file: &std::path::Path) -> Vec<String> {
    let Ok(want) = std::fs::canonicalize(file) else {
        return Vec::new();
    };
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == want))
        {
            let name = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", name.trim()));
        }
    }
    out
}

/// Where the target of a command came from, for the line that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    /// `--to`.
    Flag,
    /// `DATABASE_URL`.
    DatabaseUrl,
    /// `[pool] primary` in dbtool.toml.
    ConfigFile,
    /// libpq's `PGHOST`, `PGPORT`, `PGDATABASE` or `PGUSER`.
    PgVariables,
}

impl std::fmt::Display for TargetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetSource::Flag => "--to",
            TargetSource::DatabaseUrl => "DATABASE_URL",
            TargetSource::ConfigFile => "[pool] primary in dbtool.toml",
            TargetSource::PgVariables => "the PG* variables",
        })
    }
}

/// The target of `migrate`, `verify` (and any command that writes to or
/// reads from "the" database): `--to`, else `DATABASE_URL`, else `[pool]
/// primary` of dbtool.toml, else libpq's `PGHOST`/`PGPORT`/`PGDATABASE`/
/// `PGUSER`. When none of them is given this refuses (exit 2) instead of
/// connecting to whatever libpq's defaults reach (the local socket's
/// database), naming the ways to give one.
pub fn target(
    to: Option<&str>,
    config: &Config,
) -> anyhow::Result<(dbtool_pool::Target, TargetSource)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    resolve_target(to, config.pool.primary.as_deref(), &env)
}

fn resolve_target(
    to: Option<&str>,
    primary: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(dbtool_pool::Target, TargetSource)> {
    if to.is_some() {
        return Ok((pg_config_from(to, env)?, TargetSource::Flag));
    }
    if env("DATABASE_URL").is_some() {
        return Ok((pg_config_from(None, env)?, TargetSource::DatabaseUrl));
    }
    if let Some(p) = primary {
        use anyhow::Context as _;
        let t = pg_config_from(Some(p), env)
            .context("[pool] primary in dbtool.toml")
            .map_err(usage)?;
        return Ok((t, TargetSource::ConfigFile));
    }
    if ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER"]
        .iter()
        .any(|k| env(k).is_some())
    {
        return Ok((pg_config_from(None, env)?, TargetSource::PgVariables));
    }
    Err(usage(anyhow::anyhow!(
        "no target database given: pass --to URL, set DATABASE_URL, set [pool] primary in dbtool.toml, or set PGHOST/PGDATABASE (dbtool does not guess)"
    )))
}

/// Resolves the Postgres target the way libpq users expect: an explicit
/// `--to` (URL or `key=value` string), else `DATABASE_URL`, else libpq's
/// `PG*` variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
/// `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`) over
/// libpq's defaults. Settings missing from an explicit URL are filled from
/// the same variables. The string may carry libpq's `sslmode`, `sslrootcert`
/// and `password_file` (see docs/security.md).
pub fn pg_config(to: Option<&str>) -> anyhow::Result<dbtool_pool::Target> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    pg_config_from(to, &env)
}

fn pg_config_from(
    to: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<dbtool_pool::Target> {
    use anyhow::Context as _;
    let (mut config, explicit_tls) = match to.map(str::to_owned).or_else(|| env("DATABASE_URL")) {
        Some(s) => {
            let source = if to.is_some() { "--to" } else { "DATABASE_URL" };
            // The parse error never contains the string itself, so no password leaks.
            let config = s
                .parse::<dbtool_pool::Target>()
                .with_context(|| source.to_owned())
                .map_err(usage)?;
            (config, (s.contains("sslmode"), s.contains("sslrootcert")))
        }
        None => (tokio_postgres::Config::new().into(), (false, false)),
    };
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) => {
                for host in h.split(',') {
                    config.host(host);
                }
            }
            None if std::path::Path::new("/var/run/postgresql").exists() => {
                config.host_path("/var/run/postgresql");
            }
            None => {
                config.host("localhost");
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(p) = env("PGPORT") {
            let port = p
                .parse::<u16>()
                .map_err(|_| usage(anyhow::anyhow!("invalid PGPORT {p:?}: not a port number")))?;
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_owned());
        config.user(&user);
    }
    if config.get_password().is_none() {
        if let Some(pw) = env("PGPASSWORD") {
            config.password(pw);
        }
    }
    if config.get_dbname().is_none() {
        let db = env("PGDATABASE").or_else(|| config.get_user().map(str::to_owned));
        if let Some(db) = db {
            config.dbname(&db);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name(env("PGAPPNAME").unwrap_or_else(|| "dbtool".to_owned()));
    }
    if config.get_connect_timeout().is_none() {
        let secs = env("PGCONNECT_TIMEOUT")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(10);
        config.connect_timeout(std::time::Duration::from_secs(secs.max(2)));
    }
    // As libpq: the variables apply where the string says nothing.
    if let Some(mode) = env("PGSSLMODE").filter(|_| !explicit_tls.0) {
        let mode: dbtool_pool::SslMode = mode
            .parse()
            .map_err(|e| usage(anyhow::anyhow!("PGSSLMODE: {e}")))?;
        config.set_ssl_mode(mode);
    }
    if let Some(root) = env("PGSSLROOTCERT").filter(|_| !explicit_tls.1) {
        config.root_cert = Some(root.into());
    }
    config.set_statement_timeout(statement_timeout());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn no_target_anywhere_is_a_usage_error_naming_the_ways() {
        let env = env_of(&[("PGPASSWORD", "x"), ("USER", "me")]);
        let err = resolve_target(None, None, &env).unwrap_err();
        assert_eq!(exit_code_of(&err), 2);
        let msg = format!("{err:#}");
        for want in ["--to", "DATABASE_URL", "[pool] primary", "PGHOST"] {
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn target_sources_in_order() {
        let env = env_of(&[("DATABASE_URL", "postgres://a@h1/one"), ("PGHOST", "h3")]);
        let (t, from) = resolve_target(None, Some("postgres://c@h2/two"), &env).unwrap();
        assert_eq!(from, TargetSource::DatabaseUrl);
        assert_eq!(dbtool_pool::display_config(&t), "postgres://a@h1:5432/one");
        let env = env_of(&[("PGHOST", "h3")]);
        let (t, from) = resolve_target(None, Some("postgres://c@h2/two"), &env).unwrap();
        assert_eq!(from, TargetSource::ConfigFile);
        assert_eq!(dbtool_pool::display_config(&t), "postgres://c@h2:5432/two");
        let env = env_of(&[("PGHOST", "h3"), ("PGUSER", "u"), ("PGDATABASE", "d")]);
        let (t, from) = resolve_target(None, None, &env).unwrap();
        assert_eq!(from, TargetSource::PgVariables);
        assert_eq!(dbtool_pool::display_config(&t), "postgres://u@h3:5432/d");
    }

    #[test]
    fn explicit_url_wins_over_database_url() {
        let env = env_of(&[("DATABASE_URL", "postgres://a@h1/one")]);
        let c = pg_config_from(Some("postgres://b@h2:6543/two"), &env).unwrap();
        assert_eq!(dbtool_pool::display_config(&c), "postgres://b@h2:6543/two");
    }

    #[test]
    fn pg_variables_fill_what_is_missing() {
        let env = env_of(&[
            ("PGHOST", "db.internal"),
            ("PGPORT", "6000"),
            ("PGUSER", "app"),
            ("PGDATABASE", "forums"),
        ]);
        let c = pg_config_from(None, &env).unwrap();
        assert_eq!(
            dbtool_pool::display_config(&c),
            "postgres://app@db.internal:6000/forums"
        );
    }

    #[test]
    fn display_never_shows_the_password() {
        let env = env_of(&[]);
        let c = pg_config_from(Some("postgres://u:s3cret@h/db"), &env).unwrap();
        assert!(!dbtool_pool::display_config(&c).contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn malformed_url_is_a_usage_error_without_the_secret() {
        let env = env_of(&[]);
        let err = pg_config_from(Some("postgres://u:s3cret@h:notaport/db"), &env).unwrap_err();
        assert_eq!(exit_code_of(&err), 2);
        assert!(!format!("{err:#}").contains("s3cret"));
    }
}
