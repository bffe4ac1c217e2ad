//! [`Cache`]: the client services use.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Client;
use fred::interfaces::{
    ClientLike, ClusterInterface, EventInterface, HashesInterface, KeysInterface, LuaInterface,
    PubsubInterface,
};
use fred::types::config::{ReconnectPolicy, ServerConfig, UnresponsiveConfig};
use fred::types::{Builder, Expiration, SetOptions, Value};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};
use tokio::task::JoinHandle;

use crate::breaker::{Breaker, Breakers};
use crate::codec::{Codec, Json};
use crate::coherence::{Freshness, Inval, Pending, TagState};
use crate::entry::{self, Envelope, Record};
use crate::flight::{self, Flights, Role};
use crate::keys::{self, Keys, Message};
use crate::l1::{Negative, L1};
use crate::stats::{self, Recorder, Stats};
use crate::{Config, Error};

/// Per-entry options: TTL and tags.
///
/// ```
/// use std::time::Duration;
/// let opts = dbtool_cache::Options::ttl(Duration::from_secs(60)).tag("team:7").tag("topic:42");
/// assert_eq!(opts.tags, ["team:7", "topic:42"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// Time to live; `None` uses the config's `default_ttl_secs`.
    pub ttl: Option<Duration>,
    /// Tags: [`Cache::invalidate_tag`] on any of them drops this entry.
    pub tags: Vec<String>,
}

impl Options {
    /// Options with this TTL.
    pub fn ttl(ttl: Duration) -> Options {
        Options {
            ttl: Some(ttl),
            tags: Vec::new(),
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Options {
        self.tags.push(tag.into());
        self
    }
}

/// What `dbtool cache get` shows about one key.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Inspection {
    /// The Redis key.
    pub redis_key: String,
    /// Remaining Redis TTL in milliseconds (includes the fail-safe window).
    pub pttl_ms: i64,
    /// False when the bytes are not a dbtool-cache envelope.
    pub envelope: bool,
    /// A negative entry ("no such value").
    pub negative: bool,
    /// Written at (unix ms).
    pub created_ms: u64,
    /// Logical expiry (unix ms); after it the value is stale.
    pub expires_ms: u64,
    /// Loader duration recorded with the value (ms).
    pub delta_ms: u32,
    /// Each tag, the version stored with the value, and the tag's current version.
    pub tags: Vec<(String, u64, Option<u64>)>,
    /// True when fresh and every tag matches: a reader would get a hit.
    pub valid: bool,
    /// The payload, as JSON when it parses as JSON, else as lossy text.
    pub payload: serde_json::Value,
}

/// One master's view, from `INFO`, for `dbtool cache stats`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// `host:port`.
    pub node: String,
    /// `keyspace_hits` since the server started.
    pub keyspace_hits: u64,
    /// `keyspace_misses` since the server started.
    pub keyspace_misses: u64,
    /// `used_memory`, bytes.
    pub used_memory: u64,
    /// Keys in db0.
    pub keys: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
}

/// A Redis Cluster cache: typed, fail-open, single-flight, with tags and an
/// optional L1. Cheap to clone (one shared connection set).
///
/// See the crate docs for an example and `docs/cache.md` for the guarantees.
pub struct Cache<C: Codec = Json> {
    inner: Arc<Inner<C>>,
}

impl<C: Codec> Clone for Cache<C> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Codec> std::fmt::Debug for Cache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.cfg.namespace)
            .field("nodes", &self.inner.cfg.nodes)
            .field("l1", &self.inner.l1.is_some())
            .finish()
    }
}

struct Inner<C> {
    client: Client,
    /// A second connection set, only for the L1 invalidation channel (a
    /// RESP2 connection in subscribe mode cannot run other commands).
    subscriber: Option<Client>,
    codec: C,
    keys: Keys,
    cfg: Config,
    breakers: Breakers,
    pending: Pending,
    flights: Flights,
    stats: Recorder,
    l1: Option<L1>,
    instance: u64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
        {
            t.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let sub = self.subscriber.clone();
            rt.spawn(async move {
                let _ = client.quit().await;
                if let Some(s) = sub {
                    let _ = s.quit().await;
                }
            });
        }
    }
}

/// Why a Redis call did not answer.
#[derive(Debug)]
enum Failure {
    Breaker,
    Timeout,
    Redis(fred::error::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Breaker => f.write_str("circuit breaker open"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Redis(e) => f.write_str(&crate::error::human(e)),
        }
    }
}

/// What a read found.
enum Found<T> {
    /// Fresh: `due` when XFetch says refresh now.
    Fresh {
        value: Option<T>,
        due: bool,
        /// Logical expiry (unix ms): L1 must not keep it longer.
        expires_ms: u64,
    },
    /// Past its logical expiry, inside the fail-safe window.
    Stale(Option<T>),
    Miss,
}

/// What the leader of a `get_or_load` got.
struct Led<T> {
    result: Result<Option<T>, Error>,
    /// Its read was counted as a hit.
    hit: bool,
    /// False when the fill was refused (an invalidation came during the
    /// load): callers that joined later must not take this value.
    shareable: bool,
}

/// What became of a fill.
enum Filled {
    /// Stored; its logical expiry (unix ms).
    Stored(u64),
    /// The key holds another generation: invalidated during the load.
    Refused,
    /// The key holds nothing: the lease expired during the load.
    Expired,
}

/// What one read learned besides the value.
struct ReadState {
    /// Current versions of the hinted tags.
    versions: Vec<Option<u64>>,
    /// False once Redis failed in this call.
    ok: bool,
    /// The token a fill must find; `None` when the key is absent.
    token: Option<Vec<u8>>,
    /// What a load must read (markers, tag invalidations).
    fresh: Freshness,
    /// An invalidation of the key or a tag has not reached Redis yet: do
    /// not fill.
    pending: bool,
}

impl ReadState {
    fn new() -> ReadState {
        ReadState {
            versions: Vec::new(),
            ok: true,
            token: None,
            fresh: Freshness::Any,
            pending: false,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Cache<Json> {
    /// Connects to the cluster with the JSON codec.
    ///
    /// Fails when the config is invalid or no seed node answers within
    /// `connect_timeout_ms`; after that, Redis trouble never fails a read.
    pub async fn connect(config: Config) -> Result<Cache<Json>, Error> {
        Cache::connect_with_codec(config, Json).await
    }
}

impl<C: Codec> Cache<C> {
    /// Connects with another [`Codec`].
    pub async fn connect_with_codec(config: Config, codec: C) -> Result<Cache<C>, Error> {
        let config = config.resolved()?;
        let hosts = config.validate()?;
        let timeout = config.command_timeout();
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let mut fc = fred::types::config::Config {
            server: ServerConfig::new_clustered(hosts),
            username: config.username.clone(),
            password: config.password.clone(),
            fail_fast: true,
            ..Default::default()
        };
        if config.tls {
            fc.tls = Some(tls_config(&config)?);
        }
        let mut builder = Builder::from_config(fc);
        builder.with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.max_command_attempts = config.retry.retries + 1;
            // A node that stops answering (paused, network split) is dropped
            // and reconnected instead of holding commands until the timeout.
            let unresponsive = (timeout * 8).max(Duration::from_secs(2));
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(unresponsive),
                interval: unresponsive / 4,
            };
        });
        builder.with_performance_config(|p| p.default_command_timeout = timeout);
        if config.reconnect {
            // fred's default is no reconnect at all. Retry forever with the
            // old app's backoff: min(step * attempt, max).
            builder.set_policy(ReconnectPolicy::new_linear(
                0,
                config.retry.max_ms,
                config.retry.step_ms,
            ));
        }
        let nodes = crate::config::mask_url(&config.nodes.join(","));
        let connect_err = |error| Error::Connect {
            nodes: nodes.clone(),
            error,
        };
        let client = builder.build().map_err(connect_err)?;
        init(&client, connect_timeout).await.map_err(connect_err)?;

        let (subscriber, l1) = if config.l1.enabled {
            let sub = builder.build().map_err(connect_err)?;
            init(&sub, connect_timeout).await.map_err(connect_err)?;
            let l1 = L1::new(
                config.l1.max_entries,
                config.l1.ttl_secs.saturating_mul(1000),
            );
            (Some(sub), Some(l1))
        } else {
            (None, None)
        };

        let inner = Arc::new(Inner {
            keys: Keys::new(&config.namespace),
            stats: Recorder::new(&config.namespace),
            breakers: Breakers::new(
                config.breaker.failures,
                Duration::from_millis(config.breaker.open_ms),
            ),
            pending: Pending::default(),
            flights: Flights::default(),
            instance: rand::rng().random(),
            client,
            subscriber,
            codec,
            l1,
            cfg: config,
            tasks: Mutex::new(Vec::new()),
        });
        route_breakers(&inner);
        let mut tasks = vec![
            tokio::spawn(routes_task(Arc::downgrade(&inner))),
            tokio::spawn(pending_task(Arc::downgrade(&inner))),
        ];
        if let Some(sub) = &inner.subscriber {
            let channel = inner.keys.channel();
            sub.subscribe(channel.as_str()).await.map_err(connect_err)?;
            if let Some(l1) = &inner.l1 {
                l1.set_live(true);
            }
            tasks.push(tokio::spawn(l1_task(
                Arc::downgrade(&inner),
                sub.clone(),
                inner.client.clone(),
                channel,
            )));
        }
        if inner.cfg.stats_flush_secs > 0 {
            tasks.push(tokio::spawn(stats_task(
                Arc::downgrade(&inner),
                Duration::from_secs(inner.cfg.stats_flush_secs),
            )));
        }
        *inner.tasks.lock().expect("tasks lock") = tasks;
        Ok(Cache { inner })
    }

