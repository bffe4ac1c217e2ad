//! `RwPool`: the hosts, the routing of each request, and the shared state the
//! monitors keep.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    HookError, Manager, ManagerConfig, Metrics, Pool, PoolError, RecyclingMethod, Runtime,
    TimeoutType,
};
use tokio_postgres::types::PgLsn;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::conn::Kind;
use crate::metrics as m;
use crate::monitor::{self, Probe, Prober};
use crate::status::{EjectReason, Ejection, Health, HostStatus, PoolState, Role};
use crate::{url, Builder, Config, Conn, Error, Fallback, Strategy, Token};

/// No host takes writes.
const NONE: usize = usize::MAX;

/// A read/write-splitting pool over one primary and its replicas.
///
/// Cloning is cheap and shares the pool. The monitor tasks stop and the
/// connections close when the last clone is dropped (connections still
/// checked out close when they are returned).
#[derive(Clone)]
pub struct RwPool {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        for h in &self.shared.hosts {
            h.pool.close();
        }
    }
}

impl std::fmt::Debug for RwPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self
            .inner
            .shared
            .hosts
            .iter()
            .map(|h| h.label.as_str())
            .collect();
        f.debug_struct("RwPool").field("hosts", &hosts).finish()
    }
}

/// One configured host and its connections.
pub(crate) struct Host {
    pub label: String,
    pub masked_url: String,
    pub configured: Role,
    pub pool: Pool,
    /// The host's TLS connector (for cancel requests too).
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// A replica that reads may use right now.
    pub in_rotation: AtomicBool,
    /// Last known `pg_last_wal_replay_lsn()` while a replica, else 0.
    pub replay_lsn: AtomicU64,
    /// Connections of this host checked out through the pool.
    pub outstanding: AtomicUsize,
    pub checkout_wait: metrics::Histogram,
    pub query_duration: metrics::Histogram,
}

/// What the monitor knows of one host.
#[derive(Debug, Clone)]
pub(crate) struct HostState {
    role: Role,
    health: Health,
    failures: u32,
    last_error: Option<String>,
    last_check: Option<Instant>,
    lsn: Option<u64>,
    lag_bytes: Option<u64>,
    lag: Option<Duration>,
    replay_paused: Option<bool>,
    /// Checks in a row that found the replica over a lag limit.
    over_lag: u32,
    ejected: Option<(EjectReason, Instant)>,
    /// The role label its connection gauges were last set under.
    gauge_role: Role,
}

impl HostState {
    fn new() -> HostState {
        HostState {
            role: Role::Unknown,
            health: Health::Unknown,
            failures: 0,
            last_error: None,
            last_check: None,
            lsn: None,
            lag_bytes: None,
            lag: None,
            replay_paused: None,
            over_lag: 0,
            ejected: None,
            gauge_role: Role::Unknown,
        }
    }
}

/// Everything the pool handle, the connections and the monitors share.
pub(crate) struct Shared {
    pub hosts: Vec<Host>,
    pub settings: Settings,
    states: Mutex<Vec<HostState>>,
    write_target: AtomicUsize,
    /// The host that last took writes, to prefer another one after it is lost.
    last_primary: AtomicUsize,
    /// Whether any host has taken writes yet.
    had_primary: AtomicBool,
    rr: AtomicUsize,
}

/// A lag-limit breach must be seen this many checks in a row before the
/// replica is ejected: one sample can catch a replica in the moment between
/// receiving WAL and replaying it.
const LAG_CHECKS: u32 = 2;

