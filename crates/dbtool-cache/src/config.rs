//! The `[cache]` table of `dbtool.toml`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Settings for [`Cache`](crate::Cache): the `[cache]` table of `dbtool.toml`.
///
/// Durations are integers with their unit in the name (`_ms`, `_secs`), so a
/// config file reads without a duration syntax to learn.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seed nodes of the Redis Cluster, `host:port`; the rest are discovered.
    /// An entry may also be a `redis://` or `rediss://` URL (see
    /// [`Config::with_url`]): its nodes, credentials and TLS settings are
    /// used. Default: `["127.0.0.1:7000"]`.
    pub nodes: Vec<String>,
    /// ACL user name. Default: none.
    pub username: Option<String>,
    /// Password (or ACL password). Default: none. Never printed.
    pub password: Option<String>,
    /// Connect with TLS. Default: false.
    pub tls: bool,
    /// PEM file of the CA that signed the servers' certificates; without it the
    /// system roots are used. Default: none.
    pub tls_ca: Option<PathBuf>,
    /// Prefix of every key, channel and metric label; one namespace per
    /// service (and per codec or value schema). Default: `"dbtool"`.
    pub namespace: String,
    /// TTL when none is given. Default: 3600 (the old app's value).
    pub default_ttl_secs: u64,
    /// TTL of negative entries (a loader answered "no such row"). 0 disables
    /// negative caching. Default: 30.
    pub negative_ttl_secs: u64,
    /// Random shortening of each TTL, as a fraction: a TTL `t` becomes a value
    /// in `[t * (1 - jitter), t]`, so keys written together do not expire
    /// together. Default: 0.1.
    pub jitter: f64,
    /// XFetch `beta` for early refresh: 0 disables, 1 is the paper's optimum,
    /// larger refreshes earlier. Default: 1.0.
    pub early_refresh_beta: f64,
    /// Fail-safe: how long after its TTL a value is kept to answer when the
    /// loader fails. 0 disables. Default: 0.
    pub stale_ttl_secs: u64,
    /// Cross-process stampede lock: on a miss, only the holder of a
    /// `SET NX PX` lock runs the loader and the others wait for its value up
    /// to this long. 0 disables (single-flight is then per process). Default: 0.
    pub lock_ms: u64,
    /// How long the marker left by `delete` (and the "invalidated" note of
    /// `invalidate_tag` without a watermark) tells loads to read fresh data
    /// ([`Freshness`](crate::Freshness)). Replicas must not lag more than
    /// this: keep it above the pool's `max_lag_ms` plus the time the pool
    /// needs to notice (2 checks). Default: 30000.
    pub marker_ms: u64,
    /// How long the fill lease taken on a miss lives. A load that takes
    /// longer is returned to its caller but not cached. Default: 10000.
    pub lease_ms: u64,
    /// Timeout of each Redis command; past it the read is a miss (fail-open).
    /// Default: 250.
    pub command_timeout_ms: u64,
    /// Timeout of the first connection. Default: 5000.
    pub connect_timeout_ms: u64,
    /// Command retries and reconnect backoff.
    pub retry: Retry,
    /// Reconnect after a connection drops (fred's default is off). Default: true.
    pub reconnect: bool,
    /// The circuit breaker in front of Redis.
    pub breaker: Breaker,
    /// The optional in-process L1 cache.
    pub l1: L1,
    /// Lifetime of a tag's version key. When it expires, entries tagged with
    /// it become misses (never stale hits). Default: 30 days.
    pub tag_ttl_secs: u64,
    /// How often per-process counters are added to the namespace's stats hash
    /// in Redis (read by `dbtool cache stats`). 0 disables. Default: 10.
    pub stats_flush_secs: u64,
}

/// Command retries and reconnect backoff: `retries` attempts after the
/// first, waiting `min(step_ms * attempt, max_ms)` (the old app's
/// `min(100 ms * attempt, 2 s)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    /// Retries of a command whose connection dropped, and of a failed
    /// `delete` or `invalidate_tag` (with the backoff). Default: 3.
    pub retries: u32,
    /// Backoff step. Default: 100.
    pub step_ms: u32,
    /// Backoff ceiling. Default: 2000.
    pub max_ms: u32,
}

/// Circuit breaker: after `failures` Redis errors in a row, Redis is skipped
/// for `open_ms`; then one probe decides whether to close it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Breaker {
    /// Consecutive failures that open the breaker. 0 disables it. Default: 5.
    pub failures: u32,
    /// How long it stays open before a probe. Default: 2000.
    pub open_ms: u64,
}

