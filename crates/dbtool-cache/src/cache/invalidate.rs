//! Invalidation by key and by tag: markers, tag versions, the
//! invalidation message, and the retries of invalidations that did
//! not reach Redis. One concept: making older values unreadable.

use std::future::Future;
use std::sync::Weak;
use std::time::Duration;

use fred::interfaces::{KeysInterface, LuaInterface, PubsubInterface};
use fred::types::{Expiration, SetOptions, Value};
use rand::Rng;

use super::{now_ms, Cache, Failure, Inner};
use crate::codec::Codec;
use crate::coherence::{Inval, TagState};
use crate::entry;
use crate::keys::{self, Message};
use crate::Error;
use fred::clients::Client;

impl<C: Codec> Cache<C> {
    /// Deletes `key` everywhere (Redis, this L1, other processes' L1), and
    /// keeps any load that began before from storing its value afterwards.
    ///
    /// Redis gets an invalidation marker in place of the value (for
    /// `marker_ms`): reads miss, a fill whose load started before cannot
    /// land (its lease is gone), and a load that starts from the marker is
    /// told to read the primary ([`Freshness::Primary`](crate::Freshness::Primary)). Call it after the
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
    /// [`Freshness::AtLeast`](crate::Freshness::AtLeast)`(watermark)` and must read data at or past it.
    pub async fn delete_after(&self, key: &str, watermark: u64) -> Result<(), Error> {
        self.invalidate_key(key, Some(watermark)).await
    }

