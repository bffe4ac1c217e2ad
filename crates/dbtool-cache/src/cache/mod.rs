//! [`Cache`]: the client services use.
//!
//! This module holds the client's type, its shared state and the small
//! types its operations pass between each other; each operation lives in
//! the submodule of its concept, so no file mixes them:
//!
//! - `client`: connect (TLS, background tasks), close, accessors;
//! - `typed`: typed `get`/`set` and the read/write path under them;
//! - `load`: `get_or_load`, single-flight leaders and fill leases;
//! - `invalidate`: invalidation by key and tag, markers, pending retries;
//! - `local`: the client's side of the in-process L1;
//! - `routing`: one client and circuit breaker per master, the slot
//!   table and topology following;
//! - `inspect`: shared stats, nodes, one key's inspection.

mod client;
mod inspect;
mod invalidate;
mod load;
mod local;
mod routing;
mod typed;

pub use inspect::{Inspection, NodeInfo};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use tokio::task::JoinHandle;

use crate::codec::{Codec, Json};
use crate::coherence::{Freshness, Pending};
use crate::flight::Flights;
use crate::keys::Keys;
use crate::l1::L1;
use crate::stats::Recorder;
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
    routes: routing::Routes,
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
            let masters = self.routes.clients();
            rt.spawn(async move {
                for c in masters {
                    let _ = c.quit().await;
                }
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
    /// `MOVED` or `ASK`: the node answered that another one owns the slot.
    Redirect(fred::error::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Breaker => f.write_str("circuit breaker open"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Redis(e) | Failure::Redirect(e) => f.write_str(&crate::error::human(e)),
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
    /// Take the fill lease in the read itself: the generation of a lease
    /// the read writes if the key is absent (`SET NX GET` in place of the
    /// `GET`), so a miss costs no second round trip for it.
    lease: Option<u64>,
}

impl ReadState {
    fn new() -> ReadState {
        ReadState {
            versions: Vec::new(),
            ok: true,
            token: None,
            fresh: Freshness::Any,
            pending: false,
            lease: None,
        }
    }
}

fn now_ms() -> u64 {
    crate::clock::precise_ms()
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// `ttl` shortened by up to `jitter` of itself; `r` uniform in [0, 1).
fn jittered(ttl_ms: u64, jitter: f64, r: f64) -> u64 {
    (ttl_ms as f64 * (1.0 - jitter * r)).round() as u64
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
    use fred::interfaces::KeysInterface;
    use fred::types::Value;

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
