//! The `[pool]` table of `dbtool.toml`, and the builder.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{mask_password, Error, RwPool};

/// Settings of an [`RwPool`], the `[pool]` table of `dbtool.toml`.
///
/// Durations are integers in milliseconds (`_ms`); a value of 0 turns that
/// timeout off. Every field has a default, so a table with only `primary`
/// works:
///
/// ```toml
/// [pool]
/// primary = "postgres://app:secret@db1:5432/forums"
/// replicas = ["postgres://app:secret@db2:5432/forums"]
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// URL (or libpq key/value string) of the primary. Required.
    pub primary: Option<String>,
    /// URLs of the read replicas. May be empty: reads then use the primary.
    pub replicas: Vec<String>,
    /// Most connections to the primary. Default 16.
    pub primary_max_size: usize,
    /// Most connections to each replica. Default 16.
    pub replica_max_size: usize,
    /// Connections of the host that takes writes that reads never use:
    /// reads that fall back to the primary (no replica in rotation,
    /// `read_after` past its wait) hold at most its size minus this, so a
    /// replica outage cannot queue writes behind reads. At most the size
    /// minus one; 0 turns it off (reads and writes share every connection).
    /// Default 4.
    pub write_reserve: usize,
    /// Time to open a connection, TCP and handshake. Default 2000.
    pub connect_timeout_ms: u64,
    /// Server-side `statement_timeout`, set on every connection. Default 5000.
    pub statement_timeout_ms: u64,
    /// Client-side limit per query; on expiry the query is cancelled on the
    /// server. Default 10000.
    pub query_timeout_ms: u64,
    /// An idle connection is closed after this long. Default 30000.
    pub idle_timeout_ms: u64,
    /// Longest wait for a free connection when the pool is at its size.
    /// Default 5000.
    pub checkout_timeout_ms: u64,
    /// A connection is replaced after this long... Default 1800000 (30 min).
    pub max_lifetime_ms: u64,
    /// ...minus a random part up to this much, so connections do not all
    /// reconnect at once. Default 60000.
    pub max_lifetime_jitter_ms: u64,
    /// How often the monitor checks each host. Default 1000.
    pub check_interval_ms: u64,
    /// A replica further behind the primary than this many bytes of WAL is
    /// lagging. Default 16 MiB.
    pub max_lag_bytes: u64,
    /// A replica whose last replayed commit is older than this, while it has
    /// WAL left to replay, is lagging. Default 10000.
    pub max_lag_ms: u64,
    /// How long an ejected replica stays out of rotation before it is
    /// re-admitted (if healthy again). Default 30000.
    pub eject_ms: u64,
    /// Failed checks or connection attempts in a row that eject a replica.
    /// Default 5.
    pub failure_threshold: u32,
    /// How reads choose among healthy replicas. Default `round_robin`.
    pub strategy: Strategy,
    /// What reads do when no replica is healthy. Default `primary`.
    pub fallback: Fallback,
    /// How long `read_after` waits for a replica to replay a token before it
    /// uses the primary. Default 200. 0: the replicas are not asked; the
    /// primary serves a token the monitor has not seen replayed yet.
    pub read_after_wait_ms: u64,
    /// `application_name` of the pool's connections (unless the URL sets one);
    /// the monitor's connections add ` monitor`. Default `dbtool`.
    pub application_name: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            primary: None,
            replicas: Vec::new(),
            primary_max_size: 16,
            replica_max_size: 16,
            write_reserve: 4,
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            query_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            checkout_timeout_ms: 5_000,
            max_lifetime_ms: 30 * 60_000,
            max_lifetime_jitter_ms: 60_000,
            check_interval_ms: 1_000,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 10_000,
            eject_ms: 30_000,
            failure_threshold: 5,
            strategy: Strategy::RoundRobin,
            fallback: Fallback::Primary,
            read_after_wait_ms: 200,
            application_name: "dbtool".to_string(),
        }
    }
}