impl RwPool {
    /// A builder starting from the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Builds a pool from `config`: parses every URL, checks every host once
    /// (concurrently, each bounded by the connect timeout) and starts one
    /// monitor task per host. Hosts that are down do not make this fail.
    pub async fn from_config(config: Config) -> Result<RwPool, Error> {
        config.validate()?;
        let settings = Settings::from_config(&config);
        let mut urls = vec![(config.primary.clone().unwrap_or_default(), Role::Primary)];
        urls.extend(config.replicas.iter().map(|u| (u.clone(), Role::Replica)));

        let mut hosts = Vec::with_capacity(urls.len());
        let mut probers = Vec::with_capacity(urls.len());
        for (raw, role) in &urls {
            let mut pg = url::parse(raw)?;
            if let Some(t) = settings.connect_timeout {
                pg.connect_timeout(t);
            }
            if pg.get_application_name().is_none() {
                pg.application_name(settings.application_name.clone());
            }
            if settings.statement_timeout_ms > 0 {
                let set = format!("-c statement_timeout={}", settings.statement_timeout_ms);
                let options = match pg.get_options() {
                    Some(o) if !o.is_empty() => format!("{o} {set}"),
                    _ => set,
                };
                pg.options(options);
            }
            let label = url::host_label(&pg);
            let tls = pg
                .tls()
                .map_err(|e| Error::Config(format!("{label}: {e}")))?;
            probers.push(Prober::new(pg.clone(), &settings.application_name));
            let max_size = match role {
                Role::Primary => config.primary_max_size,
                _ => config.replica_max_size,
            };
            let manager = Manager::from_config(
                pg.pg_config(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let keep = Keep::new(&settings);
            let pool = Pool::builder(manager)
                .max_size(max_size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(settings.checkout_timeout)
                .create_timeout(settings.connect_timeout)
                // Fast recycling does no I/O: no timer needed.
                .recycle_timeout(None)
                .pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
                    if keep.keep(metrics) {
                        Ok(())
                    } else {
                        Err(HookError::message(
                            "connection past its idle time or lifetime",
                        ))
                    }
                }))
                .build()
                .map_err(|e| Error::Config(format!("cannot build the pool for {label}: {e}")))?;
            hosts.push(Host {
                masked_url: crate::mask_password(raw),
                tls,
                configured: *role,
                pool,
                in_rotation: AtomicBool::new(false),
                replay_lsn: AtomicU64::new(0),
                outstanding: AtomicUsize::new(0),
                checkout_wait: metrics::histogram!(m::CHECKOUT_WAIT, "host" => label.clone()),
                query_duration: metrics::histogram!(m::QUERY_DURATION, "host" => label.clone()),
                label,
            });
        }

        let shared = Arc::new(Shared {
            states: Mutex::new(vec![HostState::new(); hosts.len()]),
            hosts,
            settings,
            write_target: AtomicUsize::new(NONE),
            last_primary: AtomicUsize::new(0),
            had_primary: AtomicBool::new(false),
            rr: AtomicUsize::new(0),
        });

        // The first check of every host, so routing starts from facts.
        let limit = shared.settings.check_timeout();
        let results = futures::future::join_all(probers.iter_mut().map(|p| p.probe(limit))).await;
        for (idx, r) in results.into_iter().enumerate() {
            shared.apply_probe(idx, r);
        }

        let cancel = CancellationToken::new();
        for (idx, prober) in probers.into_iter().enumerate() {
            tokio::spawn(monitor::run(
                shared.clone(),
                idx,
                prober,
                cancel.child_token(),
            ));
        }
        Ok(RwPool {
            inner: Arc::new(Inner { shared, cancel }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A connection to the primary, for writes and transactions.
    ///
    /// Fails at once with [`Error::NoPrimary`] while no host accepts writes
    /// (the primary is down and no replica has been promoted yet).
    pub async fn write(&self) -> Result<Conn, Error> {
        self.shared().write().await
    }

    /// A connection for reads: a healthy replica chosen by the strategy, else
    /// the primary (unless `fallback = "error"`). A replica that cannot be
    /// reached is skipped, so a replica going down does not fail reads.
    pub async fn read(&self) -> Result<Conn, Error> {
        self.shared().read(None).await
    }

    /// A connection that sees everything committed up to `token`: a replica
    /// that has replayed it, waiting up to `read_after_wait_ms` for one, else
    /// the primary.
    pub async fn read_after(&self, token: &Token) -> Result<Conn, Error> {
        self.shared().read_after(*token, None).await
    }

    /// The primary's WAL position now, taken on `conn` (a connection to the
    /// primary) after a commit: pass it to [`read_after`](Self::read_after)
    /// to read that commit back.
    ///
    /// It is `pg_current_wal_insert_lsn()` rather than `pg_current_wal_lsn()`,
    /// so the token covers the commit even with `synchronous_commit = off`,
    /// when the commit record may not be written out yet.
    pub async fn commit_token(&self, conn: &Conn) -> Result<Token, Error> {
        let row = conn
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await?;
        let lsn: PgLsn = row.get(0);
        Ok(Token::from_lsn(lsn.into()))
    }

    /// Every host: role, health, lag, ejection and connections. The primary
    /// comes first, then the replicas in configured order.
    pub fn status(&self) -> Vec<HostStatus> {
        self.shared().status()
    }

    /// `host:port` of the host that takes writes now, if any.
    pub fn primary(&self) -> Option<String> {
        let wt = self.shared().write_target.load(Ordering::Acquire);
        self.shared().hosts.get(wt).map(|h| h.label.clone())
    }

    /// Stops the monitors and closes every connection; later calls fail with
    /// [`Error::Closed`]. Dropping the last clone does the same.
    pub fn close(&self) {
        self.inner.cancel.cancel();
        for h in &self.shared().hosts {
            h.pool.close();
        }
    }
}

/// Decides whether a pooled connection may be reused: not idle too long, not
/// past its lifetime (minus its own jitter).
#[derive(Clone, Copy)]
struct Keep {
    idle: Option<Duration>,
    lifetime: Option<Duration>,
    jitter_ms: u64,
}

impl Keep {
    fn new(s: &Settings) -> Keep {
        Keep {
            idle: s.idle_timeout,
            lifetime: s.max_lifetime,
            jitter_ms: u64::try_from(s.max_lifetime_jitter.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn keep(&self, metrics: &Metrics) -> bool {
        if self.idle.is_some_and(|d| metrics.last_used() >= d) {
            return false;
        }
        match self.lifetime {
            None => true,
            Some(life) => {
                // The jitter is a hash of the creation time: fixed for each
                // connection, different between connections, no state needed.
                let jitter = if self.jitter_ms == 0 {
                    0
                } else {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    metrics.created.hash(&mut h);
                    h.finish() % (self.jitter_ms + 1)
                };
                metrics.age() < life.saturating_sub(Duration::from_millis(jitter))
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<HostState>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn role_name(&self, idx: usize) -> &'static str {
        if self.write_target.load(Ordering::Acquire) == idx {
            "primary"
        } else {
            "replica"
        }
    }

    pub(crate) async fn write(self: &Arc<Self>) -> Result<Conn, Error> {
        let wt = self.write_target.load(Ordering::Acquire);
        if wt == NONE {
            return Err(self.no_primary());
        }
        self.checkout(wt, Kind::Write).await
    }

    /// Replicas in rotation, in the order to try them.
    fn rotation(&self, exclude: Option<usize>) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| Some(i) != exclude && self.hosts[i].in_rotation.load(Ordering::Relaxed))
            .collect();
        if c.len() > 1 {
            match self.settings.strategy {
                Strategy::RoundRobin => {
                    let k = self.rr.fetch_add(1, Ordering::Relaxed) % c.len();
                    c.rotate_left(k);
                }
                Strategy::LeastOutstanding => {
                    // Ties go round robin, so an idle pool still spreads reads.
                    let k = self.rr.fetch_add(1, Ordering::Relaxed) % c.len();
                    c.rotate_left(k);
                    c.sort_by_key(|&i| self.hosts[i].outstanding.load(Ordering::Relaxed));
                }
            }
        }
        c
    }

    pub(crate) async fn read(self: &Arc<Self>, exclude: Option<usize>) -> Result<Conn, Error> {
        for i in self.rotation(exclude) {
            match self.checkout(i, Kind::Read).await {
                Ok(c) => return Ok(c),
                Err(e) if e.is_unavailable() => continue,
                Err(e) => return Err(e),
            }
        }
        if self.settings.fallback == Fallback::Error {
            return Err(Error::NoReplica);
        }
        self.primary_read("no_replica", exclude, Kind::Read).await
    }

    async fn primary_read(
        self: &Arc<Self>,
        reason: &'static str,
        exclude: Option<usize>,
        kind: Kind,
    ) -> Result<Conn, Error> {
        let wt = self.write_target.load(Ordering::Acquire);
        if wt == NONE {
            return Err(self.no_primary());
        }
        if Some(wt) == exclude {
            return Err(Error::NoReplica);
        }
        metrics::counter!(m::FALLBACKS, "reason" => reason).increment(1);
        self.checkout(wt, kind).await
    }

    pub(crate) async fn read_after(
        self: &Arc<Self>,
        token: Token,
        exclude: Option<usize>,
    ) -> Result<Conn, Error> {
        let want = token.lsn();
        let kind = Kind::ReadAfter(token);
        let order = self.rotation(exclude);
        // What the monitor last saw is enough most of the time.
        for &i in &order {
            if self.hosts[i].replay_lsn.load(Ordering::Acquire) >= want {
                match self.checkout(i, kind).await {
                    Ok(c) => return Ok(c),
                    Err(e) if e.is_unavailable() => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        // Else ask the replicas themselves until one has replayed the token.
        if !order.is_empty() {
            let deadline = Instant::now() + self.settings.read_after_wait;
            let mut pause = Duration::from_millis(1);
            loop {
                for &i in &order {
                    if !self.hosts[i].in_rotation.load(Ordering::Relaxed) {
                        continue;
                    }
                    let c = match self.checkout(i, kind).await {
                        Ok(c) => c,
                        Err(e) if e.is_unavailable() => continue,
                        Err(e) => return Err(e),
                    };
                    if let Ok(Some(lsn)) = c.replay_lsn().await {
                        self.hosts[i].replay_lsn.fetch_max(lsn, Ordering::AcqRel);
                        if lsn >= want {
                            return Ok(c);
                        }
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
        self.primary_read("read_after", exclude, kind).await
    }

    pub(crate) async fn checkout(self: &Arc<Self>, idx: usize, kind: Kind) -> Result<Conn, Error> {
        let host = &self.hosts[idx];
        let start = Instant::now();
        // A free connection is taken without arming the wait timer (deadpool
        // arms it even when it would not wait); only a full pool waits.
        let fast = deadpool_postgres::Timeouts {
            wait: Some(Duration::ZERO),
            create: self.settings.connect_timeout,
            recycle: None,
        };
        let result = match host.pool.timeout_get(&fast).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => host.pool.get().await,
            r => r,
        };
        host.checkout_wait.record(start.elapsed().as_secs_f64());
        match result {
            Ok(obj) => {
                host.outstanding.fetch_add(1, Ordering::Relaxed);
                Ok(Conn::new(obj, self.clone(), idx, kind))
            }
            Err(e) => Err(self.checkout_error(idx, e)),
        }
    }

    fn checkout_error(&self, idx: usize, e: PoolError) -> Error {
        let host = self.hosts[idx].label.clone();
        let role = self.role_name(idx);
        match e {
            PoolError::Timeout(TimeoutType::Wait) => {
                metrics::counter!(m::TIMEOUTS, "host" => host.clone(), "kind" => "checkout")
                    .increment(1);
                Error::CheckoutTimeout {
                    host,
                    after: self.settings.checkout_timeout.unwrap_or_default(),
                }
            }
            PoolError::Timeout(_) => {
                metrics::counter!(m::TIMEOUTS, "host" => host.clone(), "kind" => "connect")
                    .increment(1);
                let after = self.settings.connect_timeout.unwrap_or_default();
                self.note_failure(idx, format!("connecting timed out after {after:?}"));
                Error::ConnectTimeout { host, role, after }
            }
            PoolError::Backend(source) | PoolError::PostCreateHook(HookError::Backend(source)) => {
                // A server that answers with an error (too many clients, bad
                // password) is up; only a connection that cannot be made at
                // all counts against the host.
                if source.code().is_none() || crate::error::is_connection_lost(&source) {
                    self.note_failure(idx, crate::error::chain(&source));
                }
                Error::Connect { host, role, source }
            }
            PoolError::Closed => Error::Closed,
            other => Error::Config(format!("cannot check out a connection to {host}: {other}")),
        }
    }

    fn no_primary(&self) -> Error {
        let states = self.lock();
        let last = self.last_primary.load(Ordering::Acquire);
        let mut reason = match (self.hosts.get(last), states.get(last)) {
            (Some(h), Some(s)) => match (&s.last_error, s.role) {
                (Some(e), _) => format!("primary {} is unreachable ({e})", h.label),
                (None, Role::Replica) => format!("{} is now a replica", h.label),
                _ => format!("primary {} is not available", h.label),
            },
            _ => "the primary is not available".to_string(),
        };
        reason.push_str(" and no other configured host reports read-write");
        Error::NoPrimary { reason }
    }

    /// A failed connection attempt outside the monitor (a checkout, a lost
    /// connection): counts like a failed check.
    pub(crate) fn note_failure(&self, idx: usize, error: String) {
        let now = Instant::now();
        let mut states = self.lock();
        let s = &mut states[idx];
        s.failures += 1;
        s.health = Health::Down;
        s.last_error = Some(error);
        metrics::counter!(m::HOST_FAILURES, "host" => self.hosts[idx].label.clone()).increment(1);
        self.decide(&mut states, now);
    }

    /// Records one check of host `idx` and re-decides routing.
    pub(crate) fn apply_probe(&self, idx: usize, result: Result<Probe, String>) {
        let now = Instant::now();
        let mut states = self.lock();
        let wt = self.write_target.load(Ordering::Acquire);
        let primary_lsn = match wt {
            NONE => None,
            w if w == idx => None,
            w => states[w].lsn,
        };
        let label = &self.hosts[idx].label;
        let s = &mut states[idx];
        s.last_check = Some(now);
        match result {
            Ok(p) => {
                s.health = Health::Up;
                s.failures = 0;
                s.last_error = None;
                s.role = if p.in_recovery {
                    Role::Replica
                } else {
                    Role::Primary
                };
                s.lsn = p.lsn;
                s.lag = p.lag;
                s.replay_paused = p.replay_paused;
                metrics::gauge!(m::HOST_UP, "host" => label.clone()).set(1.0);
                if s.role == Role::Replica {
                    s.lag_bytes = primary_lsn.zip(s.lsn).map(|(p, r)| p.saturating_sub(r));
                    let over_bytes = s.lag_bytes.is_some_and(|b| b > self.settings.max_lag_bytes);
                    let over_time = match (s.lag, self.settings.max_lag) {
                        (Some(lag), Some(max)) => lag > max,
                        _ => false,
                    };
                    s.over_lag = if over_bytes || over_time {
                        s.over_lag + 1
                    } else {
                        0
                    };
                    self.hosts[idx]
                        .replay_lsn
                        .store(s.lsn.unwrap_or(0), Ordering::Release);
                    metrics::gauge!(m::REPLICA_LAG_BYTES, "host" => label.clone())
                        .set(s.lag_bytes.unwrap_or(0) as f64);
                    metrics::gauge!(m::REPLICA_LAG_SECONDS, "host" => label.clone())
                        .set(s.lag.unwrap_or_default().as_secs_f64());
                } else {
                    s.lag_bytes = None;
                    s.over_lag = 0;
                    self.hosts[idx].replay_lsn.store(0, Ordering::Release);
                }
            }
            Err(e) => {
                if s.health != Health::Down {
                    tracing::warn!(host = %label, error = %e, "health check failed");
                }
                s.health = Health::Down;
                s.failures += 1;
                s.last_error = Some(e);
                metrics::gauge!(m::HOST_UP, "host" => label.clone()).set(0.0);
                metrics::counter!(m::HOST_FAILURES, "host" => label.clone()).increment(1);
            }
        }
        self.decide(&mut states, now);
    }

    /// Who takes writes, which replicas take reads. Called with the lock held
    /// after every change.
    fn decide(&self, states: &mut [HostState], now: Instant) {
        let mut wt = self.write_target.load(Ordering::Acquire);
        // The write target is lost on its first failure: writes then fail
        // fast instead of each waiting for a connect timeout.
        if wt != NONE {
            let s = &states[wt];
            if s.failures > 0 || s.role == Role::Replica {
                tracing::warn!(host = %self.hosts[wt].label, "primary lost; writes fail until a primary is found");
                wt = NONE;
            }
        }
        if wt == NONE {
            let last = self.last_primary.load(Ordering::Acquire);
            let candidates: Vec<usize> = (0..states.len())
                .filter(|&i| {
                    states[i].role == Role::Primary
                        && states[i].health == Health::Up
                        && states[i].failures == 0
                })
                .collect();
            // After a failover the old primary may come back still thinking
            // it is the primary: prefer a host other than the one just lost.
            // Before any primary was chosen, prefer the configured one.
            let had = self.had_primary.load(Ordering::Acquire);
            let pick = if had {
                candidates.iter().copied().find(|&i| i != last)
            } else {
                candidates.iter().copied().find(|&i| i == last)
            }
            .or_else(|| candidates.first().copied());
            if let Some(p) = pick {
                if had && p != last {
                    tracing::warn!(host = %self.hosts[p].label, "failover: writes now go to this host");
                    metrics::counter!(m::FAILOVERS, "host" => self.hosts[p].label.clone())
                        .increment(1);
                } else {
                    tracing::info!(host = %self.hosts[p].label, "writes go to this host");
                }
                self.last_primary.store(p, Ordering::Release);
                self.had_primary.store(true, Ordering::Release);
                wt = p;
            }
        }
        self.write_target.store(wt, Ordering::Release);

        let threshold = self.settings.failure_threshold;
        let others = states.len() - usize::from(wt != NONE);
        let max_lag_ejected = (others / 2).max(1);
        for (i, s) in states.iter_mut().enumerate() {
            if i == wt {
                s.ejected = None;
                continue;
            }
            // Down replicas are always ejected, whatever the count.
            if s.failures >= threshold {
                match s.ejected {
                    Some((EjectReason::Down, _)) => {}
                    _ => {
                        tracing::warn!(host = %self.hosts[i].label, failures = s.failures, "replica ejected: down");
                        metrics::counter!(m::EJECTIONS, "host" => self.hosts[i].label.clone(), "reason" => "down").increment(1);
                        s.ejected = Some((EjectReason::Down, now + self.settings.eject_for));
                    }
                }
            } else if let Some((_, until)) = s.ejected {
                if now >= until && s.health == Health::Up && s.failures == 0 && s.over_lag == 0 {
                    tracing::info!(host = %self.hosts[i].label, "replica re-admitted");
                    s.ejected = None;
                }
            }
        }
        let mut ejected = states
            .iter()
            .enumerate()
            .filter(|&(i, s)| i != wt && s.ejected.is_some())
            .count();
        for (i, s) in states.iter_mut().enumerate() {
            if i == wt || s.ejected.is_some() || s.role != Role::Replica || s.over_lag < LAG_CHECKS
            {
                continue;
            }
            // At most half the replicas (at least one) out for lag at once:
            // a slow replica is better than a primary buried in reads.
            if ejected >= max_lag_ejected {
                break;
            }
            tracing::warn!(host = %self.hosts[i].label, lag_bytes = ?s.lag_bytes, lag = ?s.lag, "replica ejected: lagging");
            metrics::counter!(m::EJECTIONS, "host" => self.hosts[i].label.clone(), "reason" => "lag").increment(1);
            s.ejected = Some((EjectReason::Lag, now + self.settings.eject_for));
            ejected += 1;
        }
        for (i, s) in states.iter().enumerate() {
            let rotate = i != wt && s.role == Role::Replica && s.ejected.is_none();
            self.hosts[i].in_rotation.store(rotate, Ordering::Release);
        }
    }

    /// Closes idle and expired connections and updates the connection gauges.
    pub(crate) fn maintain(&self, idx: usize) {
        let host = &self.hosts[idx];
        let keep = Keep::new(&self.settings);
        let removed = host.pool.retain(|_, metrics| keep.keep(&metrics)).removed;
        drop(removed);
        let st = host.pool.status();
        let role = {
            let wt = self.write_target.load(Ordering::Acquire);
            let mut states = self.lock();
            let role = if wt == idx {
                Role::Primary
            } else {
                states[idx].role
            };
            let previous = std::mem::replace(&mut states[idx].gauge_role, role);
            if previous != role {
                for state in ["active", "idle", "waiting"] {
                    metrics::gauge!(m::CONNECTIONS, "host" => host.label.clone(), "role" => previous.as_str(), "state" => state).set(0.0);
                }
            }
            role
        };
        let set = |state: &'static str, v: usize| {
            metrics::gauge!(m::CONNECTIONS, "host" => host.label.clone(), "role" => role.as_str(), "state" => state)
                .set(v as f64);
        };
        set("active", st.size.saturating_sub(st.available));
        set("idle", st.available);
        set("waiting", st.waiting);
    }

    pub(crate) fn status(&self) -> Vec<HostStatus> {
        let now = Instant::now();
        let wt = self.write_target.load(Ordering::Acquire);
        let states = self.lock();
        self.hosts
            .iter()
            .zip(states.iter())
            .enumerate()
            .map(|(i, (h, s))| {
                let st = h.pool.status();
                HostStatus {
                    host: h.label.clone(),
                    url: h.masked_url.clone(),
                    configured_role: h.configured,
                    role: s.role,
                    health: s.health,
                    writes: i == wt,
                    reads: h.in_rotation.load(Ordering::Acquire),
                    ejected: s.ejected.map(|(reason, until)| Ejection {
                        reason,
                        remaining_ms: millis(until.saturating_duration_since(now)),
                    }),
                    consecutive_failures: s.failures,
                    last_error: s.last_error.clone(),
                    lsn: s.lsn.map(|l| Token::from_lsn(l).to_string()),
                    lag_bytes: if s.role == Role::Replica {
                        s.lag_bytes
                    } else {
                        None
                    },
                    lag_ms: if s.role == Role::Replica {
                        s.lag.map(millis)
                    } else {
                        None
                    },
                    replay_paused: s.replay_paused,
                    checked_ms_ago: s
                        .last_check
                        .map(|t| millis(now.saturating_duration_since(t))),
                    pool: PoolState {
                        max_size: st.max_size,
                        size: st.size,
                        idle: st.available,
                        active: st.size.saturating_sub(st.available),
                        waiting: st.waiting,
                    },
                }
            })
            .collect()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