    pub(super) async fn invalidate_key(
        &self,
        key: &str,
        watermark: Option<u64>,
    ) -> Result<(), Error> {
        self.forget_key_locally(key);
        let rkey = self.inner.keys.value(key);
        let marker = entry::marker(rand::rng().random(), watermark);
        let px = self.inner.cfg.marker_ms as i64;
        let args = self.set_and_publish_args(marker, px, &Message::Key(key));
        let landed = self
            .retried("delete", key, &rkey, |c| {
                c.eval::<(), _, _, _>(SET_AND_PUBLISH, vec![rkey.as_str()], args.clone())
            })
            .await;
        // Again after the marker landed: a read that found the old value
        // just before it may have filled L1 or started a flight meanwhile.
        self.forget_key_locally(key);
        let what = Inval::Key(key.to_owned());
        match landed {
            Ok(()) => {
                self.inner.pending.clear(&what);
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
    /// ([`Freshness::Primary`](crate::Freshness::Primary)); see [`Cache::invalidate_tag_after`].
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
    /// [`Freshness::AtLeast`](crate::Freshness::AtLeast)`(watermark)` for as long as this version of
    /// the tag is current.
    pub async fn invalidate_tag_after(&self, tag: &str, watermark: u64) -> Result<(), Error> {
        self.invalidate_tag_at(tag, Some(watermark)).await
    }

    pub(super) async fn invalidate_tag_at(
        &self,
        tag: &str,
        watermark: Option<u64>,
    ) -> Result<(), Error> {
        self.forget_tag_locally(tag);
        let text = TagState::encode(rand::rng().random(), now_ms(), watermark);
        let tkey = self.inner.keys.tag(tag);
        let ttl = self.tag_ttl_ms();
        let args = self.set_and_publish_args(text.into_bytes(), ttl, &Message::Tag(tag));
        let landed = self
            .retried("invalidate tag", tag, &tkey, |c| {
                c.eval::<(), _, _, _>(SET_AND_PUBLISH, vec![tkey.as_str()], args.clone())
            })
            .await;
        self.forget_tag_locally(tag);
        let what = Inval::Tag(tag.to_owned());
        match landed {
            Ok(()) => {
                self.inner.pending.clear(&what);
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
    pub(super) fn forget_key_locally(&self, key: &str) {
        self.l1_forget(key);
        self.inner.flights.detach(key);
    }

    pub(super) fn forget_tag_locally(&self, tag: &str) {
        self.l1_forget_tag(tag);
        self.inner.flights.detach_all();
    }

    /// Runs an idempotent invalidation command on `rkey` up to
    /// `1 + retry.retries` times, waiting `min(step_ms * attempt, max_ms)`
    /// between attempts, then reports [`Error::Unavailable`] (logged at
    /// `warn`).
    pub(super) async fn retried<'a, R, F, Fut>(
        &'a self,
        op: &'static str,
        key: &str,
        rkey: &str,
        cmd: F,
    ) -> Result<R, Error>
    where
        F: Fn(&'a Client) -> Fut,
        Fut: Future<Output = Result<R, fred::error::Error>> + 'a,
    {
        let retry = &self.inner.cfg.retry;
        let mut attempt = 0u32;
        loop {
            match self.call(rkey, &cmd).await {
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

    /// Current versions of `tags`, grouped per slot: one MGET per slot,
    /// concurrently.
    pub(super) async fn read_tags(&self, tags: &[String]) -> Result<Vec<Option<u64>>, Failure> {
        Ok(self
            .read_tag_states(tags)
            .await?
            .into_iter()
            .map(|s| s.map(|s| s.version))
            .collect())
    }

    /// [`read_tags`](Self::read_tags) with what each invalidation asked of
    /// later loads.
    pub(super) async fn read_tag_states(
        &self,
        tags: &[String],
    ) -> Result<Vec<Option<TagState>>, Failure> {
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
    pub(super) async fn ensure_tags(
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
                .call(&tkey, |c| {
                    c.set(
                        tkey.as_str(),
                        mine.to_string(),
                        Some(Expiration::PX(self.tag_ttl_ms())),
                        Some(SetOptions::NX),
                        true,
                    )
                })
                .await?;
            Ok(old
                .and_then(|s| TagState::parse(&s))
                .map_or(mine, |s| s.version))
        });
        futures::future::try_join_all(futs).await
    }

    /// The arguments of [`SET_AND_PUBLISH`]: the record, its TTL (ms), and
    /// the L1 invalidation message.
    pub(super) fn set_and_publish_args(
        &self,
        record: Vec<u8>,
        px: i64,
        msg: &Message<'_>,
    ) -> Vec<Value> {
        vec![
            Value::Bytes(record.into()),
            Value::Integer(px),
            Value::from(self.inner.keys.channel()),
            Value::from(keys::encode_message(self.inner.instance, msg)),
        ]
    }

    pub(super) async fn publish(&self, msg: Message<'_>) {
        // Published even without a local L1: other processes may have one.
        let channel = self.inner.keys.channel();
        let text = keys::encode_message(self.inner.instance, &msg);
        if let Err(e) = self
            .inner
            .routes
            .call_any(
                fred::util::redis_keyslot(channel.as_bytes()),
                &self.inner.stats,
                |c| c.publish::<i64, _, _>(channel.as_str(), text.as_str()),
            )
            .await
        {
            tracing::debug!(error = %e, "cache: invalidation message not published; other L1s expire by ttl");
        }
    }

    pub(super) fn tag_ttl_ms(&self) -> i64 {
        (self.inner.cfg.tag_ttl_secs.max(1) * 1000) as i64
    }
}

/// Writes a record and then publishes the L1 invalidation message that
/// must follow it, in one round trip: the message leaves the key's master
/// only once the record is in place (a `PUBLISH` from a script reaches
/// every node's subscribers, as from a client), and a failed write
/// publishes nothing. `KEYS[1]` the key; `ARGV`: the record, its TTL in
/// ms, the channel, the message.
pub(super) const SET_AND_PUBLISH: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// Retries the invalidations that did not reach Redis until they land.
pub(super) async fn pending_task<C: Codec>(inner: Weak<Inner<C>>) {
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
            let landed = inner
                .routes
                .call(
                    fred::util::redis_keyslot(rkey.as_bytes()),
                    &inner.stats,
                    |c| {
                        c.set::<(), _, _>(
                            rkey.as_str(),
                            bytes.as_slice(),
                            Some(Expiration::PX(px as i64)),
                            None,
                            false,
                        )
                    },
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
            let _ = inner
                .routes
                .call_any(
                    fred::util::redis_keyslot(channel.as_bytes()),
                    &inner.stats,
                    |c| c.publish::<i64, _, _>(channel.as_str(), text.as_str()),
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