/// The in-process L1 cache, kept honest by invalidation messages on
/// Redis pub/sub and flushed whenever a connection drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1 {
    /// Turn it on. Default: false.
    pub enabled: bool,
    /// Most entries held. Default: 10000.
    pub max_entries: u64,
    /// Longest an entry lives in L1 (also bounded by its Redis TTL): the limit
    /// of staleness if an invalidation message were lost. Default: 30.
    pub ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: vec!["127.0.0.1:7000".into()],
            username: None,
            password: None,
            tls: false,
            tls_ca: None,
            namespace: "dbtool".into(),
            default_ttl_secs: 3600,
            negative_ttl_secs: 30,
            jitter: 0.1,
            early_refresh_beta: 1.0,
            stale_ttl_secs: 0,
            lock_ms: 0,
            marker_ms: 30_000,
            lease_ms: 10_000,
            command_timeout_ms: 250,
            connect_timeout_ms: 5000,
            retry: Retry::default(),
            reconnect: true,
            breaker: Breaker::default(),
            l1: L1::default(),
            tag_ttl_secs: 30 * 24 * 3600,
            stats_flush_secs: 10,
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            retries: 3,
            step_ms: 100,
            max_ms: 2000,
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: 5,
            open_ms: 2000,
        }
    }
}

impl Default for L1 {
    fn default() -> Self {
        L1 {
            enabled: false,
            max_entries: 10_000,
            ttl_secs: 30,
        }
    }
}

impl Config {
    /// This config with the connection settings of a URL:
    /// `redis://` or `rediss://` (TLS), optional `user:password@` (ACL) or
    /// `:password@` (password only, percent-encoded), comma-separated seed
    /// nodes, and `?tls_ca=FILE`:
    ///
    /// ```
    /// let c = dbtool_cache::Config::default()
    ///     .with_url("rediss://app:s%40cret@10.0.0.1:7000,10.0.0.2:7000?tls_ca=/etc/ssl/redis-ca.pem")
    ///     .unwrap();
    /// assert!(c.tls);
    /// assert_eq!(c.nodes, ["10.0.0.1:7000", "10.0.0.2:7000"]);
    /// assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("app"), Some("s@cret")));
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong, never quoting the password.
    pub fn with_url(mut self, url: &str) -> Result<Config, Error> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis://") {
            (false, r)
        } else {
            return Err(Error::Config(
                "a redis URL starts with redis:// or rediss:// (TLS)".into(),
            ));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        if let Some(auth) = auth {
            let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| Error::Config("the redis URL's user info is not UTF-8".into()))
            };
            self.username = (!user.is_empty()).then(|| decode(user)).transpose()?;
            self.password = (!password.is_empty())
                .then(|| decode(password))
                .transpose()?;
        }
        self.nodes = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        self.tls = tls;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("tls_ca", v)) => self.tls_ca = Some(PathBuf::from(v)),
                _ => {
                    return Err(Error::Config(format!(
                        "unknown redis URL parameter {:?} (known: tls_ca)",
                        pair.split('=').next().unwrap_or(pair)
                    )))
                }
            }
        }
        self.validate()?;
        Ok(self)
    }
}

// Hand-written so the password never reaches a log line.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("namespace", &self.namespace)
            .field("default_ttl_secs", &self.default_ttl_secs)
            .field("negative_ttl_secs", &self.negative_ttl_secs)
            .field("jitter", &self.jitter)
            .field("early_refresh_beta", &self.early_refresh_beta)
            .field("stale_ttl_secs", &self.stale_ttl_secs)
            .field("lock_ms", &self.lock_ms)
            .field("marker_ms", &self.marker_ms)
            .field("lease_ms", &self.lease_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("retry", &self.retry)
            .field("reconnect", &self.reconnect)
            .field("breaker", &self.breaker)
            .field("l1", &self.l1)
            .field("tag_ttl_secs", &self.tag_ttl_secs)
            .field("stats_flush_secs", &self.stats_flush_secs)
            .finish()
    }
}