    /// Closes the connections (this handle's and every clone's) and stops
    /// the background tasks, waiting for Redis to acknowledge. Dropping the
    /// last handle does the same in the background; a short-lived process
    /// (a CLI command) calls this before it exits so nothing is cut off
    /// mid-QUIT while the runtime shuts down.
    pub async fn close(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
        if let Some(s) = &self.inner.subscriber {
            let _ = s.quit().await;
        }
        let _ = self.inner.client.quit().await;
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The fred client underneath, for commands this crate does not wrap.
    pub fn redis(&self) -> &Client {
        &self.inner.client
    }

    /// This process's counters since connect.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// True while the circuit breaker of any master skips Redis.
    pub fn breaker_open(&self) -> bool {
        self.inner.breakers.any_open()
    }

    /// The masters (`host:port`) whose circuit breaker is open now: only
    /// the keys in their slots skip Redis.
    pub fn open_breakers(&self) -> Vec<String> {
        self.inner.breakers.open_nodes()
    }

    /// Invalidations (`delete`, `invalidate_tag`) that have not reached
    /// Redis yet. They are retried in the background until they land; until
    /// then this process treats their keys, and every entry with their tags,
    /// as misses.
    pub fn pending_invalidations(&self) -> usize {
        self.inner.pending.len()
    }

    /// The value of `key`, or `None` on a miss.
    ///
    /// Fail-open: a Redis error, a timeout or an open breaker is a miss, never
    /// an error. An entry invalidated by one of its tags is a miss. A negative
    /// entry is a hit that answers `None`.
    pub async fn get<T>(&self, key: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if let Some(v) = self.l1_get_cloned::<T>(key) {
            return v;
        }
        let epoch = self.l1_epoch();
        match self.read::<T>(key).await {
            Found::Fresh {
                value, expires_ms, ..
            } => {
                self.inner.stats.hit();
                self.l1_put(key, epoch, &value, expires_ms, None);
                value
            }
            Found::Stale(_) | Found::Miss => {
                self.inner.stats.miss();
                None
            }
        }
    }

    /// The value of `key` as a shared `Arc<T>`, or `None` on a miss.
    ///
    /// With L1 on, a hit hands out the very `Arc` L1 holds: no decode and no
    /// clone of `T`, whatever its size (the fastest read this crate has).
    /// A value read from Redis is decoded once and that `Arc` is what L1
    /// keeps. Without L1 it is [`Cache::get`] plus an `Arc`. Same fail-open
    /// and negative-entry rules as [`Cache::get`].
    pub async fn get_arc<T>(&self, key: &str) -> Option<Arc<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        if let Some(v) = self.l1_get::<T>(key) {
            return v;
        }
        let epoch = self.l1_epoch();
        match self.read::<T>(key).await {
            Found::Fresh {
                value, expires_ms, ..
            } => {
                self.inner.stats.hit();
                let value = value.map(Arc::new);
                self.l1_put_arc(key, epoch, value.clone(), expires_ms, None);
                value
            }
            Found::Stale(_) | Found::Miss => {
                self.inner.stats.miss();
                None
            }
        }
    }

