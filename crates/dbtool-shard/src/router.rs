//! The router: team id -> shard -> that shard's pool; fan-out to all shards.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures::StreamExt;

use crate::config::Config;
use crate::error::Error;
use crate::fanout::{FanOut, FanOutError, ShardResult};
use crate::hot::{HotTeam, HotTeams};
use crate::map::{BucketRange, ShardMap};

/// A shard of one [`Router`]: an index into its shards, stable for the
/// router's life (map versions may move buckets, never renumber shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub(crate) u16);

impl ShardId {
    /// The index into [`Router::shards`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A shard handed to a fan-out closure or listed by [`Router::shards`].
#[derive(Debug)]
pub struct Shard<'a, P> {
    /// The shard's id in this router.
    pub id: ShardId,
    /// The shard's name.
    pub name: &'a str,
    /// The shard's pool.
    pub pool: &'a P,
}

impl<P> Clone for Shard<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Shard<'_, P> {}

/// One version of the map, resolved against a router's shards. Route a whole
/// batch with one `Routing` (from [`Router::routing`]) so the batch never
/// mixes two map versions.
#[derive(Debug)]
pub struct Routing {
    map: Arc<ShardMap>,
    /// Map shard index -> router shard id.
    ids: Box<[ShardId]>,
}

impl Routing {
    /// The map version.
    pub fn version(&self) -> u64 {
        self.map.version()
    }

    /// The map.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The shard of a team under this version.
    ///
    /// # Errors
    /// [`Error::Unroutable`] for an id the scheme cannot route.
    #[inline]
    pub fn shard_of(&self, team_id: &str) -> Result<ShardId, Error> {
        Ok(self.ids[self.map.shard_index(team_id)?])
    }
}

/// Writes to a bucket range held while a bucket move switches it to another
/// shard (announced in the catalog's `dbtool.shard_freeze`; see
/// [`Router::team_ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The buckets.
    pub range: BucketRange,
    /// When the hold ends at the latest, even if its release is never seen.
    pub until: SystemTime,
}

/// The SQLSTATE with which a shard refuses a write of a team that has moved
/// to another shard (`dbtool shard move`): route the write again.
pub const MOVED_SQLSTATE: &str = "DBM01";

/// True when a Postgres error is a shard refusing a write of a team that has
/// moved away ([`MOVED_SQLSTATE`]): the write was not made; route it again
/// (after [`Router::team_ready`]) and retry.
pub fn is_moved_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == MOVED_SQLSTATE)
}

/// Tuning of a [`Router`] (from the `[shard]` table: see [`Config`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// Shards queried at once by [`Router::all`] when it is passed 0.
    pub fanout_concurrency: usize,
    /// Per-shard time limit in [`Router::all`].
    pub fanout_timeout: Duration,
    /// Teams tracked by the hot-team counter.
    pub hot_teams: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options::from(&Config::default())
    }
}

impl From<&Config> for Options {
    fn from(c: &Config) -> Self {
        Options {
            fanout_concurrency: c.fanout_concurrency.max(1),
            fanout_timeout: Duration::from_secs(c.fanout_timeout_secs),
            hot_teams: c.hot_teams,
        }
    }
}

/// Per-shard counters, from [`Router::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard's name.
    pub shard: String,
    /// Buckets the current map gives it (0 for hex8-modulo maps).
    pub buckets: usize,
    /// Pools handed out by [`Router::team`] for it.
    pub queries: u64,
    /// Fan-out calls it answered.
    pub fanout_ok: u64,
    /// Fan-out calls it failed or timed out.
    pub fanout_failed: u64,
}

struct Slot<P> {
    name: Arc<str>,
    pool: P,
    queries: AtomicU64,
    fanout_ok: AtomicU64,
    fanout_failed: AtomicU64,
    // Registered once: building a metric key per query would cost more than routing.
    queries_metric: metrics::Counter,
}

