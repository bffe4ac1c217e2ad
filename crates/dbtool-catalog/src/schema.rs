//! The migrations runner for the `dbtool` schema.
//!
//! The migrator's history table is kept in the `dbtool` schema too
//! (`dbtool._sqlx_migrations`), never in the application's `public` schema.

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor};

use dbtool_pool::{SslMode, Target};

use crate::Error;

/// The embedded migrations from the workspace's `migrations/` directory.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Applies every pending migration in `migrations/` to the database `config`
/// points at. Idempotent: applied migrations are skipped, and concurrent
/// callers serialize on sqlx's advisory lock.
///
/// Every `.sql` file in `migrations/` is embedded when this crate is built,
/// so a feature that keeps state in the target (sync positions, shard-move
/// state) adds a file there and nothing else.
///
/// # Errors
/// sqlx's error when the connection or a migration fails. It is returned as
/// is: each caller says which target and which command it was preparing
/// (`dbtool_shard::Error::Migrate`, the migrator's target error).
pub async fn migrate(config: &Target) -> Result<(), sqlx::Error> {
    // sqlx opens its own socket, which dbtool cannot watch: the server is
    // asked for a sign of life alongside instead (a frozen server fails the
    // step naming the host); the server-side bound is in the options.
    config
        .guard(migrate_unguarded(config))
        .await
        .map_err(|frozen| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                frozen.to_string(),
            ))
        })?
}

async fn migrate_unguarded(config: &Target) -> Result<(), sqlx::Error> {
    let mut conn = connect_options(config).connect().await?;
    // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
    // schema exists; a least-privilege role owning `dbtool` has only that.
    const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'dbtool')";
    let exists: bool = sqlx::query_scalar(EXISTS).fetch_one(&mut conn).await?;
    if !exists {
        if let Err(e) = conn.execute("CREATE SCHEMA IF NOT EXISTS dbtool").await {
            // Two first runs at once: both saw no schema, and the second
            // CREATE fails on the catalog's unique index once the first has
            // committed. The schema is there either way.
            let now: bool = sqlx::query_scalar(EXISTS).fetch_one(&mut conn).await?;
            if !now {
                return Err(e);
            }
        }
    }
    conn.execute("SET search_path TO dbtool").await?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// sqlx connection options equivalent to a target (host, port, user,
/// password, database, sslmode, sslrootcert), so one URL or libpq string
/// serves both drivers.
pub fn connect_options(target: &Target) -> PgConnectOptions {
    let config = &target.config;
    let mut opts = PgConnectOptions::new_without_pgpass();
    if let Some(host) = config.get_hosts().first() {
        opts = match host {
            tokio_postgres::config::Host::Tcp(h) => opts.host(h),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => opts.socket(p),
        };
    }
    if let Some(port) = config.get_ports().first() {
        opts = opts.port(*port);
    }
    if let Some(user) = config.get_user() {
        opts = opts.username(user);
    }
    if let Some(pw) = config.get_password() {
        opts = opts.password(&String::from_utf8_lossy(pw));
    }
    if let Some(db) = config.get_dbname() {
        opts = opts.database(db);
    }
    opts = opts.ssl_mode(match target.ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    });
    // `system` is our word for the platform store; sqlx then uses its built-in roots.
    if let Some(root) = target
        .root_cert
        .as_deref()
        .filter(|p| *p != std::path::Path::new("system"))
    {
        opts = opts.ssl_root_cert(root);
    }
    if let Some(bound) = target.statement_timeout() {
        opts = opts.options([("statement_timeout", bound.as_millis().to_string())]);
    }
    opts.disable_statement_logging()
}

/// Whether the `dbtool` schema holds the migration-run tables, i.e. whether
/// dbtool ever migrated into this database. Readers that must not create
/// anything (`verify`, a sharded resume checking each shard) ask this first.
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn exists(client: &impl tokio_postgres::GenericClient) -> Result<bool, Error> {
    Ok(client
        .query_one("SELECT to_regclass('dbtool.runs') IS NOT NULL", &[])
        .await?
        .get(0))
}