    /// The values of many keys, in order; keys on different slots are read
    /// with one `MGET` per slot, concurrently (never a CROSSSLOT error).
    pub async fn get_many<T, K>(&self, keys: &[K]) -> Vec<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
        K: AsRef<str>,
    {
        let mut out: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut todo = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.l1_get_cloned::<T>(k.as_ref()) {
                Some(v) => out.push(v),
                // An invalidation of the key has not reached Redis yet.
                None if self
                    .inner
                    .pending
                    .concerns(k.as_ref(), std::iter::empty())
                    .is_some() =>
                {
                    self.inner.stats.miss();
                    out.push(None);
                }
                None => {
                    out.push(None);
                    todo.push(i);
                }
            }
        }
        if todo.is_empty() {
            return out;
        }
        let epoch = self.l1_epoch();
        let rkeys: Vec<String> = todo
            .iter()
            .map(|&i| self.inner.keys.value(keys[i].as_ref()))
            .collect();
        let raws = match self.mget(&rkeys).await {
            Ok(r) => r,
            Err(_) => {
                for _ in &todo {
                    self.inner.stats.miss();
                }
                return out;
            }
        };
        // Every tag of every entry, read at once.
        let envs: Vec<Option<Envelope<'_>>> = raws
            .iter()
            .map(|r| {
                r.as_ref()
                    .and_then(|v| v.as_bytes())
                    .and_then(entry::decode)
            })
            .collect();
        let mut tags: Vec<String> = envs
            .iter()
            .flatten()
            .flat_map(|e| e.tags.iter().map(|(t, _)| t.clone()))
            .collect();
        tags.sort();
        tags.dedup();
        let versions: Option<HashMap<String, Option<u64>>> = if tags.is_empty() {
            Some(HashMap::new())
        } else {
            self.read_tags(&tags)
                .await
                .ok()
                .map(|v| tags.iter().cloned().zip(v).collect())
        };
        let now = now_ms();
        for (j, env) in envs.into_iter().enumerate() {
            let i = todo[j];
            let key = keys[i].as_ref();
            let found = match (env, &versions) {
                (Some(env), _)
                    if self
                        .inner
                        .pending
                        .concerns(key, env.tags.iter().map(|(t, _)| t.as_str()))
                        .is_some() =>
                {
                    None
                }
                (Some(env), Some(versions)) => {
                    let valid = env
                        .tags
                        .iter()
                        .all(|(t, v)| versions.get(t).copied().flatten() == Some(*v));
                    if valid && now < env.expires_ms {
                        self.decode_value::<T>(key, &env)
                            .map(|v| (v, env.expires_ms))
                    } else {
                        None
                    }
                }
                _ => None,
            };
            match found {
                Some((value, expires_ms)) => {
                    self.inner.stats.hit();
                    self.l1_put(key, epoch, &value, expires_ms, None);
                    out[i] = value;
                }
                None => self.inner.stats.miss(),
            }
        }
        out
    }

    /// Stores `value` under `key` for `ttl` (shortened by the jitter).
    pub async fn set<T>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), Error>
    where
        T: Serialize + ?Sized,
    {
        self.set_with(key, value, &Options::ttl(ttl)).await
    }

    /// Stores `value` with [`Options`] (TTL and tags).
    ///
    /// Fail-open: when Redis cannot be reached (error, timeout, breaker
    /// open) the value is simply not cached and the call still returns
    /// `Ok(())`. The failure is counted in [`Stats::errors`] (or
    /// [`Stats::breaker_skips`]) and logged at `warn` with the key. This
    /// process's L1 entry for `key` is dropped first either way. Only an
    /// encoding failure ([`Error::Codec`], a bug in the value or codec) is
    /// returned. After changing the database, prefer [`Cache::delete`],
    /// which reports a lost invalidation.
    pub async fn set_with<T>(&self, key: &str, value: &T, opts: &Options) -> Result<(), Error>
    where
        T: Serialize + ?Sized,
    {
        let payload = self
            .inner
            .codec
            .encode(value)
            .map_err(|message| Error::Codec {
                op: "encode",
                key: key.to_owned(),
                message,
            })?;
        self.l1_forget(key);
        let stored = async {
            let versions = if opts.tags.is_empty() {
                Vec::new()
            } else {
                let current = self.read_tags(&opts.tags).await?;
                self.ensure_tags(&opts.tags, current).await?
            };
            let tagged: Vec<(String, u64)> = opts.tags.iter().cloned().zip(versions).collect();
            self.write(key, &payload, opts, &tagged).await.map(|_| ())
        }
        .await;
        match stored {
            Ok(()) => self.publish(Message::Key(key)).await,
            Err(reason) => tracing::warn!(
                namespace = %self.inner.cfg.namespace,
                key,
                reason = %reason,
                "cache: set not stored (fail-open); the next read misses or sees the previous value"
            ),
        }
        Ok(())
    }

    /// Deletes `key` everywhere (Redis, this L1, other processes' L1), and
    /// keeps any load that began before from storing its value afterwards.
    ///
    /// Redis gets an invalidation marker in place of the value (for
    /// `marker_ms`): reads miss, a fill whose load started before cannot
    /// land (its lease is gone), and a load that starts from the marker is
    /// told to read the primary ([`Freshness::Primary`]). Call it after the
    /// database write has committed. With a commit position, prefer
    /// [`Cache::delete_after`], which lets such loads use a replica that has
    /// caught up.
    ///
    /// Not fail-open: this process's L1 entry is dropped first; the marker is
    /// then written up to `1 + retry.retries` times with the retry backoff,
    /// and if every attempt fails the caller gets [`Error::Unavailable`]
    /// naming the key. The invalidation is not dropped then: it is retried
    /// in the background until it lands, and until then this process
    /// treats the key as a miss ([`Cache::pending_invalidations`]).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.invalidate_key(key, None).await
    }

    /// [`Cache::delete`] for a write committed at `watermark` (an ordered
    /// position such as a PostgreSQL LSN: `Token::lsn()` of dbtool-pool's
    /// `commit_token`). A load that starts within `marker_ms` is given
    /// [`Freshness::AtLeast`]`(watermark)` and must read data at or past it.
    pub async fn delete_after(&self, key: &str, watermark: u64) -> Result<(), Error> {
        self.invalidate_key(key, Some(watermark)).await
    }

    async fn invalidate_key(&self, key: &str, watermark: Option<u64>) -> Result<(), Error> {
        self.forget_key_locally(key);
        let rkey = self.inner.keys.value(key);
        let marker = entry::marker(rand::rng().random(), watermark);
        let px = self.inner.cfg.marker_ms as i64;
        let landed = self
            .retried("delete", key, &rkey, || {
                self.inner.client.set::<(), _, _>(
                    rkey.as_str(),
                    marker.as_slice(),
                    Some(Expiration::PX(px)),
                    None,
                    false,
                )
            })
            .await;
        // Again after the marker landed: a read that found the old value
        // just before it may have filled L1 or started a flight meanwhile.
        self.forget_key_locally(key);
        let what = Inval::Key(key.to_owned());
        match landed {
            Ok(()) => {
                self.inner.pending.clear(&what);
                self.publish(Message::Key(key)).await;
                Ok(())
            }
            Err(e) => {
                self.inner.pending.add(what, watermark);
                Err(e)
            }
        }
    }

    /// Invalidates every entry tagged `tag`, on every slot, in O(1): one
    /// `SET` of the tag's version key. Entries are not touched; readers see
    /// the version changed and treat them as misses. Loads of entries with
    /// the tag that start within `marker_ms` are told to read the primary
    /// ([`Freshness::Primary`]); see [`Cache::invalidate_tag_after`].
    ///
    /// Like [`Cache::delete`], not fail-open: this process's L1 entries with
    /// the tag are dropped first, the `SET` is retried with the retry
    /// policy, and then [`Error::Unavailable`] names the tag; the
    /// invalidation is then kept and retried in the background, and this
    /// process treats entries with the tag as misses until it lands.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        self.invalidate_tag_at(tag, None).await
    }

    /// [`Cache::invalidate_tag`] for a write committed at `watermark`:
    /// loads of entries with the tag are given
    /// [`Freshness::AtLeast`]`(watermark)` for as long as this version of
    /// the tag is current.
    pub async fn invalidate_tag_after(&self, tag: &str, watermark: u64) -> Result<(), Error> {
        self.invalidate_tag_at(tag, Some(watermark)).await
    }

    async fn invalidate_tag_at(&self, tag: &str, watermark: Option<u64>) -> Result<(), Error> {
        self.forget_tag_locally(tag);
        let text = TagState::encode(rand::rng().random(), now_ms(), watermark);
        let tkey = self.inner.keys.tag(tag);
        let ttl = self.tag_ttl_ms();
        let landed = self
            .retried("invalidate tag", tag, &tkey, || {
                self.inner.client.set::<(), _, _>(
                    tkey.as_str(),
                    text.as_str(),
                    Some(Expiration::PX(ttl)),
                    None,
                    false,
                )
            })
            .await;
        self.forget_tag_locally(tag);
        let what = Inval::Tag(tag.to_owned());
        match landed {
            Ok(()) => {
                self.inner.pending.clear(&what);
                self.publish(Message::Tag(tag)).await;
                Ok(())
            }
            Err(e) => {
                self.inner.pending.add(what, watermark);
                Err(e)
            }
        }
    }

    /// Drops this process's copies of `key`: its L1 entry, and the flight
    /// of a load in progress (later callers start their own).
    fn forget_key_locally(&self, key: &str) {
        self.l1_forget(key);
        self.inner.flights.detach(key);
    }

    fn forget_tag_locally(&self, tag: &str) {
        self.l1_forget_tag(tag);
        self.inner.flights.detach_all();
    }

    /// Runs an idempotent invalidation command on `rkey` up to
    /// `1 + retry.retries` times, waiting `min(step_ms * attempt, max_ms)`
    /// between attempts, then reports [`Error::Unavailable`] (logged at
    /// `warn`).
    async fn retried<R, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        rkey: &str,
        mut cmd: F,
    ) -> Result<R, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R, fred::error::Error>>,
    {
        let retry = &self.inner.cfg.retry;
        let mut attempt = 0u32;
        loop {
            match self.call(rkey, cmd()).await {
                Ok(v) => return Ok(v),
                Err(reason) if attempt < retry.retries => {
                    attempt += 1;
                    tracing::debug!(op, key, attempt, reason = %reason, "cache: retrying");
                    let wait = retry.step_ms.saturating_mul(attempt).min(retry.max_ms);
                    tokio::time::sleep(Duration::from_millis(wait.into())).await;
                }
                Err(reason) => {
                    let reason = format!("{reason} (after {} attempts)", attempt + 1);
                    tracing::warn!(
                        namespace = %self.inner.cfg.namespace,
                        op,
                        key,
                        reason = %reason,
                        "cache: invalidation not in redis yet; retried in the background, this process misses the key until it lands"
                    );
                    return Err(Error::Unavailable {
                        op,
                        key: key.to_owned(),
                        reason,
                    });
                }
            }
        }
    }

    /// Cache-aside with this TTL and no tags. See [`Cache::get_or_load_with`].
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.get_or_load_with(key, &Options::ttl(ttl), loader).await
    }

    /// Cache-aside: the cached value, else the loader's (then cached).
    ///
    /// - Concurrent calls for one key in this process run the loader once
    ///   (single-flight); with `lock_ms > 0`, across processes too.
    /// - XFetch refreshes a hot key shortly before it expires, in one caller,
    ///   while the others keep reading the cached value.
    /// - Redis errors and timeouts never reach the caller: the loader answers
    ///   (fail-open), at most one command timeout later.
    /// - The loader answering `Ok(None)` is cached as a negative entry for
    ///   `negative_ttl_secs`.
    /// - If the loader fails and a stale value is within `stale_ttl_secs`,
    ///   the stale value is returned; otherwise [`Error::Loader`].
    /// - A loaded value is stored only if no invalidation of the key (or of
    ///   its tags) happened since the load began (fill lease).
    ///
    /// The loader's error may be any `std::error::Error + Send + Sync`, an
    /// `anyhow::Error`, a `Box<dyn Error + Send + Sync>` or a `String`.
    /// When the loader reads from replicas, use
    /// [`Cache::get_or_load_fresh`], which tells it how fresh to read.
    pub async fn get_or_load_with<T, F, Fut, E>(
        &self,
        key: &str,
        opts: &Options,
        loader: F,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.get_or_load_fresh(key, opts, |_| loader()).await
    }

    /// [`Cache::get_or_load_with`] for loaders that read from replicas: the
    /// loader is told what it must read ([`Freshness`]) for its value to be
    /// at least as new as every invalidation of the key and its tags (a
    /// marker left by `delete`, a watermark given to `delete_after`, a
    /// recent tag invalidation). A loader over dbtool-pool:
    ///
    /// ```ignore
    /// cache.get_or_load_fresh(&key, &opts, |need| async move {
    ///     let conn = match need {
    ///         Freshness::Any => pool.read().await?,
    ///         Freshness::AtLeast(lsn) => pool.read_after(&Token::from_lsn(lsn)).await?,
    ///         _ => pool.write().await?, // the primary
    ///     };
    ///     load(&conn, id).await
    /// }).await?
    /// ```
    pub async fn get_or_load_fresh<T, F, Fut, E>(
        &self,
        key: &str,
        opts: &Options,
        loader: F,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(Freshness) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(v) = self.l1_get_cloned::<T>(key) {
            return Ok(v);
        }
        let mut loader = Some(loader);
        loop {
            match self.inner.flights.join(key) {
                Role::Leader(leader) => {
                    let loader = loader.take().expect("the loader runs once");
                    let led = self.lead(key, opts, loader).await;
                    match &led.result {
                        // The fill was refused: an invalidation came during
                        // the load, and callers that joined after it must
                        // not get this value. Dropping the flight sends the
                        // waiters to load on their own.
                        Ok(_) if !led.shareable => drop(leader),
                        Ok(v) => leader.complete(Ok(Arc::new((v.clone(), led.hit)))),
                        Err(Error::Loader { source, .. }) => leader.complete(Err(source.clone())),
                        Err(e) => {
                            leader.complete(Err(Arc::new(std::io::Error::other(e.to_string()))))
                        }
                    }
                    return led.result;
                }
                Role::Waiter(rx) => match flight::wait(rx).await {
                    Some(Ok(any)) => {
                        if let Some((v, hit)) = any.downcast_ref::<(Option<T>, bool)>() {
                            // Each caller's read is counted once: as the
                            // leader's was.
                            if *hit {
                                self.inner.stats.hit();
                            } else {
                                self.inner.stats.miss();
                            }
                            return Ok(v.clone());
                        }
                        // Same key read as another type: load on our own.
                        let loader = loader.take().expect("the loader runs once");
                        return self.lead(key, opts, loader).await.result;
                    }
                    Some(Err(source)) => {
                        self.inner.stats.miss();
                        return Err(Error::Loader {
                            key: key.to_owned(),
                            source,
                        });
                    }
                    // The leader was cancelled, or its value may predate an
                    // invalidation; try again (maybe as leader).
                    None => continue,
                },
            }
        }
    }

    /// Reads the shared counters summed over every process of this
    /// namespace (each flushes every `stats_flush_secs`), after flushing ours.
    pub async fn shared_stats(&self) -> Result<Stats, Error> {
        let _ = flush_stats(&self.inner).await;
        let skey = self.inner.keys.stats();
        let fields: HashMap<String, u64> = self
            .call(&skey, self.inner.client.hgetall(skey.as_str()))
            .await
            .map_err(|reason| Error::Unavailable {
                op: "read stats",
                key: skey.clone(),
                reason: reason.to_string(),
            })?;
        Ok(stats::from_hash(&self.inner.cfg.namespace, &fields))
    }

    /// `INFO` of every master, for operators.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let state = self
            .inner
            .client
            .cached_cluster_state()
            .ok_or_else(|| Error::Unavailable {
                op: "read cluster state",
                key: String::new(),
                reason: "no cluster state yet".into(),
            })?;
        let mut out = Vec::new();
        for server in state.unique_primary_nodes() {
            let node = format!("{}:{}", server.host, server.port);
            let opts = fred::types::config::Options {
                cluster_node: Some(server),
                ..Default::default()
            };
            let cmd = fred::types::CustomCommand::new_static(
                "INFO",
                fred::types::ClusterHash::Random,
                false,
            );
            let text: String = call(
                &self.inner.breakers,
                None,
                &self.inner.client,
                &self.inner.stats,
                self.inner
                    .client
                    .with_options(&opts)
                    .custom(cmd, Vec::<String>::new()),
            )
            .await
            .map_err(|reason| Error::Unavailable {
                op: "INFO",
                key: node.clone(),
                reason: reason.to_string(),
            })?;
            let field = |name: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let keys = text
                .lines()
                .find_map(|l| l.strip_prefix("db0:keys="))
                .and_then(|r| r.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.push(NodeInfo {
                node,
                keyspace_hits: field("keyspace_hits"),
                keyspace_misses: field("keyspace_misses"),
                used_memory: field("used_memory"),
                keys,
                connected_clients: field("connected_clients"),
            });
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// Everything stored for `key`, for operators. Errors when Redis cannot
    /// be reached; `None` when the key is absent.
    pub async fn inspect(&self, key: &str) -> Result<Option<Inspection>, Error> {
        let rkey = self.inner.keys.value(key);
        let unavailable = |reason: Failure| Error::Unavailable {
            op: "get",
            key: key.to_owned(),
            reason: reason.to_string(),
        };
        let (raw, pttl) = futures::future::join(
            self.call(&rkey, self.inner.client.get::<Value, _>(rkey.as_str())),
            self.call(&rkey, self.inner.client.pttl::<i64, _>(rkey.as_str())),
        )
        .await;
        let raw = raw.map_err(unavailable)?;
        let pttl = pttl.map_err(unavailable)?;
        let Some(bytes) = raw.as_bytes() else {
            return Ok(None);
        };
        // An invalidation marker or a fill lease holds no value.
        if entry::is_placeholder(bytes) {
            return Ok(None);
        }
        let Some(env) = entry::decode(bytes) else {
            return Ok(Some(Inspection {
                redis_key: rkey,
                pttl_ms: pttl,
                envelope: false,
                negative: false,
                created_ms: 0,
                expires_ms: 0,
                delta_ms: 0,
                tags: Vec::new(),
                valid: false,
                payload: payload_json(bytes),
            }));
        };
        let tag_names: Vec<String> = env.tags.iter().map(|(t, _)| t.clone()).collect();
        let current = if tag_names.is_empty() {
            Vec::new()
        } else {
            self.read_tags(&tag_names).await.map_err(unavailable)?
        };
        let tags: Vec<(String, u64, Option<u64>)> = env
            .tags
            .iter()
            .zip(current)
            .map(|((t, v), c)| (t.clone(), *v, c))
            .collect();
        let valid = now_ms() < env.expires_ms && tags.iter().all(|(_, v, c)| Some(*v) == *c);
        Ok(Some(Inspection {
            redis_key: rkey,
            pttl_ms: pttl,
            envelope: true,
            negative: env.negative,
            created_ms: env.created_ms,
            expires_ms: env.expires_ms,
            delta_ms: env.delta_ms,
            tags,
            valid,
            payload: if env.negative {
                serde_json::Value::Null
            } else {
                payload_json(env.payload)
            },
        }))
    }

    /// Drops every L1 entry of this process (Redis is untouched).
    pub fn flush_l1(&self) {
        if let Some(l1) = &self.inner.l1 {
            l1.flush();
        }
    }

    /// Entries currently in L1 (approximate; for tests and dashboards).
    pub fn l1_len(&self) -> u64 {
        self.inner.l1.as_ref().map_or(0, |l1| l1.len())
    }

    // ---- internals -------------------------------------------------------

    /// The leader's path of `get_or_load`: read, take the fill lease, maybe
    /// lock, load, fill.
    async fn lead<T, F, Fut, E>(&self, key: &str, opts: &Options, loader: F) -> Led<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(Freshness) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let done = |result, hit| Led {
            result,
            hit,
            shareable: true,
        };
        let epoch = self.l1_epoch();
        // Once Redis fails in this call, skip it for the rest of the call: the
        // caller waits at most one timeout before the loader runs.
        let mut st = ReadState::new();
        let found = self.read_tracked::<T>(key, &opts.tags, &mut st).await;
        let mut fallback: Option<Option<T>> = None;
        let mut fresh_fallback = false;
        let mut hit = false;
        match found {
            Found::Fresh {
                value,
                due: false,
                expires_ms,
            } => {
                self.inner.stats.hit();
                self.l1_put(key, epoch, &value, expires_ms, Some(&opts.tags));
                return done(Ok(value), true);
            }
            Found::Fresh {
                value, due: true, ..
            } => {
                // Early refresh: count the hit, reload, keep the value in case
                // the loader fails.
                self.inner.stats.hit();
                hit = true;
                fallback = Some(value);
                fresh_fallback = true;
            }
            Found::Stale(value) => {
                self.inner.stats.miss();
                fallback = Some(value);
            }
            Found::Miss => self.inner.stats.miss(),
        }

        // The fill lease: the generation the key holds now. Taken before the
        // loader reads the database, so an invalidation during the load
        // changes it and the fill is refused.
        let mut lease: Option<Vec<u8>> = None;
        if st.ok && !st.pending {
            match st.token.take() {
                Some(t) => lease = Some(t),
                None => match self.take_lease(key).await {
                    Ok((record, t)) => {
                        if let Record::Marker { watermark } = record {
                            st.fresh = st.fresh.and(Freshness::of_watermark(watermark));
                        }
                        lease = Some(t);
                    }
                    Err(_) => st.ok = false,
                },
            }
        }

        // Tag versions must exist before the loader reads the database, so an
        // invalidation during the load changes them and our write is void.
        let mut tag_versions: Option<Vec<u64>> = None;
        if st.ok && !st.pending {
            if opts.tags.is_empty() {
                tag_versions = Some(Vec::new());
            } else {
                let versions = std::mem::take(&mut st.versions);
                match self.ensure_tags(&opts.tags, versions).await {
                    Ok(v) => tag_versions = Some(v),
                    Err(_) => st.ok = false,
                }
            }
        }

        let mut lock: Option<(String, u64)> = None;
        if st.ok && !st.pending && self.inner.cfg.lock_ms > 0 {
            let lkey = self.inner.keys.lock(key);
            let token: u64 = rand::rng().random();
            let got = self
                .call(
                    &lkey,
                    self.inner.client.set::<Option<String>, _, _>(
                        lkey.as_str(),
                        token.to_string(),
                        Some(Expiration::PX(self.inner.cfg.lock_ms as i64)),
                        Some(SetOptions::NX),
                        false,
                    ),
                )
                .await;
            match got {
                Ok(Some(_)) => lock = Some((lkey, token)),
                Ok(None) => {
                    // Another process loads. A still-fresh value answers now;
                    // otherwise wait for its write, up to lock_ms.
                    if fresh_fallback {
                        return done(Ok(fallback.flatten()), hit);
                    }
                    let deadline = Instant::now() + Duration::from_millis(self.inner.cfg.lock_ms);
                    while Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let mut again = ReadState::new();
                        if let Found::Fresh {
                            value, expires_ms, ..
                        } = self.read_tracked::<T>(key, &opts.tags, &mut again).await
                        {
                            self.l1_put(key, epoch, &value, expires_ms, Some(&opts.tags));
                            return done(Ok(value), hit);
                        }
                        if !again.ok {
                            st.ok = false;
                            break;
                        }
                    }
                }
                Err(_) => st.ok = false,
            }
        }

        let need = if st.ok { st.fresh } else { Freshness::Unknown };
        let started = Instant::now();
        let loaded = loader(need).await;
        let took = started.elapsed();
        self.inner.stats.load(took, loaded.is_ok());
        let mut shareable = true;
        let result = match loaded {
            Ok(value) => {
                if let (true, Some(tv), Some(lease)) = (st.ok, &tag_versions, &lease) {
                    let tagged: Vec<(String, u64)> =
                        opts.tags.iter().cloned().zip(tv.iter().copied()).collect();
                    let filled = match &value {
                        Some(v) => match self.inner.codec.encode(v) {
                            Ok(payload) => {
                                self.fill(key, lease, &payload, false, opts, &tagged, took, need)
                                    .await
                            }
                            Err(message) => {
                                tracing::warn!(key, %message, "cache: cannot encode a loaded value; not cached");
                                Err(Failure::Timeout)
                            }
                        },
                        None if self.inner.cfg.negative_ttl_secs > 0 => {
                            self.fill(key, lease, &[], true, opts, &tagged, took, need)
                                .await
                        }
                        None => Err(Failure::Timeout),
                    };
                    match filled {
                        Ok(Filled::Stored(expires_ms)) => {
                            self.l1_put(key, epoch, &value, expires_ms, Some(&opts.tags));
                            self.publish(Message::Fill(key)).await;
                        }
                        // The key was invalidated (or rewritten) while
                        // loading.
                        Ok(Filled::Refused) => shareable = false,
                        // The lease expired during a long load: not cached,
                        // but no invalidation is known, so the waiters may
                        // have it (rather than each running a long load in
                        // turn).
                        Ok(Filled::Expired) | Err(_) => {}
                    }
                }
                Ok(value)
            }
            Err(e) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                match fallback {
                    Some(stale) => {
                        if !fresh_fallback {
                            self.inner.stats.stale_served();
                        }
                        tracing::warn!(key, error = %e, "cache: loader failed; serving the cached value");
                        Ok(stale)
                    }
                    None => Err(Error::Loader {
                        key: key.to_owned(),
                        source: Arc::from(e),
                    }),
                }
            }
        };
        if let Some((lkey, token)) = lock {
            self.unlock(&lkey, token).await;
        }
        Led {
            result,
            hit,
            shareable,
        }
    }

    /// Takes the fill lease of an absent key: `SET NX GET` of a lease record.
    /// If the key exists after all (another caller's lease, a marker, a
    /// value), its token is the lease.
    async fn take_lease(&self, key: &str) -> Result<(Record, Vec<u8>), Failure> {
        let rkey = self.inner.keys.value(key);
        let gen: u64 = rand::rng().random();
        let old: Value = self
            .call(
                &rkey,
                self.inner.client.set(
                    rkey.as_str(),
                    entry::lease(gen).as_slice(),
                    Some(Expiration::PX(self.inner.cfg.lease_ms as i64)),
                    Some(SetOptions::NX),
                    true,
                ),
            )
            .await?;
        Ok(match old.as_bytes() {
            Some(b) => entry::token(b),
            None => (Record::Plain, gen.to_be_bytes().to_vec()),
        })
    }

    /// Reads and classifies one entry (no hint tags).
    async fn read<T>(&self, key: &str) -> Found<T>
    where
        T: DeserializeOwned,
    {
        self.read_tracked(key, &[], &mut ReadState::new()).await
    }

    /// Reads one entry; the `hint` tags' versions are read concurrently with
    /// the value (they live on other slots, so never in one command) and
    /// returned in `st.versions`, with what a load would have to read in
    /// `st.fresh` and the fill token in `st.token`. `st.ok` turns false when
    /// Redis failed.
    async fn read_tracked<T>(&self, key: &str, hint: &[String], st: &mut ReadState) -> Found<T>
    where
        T: DeserializeOwned,
    {
        if let Some(f) = self
            .inner
            .pending
            .concerns(key, hint.iter().map(String::as_str))
        {
            st.pending = true;
            st.fresh = st.fresh.and(f);
            return Found::Miss;
        }
        let rkey = self.inner.keys.value(key);
        let (raw, hinted) = if hint.is_empty() {
            (
                self.call(&rkey, self.inner.client.get::<Value, _>(rkey.as_str()))
                    .await,
                Ok(Vec::new()),
            )
        } else {
            // Boxed, as the tag read below: a GET with tag reads is tens of
            // KB of future state, which a plain GET (the hot path) would
            // otherwise carry and copy on every call (it made `Cache::get`'s
            // future 41 KB against fred's 7 KB, and cost ~1.5 µs per GET).
            Box::pin(futures::future::join(
                self.call(&rkey, self.inner.client.get::<Value, _>(rkey.as_str())),
                self.read_tag_states(hint),
            ))
            .await
        };
        let raw = match raw {
            Ok(raw) => raw,
            Err(_) => {
                st.ok = false;
                return Found::Miss;
            }
        };
        match hinted {
            Ok(states) => {
                let now = now_ms();
                for s in states.iter().flatten() {
                    st.fresh = st.fresh.and(s.freshness(now, self.inner.cfg.marker_ms));
                }
                st.versions = states.iter().map(|s| s.map(|s| s.version)).collect();
            }
            Err(_) => {
                st.ok = false;
                return Found::Miss;
            }
        }
        let bytes = raw.as_bytes();
        let Some(env) = bytes.and_then(entry::decode) else {
            if let Some(b) = bytes {
                let (record, token) = entry::token(b);
                if let Record::Marker { watermark } = record {
                    st.fresh = st.fresh.and(Freshness::of_watermark(watermark));
                }
                st.token = Some(token);
            }
            return Found::Miss;
        };
        // Any later fill must find this value's generation, and read as
        // fresh as the load that wrote it had to.
        let token = || Some(env.gen.to_be_bytes().to_vec());
        let now = now_ms();
        if let Some(w) = env.watermark {
            st.fresh = st.fresh.and(Freshness::AtLeast(w));
        }
        if now < env.primary_until_ms {
            st.fresh = st.fresh.and(Freshness::Primary);
        }
        if !env.tags.is_empty() {
            if let Some(f) = self
                .inner
                .pending
                .concerns(key, env.tags.iter().map(|(t, _)| t.as_str()))
            {
                st.pending = true;
                st.fresh = st.fresh.and(f);
                return Found::Miss;
            }
            let mut current: HashMap<&str, Option<u64>> = hint
                .iter()
                .map(String::as_str)
                .zip(st.versions.iter().copied())
                .collect();
            let missing: Vec<String> = env
                .tags
                .iter()
                .filter(|(t, _)| !current.contains_key(t.as_str()))
                .map(|(t, _)| t.clone())
                .collect();
            let fetched = if missing.is_empty() {
                Vec::new()
            } else {
                match Box::pin(self.read_tags(&missing)).await {
                    Ok(v) => v,
                    Err(_) => {
                        st.ok = false;
                        return Found::Miss;
                    }
                }
            };
            for (t, v) in missing.iter().zip(fetched) {
                current.insert(t.as_str(), v);
            }
            if !env
                .tags
                .iter()
                .all(|(t, v)| current.get(t.as_str()).copied().flatten() == Some(*v))
            {
                st.token = token();
                return Found::Miss;
            }
        }
        let Some(value) = self.decode_value::<T>(key, &env) else {
            st.token = token();
            return Found::Miss;
        };
        if now >= env.expires_ms {
            st.token = token();
            return Found::Stale(value);
        }
        let beta = self.inner.cfg.early_refresh_beta;
        let due = beta > 0.0
            && env.delta_ms > 0
            && entry::xfetch_due(
                now,
                env.expires_ms,
                env.delta_ms,
                beta,
                1.0 - rand::rng().random::<f64>(),
            );
        if due {
            st.token = token();
        }
        Found::Fresh {
            value,
            due,
            expires_ms: env.expires_ms,
        }
    }

    /// Decodes the payload; `Some(None)` for a negative entry, `None` when
    /// the payload does not decode as `T` (a miss; counted in
    /// [`Stats::decode_errors`] and logged).
    fn decode_value<T: DeserializeOwned>(
        &self,
        key: &str,
        env: &Envelope<'_>,
    ) -> Option<Option<T>> {
        if env.negative {
            return Some(None);
        }
        match self.inner.codec.decode::<T>(env.payload) {
            Ok(v) => Some(Some(v)),
            Err(message) => {
                self.inner.stats.decode_error();
                tracing::warn!(
                    key,
                    r#type = std::any::type_name::<T>(),
                    %message,
                    "cache: cached value does not decode as the type asked for (stored as another type, or by another schema); treated as a miss"
                );
                None
            }
        }
    }

    /// The envelope of a new entry with jittered TTL; returns it with its
    /// logical expiry (unix ms) and its Redis TTL (ms, with the fail-safe
    /// window).
    fn envelope(
        &self,
        payload: &[u8],
        negative: bool,
        opts: &Options,
        tags: &[(String, u64)],
        took: Duration,
        loaded_at: Freshness,
    ) -> (Vec<u8>, u64, u64) {
        let cfg = &self.inner.cfg;
        let ttl = if negative {
            Duration::from_secs(cfg.negative_ttl_secs)
        } else {
            opts.ttl.unwrap_or_else(|| cfg.default_ttl())
        };
        let ttl_ms = jittered(ms(ttl), cfg.jitter, rand::rng().random::<f64>()).max(1);
        let stale_ms = if negative {
            0
        } else {
            cfg.stale_ttl_secs * 1000
        };
        let now = now_ms();
        let expires_ms = now + ttl_ms;
        let bytes = Envelope {
            gen: rand::rng().random(),
            negative,
            created_ms: now,
            expires_ms,
            delta_ms: ms(took).min(u32::MAX as u64) as u32,
            watermark: loaded_at.watermark(),
            primary_until_ms: if loaded_at.needs_primary() {
                now.saturating_add(cfg.marker_ms)
            } else {
                0
            },
            tags: tags.to_vec(),
            payload,
        }
        .encode();
        (bytes, expires_ms, ttl_ms + stale_ms)
    }

    /// Writes an entry unconditionally (`set`); returns its logical expiry.
    async fn write(
        &self,
        key: &str,
        payload: &[u8],
        opts: &Options,
        tags: &[(String, u64)],
    ) -> Result<u64, Failure> {
        let (bytes, expires_ms, px) =
            self.envelope(payload, false, opts, tags, Duration::ZERO, Freshness::Any);
        let rkey = self.inner.keys.value(key);
        self.call(
            &rkey,
            self.inner.client.set::<(), _, _>(
                rkey.as_str(),
                bytes.as_slice(),
                Some(Expiration::PX(px as i64)),
                None,
                false,
            ),
        )
        .await?;
        Ok(expires_ms)
    }

    /// Stores a loaded entry if the key still holds `lease` (see
    /// `entry::FILL_SCRIPT`): `Filled::Stored(expiry)`, or why not.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        key: &str,
        lease: &[u8],
        payload: &[u8],
        negative: bool,
        opts: &Options,
        tags: &[(String, u64)],
        took: Duration,
        loaded_at: Freshness,
    ) -> Result<Filled, Failure> {
        let (bytes, expires_ms, px) = self.envelope(payload, negative, opts, tags, took, loaded_at);
        let rkey = self.inner.keys.value(key);
        let args: Vec<Value> = vec![
            Value::Bytes(lease.to_vec().into()),
            Value::Bytes(bytes.into()),
            Value::Integer(px as i64),
        ];
        let stored: i64 = self
            .call(
                &rkey,
                self.inner
                    .client
                    .eval(entry::FILL_SCRIPT, vec![rkey.as_str()], args),
            )
            .await?;
        Ok(match stored {
            1 => Filled::Stored(expires_ms),
            0 => Filled::Expired,
            _ => Filled::Refused,
        })
    }

    /// Current versions of `tags`, grouped per slot: one MGET per slot,
    /// concurrently.
    async fn read_tags(&self, tags: &[String]) -> Result<Vec<Option<u64>>, Failure> {
        Ok(self
            .read_tag_states(tags)
            .await?
            .into_iter()
            .map(|s| s.map(|s| s.version))
            .collect())
    }

    /// [`read_tags`](Self::read_tags) with what each invalidation asked of
    /// later loads.
    async fn read_tag_states(&self, tags: &[String]) -> Result<Vec<Option<TagState>>, Failure> {
        let rkeys: Vec<String> = tags.iter().map(|t| self.inner.keys.tag(t)).collect();
        let raws = self.mget(&rkeys).await?;
        Ok(raws
            .into_iter()
            .map(|v| v.and_then(|v| v.as_str().and_then(|s| TagState::parse(&s))))
            .collect())
    }

    /// Gives every tag without a version one (`SET NX GET`: whoever comes
    /// first wins, the others read the winner's). A missing tag key therefore
    /// always means "invalid", so an evicted or expired tag key can only cause
    /// misses, never resurrect old entries.
    async fn ensure_tags(
        &self,
        tags: &[String],
        current: Vec<Option<u64>>,
    ) -> Result<Vec<u64>, Failure> {
        let futs = tags.iter().zip(current).map(|(t, v)| async move {
            if let Some(v) = v {
                return Ok(v);
            }
            let mine: u64 = rand::rng().random();
            let tkey = self.inner.keys.tag(t);
            let old: Option<String> = self
                .call(
                    &tkey,
                    self.inner.client.set(
                        tkey.as_str(),
                        mine.to_string(),
                        Some(Expiration::PX(self.tag_ttl_ms())),
                        Some(SetOptions::NX),
                        true,
                    ),
                )
                .await?;
            Ok(old
                .and_then(|s| TagState::parse(&s))
                .map_or(mine, |s| s.version))
        });
        futures::future::try_join_all(futs).await
    }

    /// GET of many keys: one MGET per hash slot, all slots concurrently.
    async fn mget(&self, rkeys: &[String]) -> Result<Vec<Option<Value>>, Failure> {
        if rkeys.len() == 1 {
            let v: Value = self
                .call(&rkeys[0], self.inner.client.get(rkeys[0].as_str()))
                .await?;
            return Ok(vec![if v.is_null() { None } else { Some(v) }]);
        }
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, k) in rkeys.iter().enumerate() {
            groups
                .entry(fred::util::redis_keyslot(k.as_bytes()))
                .or_default()
                .push(i);
        }
        let futs = groups.iter().map(|(&slot, idx)| {
            let ks: Vec<&str> = idx.iter().map(|&i| rkeys[i].as_str()).collect();
            async move {
                let vals: Vec<Value> = call(
                    &self.inner.breakers,
                    Some(slot),
                    &self.inner.client,
                    &self.inner.stats,
                    self.inner.client.mget(ks),
                )
                .await?;
                Ok::<_, Failure>((idx, vals))
            }
        });
        let mut out: Vec<Option<Value>> = vec![None; rkeys.len()];
        for (idx, vals) in futures::future::try_join_all(futs).await? {
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = if v.is_null() { None } else { Some(v) };
            }
        }
        Ok(out)
    }

    async fn unlock(&self, lkey: &str, token: u64) {
        // Delete only our own lock: it may have expired and been taken.
        const SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
        let _ = self
            .call(
                lkey,
                self.inner
                    .client
                    .eval::<i64, _, _, _>(SCRIPT, vec![lkey], vec![token.to_string()]),
            )
            .await;
    }

    /// Runs one Redis command on `rkey` through the breaker of the master
    /// that owns its slot, with stats (fred applies the command timeout).
    fn call<'a, R: 'a>(
        &'a self,
        rkey: &str,
        fut: impl Future<Output = Result<R, fred::error::Error>> + 'a,
    ) -> impl Future<Output = Result<R, Failure>> + 'a {
        call(
            &self.inner.breakers,
            Some(fred::util::redis_keyslot(rkey.as_bytes())),
            &self.inner.client,
            &self.inner.stats,
            fut,
        )
    }

    async fn publish(&self, msg: Message<'_>) {
        // Published even without a local L1: other processes may have one.
        let channel = self.inner.keys.channel();
        let text = keys::encode_message(self.inner.instance, &msg);
        if let Err(e) = self
            .call(
                &channel,
                self.inner
                    .client
                    .publish::<i64, _, _>(channel.as_str(), text),
            )
            .await
        {
            tracing::debug!(error = %e, "cache: invalidation message not published; other L1s expire by ttl");
        }
    }

    fn tag_ttl_ms(&self) -> i64 {
        (self.inner.cfg.tag_ttl_secs.max(1) * 1000) as i64
    }

    fn l1_epoch(&self) -> u64 {
        self.inner.l1.as_ref().map_or(0, L1::epoch)
    }

    /// An L1 hit as a shared value: `Some(value)` (value `None` for a
    /// negative entry); `None` on a miss or when another type is stored.
    fn l1_get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Option<Arc<T>>> {
        let item = self.inner.l1.as_ref()?.get(key, now_ms())?;
        let value = item.value();
        let v = if value.is::<T>() {
            Some(value.clone().downcast::<T>().ok()?)
        } else if value.is::<Negative>() {
            None
        } else {
            return None;
        };
        self.inner.stats.l1_hit();
        Some(v)
    }

    /// An L1 hit, cloned out of the shared value.
    fn l1_get_cloned<T: Clone + 'static>(&self, key: &str) -> Option<Option<T>> {
        let item = self.inner.l1.as_ref()?.get(key, now_ms())?;
        let value = item.value();
        let v = if let Some(v) = value.downcast_ref::<T>() {
            Some(v.clone())
        } else if value.is::<Negative>() {
            None
        } else {
            return None;
        };
        self.inner.stats.l1_hit();
        Some(v)
    }

    /// Fills L1 with a copy of `value` (see [`L1::put`]).
    fn l1_put<T: Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        epoch: u64,
        value: &Option<T>,
        expires_ms: u64,
        tags: Option<&[String]>,
    ) {
        if self.inner.l1.is_some() {
            self.l1_put_arc(key, epoch, value.clone().map(Arc::new), expires_ms, tags);
        }
    }

    fn l1_put_arc<T: Send + Sync + 'static>(
        &self,
        key: &str,
        epoch: u64,
        value: Option<Arc<T>>,
        expires_ms: u64,
        tags: Option<&[String]>,
    ) {
        let Some(l1) = &self.inner.l1 else { return };
        let value: crate::l1::Value = match value {
            Some(v) => v,
            None => Arc::new(Negative),
        };
        l1.put(key, epoch, value, expires_ms, now_ms(), tags);
    }

    fn l1_forget(&self, key: &str) {
        if let Some(l1) = &self.inner.l1 {
            l1.forget(key);
        }
    }

    fn l1_forget_tag(&self, tag: &str) {
        if let Some(l1) = &self.inner.l1 {
            l1.forget_tag(tag);
        }
    }
}

