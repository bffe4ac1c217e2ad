//! What operators see: cluster-wide stats (and the task that publishes
//! this client's counters), the nodes, and one key's inspection. Kept
//! apart from the hot paths; `dbtool cache` uses it.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface};
use fred::types::Value;
use serde::Serialize;

use super::{now_ms, Cache, Failure, Inner};
use crate::codec::Codec;
use crate::entry;
use crate::stats::{self, Stats};
use crate::Error;

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

impl<C: Codec> Cache<C> {
    /// Reads the shared counters summed over every process of this
    /// namespace (each flushes every `stats_flush_secs`), after flushing ours.
    pub async fn shared_stats(&self) -> Result<Stats, Error> {
        let _ = flush_stats(&self.inner).await;
        let skey = self.inner.keys.stats();
        let fields: HashMap<String, u64> = self
            .call(&skey, |c| c.hgetall(skey.as_str()))
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
        let masters = self.inner.routes.masters();
        if masters.is_empty() {
            return Err(Error::Unavailable {
                op: "read cluster state",
                key: String::new(),
                reason: "no cluster state yet".into(),
            });
        }
        let mut out = Vec::new();
        for master in masters {
            let node = master.addr().to_owned();
            let cmd = fred::types::CustomCommand::new_static(
                "INFO",
                fred::types::ClusterHash::Random,
                false,
            );
            let text: String = master
                .run(
                    &self.inner.stats,
                    master.client().custom(cmd, Vec::<String>::new()),
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
            self.call(&rkey, |c| c.get::<Value, _>(rkey.as_str())),
            self.call(&rkey, |c| c.pttl::<i64, _>(rkey.as_str())),
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
}

pub(super) fn payload_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

pub(super) async fn stats_task<C: Codec>(inner: Weak<Inner<C>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let _ = flush_stats(&inner).await;
    }
}

pub(super) async fn flush_stats<C: Codec>(inner: &Inner<C>) -> Result<(), Failure> {
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
            inner
                .routes
                .call(
                    fred::util::redis_keyslot(skey.as_bytes()),
                    &inner.stats,
                    |c| c.hincrby::<i64, _, _>(skey, field, n as i64),
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
