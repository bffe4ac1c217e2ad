//! `RwPool`: the hosts, the routing of each request, and the state the
//! monitors share with it. The decisions (who takes writes, which replicas
//! take reads) are the health policy's (`crate::health`); this file runs the
//! checks through it, publishes its routing to atomics every request reads
//! without a lock, and turns its events into logs and metrics.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    HookError, Manager, ManagerConfig, Metrics, Pool, PoolError, RecyclingMethod, Runtime,
    TimeoutType,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::PgLsn;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::conn::Kind;
use crate::health::{Event, Policy, Probe};
use crate::metrics as m;
use crate::monitor::{self, Prober};
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
    /// Connections reads may hold while this host takes writes: its size
    /// minus the write reserve, so reads that fall back to the primary can
    /// never take the connections writes need. None with no reserve.
    pub read_slots: Option<Arc<Semaphore>>,
    /// Connections kept for writes while this host takes them.
    pub write_reserve: usize,
    pub checkout_wait: metrics::Histogram,
    pub query_duration: metrics::Histogram,
    /// The role label its connection gauges were last set under.
    gauge_role: Mutex<Role>,
}

/// Everything the pool handle, the connections and the monitors share.
pub(crate) struct Shared {
    pub hosts: Vec<Host>,
    pub settings: Settings,
    /// The health policy: what the checks found and what was decided.
    policy: Mutex<Policy>,
    /// The policy's write target, for the lock-free fast path.
    write_target: AtomicUsize,
    rr: AtomicUsize,
}

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
            let reserve = settings.write_reserve.min(max_size - 1);
            hosts.push(Host {
                masked_url: crate::mask_password(raw),
                tls,
                configured: *role,
                pool,
                in_rotation: AtomicBool::new(false),
                replay_lsn: AtomicU64::new(0),
                outstanding: AtomicUsize::new(0),
                read_slots: (reserve > 0).then(|| Arc::new(Semaphore::new(max_size - reserve))),
                write_reserve: reserve,
                checkout_wait: metrics::histogram!(m::CHECKOUT_WAIT, "host" => label.clone()),
                query_duration: metrics::histogram!(m::QUERY_DURATION, "host" => label.clone()),
                gauge_role: Mutex::new(Role::Unknown),
                label,
            });
        }

        let rules = settings.rules();
        let shared = Arc::new(Shared {
            policy: Mutex::new(Policy::new(rules, hosts.len())),
            hosts,
            settings,
            write_target: AtomicUsize::new(NONE),
            rr: AtomicUsize::new(0),
        });

        // The first check of every host, so routing starts from facts, and
        // from all of them at once: the first host to answer must not take
        // writes because it answered first (it may be a stale primary).
        let limit = shared.settings.check_timeout();
        let results = futures::future::join_all(probers.iter_mut().map(|p| p.probe(limit))).await;
        shared.apply_first_probes(results);

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
    /// (the primary is down and no replica has been promoted yet), and with
    /// [`Error::SplitBrain`] while several do on the same timeline. Writes
    /// are never limited by the read slots (see [`Config::write_reserve`]).
    pub async fn write(&self) -> Result<Conn, Error> {
        self.shared().write().await
    }

    /// A connection for reads: a healthy replica chosen by the strategy, else
    /// the primary (unless `fallback = "error"`). A replica that cannot be
    /// reached is skipped, so a replica going down does not fail reads.
    ///
    /// A read served by the primary holds one of its read slots (its size
    /// minus [`Config::write_reserve`]) and waits up to the checkout timeout
    /// for one ([`Error::ReadSlotTimeout`]). With no host up at all it fails
    /// with [`Error::NoHost`].
    pub async fn read(&self) -> Result<Conn, Error> {
        self.shared().read(None).await
    }

    /// A connection that sees everything committed up to `token`: a replica
    /// that has replayed it, waiting up to `read_after_wait_ms` for one, else
    /// the primary. With `read_after_wait_ms = 0` the replicas are not asked:
    /// unless the monitor's last reading already shows one past the token,
    /// the primary answers at once (memcache's "remote marker" rule: a read
    /// of something just written goes where the write is).
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
    fn lock(&self) -> MutexGuard<'_, Policy> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.policy.lock().unwrap_or_else(|e| e.into_inner())
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
            return Err(self.no_host_for_reads());
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
        // Else ask the replicas themselves until one has replayed the token
        // (unless no wait is allowed: asking costs a checkout and a round
        // trip, and right after a write the answer is mostly "not yet").
        if !order.is_empty() && !self.settings.read_after_wait.is_zero() {
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
        // A read on the host that takes writes holds one of its read slots,
        // so reads falling back to the primary leave the write reserve free.
        let permit = match (kind, &host.read_slots) {
            (Kind::Read | Kind::ReadAfter(_), Some(slots))
                if self.write_target.load(Ordering::Acquire) == idx =>
            {
                Some(self.read_slot(idx, slots.clone()).await?)
            }
            _ => None,
        };
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
                Ok(Conn::new(obj, self.clone(), idx, kind, permit))
            }
            Err(e) => Err(self.checkout_error(idx, kind, e)),
        }
    }

    /// One of the read slots of host `idx` (the host that takes writes),
    /// waiting at most the checkout timeout for one.
    async fn read_slot(
        &self,
        idx: usize,
        slots: Arc<Semaphore>,
    ) -> Result<OwnedSemaphorePermit, Error> {
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let acquired = match self.settings.checkout_timeout {
            Some(limit) => tokio::time::timeout(limit, slots.acquire_owned())
                .await
                .ok(),
            None => Some(slots.acquire_owned().await),
        };
        match acquired {
            Some(Ok(p)) => Ok(p),
            Some(Err(_)) => Err(Error::Closed),
            None => {
                let host = self.hosts[idx].label.clone();
                metrics::counter!(m::TIMEOUTS, "host" => host.clone(), "kind" => "checkout")
                    .increment(1);
                Err(Error::ReadSlotTimeout {
                    host,
                    after: self.settings.checkout_timeout.unwrap_or_default(),
                    reserve: self.hosts[idx].write_reserve,
                })
            }
        }
    }

    fn checkout_error(&self, idx: usize, kind: Kind, e: PoolError) -> Error {
        let host = self.hosts[idx].label.clone();
        // The role the connection was wanted in: a write goes to the primary
        // even when the pool has just lost it.
        let role = match kind {
            Kind::Write => "primary",
            _ if self.write_target.load(Ordering::Acquire) == idx => "primary",
            _ => "replica",
        };
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
                Error::Connect {
                    host,
                    role,
                    error: source,
                }
            }
            PoolError::Closed => Error::Closed,
            other => Error::Config(format!("cannot check out a connection to {host}: {other}")),
        }
    }

    /// Why the host that took writes last is not taking them, as a phrase.
    fn primary_gone(&self, policy: &Policy) -> String {
        let last = policy.last_primary();
        match (self.hosts.get(last), policy.hosts.get(last)) {
            (Some(h), Some(s)) => match (&s.last_error, s.role) {
                (Some(e), _) => format!("primary {} is unreachable ({e})", h.label),
                (None, Role::Replica) => format!("{} is now a replica", h.label),
                _ => format!("primary {} is not available", h.label),
            },
            _ => "the primary is not available".to_string(),
        }
    }

    /// More than one host accepts writes, and none is on a higher timeline
    /// than the others.
    fn split_brain_error(&self, policy: &Policy) -> Option<Error> {
        let hosts = policy.split_brain();
        if hosts.is_empty() || policy.write_target().is_some() {
            return None;
        }
        let list: Vec<String> = hosts
            .iter()
            .map(|&i| match policy.hosts[i].timeline {
                Some(t) => format!("{} (timeline {t})", self.hosts[i].label),
                None => format!("{} (timeline unknown)", self.hosts[i].label),
            })
            .collect();
        Some(Error::SplitBrain {
            hosts: list.join(", "),
        })
    }

    fn no_primary(&self) -> Error {
        let policy = self.lock();
        if let Some(e) = self.split_brain_error(&policy) {
            return e;
        }
        let mut reason = self.primary_gone(&policy);
        reason.push_str(" and no other configured host reports read-write");
        Error::NoPrimary { reason }
    }

    fn no_host_for_reads(&self) -> Error {
        let policy = self.lock();
        if let Some(e) = self.split_brain_error(&policy) {
            return e;
        }
        let reason = match policy.hosts.len() {
            1 => self.primary_gone(&policy),
            _ => format!(
                "no replica is in rotation and {}",
                self.primary_gone(&policy)
            ),
        };
        Error::NoHost { reason }
    }

    /// A failed connection attempt outside the monitor (a checkout, a lost
    /// connection): counts like a failed check.
    pub(crate) fn note_failure(&self, idx: usize, error: String) {
        metrics::counter!(m::HOST_FAILURES, "host" => self.hosts[idx].label.clone()).increment(1);
        let mut policy = self.lock();
        let events = policy.connection_failed(idx, error, Instant::now());
        self.publish(&policy);
        drop(policy);
        self.report(events);
    }

    /// The first check of every host, recorded together.
    fn apply_first_probes(&self, results: Vec<Result<Probe, String>>) {
        for (idx, r) in results.iter().enumerate() {
            self.probe_metrics(idx, r);
        }
        let mut policy = self.lock();
        let events = policy.observe_all(results, Instant::now());
        self.publish(&policy);
        self.host_metrics(&policy);
        drop(policy);
        self.report(events);
    }

    /// Records one check of host `idx` and re-decides routing.
    pub(crate) fn apply_probe(&self, idx: usize, result: Result<Probe, String>) {
        self.probe_metrics(idx, &result);
        let mut policy = self.lock();
        let events = policy.observe(idx, result, Instant::now());
        self.publish(&policy);
        self.host_metrics(&policy);
        drop(policy);
        self.report(events);
    }

    fn probe_metrics(&self, idx: usize, result: &Result<Probe, String>) {
        let label = &self.hosts[idx].label;
        let up = result.is_ok();
        metrics::gauge!(m::HOST_UP, "host" => label.clone()).set(if up { 1.0 } else { 0.0 });
        if !up {
            metrics::counter!(m::HOST_FAILURES, "host" => label.clone()).increment(1);
        }
    }

    fn host_metrics(&self, policy: &Policy) {
        for (h, s) in self.hosts.iter().zip(&policy.hosts) {
            metrics::gauge!(m::SPLIT_BRAIN, "host" => h.label.clone()).set(if s.split_brain {
                1.0
            } else {
                0.0
            });
            if s.role == Role::Replica && s.health == Health::Up {
                metrics::gauge!(m::REPLICA_LAG_BYTES, "host" => h.label.clone())
                    .set(s.lag_bytes.unwrap_or(0) as f64);
                metrics::gauge!(m::REPLICA_LAG_SECONDS, "host" => h.label.clone())
                    .set(s.lag.unwrap_or_default().as_secs_f64());
            }
        }
    }

    /// Publishes the policy's routing to the fast path: the write target,
    /// the replicas in rotation and their replay positions.
    fn publish(&self, policy: &Policy) {
        let wt = policy.write_target().unwrap_or(NONE);
        self.write_target.store(wt, Ordering::Release);
        for (i, (h, s)) in self.hosts.iter().zip(&policy.hosts).enumerate() {
            h.in_rotation
                .store(policy.in_rotation(i), Ordering::Release);
            let replay = match (s.role, s.health) {
                (Role::Replica, Health::Up) => s.lsn.unwrap_or(0),
                _ => 0,
            };
            h.replay_lsn.store(replay, Ordering::Release);
        }
    }

    /// Turns the policy's decisions into logs and metrics.
    fn report(&self, events: Vec<Event>) {
        let label = |i: usize| self.hosts[i].label.as_str();
        for e in events {
            match e {
                Event::HostDown { host, error } => {
                    tracing::warn!(host = %label(host), %error, "host down");
                }
                Event::PrimaryLost { host } => {
                    tracing::warn!(host = %label(host), "primary lost; writes fail until a primary is found");
                }
                Event::WritesTo { host, failover } => {
                    if failover {
                        tracing::warn!(host = %label(host), "failover: writes now go to this host");
                        metrics::counter!(m::FAILOVERS, "host" => label(host).to_string())
                            .increment(1);
                    } else {
                        tracing::info!(host = %label(host), "writes go to this host");
                    }
                }
                Event::SplitBrain { hosts, writes_to } => {
                    let all: Vec<&str> = hosts.iter().map(|&i| label(i)).collect();
                    match writes_to {
                        Some(w) => tracing::error!(
                            hosts = ?all,
                            writes_to = %label(w),
                            "split brain: several hosts accept writes; writes go to the one on the highest timeline"
                        ),
                        None => tracing::error!(
                            hosts = ?all,
                            "split brain: several hosts accept writes on the same timeline; writes are refused"
                        ),
                    }
                }
                Event::SplitBrainOver => {
                    tracing::info!("split brain over: one host accepts writes");
                }
                Event::Ejected { host, reason } => {
                    let why = match reason {
                        EjectReason::Down => "down",
                        EjectReason::Lag => "lag",
                    };
                    tracing::warn!(host = %label(host), reason = why, "replica ejected");
                    metrics::counter!(m::EJECTIONS, "host" => label(host).to_string(), "reason" => why)
                        .increment(1);
                }
                Event::Readmitted { host } => {
                    tracing::info!(host = %label(host), "replica re-admitted");
                }
            }
        }
    }

    /// Closes idle, expired and dead connections and updates the connection gauges.
    pub(crate) fn maintain(&self, idx: usize) {
        let host = &self.hosts[idx];
        let keep = Keep::new(&self.settings);
        // A connection whose server went away is closed on our side too:
        // drop it now rather than count it as open until a caller trips on it.
        let removed = host
            .pool
            .retain(|c, metrics| !c.is_closed() && keep.keep(&metrics))
            .removed;
        drop(removed);
        let st = host.pool.status();
        let role = {
            let wt = self.write_target.load(Ordering::Acquire);
            let role = if wt == idx {
                Role::Primary
            } else {
                self.lock().hosts[idx].role
            };
            let mut gauge_role = host.gauge_role.lock().unwrap_or_else(|e| e.into_inner());
            let previous = std::mem::replace(&mut *gauge_role, role);
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
        set("active", host.outstanding.load(Ordering::Relaxed));
        set("idle", st.available);
        set("waiting", st.waiting);
    }

    pub(crate) fn status(&self) -> Vec<HostStatus> {
        let now = Instant::now();
        let wt = self.write_target.load(Ordering::Acquire);
        let policy = self.lock();
        self.hosts
            .iter()
            .zip(policy.hosts.iter())
            .enumerate()
            .map(|(i, (h, s))| {
                let st = h.pool.status();
                let replica_up = s.role == Role::Replica && s.health == Health::Up;
                let active = h.outstanding.load(Ordering::Relaxed);
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
                    lag_bytes: if replica_up { s.lag_bytes } else { None },
                    lag_ms: if replica_up { s.lag.map(millis) } else { None },
                    replay_paused: if replica_up { s.replay_paused } else { None },
                    checked_ms_ago: s
                        .last_check
                        .map(|t| millis(now.saturating_duration_since(t))),
                    timeline: s.timeline,
                    split_brain: s.split_brain,
                    pool: PoolState {
                        max_size: st.max_size,
                        size: st.size,
                        idle: st.available,
                        active,
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