/// Runs one fred command through a breaker and records the outcome.
///
/// The breaker is the one of the master that owns `slot` while the client
/// is connected. While fred reconnects (its router reconnects every node
/// together, and fails to while a dead master is still in the cluster's slot
/// map, so commands to every node wait), calls go through the client-wide
/// stall breaker instead: a failover then does not open the breakers of the
/// masters that are fine, and an outage of every node still stops the
/// waiting on Redis.
///
/// The command timeout is fred's own (`default_command_timeout`, set at
/// connect), and only fred's. A second timer around the call would usually
/// fire first (its clock starts before fred's), and fred, never told that
/// the caller gave up, would keep the command in its retry buffer and could
/// write it after a reconnect, long after the caller was told it failed (a
/// `set` reported as failed could land later and overwrite a newer value).
fn call<'a, R: 'a>(
    breakers: &'a Breakers,
    slot: Option<u16>,
    client: &'a Client,
    stats: &'a Recorder,
    fut: impl Future<Output = Result<R, fred::error::Error>> + 'a,
) -> impl Future<Output = Result<R, Failure>> + 'a {
    // A combinator, not an `async fn`: an async fn keeps its future argument
    // and, once awaited, a second copy of it, so every layer doubled fred's
    // ~7 KB command future (`Cache::get`'s future was 41 KB, copied on each
    // call; ~1.5 µs per GET in the cache bench).
    use futures::future::{Either, FutureExt as _};
    let connected = client.is_connected();
    let breaker: &Breaker = match slot {
        Some(slot) if connected => breakers.for_slot(slot),
        _ => breakers.stall(),
    };
    if !breaker.allow() {
        stats.breaker_skip();
        return Either::Left(std::future::ready(Err(Failure::Breaker)));
    }
    let started = Instant::now();
    Either::Right(fut.map(move |res| match res {
        Ok(v) => {
            breaker.success();
            breakers.stall().success();
            stats.redis(started.elapsed());
            Ok(v)
        }
        Err(e) => {
            let timeout = *e.kind() == fred::error::ErrorKind::Timeout;
            if connected && client.is_connected() {
                breaker.failure();
            } else {
                breakers.stall().failure();
            }
            stats.error(timeout);
            tracing::debug!(error = %e, "cache: redis command failed (fail-open)");
            Err(if timeout {
                Failure::Timeout
            } else {
                Failure::Redis(e)
            })
        }
    }))
}

