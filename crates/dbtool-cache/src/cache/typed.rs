//! Typed reads and writes: `get`, `get_arc`, `get_many`, `set`,
//! `set_with`, and the read/write path under them (decode, envelope,
//! MGET). One concept: one key's value in and out of Redis.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{KeysInterface, LuaInterface};
use fred::types::{Expiration, SetOptions, Value};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};

use super::{jittered, ms, now_ms, Cache, Failure, Found, Options, ReadState};
use crate::codec::Codec;
use crate::coherence::Freshness;
use crate::entry::{self, Envelope, Record};
use crate::keys::Message;
use crate::Error;

impl<C: Codec> Cache<C> {
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
    /// `Ok(())`. The failure is counted in [`Stats::errors`](crate::Stats::errors) (or
    /// [`Stats::breaker_skips`](crate::Stats::breaker_skips)) and logged at `warn` with the key. This
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
            Ok(()) => {}
            Err(reason) => tracing::warn!(
                namespace = %self.inner.cfg.namespace,
                key,
                reason = %reason,
                "cache: set not stored (fail-open); the next read misses or sees the previous value"
            ),
        }
        Ok(())
    }

    /// Reads and classifies one entry (no hint tags).
    pub(super) async fn read<T>(&self, key: &str) -> Found<T>
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
    pub(super) async fn read_tracked<T>(
        &self,
        key: &str,
        hint: &[String],
        st: &mut ReadState,
    ) -> Found<T>
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
        let (raw, hinted) = if hint.is_empty() && st.lease.is_none() {
            (
                self.call(&rkey, |c| c.get::<Value, _>(rkey.as_str())).await,
                Ok(Vec::new()),
            )
        } else {
            // Boxed, as the tag read below: a GET with tag reads is tens of
            // KB of future state, which a plain GET (the hot path) would
            // otherwise carry and copy on every call (it made `Cache::get`'s
            // future 41 KB against fred's 7 KB, and cost ~1.5 µs per GET).
            Box::pin(self.read_leased(&rkey, hint, st.lease)).await
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
            match bytes {
                Some(b) => {
                    let (record, token) = entry::token(b);
                    if let Record::Marker { watermark } = record {
                        st.fresh = st.fresh.and(Freshness::of_watermark(watermark));
                    }
                    st.token = Some(token);
                }
                // The key was absent: the read wrote our lease.
                None => st.token = st.lease.map(|gen| gen.to_be_bytes().to_vec()),
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

    /// The read of a value key with the hinted tags' states, both at once
    /// (different slots, so two commands, one round trip); with `lease`,
    /// the value is read by `SET NX GET` of a lease record with that
    /// generation, which lands only where the key is absent.
    async fn read_leased(
        &self,
        rkey: &str,
        hint: &[String],
        lease: Option<u64>,
    ) -> (
        Result<Value, Failure>,
        Result<Vec<Option<crate::coherence::TagState>>, Failure>,
    ) {
        use futures::future::Either;
        let record = lease.map(entry::lease);
        let px = self.inner.cfg.lease_ms as i64;
        let value = self.call(rkey, |c| match &record {
            Some(record) => Either::Left(c.set::<Value, _, _>(
                rkey,
                record.as_slice(),
                Some(Expiration::PX(px)),
                Some(SetOptions::NX),
                true,
            )),
            None => Either::Right(c.get::<Value, _>(rkey)),
        });
        if hint.is_empty() {
            (value.await, Ok(Vec::new()))
        } else {
            futures::future::join(value, self.read_tag_states(hint)).await
        }
    }

    /// Decodes the payload; `Some(None)` for a negative entry, `None` when
    /// the payload does not decode as `T` (a miss; counted in
    /// [`Stats::decode_errors`] and logged).
    pub(super) fn decode_value<T: DeserializeOwned>(
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
    pub(super) fn envelope(
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

    /// Writes an entry unconditionally (`set`) and publishes the L1
    /// invalidation of the key, in one round trip; returns its logical
    /// expiry.
    pub(super) async fn write(
        &self,
        key: &str,
        payload: &[u8],
        opts: &Options,
        tags: &[(String, u64)],
    ) -> Result<u64, Failure> {
        let (bytes, expires_ms, px) =
            self.envelope(payload, false, opts, tags, Duration::ZERO, Freshness::Any);
        let rkey = self.inner.keys.value(key);
        let args = self.set_and_publish_args(bytes, px as i64, &Message::Key(key));
        self.call(&rkey, |c| {
            c.eval::<(), _, _, _>(
                super::invalidate::SET_AND_PUBLISH,
                vec![rkey.as_str()],
                args.clone(),
            )
        })
        .await?;
        Ok(expires_ms)
    }

    /// GET of many keys: one MGET per hash slot, all slots concurrently.
    pub(super) async fn mget(&self, rkeys: &[String]) -> Result<Vec<Option<Value>>, Failure> {
        if rkeys.len() == 1 {
            let v: Value = self.call(&rkeys[0], |c| c.get(rkeys[0].as_str())).await?;
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
                let vals: Vec<Value> = self
                    .inner
                    .routes
                    .call(slot, &self.inner.stats, |c| c.mget(ks.clone()))
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
}