/// Routes team ids to shards and hands out each shard's pool.
///
/// `P` is the per-shard pool: [`dbtool_pool::RwPool`] for services (see
/// [`Router::connect`]), or anything else (a URL, a client) for tools.
/// `router.team(id)?.write().await?` is the usual call.
///
/// The current map is one `Arc` snapshot swapped atomically: every routing
/// call sees exactly one version, and a new version (from
/// [`install`](Router::install) or the catalog watcher) replaces it without a
/// restart. The set of shards is fixed at construction; a map naming a shard
/// the router has no pool for is refused.
pub struct Router<P = dbtool_pool::RwPool> {
    slots: Vec<Slot<P>>,
    routing: ArcSwap<Routing>,
    holds: ArcSwap<Vec<Hold>>,
    released: tokio::sync::Notify,
    install_lock: Mutex<()>,
    hot: HotTeams,
    options: Options,
    pub(crate) watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) refresh_error: Mutex<Option<String>>,
}

impl<P> std::fmt::Debug for Router<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "shards",
                &self.slots.iter().map(|s| &*s.name).collect::<Vec<_>>(),
            )
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl<P> Drop for Router<P> {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.get_mut().ok().and_then(Option::take) {
            w.abort();
        }
    }
}

impl<P> Router<P> {
    /// A router over `pools` (shard name, pool), routing with `map`.
    ///
    /// # Errors
    /// [`Error::UnknownShard`] when the map names a shard without a pool;
    /// [`Error::Config`] for a pool named twice.
    pub fn new(
        map: ShardMap,
        pools: impl IntoIterator<Item = (String, P)>,
        options: Options,
    ) -> Result<Router<P>, Error> {
        let mut slots: Vec<Slot<P>> = Vec::new();
        for (name, pool) in pools {
            if slots.iter().any(|s| *s.name == *name) {
                return Err(Error::Config(format!("shard {name:?} has two pools")));
            }
            if slots.len() >= usize::from(u16::MAX) {
                return Err(Error::Config("too many shards".into()));
            }
            slots.push(Slot {
                queries_metric: metrics::counter!("dbtool_shard_queries_total", "shard" => name.clone()),
                name: name.into(),
                pool,
                queries: AtomicU64::new(0),
                fanout_ok: AtomicU64::new(0),
                fanout_failed: AtomicU64::new(0),
            });
        }
        let routing = resolve(&slots, Arc::new(map))?;
        metrics::gauge!("dbtool_shard_map_version").set(routing.version() as f64);
        Ok(Router {
            hot: HotTeams::new(options.hot_teams),
            slots,
            routing: ArcSwap::from_pointee(routing),
            holds: ArcSwap::from_pointee(Vec::new()),
            released: tokio::sync::Notify::new(),
            install_lock: Mutex::new(()),
            options,
            watcher: Mutex::new(None),
            refresh_error: Mutex::new(None),
        })
    }

    /// The shard of a team under the current map. Pure and fast (one atomic
    /// load, one hash, one table lookup): not counted in metrics.
    ///
    /// # Errors
    /// [`Error::Unroutable`] for an id the scheme cannot route.
    #[inline]
    pub fn shard_of(&self, team_id: &str) -> Result<ShardId, Error> {
        self.routing.load().shard_of(team_id)
    }

    /// The pool of a team's shard; counts the query for per-shard metrics and
    /// the hot-team counter.
    ///
    /// # Errors
    /// [`Error::Unroutable`] for an id the scheme cannot route.
    pub fn team(&self, team_id: &str) -> Result<&P, Error> {
        let slot = &self.slots[self.shard_of(team_id)?.index()];
        slot.queries.fetch_add(1, Ordering::Relaxed);
        slot.queries_metric.increment(1);
        self.hot.record(team_id);
        Ok(&slot.pool)
    }