/// `ttl` shortened by up to `jitter` of itself; `r` uniform in [0, 1).
fn jittered(ttl_ms: u64, jitter: f64, r: f64) -> u64 {
    (ttl_ms as f64 * (1.0 - jitter * r)).round() as u64
}

fn payload_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

async fn init<T: ClientLike>(client: &T, timeout: Duration) -> Result<(), fred::error::Error> {
    match tokio::time::timeout(timeout, client.init()).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => {
            let _ = client.quit().await;
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("no answer within {} ms", timeout.as_millis()),
            ))
        }
    }
}

fn tls_config(config: &Config) -> Result<fred::types::config::TlsConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Config(format!("cannot read tls_ca {}: {e}", path.display()))
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    Error::Config(format!("bad certificate in {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            return fred::types::config::TlsConnector::default_rustls()
                .map(Into::into)
                .map_err(|e| {
                    Error::Config(format!("cannot load the system CA roots: {e} (set tls_ca)"))
                });
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConnector::from(tls).into())
}

/// Keeps L1 honest: applies invalidation messages, flushes when a
/// connection drops or messages may have been lost, resubscribes after a
/// reconnect.
async fn l1_task<C: Codec>(inner: Weak<Inner<C>>, sub: Client, client: Client, channel: String) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = sub.message_rx();
    let mut sub_errors = sub.error_rx();
    let mut sub_reconnects = sub.reconnect_rx();
    let mut errors = client.error_rx();
    let Some(instance) = inner.upgrade().map(|i| i.instance) else {
        return;
    };
    loop {
        enum Ev {
            Msg(String),
            Flush(&'static str, bool),
            Resubscribe,
            Closed,
        }
        let ev = tokio::select! {
            m = messages.recv() => match m {
                Ok(m) => Ev::Msg(m.value.as_str().map(|s| s.into_owned()).unwrap_or_default()),
                Err(RecvError::Lagged(_)) => Ev::Flush("invalidation messages lost", false),
                Err(RecvError::Closed) => Ev::Closed,
            },
            e = sub_errors.recv() => match e {
                Err(RecvError::Closed) => Ev::Closed,
                _ => Ev::Flush("invalidation channel dropped", true),
            },
            r = sub_reconnects.recv() => match r {
                Err(RecvError::Closed) => Ev::Closed,
                _ => Ev::Resubscribe,
            },
            e = errors.recv() => match e {
                Err(RecvError::Closed) => Ev::Closed,
                _ => Ev::Flush("redis connection dropped", false),
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        let Some(l1) = &inner.l1 else { return };
        match ev {
            Ev::Msg(text) => match keys::decode_message(&text) {
                Some((sender, _)) if sender == instance => {}
                Some((_, Message::Key(k))) => {
                    l1.forget(k);
                    inner.flights.detach(k);
                }
                Some((_, Message::Tag(t))) => {
                    l1.forget_tag(t);
                    inner.flights.detach_all();
                }
                Some((_, Message::Fill(k))) => l1.forget(k),
                None => l1.flush(),
            },
            Ev::Flush(why, down) => {
                if down {
                    l1.set_live(false);
                }
                tracing::info!(reason = why, "cache: L1 flushed");
                l1.flush();
            }
            Ev::Resubscribe => {
                l1.set_live(false);
                l1.flush();
                match sub.subscribe(channel.as_str()).await {
                    Ok(()) => {
                        l1.flush();
                        l1.set_live(true);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cache: cannot resubscribe; L1 stays off until the next reconnect")
                    }
                }
            }
            Ev::Closed => return,
        }
    }
}

/// Points each slot at the breaker of its master, from fred's cluster state.
fn route_breakers<C>(inner: &Inner<C>) {
    if let Some(state) = inner.client.cached_cluster_state() {
        let ranges: Vec<(u16, u16, String)> = state
            .slots()
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.end,
                    format!("{}:{}", r.primary.host, r.primary.port),
                )
            })
            .collect();
        inner.breakers.route(&ranges);
    }
}