// By hand, so that printing a config never shows a password.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("primary", &self.primary.as_deref().map(mask_password))
            .field(
                "replicas",
                &self
                    .replicas
                    .iter()
                    .map(|u| mask_password(u))
                    .collect::<Vec<_>>(),
            )
            .field("primary_max_size", &self.primary_max_size)
            .field("replica_max_size", &self.replica_max_size)
            .field("write_reserve", &self.write_reserve)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("query_timeout_ms", &self.query_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("checkout_timeout_ms", &self.checkout_timeout_ms)
            .field("max_lifetime_ms", &self.max_lifetime_ms)
            .field("max_lifetime_jitter_ms", &self.max_lifetime_jitter_ms)
            .field("check_interval_ms", &self.check_interval_ms)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .field("max_lag_ms", &self.max_lag_ms)
            .field("eject_ms", &self.eject_ms)
            .field("failure_threshold", &self.failure_threshold)
            .field("strategy", &self.strategy)
            .field("fallback", &self.fallback)
            .field("read_after_wait_ms", &self.read_after_wait_ms)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl Config {
    /// Builds the pool; see [`RwPool::from_config`].
    pub async fn build(&self) -> Result<RwPool, Error> {
        RwPool::from_config(self.clone()).await
    }

    /// Checks what can be checked without a server.
    pub fn validate(&self) -> Result<(), Error> {
        let primary = self.primary.as_deref().unwrap_or("");
        if primary.trim().is_empty() {
            return Err(Error::Config(
                "no primary: set `primary` in [pool] or pass a primary URL".to_string(),
            ));
        }
        if self.primary_max_size == 0 || self.replica_max_size == 0 {
            return Err(Error::Config(
                "primary_max_size and replica_max_size must be at least 1".to_string(),
            ));
        }
        if self.check_interval_ms == 0 {
            return Err(Error::Config(
                "check_interval_ms must be at least 1".to_string(),
            ));
        }
        if self.failure_threshold == 0 {
            return Err(Error::Config(
                "failure_threshold must be at least 1".to_string(),
            ));
        }
        Ok(())
    }
}

/// How reads choose among healthy replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each replica in turn.
    #[default]
    RoundRobin,
    /// The replica with the fewest connections checked out by this pool.
    LeastOutstanding,
}

/// What reads do when no replica is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Read from the primary.
    #[default]
    Primary,
    /// Fail with [`Error::NoReplica`].
    Error,
}

/// Builds an [`RwPool`] step by step, starting from [`Config::default`].
///
/// ```no_run
/// # async fn f() -> Result<(), dbtool_pool::Error> {
/// use std::time::Duration;
/// let pool = dbtool_pool::RwPool::builder()
///     .primary("postgres://app:secret@db1/forums")
///     .replica("postgres://app:secret@db2/forums")
///     .query_timeout(Duration::from_secs(3))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until .build()"]
pub struct Builder {
    config: Config,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Builder {
    /// Starts from `config` instead of the defaults.
    pub fn config(mut self, config: Config) -> Builder {
        self.config = config;
        self
    }

    /// The primary's URL.
    pub fn primary(mut self, url: impl Into<String>) -> Builder {
        self.config.primary = Some(url.into());
        self
    }

    /// Adds a replica.
    pub fn replica(mut self, url: impl Into<String>) -> Builder {
        self.config.replicas.push(url.into());
        self
    }

    /// Adds replicas.
    pub fn replicas<I, S>(mut self, urls: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config
            .replicas
            .extend(urls.into_iter().map(Into::into));
        self
    }

    /// Most connections per host, primary and replicas alike.
    pub fn max_size(mut self, n: usize) -> Builder {
        self.config.primary_max_size = n;
        self.config.replica_max_size = n;
        self
    }

    /// See [`Config::write_reserve`].
    pub fn write_reserve(mut self, n: usize) -> Builder {
        self.config.write_reserve = n;
        self
    }

    /// See [`Config::connect_timeout_ms`].
    pub fn connect_timeout(mut self, d: Duration) -> Builder {
        self.config.connect_timeout_ms = ms(d);
        self
    }

    /// See [`Config::statement_timeout_ms`].
    pub fn statement_timeout(mut self, d: Duration) -> Builder {
        self.config.statement_timeout_ms = ms(d);
        self
    }

    /// See [`Config::query_timeout_ms`].
    pub fn query_timeout(mut self, d: Duration) -> Builder {
        self.config.query_timeout_ms = ms(d);
        self
    }

    /// See [`Config::idle_timeout_ms`].
    pub fn idle_timeout(mut self, d: Duration) -> Builder {
        self.config.idle_timeout_ms = ms(d);
        self
    }

    /// See [`Config::checkout_timeout_ms`].
    pub fn checkout_timeout(mut self, d: Duration) -> Builder {
        self.config.checkout_timeout_ms = ms(d);
        self
    }

    /// See [`Config::max_lifetime_ms`] and [`Config::max_lifetime_jitter_ms`].
    pub fn max_lifetime(mut self, d: Duration, jitter: Duration) -> Builder {
        self.config.max_lifetime_ms = ms(d);
        self.config.max_lifetime_jitter_ms = ms(jitter);
        self
    }

    /// See [`Config::check_interval_ms`].
    pub fn check_interval(mut self, d: Duration) -> Builder {
        self.config.check_interval_ms = ms(d);
        self
    }

    /// See [`Config::max_lag_bytes`] and [`Config::max_lag_ms`].
    pub fn max_lag(mut self, bytes: u64, time: Duration) -> Builder {
        self.config.max_lag_bytes = bytes;
        self.config.max_lag_ms = ms(time);
        self
    }

    /// See [`Config::eject_ms`].
    pub fn eject_for(mut self, d: Duration) -> Builder {
        self.config.eject_ms = ms(d);
        self
    }

    /// See [`Config::failure_threshold`].
    pub fn failure_threshold(mut self, n: u32) -> Builder {
        self.config.failure_threshold = n;
        self
    }

    /// See [`Strategy`].
    pub fn strategy(mut self, s: Strategy) -> Builder {
        self.config.strategy = s;
        self
    }

    /// See [`Fallback`].
    pub fn fallback(mut self, f: Fallback) -> Builder {
        self.config.fallback = f;
        self
    }

    /// See [`Config::read_after_wait_ms`].
    pub fn read_after_wait(mut self, d: Duration) -> Builder {
        self.config.read_after_wait_ms = ms(d);
        self
    }

    /// See [`Config::application_name`].
    pub fn application_name(mut self, name: impl Into<String>) -> Builder {
        self.config.application_name = name.into();
        self
    }

    /// The config built so far.
    pub fn as_config(&self) -> &Config {
        &self.config
    }

    /// Connects: checks every host once (each bounded by the connect
    /// timeout), starts the monitors, and returns the pool. Hosts that are
    /// down do not make this fail; they show in [`RwPool::status`].
    pub async fn build(self) -> Result<RwPool, Error> {
        RwPool::from_config(self.config).await
    }
}

/// Durations resolved from a [`Config`]; `None` is "no limit".
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub write_reserve: usize,
    pub connect_timeout: Option<Duration>,
    pub statement_timeout_ms: u64,
    pub query_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub checkout_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub max_lifetime_jitter: Duration,
    pub check_interval: Duration,
    pub max_lag_bytes: u64,
    pub max_lag: Option<Duration>,
    pub eject_for: Duration,
    pub failure_threshold: u32,
    pub strategy: Strategy,
    pub fallback: Fallback,
    pub read_after_wait: Duration,
    pub application_name: String,
}

