//! One module per command. Each has `Args` (or a `Command` enum) and `run`.

pub mod cache;
pub mod migrate;
pub mod plan;
pub mod pool;
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
        // `{:#}` so the cause chain is kept when this is printed inside another chain.
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Exit {}

/// Marks an error as a usage or configuration error (exit code 2).
pub fn usage(error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Exit { code: 2, error })
}

/// The exit code for an error returned by a command: 2 for usage errors, else 1.
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Exit>())
        .map_or(1, |e| e.code)
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
                .with_context(|| format!("invalid Postgres connection string in {source}"))
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