/// Follows the cluster's topology (failovers, resharding) for the breakers:
/// on every change fred reports, and once a second in case one is missed.
async fn routes_task<C: Codec>(inner: Weak<Inner<C>>) {
    let Some(mut changes) = inner.upgrade().map(|i| i.client.cluster_change_rx()) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changes.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        route_breakers(&inner);
    }
}

/// Retries the invalidations that did not reach Redis until they land.
async fn pending_task<C: Codec>(inner: Weak<Inner<C>>) {
    let every = match inner.upgrade() {
        Some(i) => Duration::from_millis(u64::from(i.cfg.retry.step_ms.max(50))),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        for (what, watermark) in inner.pending.snapshot() {
            let (rkey, bytes, px, op) = match &what {
                Inval::Key(k) => (
                    inner.keys.value(k),
                    entry::marker(rand::rng().random(), watermark),
                    inner.cfg.marker_ms,
                    "delete",
                ),
                Inval::Tag(t) => (
                    inner.keys.tag(t),
                    TagState::encode(rand::rng().random(), now_ms(), watermark).into_bytes(),
                    inner.cfg.tag_ttl_secs.max(1) * 1000,
                    "invalidate tag",
                ),
            };
            let landed = call(
                &inner.breakers,
                Some(fred::util::redis_keyslot(rkey.as_bytes())),
                &inner.client,
                &inner.stats,
                inner.client.set::<(), _, _>(
                    rkey.as_str(),
                    bytes.as_slice(),
                    Some(Expiration::PX(px as i64)),
                    None,
                    false,
                ),
            )
            .await;
            if landed.is_err() {
                continue;
            }
            let (text, name) = match &what {
                Inval::Key(k) => (
                    keys::encode_message(inner.instance, &Message::Key(k)),
                    k.as_str(),
                ),
                Inval::Tag(t) => (
                    keys::encode_message(inner.instance, &Message::Tag(t)),
                    t.as_str(),
                ),
            };
            if let Some(l1) = &inner.l1 {
                match &what {
                    Inval::Key(k) => l1.forget(k),
                    Inval::Tag(t) => l1.forget_tag(t),
                }
            }
            let channel = inner.keys.channel();
            let _ = call(
                &inner.breakers,
                Some(fred::util::redis_keyslot(channel.as_bytes())),
                &inner.client,
                &inner.stats,
                inner.client.publish::<i64, _, _>(channel.as_str(), text),
            )
            .await;
            inner.pending.remove(&what, watermark);
            tracing::info!(
                op,
                key = name,
                "cache: invalidation reached redis after a retry in the background"
            );
        }
    }
}

