//! Per-node circuit breakers: routing each call through the breaker of
//! the master that owns its slot, and following the cluster topology.
//! Kept apart because every Redis call passes through it.

use std::future::Future;
use std::sync::Weak;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface};

use super::{Cache, Failure, Inner};
use crate::breaker::{Breaker, Breakers};
use crate::codec::Codec;
use crate::stats::Recorder;

impl<C: Codec> Cache<C> {
    /// Runs one Redis command on `rkey` through the breaker of the master
    /// that owns its slot, with stats (fred applies the command timeout).
    pub(super) fn call<'a, R: 'a>(
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
pub(super) fn call<'a, R: 'a>(
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

/// Points each slot at the breaker of its master, from fred's cluster state.
pub(super) fn route_breakers<C>(inner: &Inner<C>) {
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
pub(super) async fn routes_task<C: Codec>(inner: Weak<Inner<C>>) {
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
