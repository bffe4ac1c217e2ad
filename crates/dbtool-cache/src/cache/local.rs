//! The client's side of the in-process L1: typed access to it, and the
//! task that keeps it honest from the invalidation channel. Kept apart
//! from `crate::l1` (the store itself) because it needs the client.

use std::sync::{Arc, Weak};

use fred::clients::Client;
use fred::interfaces::{EventInterface, PubsubInterface};

use super::{now_ms, Cache, Inner};
use crate::codec::Codec;
use crate::keys::{self, Message};
use crate::l1::{Negative, L1};

impl<C: Codec> Cache<C> {
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

    pub(super) fn l1_epoch(&self) -> u64 {
        self.inner.l1.as_ref().map_or(0, L1::epoch)
    }

    /// An L1 hit as a shared value: `Some(value)` (value `None` for a
    /// negative entry); `None` on a miss or when another type is stored.
    pub(super) fn l1_get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Option<Arc<T>>> {
        let item = self.inner.l1.as_ref()?.get(key, crate::clock::upper_ms())?;
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
    pub(super) fn l1_get_cloned<T: Clone + 'static>(&self, key: &str) -> Option<Option<T>> {
        let item = self.inner.l1.as_ref()?.get(key, crate::clock::upper_ms())?;
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
    pub(super) fn l1_put<T: Clone + Send + Sync + 'static>(
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

    pub(super) fn l1_put_arc<T: Send + Sync + 'static>(
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

    pub(super) fn l1_forget(&self, key: &str) {
        if let Some(l1) = &self.inner.l1 {
            l1.forget(key);
        }
    }

    pub(super) fn l1_forget_tag(&self, tag: &str) {
        if let Some(l1) = &self.inner.l1 {
            l1.forget_tag(tag);
        }
    }
}

/// Keeps L1 honest: applies invalidation messages, flushes when a
/// connection drops or messages may have been lost, resubscribes after a
/// reconnect.
pub(super) async fn l1_task<C: Codec>(
    inner: Weak<Inner<C>>,
    sub: Client,
    client: Client,
    channel: String,
) {
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