    /// Like [`team`](Router::team), for a write: while a bucket move holds
    /// the team's bucket (the switch of a `dbtool shard move`), waits until
    /// the hold is released or ends, then routes with the map then current.
    /// Teams of other buckets never wait (one atomic load when nothing is
    /// held).
    ///
    /// # Errors
    /// [`Error::Unroutable`] for an id the scheme cannot route.
    pub async fn team_ready(&self, team_id: &str) -> Result<&P, Error> {
        if !self.holds.load().is_empty() && self.map().scheme() == crate::Scheme::Buckets {
            let bucket = crate::scheme::bucket_of(team_id)?;
            loop {
                let released = self.released.notified();
                futures::pin_mut!(released);
                released.as_mut().enable();
                let until = self
                    .holds
                    .load()
                    .iter()
                    .filter(|h| h.range.contains(bucket))
                    .map(|h| h.until)
                    .max();
                let Some(wait) = until.and_then(|u| u.duration_since(SystemTime::now()).ok())
                else {
                    break;
                };
                tokio::select! {
                    _ = released => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        self.team(team_id)
    }

    /// Replaces the held bucket ranges (the catalog watcher calls this);
    /// writes waiting in [`team_ready`](Router::team_ready) on a range no
    /// longer held go on.
    pub fn set_holds(&self, holds: Vec<Hold>) {
        if **self.holds.load() != holds {
            self.holds.store(Arc::new(holds));
            self.released.notify_waiters();
        }
    }

    /// The bucket ranges whose writes are held now.
    pub fn holds(&self) -> Vec<Hold> {
        self.holds.load().as_ref().clone()
    }

    /// The name of a shard.
    pub fn shard_name(&self, id: ShardId) -> &str {
        &self.slots[id.index()].name
    }

    /// The pool of a shard.
    pub fn pool(&self, id: ShardId) -> &P {
        &self.slots[id.index()].pool
    }

    /// A shard by name.
    pub fn shard(&self, name: &str) -> Option<Shard<'_, P>> {
        self.shards().find(|s| s.name == name)
    }

    /// Every shard of the router, in order (including shards the current map
    /// gives no buckets).
    pub fn shards(&self) -> impl ExactSizeIterator<Item = Shard<'_, P>> + '_ {
        self.slots.iter().enumerate().map(|(i, s)| Shard {
            id: ShardId(i as u16),
            name: &s.name,
            pool: &s.pool,
        })
    }

    /// The current map version, resolved against this router's shards.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// The current map.
    pub fn map(&self) -> Arc<ShardMap> {
        self.routing.load().map.clone()
    }

    /// The current map version.
    pub fn version(&self) -> u64 {
        self.routing.load().version()
    }

    /// Switches to `map` if it is newer than the current version. Returns
    /// whether it was installed (`false` for an older or equal version).
    ///
    /// # Errors
    /// [`Error::UnknownShard`] when the map names a shard without a pool; the
    /// current map stays.
    pub fn install(&self, map: ShardMap) -> Result<bool, Error> {
        let _serial = self.install_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.version();
        if map.version() <= current {
            return Ok(false);
        }
        let routing = resolve(&self.slots, Arc::new(map))?;
        tracing::info!(
            from = current,
            to = routing.version(),
            "shard map version installed"
        );
        metrics::gauge!("dbtool_shard_map_version").set(routing.version() as f64);
        self.routing.store(Arc::new(routing));
        Ok(true)
    }

    /// The last error of the catalog watcher, if its last attempt failed (or
    /// it refused a version); `None` when healthy or not watching.
    pub fn refresh_error(&self) -> Option<String> {
        self.refresh_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `k` teams that asked [`team`](Router::team) for a pool most often.
    pub fn hot_teams(&self, k: usize) -> Vec<HotTeam> {
        self.hot.top(k)
    }

    /// The hot-team counter itself (to reset it per reporting window).
    pub fn hot_team_counter(&self) -> &HotTeams {
        &self.hot
    }

    /// Per-shard counters.
    pub fn stats(&self) -> Vec<ShardStats> {
        let map = self.map();
        self.slots
            .iter()
            .map(|s| ShardStats {
                shard: s.name.to_string(),
                buckets: map.bucket_count(&s.name),
                queries: s.queries.load(Ordering::Relaxed),
                fanout_ok: s.fanout_ok.load(Ordering::Relaxed),
                fanout_failed: s.fanout_failed.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Runs `f` on every shard, at most `concurrency` at once (0: the
    /// configured `fanout_concurrency`), each within the fan-out time limit.
    /// Returns every shard's result in shard order; failed and timed-out
    /// shards are named there (see [`FanOut::into_result`] for
    /// all-or-nothing).
    ///
    /// ```no_run
    /// # async fn example(router: &dbtool_shard::Router<tokio_postgres::Config>) -> Result<(), dbtool_shard::Error> {
    /// let counts = router
    ///     .all(4, |shard| async move {
    ///         let (client, conn) = shard.pool.connect(tokio_postgres::NoTls).await?;
    ///         tokio::spawn(conn);
    ///         let n: i64 = client.query_one("SELECT count(*) FROM posts", &[]).await?.get(0);
    ///         Ok::<_, tokio_postgres::Error>(n as u64)
    ///     })
    ///     .await
    ///     .into_result()?;
    /// let total = dbtool_shard::sum_counts(counts.into_iter().map(|(_, n)| n));
    /// # Ok(()) }
    /// ```
    pub async fn all<'a, T, E, F, Fut>(&'a self, concurrency: usize, f: F) -> FanOut<T, E>
    where
        F: Fn(Shard<'a, P>) -> Fut,
        Fut: Future<Output = Result<T, E>> + 'a,
    {
        let limit = self.options.fanout_timeout;
        let concurrency = if concurrency == 0 {
            self.options.fanout_concurrency
        } else {
            concurrency
        };
        let calls = self.shards().map(|shard| {
            let call = f(shard);
            async move {
                let start = Instant::now();
                let outcome = match tokio::time::timeout(limit, call).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(FanOutError::Failed(e)),
                    Err(_) => Err(FanOutError::TimedOut(limit)),
                };
                (shard.id, outcome, start.elapsed())
            }
        });
        let mut done: Vec<_> = futures::stream::iter(calls)
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        done.sort_by_key(|(id, _, _)| *id);
        let results = done
            .into_iter()
            .map(|(id, outcome, elapsed)| {
                let slot = &self.slots[id.index()];
                let label = match &outcome {
                    Ok(_) => {
                        slot.fanout_ok.fetch_add(1, Ordering::Relaxed);
                        "ok"
                    }
                    Err(e) => {
                        slot.fanout_failed.fetch_add(1, Ordering::Relaxed);
                        match e {
                            FanOutError::TimedOut(_) => "timeout",
                            _ => "error",
                        }
                    }
                };
                metrics::counter!("dbtool_shard_fanout_total", "shard" => slot.name.to_string(), "outcome" => label)
                    .increment(1);
                metrics::histogram!("dbtool_shard_fanout_seconds", "shard" => slot.name.to_string())
                    .record(elapsed.as_secs_f64());
                ShardResult {
                    id,
                    shard: slot.name.clone(),
                    outcome,
                    elapsed,
                }
            })
            .collect();
        FanOut { results }
    }
}

impl Router<dbtool_pool::RwPool> {
    /// The service set-up: one [`RwPool`](dbtool_pool::RwPool) per
    /// `[[shard.shards]]` entry (tuning from `pool`, the `[pool]` table, with
    /// the shard's URLs), the map from the catalog's newest version when
    /// `catalog` is set (else, or while the catalog holds none, `[shard.map]`),
    /// and a watcher following the catalog.
    ///
    /// # Errors
    /// [`Error::Config`] for no shards or a bad catalog URL, [`Error::Pool`],
    /// [`Error::Catalog`], and the map's errors.
    pub async fn connect(
        config: &Config,
        pool: &dbtool_pool::Config,
    ) -> Result<Arc<Router>, Error> {
        if config.shards.is_empty() {
            return Err(Error::Config(
                "no shards: list them in [[shard.shards]] with their primary URLs".into(),
            ));
        }
        let mut pools = Vec::with_capacity(config.shards.len());
        for shard in &config.shards {
            let c = dbtool_pool::Config {
                primary: Some(shard.primary.clone()),
                replicas: shard.replicas.clone(),
                ..pool.clone()
            };
            let built = c.build().await.map_err(|source| Error::Pool {
                shard: shard.name.clone(),
                source,
            })?;
            pools.push((shard.name.clone(), built));
        }
        let catalog = config.catalog_config()?;
        let mut map = None;
        if let Some(c) = &catalog {
            map = crate::catalog::Catalog::connect(c)
                .await?
                .load(None)
                .await?;
        }
        let map = match map {
            Some(m) => m,
            None => config.map()?,
        };
        let router = Arc::new(Router::new(map, pools, Options::from(config))?);
        if let Some(catalog) = catalog {
            router.watch(crate::Watch {
                catalog,
                poll: (config.refresh_secs > 0).then(|| Duration::from_secs(config.refresh_secs)),
                listen: config.listen,
            });
        }
        Ok(router)
    }
}

/// Resolves the map's shard names to the router's shard ids.
fn resolve<P>(slots: &[Slot<P>], map: Arc<ShardMap>) -> Result<Routing, Error> {
    let ids = map
        .shards()
        .iter()
        .map(|name| {
            slots
                .iter()
                .position(|s| *s.name == **name)
                .map(|i| ShardId(i as u16))
                .ok_or_else(|| Error::UnknownShard {
                    shard: name.clone(),
                    version: map.version(),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Routing { map, ids })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Scheme;

    fn router(n: usize) -> Router<usize> {
        let map = ShardMap::even_n(Scheme::Buckets, n).unwrap();
        Router::new(
            map,
            (0..n).map(|i| (format!("shard-{i}"), i)),
            Options::default(),
        )
        .unwrap()
    }

    #[test]
    fn router_routes_like_its_map() {
        let r = router(4);
        let map = r.map();
        for i in 0..1000 {
            let team = format!("team-{i}");
            let id = r.shard_of(&team).unwrap();
            assert_eq!(r.shard_name(id), map.shard_of(&team).unwrap());
            assert_eq!(*r.team(&team).unwrap(), id.index());
        }
    }

    #[test]
    fn install_takes_only_newer_versions_of_known_shards() {
        let r = router(2);
        let same = ShardMap::even_n(Scheme::Buckets, 2).unwrap();
        assert!(!r.install(same).unwrap());
        let three = ShardMap::even_n(Scheme::Buckets, 3)
            .unwrap()
            .with_version(2)
            .unwrap();
        assert!(
            matches!(r.install(three), Err(Error::UnknownShard { ref shard, version: 2 }) if shard == "shard-2")
        );
        assert_eq!(r.version(), 1);
        let swapped = ShardMap::even(Scheme::Buckets, vec!["shard-1".into(), "shard-0".into()])
            .unwrap()
            .with_version(5)
            .unwrap();
        assert!(r.install(swapped).unwrap());
        assert_eq!(r.version(), 5);
        let b0 = ShardMap::even_n(Scheme::Buckets, 2).unwrap();
        // A team in the first half of the buckets now goes to shard-1.
        let team = (0..)
            .map(|i| format!("t{i}"))
            .find(|t| b0.shard_of(t).unwrap() == "shard-0")
            .unwrap();
        assert_eq!(r.shard_name(r.shard_of(&team).unwrap()), "shard-1");
    }

    #[test]
    fn team_counts_queries_per_shard_and_hot_teams() {
        let r = router(2);
        for _ in 0..3 {
            r.team("busy").unwrap();
        }
        r.team("quiet").unwrap();
        assert_eq!(r.hot_teams(1)[0].team_id, "busy");
        assert_eq!(r.stats().iter().map(|s| s.queries).sum::<u64>(), 4);
        assert_eq!(r.stats().iter().map(|s| s.buckets).sum::<usize>(), 4096);
    }

    #[tokio::test]
    async fn all_names_the_failed_shard_and_keeps_the_others() {
        let r = router(3);
        let out = r
            .all(2, |s| async move {
                if s.name == "shard-1" {
                    Err("boom")
                } else {
                    Ok(*s.pool * 10)
                }
            })
            .await;
        assert_eq!(out.failed(), vec!["shard-1"]);
        let err = out.into_result().unwrap_err().to_string();
        assert_eq!(err, "1 of 3 shards failed: shard-1 (boom)");
    }

    #[tokio::test]
    async fn all_times_out_a_hung_shard() {
        let map = ShardMap::even_n(Scheme::Buckets, 2).unwrap();
        let opts = Options {
            fanout_timeout: Duration::from_millis(50),
            ..Options::default()
        };
        let r = Router::new(
            map,
            [("shard-0".to_string(), 0u64), ("shard-1".to_string(), 1)],
            opts,
        )
        .unwrap();
        let out = r
            .all(0, |s| async move {
                if s.id.index() == 1 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, std::convert::Infallible>(*s.pool)
            })
            .await;
        let (ok, failed) = out.partial();
        assert_eq!(ok.len(), 1);
        assert_eq!(&*failed[0].0, "shard-1");
        assert_eq!(failed[0].1.to_string(), "timed out after 50ms");
    }
}