fn opt(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            write_reserve: c.write_reserve,
            connect_timeout: opt(c.connect_timeout_ms),
            statement_timeout_ms: c.statement_timeout_ms,
            query_timeout: opt(c.query_timeout_ms),
            idle_timeout: opt(c.idle_timeout_ms),
            checkout_timeout: opt(c.checkout_timeout_ms),
            max_lifetime: opt(c.max_lifetime_ms),
            max_lifetime_jitter: Duration::from_millis(c.max_lifetime_jitter_ms),
            check_interval: Duration::from_millis(c.check_interval_ms.max(1)),
            max_lag_bytes: if c.max_lag_bytes == 0 {
                u64::MAX
            } else {
                c.max_lag_bytes
            },
            max_lag: opt(c.max_lag_ms),
            eject_for: Duration::from_millis(c.eject_ms),
            failure_threshold: c.failure_threshold.max(1),
            strategy: c.strategy,
            fallback: c.fallback,
            read_after_wait: Duration::from_millis(c.read_after_wait_ms),
            application_name: c.application_name.clone(),
        }
    }

    /// The limits of the health policy.
    pub fn rules(&self) -> crate::health::Rules {
        crate::health::Rules {
            failure_threshold: self.failure_threshold,
            eject_for: self.eject_for,
            max_lag_bytes: self.max_lag_bytes,
            max_lag: self.max_lag,
        }
    }

    /// Bound for one health check (connect + query).
    pub fn check_timeout(&self) -> Duration {
        self.connect_timeout
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(500))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_matches_the_documented_defaults() {
        let c = Config::default();
        assert_eq!(c.connect_timeout_ms, 2_000);
        assert_eq!(c.statement_timeout_ms, 5_000);
        assert_eq!(c.query_timeout_ms, 10_000);
        assert_eq!(c.idle_timeout_ms, 30_000);
        assert_eq!(c.eject_ms, 30_000);
        assert_eq!(c.failure_threshold, 5);
        assert_eq!(c.write_reserve, 4);
        assert_eq!(c.strategy, Strategy::RoundRobin);
        assert_eq!(c.fallback, Fallback::Primary);
    }

    #[test]
    fn config_debug_masks_passwords() {
        let c = Config {
            primary: Some("postgres://u:hunter2@h/d".into()),
            replicas: vec!["postgres://u:hunter3@r/d".into()],
            ..Config::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter"), "{s}");
        assert!(s.contains("u:***@h"), "{s}");
    }

    #[test]
    fn config_without_primary_is_rejected() {
        let err = Config::default().validate().unwrap_err();
        assert!(err.to_string().contains("no primary"), "{err}");
    }

    #[test]
    fn builder_sets_durations_in_milliseconds() {
        let b = Builder::default()
            .primary("postgres://h/d")
            .query_timeout(Duration::from_millis(1500))
            .max_lag(1024, Duration::from_secs(2))
            .strategy(Strategy::LeastOutstanding);
        let c = b.as_config();
        assert_eq!(c.query_timeout_ms, 1500);
        assert_eq!(c.max_lag_bytes, 1024);
        assert_eq!(c.max_lag_ms, 2000);
        assert_eq!(c.strategy, Strategy::LeastOutstanding);
    }
}
