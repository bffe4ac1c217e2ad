//! Cache-aside: `get_or_load` and its forms, the single-flight leader
//! path, and the fill lease a load must hold to store its value. Kept
//! apart because the lease protocol is its own concept.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{KeysInterface, LuaInterface};
use fred::types::{Expiration, SetOptions, Value};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};

use super::{Cache, Failure, Filled, Found, Led, Options, ReadState};
use crate::codec::Codec;
use crate::coherence::Freshness;
use crate::entry::{self, Record};
use crate::flight::{self, Role};
use crate::keys::Message;
use crate::Error;

impl<C: Codec> Cache<C> {
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

    // ---- internals -------------------------------------------------------

    /// The leader's path of `get_or_load`: read, take the fill lease, maybe
    /// lock, load, fill.
    pub(super) async fn lead<T, F, Fut, E>(&self, key: &str, opts: &Options, loader: F) -> Led<T>
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
        // A miss of an absent key takes its fill lease in the read.
        st.lease = Some(rand::rng().random());
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

        // The fill lease: the generation the key holds now (or the lease
        // the read wrote where the key was absent). Taken before the loader
        // reads the database, so an invalidation during the load changes it
        // and the fill is refused.
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
                .call(&lkey, |c| {
                    c.set::<Option<String>, _, _>(
                        lkey.as_str(),
                        token.to_string(),
                        Some(Expiration::PX(self.inner.cfg.lock_ms as i64)),
                        Some(SetOptions::NX),
                        false,
                    )
                })
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
                            // Only an early refresh replaces a value other
                            // L1s may still hold and serve. Any other fill
                            // replaces a lease, a marker or a value that no
                            // L1 serves any more (expired, or invalidated,
                            // which was published), so a message would cost
                            // every node of the cluster a PUBLISH for
                            // nothing.
                            if fresh_fallback {
                                self.publish(Message::Fill(key)).await;
                            }
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
    pub(super) async fn take_lease(&self, key: &str) -> Result<(Record, Vec<u8>), Failure> {
        let rkey = self.inner.keys.value(key);
        let gen: u64 = rand::rng().random();
        let lease = entry::lease(gen);
        let old: Value = self
            .call(&rkey, |c| {
                c.set(
                    rkey.as_str(),
                    lease.as_slice(),
                    Some(Expiration::PX(self.inner.cfg.lease_ms as i64)),
                    Some(SetOptions::NX),
                    true,
                )
            })
            .await?;
        Ok(match old.as_bytes() {
            Some(b) => entry::token(b),
            None => (Record::Plain, gen.to_be_bytes().to_vec()),
        })
    }

    /// Stores a loaded entry if the key still holds `lease` (see
    /// `entry::FILL_SCRIPT`): `Filled::Stored(expiry)`, or why not.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fill(
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
            .call(&rkey, |c| {
                c.eval(entry::FILL_SCRIPT, vec![rkey.as_str()], args.clone())
            })
            .await?;
        Ok(match stored {
            1 => Filled::Stored(expires_ms),
            0 => Filled::Expired,
            _ => Filled::Refused,
        })
    }

    pub(super) async fn unlock(&self, lkey: &str, token: u64) {
        // Delete only our own lock: it may have expired and been taken.
        const SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
        let _ = self
            .call(lkey, |c| {
                c.eval::<i64, _, _, _>(SCRIPT, vec![lkey], vec![token.to_string()])
            })
            .await;
    }
}