async fn stats_task<C: Codec>(inner: Weak<Inner<C>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let _ = flush_stats(&inner).await;
    }
}

async fn flush_stats<C: Codec>(inner: &Inner<C>) -> Result<(), Failure> {
    let deltas: Vec<(&'static str, u64)> = inner
        .stats
        .claim_unflushed()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    if deltas.is_empty() {
        return Ok(());
    }
    let skey = inner.keys.stats();
    let futs = deltas.iter().map(|&(field, n)| {
        let skey = skey.as_str();
        async move {
            call(
                &inner.breakers,
                Some(fred::util::redis_keyslot(skey.as_bytes())),
                &inner.client,
                &inner.stats,
                inner.client.hincrby::<i64, _, _>(skey, field, n as i64),
            )
            .await
            .map(|_| ())
            .map_err(|e| (field, n, e))
        }
    });
    // Counts that did not reach Redis are given back for the next flush.
    let mut first = Ok(());
    for r in futures::future::join_all(futs).await {
        if let Err((field, n, e)) = r {
            inner.stats.unclaim(&[(field, n)]);
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens_and_stays_within_the_fraction() {
        assert_eq!(jittered(1000, 0.1, 0.0), 1000);
        assert_eq!(jittered(1000, 0.1, 0.999_999), 900);
        assert_eq!(jittered(1000, 0.0, 0.5), 1000);
    }

    #[test]
    fn options_builder_collects_tags() {
        let o = Options::ttl(Duration::from_secs(5)).tag("a").tag("b");
        assert_eq!(o.ttl, Some(Duration::from_secs(5)));
        assert_eq!(o.tags, vec!["a", "b"]);
    }
}
#[cfg(test)]
mod future_sizes {
    //! A future is copied when it is created and moved: keep the hot paths'
    //! futures near fred's own command future. Each `async fn` layer around
    //! fred's 7 KB command future holds it twice, so three layers make a GET
    //! future of ~41 KB, which costs ~1.5 µs per GET to copy.
    use super::*;

    fn size<Fut>(_f: impl Fn(&'static Cache) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct P {
        a: String,
        b: Vec<String>,
        c: i64,
    }

    fn fred_get() -> usize {
        fn size_c<Fut>(_f: impl Fn(&'static Client) -> Fut) -> usize {
            std::mem::size_of::<Fut>()
        }
        size_c(|f| f.get::<Value, _>("k"))
    }

    #[test]
    fn hot_path_futures_are_about_the_size_of_freds_get() {
        static V: P = P {
            a: String::new(),
            b: Vec::new(),
            c: 0,
        };
        let ttl = Duration::from_secs(1);
        let fred = fred_get();
        for (what, ours) in [
            ("get", size(|c| c.get::<P>("k"))),
            ("get_arc", size(|c| c.get_arc::<P>("k"))),
            ("get_many", size(|c| c.get_many::<P, &str>(&["k"]))),
            ("set", size(|c| c.set("k", &V, ttl))),
            ("delete", size(|c| c.delete("k"))),
            (
                "get_or_load",
                size(|c| {
                    c.get_or_load("k", ttl, || async {
                        Ok::<_, std::io::Error>(Some(V.clone()))
                    })
                }),
            ),
        ] {
            eprintln!("{what}: {ours} bytes; fred GET {fred}");
            assert!(
                ours <= fred + 2048,
                "Cache::{what}'s future is {ours} bytes, fred's GET {fred}"
            );
        }
    }
}