impl Config {
    /// A config for these seed nodes, defaults elsewhere.
    pub fn with_nodes<I, S>(nodes: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            nodes: nodes.into_iter().map(Into::into).collect(),
            ..Config::default()
        }
    }

    /// The default TTL.
    pub fn default_ttl(&self) -> Duration {
        Duration::from_secs(self.default_ttl_secs)
    }

    /// The command timeout.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    /// This config with every `redis://`/`rediss://` URL in `nodes` turned
    /// into its `host:port` nodes, its credentials and TLS settings taking
    /// the place of the table's.
    pub(crate) fn resolved(&self) -> Result<Config, Error> {
        let is_url = |n: &str| n.starts_with("redis://") || n.starts_with("rediss://");
        if !self.nodes.iter().any(|n| is_url(n)) {
            return Ok(self.clone());
        }
        let mut out = self.clone();
        out.nodes.clear();
        for n in &self.nodes {
            if !is_url(n) {
                out.nodes.push(n.clone());
                continue;
            }
            let c = self.clone().with_url(n).map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("{m} (in node {})", mask_url(n))),
                e => e,
            })?;
            out.nodes.extend(c.nodes);
            out.username = c.username;
            out.password = c.password;
            out.tls = c.tls;
            out.tls_ca = c.tls_ca;
        }
        Ok(out)
    }

    /// Checks the values and parses the nodes into `(host, port)`.
    pub(crate) fn validate(&self) -> Result<Vec<(String, u16)>, Error> {
        if self.nodes.is_empty() {
            return Err(Error::Config(
                "no nodes: set [cache] nodes = [\"host:port\", ...]".into(),
            ));
        }
        if self.namespace.is_empty() || self.namespace.contains(['{', '}', ' ']) {
            return Err(Error::Config(format!(
                "namespace {:?} must be non-empty, without braces or spaces",
                self.namespace
            )));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::Config(format!(
                "jitter {} must be in [0, 1)",
                self.jitter
            )));
        }
        if !(self.early_refresh_beta >= 0.0 && self.early_refresh_beta.is_finite()) {
            return Err(Error::Config(format!(
                "early_refresh_beta {} must be >= 0",
                self.early_refresh_beta
            )));
        }
        if self.command_timeout_ms == 0 {
            return Err(Error::Config("command_timeout_ms must be > 0".into()));
        }
        if self.marker_ms == 0 || self.lease_ms == 0 {
            return Err(Error::Config(
                "marker_ms and lease_ms must be > 0 (they are what keeps fills from storing stale values)".into(),
            ));
        }
        self.nodes
            .iter()
            .map(|n| {
                let shown = mask_url(n);
                if n.contains('@') || n.contains("://") {
                    return Err(Error::Config(format!(
                        "node {shown:?} is not host:port (a URL starts with redis:// or rediss://)"
                    )));
                }
                let (host, port) = n
                    .rsplit_once(':')
                    .ok_or_else(|| Error::Config(format!("node {shown:?} is not host:port")))?;
                let port = port
                    .parse::<u16>()
                    .map_err(|_| Error::Config(format!("node {shown:?} has a bad port")))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Ok((host.to_owned(), port))
            })
            .collect()
    }
}

/// `url` with the password of its user info replaced by `***`
/// (`redis://app:***@h:7000`, `redis://:***@h:7000`); text without user
/// info is returned as is.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    match rest.rsplit_once('@') {
        Some((auth, hosts)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{hosts}"),
            None if scheme.is_empty() => format!("***@{hosts}"),
            // `redis://user@host`: a user name alone is no secret.
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_never_quote_the_password() {
        for url in [
            "rediss://app:hunter2@h:notaport",
            "rediss://app:hunter2@h:7000?ssl=1",
            "http://app:hunter2@h:7000",
        ] {
            let err = Config::default().with_url(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let c = Config::default().with_url("redis://:pw@h:7000").unwrap();
        assert_eq!(
            (c.tls, c.username, c.password.as_deref()),
            (false, None, Some("pw"))
        );
    }

    #[test]
    fn urls_in_nodes_give_their_nodes_and_credentials_and_errors_mask_them() {
        let c = Config::with_nodes([
            "redis://app:s3cret@10.0.0.1:7000,10.0.0.2:7000",
            "10.0.0.3:7000",
        ])
        .resolved()
        .unwrap();
        assert_eq!(c.nodes, ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]);
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("app"), Some("s3cret"))
        );
        for bad in [
            "redis://:s3cret@h:notaport",
            "http://:s3cret@h:7000",
            ":s3cret@h:7000",
        ] {
            let err = Config::with_nodes([bad])
                .resolved()
                .and_then(|c| c.validate().map(|_| c))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
        assert_eq!(mask_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(mask_url("rediss://u:pw@h:1,g:2"), "rediss://u:***@h:1,g:2");
        assert_eq!(mask_url("h:1"), "h:1");
    }

    #[test]
    fn defaults_match_the_old_app() {
        let c = Config::default();
        assert_eq!(c.default_ttl_secs, 3600);
        assert_eq!(
            c.retry,
            Retry {
                retries: 3,
                step_ms: 100,
                max_ms: 2000
            }
        );
        assert!(c.reconnect);
    }

    #[test]
    fn debug_masks_the_password() {
        let c = Config {
            password: Some("hunter2".into()),
            ..Config::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("***"));
    }

    #[test]
    fn a_partial_toml_table_keeps_the_other_defaults() {
        let c: Config = toml_like(r#"{"nodes":["10.0.0.1:7000"],"l1":{"enabled":true}}"#);
        assert_eq!(c.nodes, vec!["10.0.0.1:7000"]);
        assert!(c.l1.enabled);
        assert_eq!(c.l1.max_entries, 10_000);
        assert_eq!(c.namespace, "dbtool");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(serde_json::from_str::<Config>(r#"{"nodez":[]}"#).is_err());
    }

    #[test]
    fn nodes_parse_into_host_and_port() {
        let c = Config::with_nodes(["127.0.0.1:7000", "[::1]:7001", "redis-a:6379"]);
        assert_eq!(
            c.validate().unwrap(),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("::1".to_owned(), 7001),
                ("redis-a".to_owned(), 6379)
            ]
        );
        assert!(Config::with_nodes(["nohost"]).validate().is_err());
        assert!(Config::with_nodes(Vec::<String>::new()).validate().is_err());
    }

    fn toml_like(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }
}
