//! Routing by hash slot: one connection per master, each behind its own
//! circuit breaker, and the cache's own slot table that follows the
//! cluster's topology. Kept apart because every Redis call passes through
//! it.
//!
//! Why not send every command through fred's cluster client: its router is
//! one task that reconnects every node together, and cannot while a dead
//! master is still in the cluster's slot map, so while one master is down
//! the commands for every master wait (until the failover promotes a
//! replica). A fred client per master fails alone: a dead master holds up
//! only the commands on its own slots, and its breaker opens only for them.
//!
//! The cluster client stays, for what needs the whole cluster: slots with
//! no known master, redirections to a master not known yet,
//! [`Cache::redis`], and its view of the topology when no master of ours
//! answers. An `ASK` is followed on the named master's own asking
//! connection (see [`Routes::call`]), not through fred's cluster client.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Server, ServerConfig};
use fred::types::{Builder, ConnectHandle, Value};
use tokio::sync::Notify;

use super::{Cache, Failure, Inner};
use crate::breaker::Breaker;
use crate::codec::Codec;
use crate::stats::Recorder;

/// Redis Cluster's hash slots.
const SLOTS: usize = 16384;
/// Masters one process can know over its life, plus the cluster client at
/// index 0. Addresses are never reused for another node, so a process that
/// sees more distinct masters than this (each failover to a new address
/// adds one) routes the slots of the extra ones through the cluster client.
const NODES: usize = 256;

impl<C: Codec> Cache<C> {
    /// Runs one Redis command on `rkey` on the master that owns its slot,
    /// through that master's breaker, with stats. `cmd` builds the command
    /// for a client; it is built again for the one retry a redirection
    /// gets. The command timeout is fred's own (see [`Node::run`]).
    pub(super) fn call<'a, 'f, R, F, Fut>(
        &'a self,
        rkey: &str,
        cmd: F,
    ) -> impl Future<Output = Result<R, Failure>> + 'f + use<'a, 'f, C, R, F, Fut>
    where
        'a: 'f,
        R: 'f,
        F: Fn(&'a Client) -> Fut + 'f,
        Fut: Future<Output = Result<R, fred::error::Error>> + 'f,
    {
        self.inner.routes.call(
            fred::util::redis_keyslot(rkey.as_bytes()),
            &self.inner.stats,
            cmd,
        )
    }
}

/// One master: its own fred client (one connection) and breaker.
pub(crate) struct Node {
    /// `host:port`, as the cluster names it.
    addr: String,
    server: Server,
    client: Client,
    breaker: Breaker,
    /// The connection task, while this node is in use.
    task: Mutex<Option<ConnectHandle>>,
    /// A connection of its own for commands redirected here by `ASK`
    /// (built at once, connected on the first one): `ASKING` must come
    /// right before the command on the same connection, and on the shared
    /// one another caller's command could come between them. The lock
    /// keeps the pair together; an `ASK` only happens while a slot
    /// migrates.
    asking: Client,
    asking_lock: tokio::sync::Mutex<Option<ConnectHandle>>,
}

impl Node {
    fn new(addr: String, server: Server, client: Client, asking: Client, breaker: Breaker) -> Node {
        Node {
            addr,
            server,
            client,
            breaker,
            task: Mutex::new(None),
            asking,
            asking_lock: tokio::sync::Mutex::new(None),
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client's connection task runs (it connects, or reconnects with
    /// the reconnect policy).
    fn running(&self) -> bool {
        self.task
            .lock()
            .expect("node task")
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Answers commands now, as far as this process knows.
    fn healthy(&self) -> bool {
        self.client.is_connected() && !self.breaker.is_open()
    }

    /// Runs one fred command through this node's breaker and records the
    /// outcome. A redirection (`MOVED`, `ASK`) is an answer, not a failure
    /// of the node: it is returned as [`Failure::Redirect`] and counted by
    /// the caller once it knows the outcome of the retry.
    ///
    /// The command timeout is fred's own (`default_command_timeout`, set at
    /// connect), and only fred's. A second timer around the call would
    /// usually fire first (its clock starts before fred's), and fred, never
    /// told that the caller gave up, would keep the command in its retry
    /// buffer and could write it after a reconnect, long after the caller
    /// was told it failed (a `set` reported as failed could land later and
    /// overwrite a newer value).
    pub fn run<'a, R: 'a>(
        &'a self,
        stats: &'a Recorder,
        fut: impl Future<Output = Result<R, fred::error::Error>> + 'a,
    ) -> impl Future<Output = Result<R, Failure>> + 'a {
        // A combinator, not an `async fn`: an async fn keeps its future
        // argument and, once awaited, a second copy of it, so every layer
        // doubled fred's ~7 KB command future (`Cache::get`'s future was
        // 41 KB, copied on each call; ~1.5 µs per GET in the cache bench).
        use futures::future::{Either, FutureExt as _};
        if !self.breaker.allow() {
            stats.breaker_skip();
            return Either::Left(std::future::ready(Err(Failure::Breaker)));
        }
        let started = Instant::now();
        Either::Right(fut.map(move |res| match res {
            Ok(v) => {
                self.breaker.success();
                stats.redis(started.elapsed());
                Ok(v)
            }
            Err(e) if e.is_moved() || e.is_ask() => {
                self.breaker.success();
                Err(Failure::Redirect(e))
            }
            Err(e) => {
                let timeout = *e.kind() == fred::error::ErrorKind::Timeout;
                self.breaker.failure();
                stats.error(timeout);
                tracing::debug!(node = %self.addr, error = %e, "cache: redis command failed (fail-open)");
                Err(if timeout {
                    Failure::Timeout
                } else {
                    Failure::Redis(e)
                })
            }
        }))
    }
}

impl Node {
    /// Runs `cmd` here after `ASKING`, on the asking connection (connected
    /// on first use), the pair kept together by its lock.
    async fn ask<'a, 'f, R, F, Fut>(&'a self, stats: &'f Recorder, cmd: &F) -> Result<R, Failure>
    where
        'a: 'f,
        F: Fn(&'a Client) -> Fut,
        Fut: Future<Output = Result<R, fred::error::Error>> + 'f,
    {
        use fred::types::CustomCommand;
        let mut task = self.asking_lock.lock().await;
        if task.as_ref().is_none_or(|t| t.is_finished()) {
            let timeout = self.asking.connection_config().connection_timeout;
            match super::client::init(&self.asking, timeout).await {
                Ok(t) => *task = Some(t),
                Err(e) => {
                    stats.error(false);
                    return Err(Failure::Redis(e));
                }
            }
        }
        let asking = CustomCommand::new_static("ASKING", None, false);
        self.run(
            stats,
            self.asking.custom::<Value, Value>(asking, Vec::new()),
        )
        .await?;
        match self.run(stats, cmd(&self.asking)).await {
            Err(Failure::Redirect(e)) => {
                stats.error(false);
                Err(Failure::Redis(e))
            }
            r => r,
        }
    }
}

/// The slot table and the masters it points at.
pub(crate) struct Routes {
    /// Slot -> index in `nodes` (0: no known master, the cluster client).
    slots: Box<[AtomicU8]>,
    /// Append-only, so a call can borrow its node for as long as it runs.
    nodes: Box<[OnceLock<Node>]>,
    names: Mutex<HashMap<String, u8>>,
    /// Builds a master's client: the cluster client's settings (auth, TLS,
    /// timeouts, reconnect policy) with a centralized server.
    builder: Builder,
    threshold: u32,
    open_for: Duration,
    connect_timeout: Duration,
    /// One topology change at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// A `MOVED` asks for the table to be read again now.
    moved: Arc<Notify>,
}

impl Routes {
    /// A table that sends every slot to `cluster` until
    /// [`refresh`](Self::refresh) learns the masters.
    pub fn new(
        cluster: Client,
        builder: Builder,
        threshold: u32,
        open_for: Duration,
        connect_timeout: Duration,
    ) -> Routes {
        let nodes: Box<[OnceLock<Node>]> = (0..NODES).map(|_| OnceLock::new()).collect();
        let _ = nodes[0].set(Node::new(
            "cluster".into(),
            Server::new("cluster", 0),
            cluster.clone(),
            cluster,
            Breaker::new(threshold, open_for),
        ));
        Routes {
            slots: (0..SLOTS).map(|_| AtomicU8::new(0)).collect(),
            nodes,
            names: Mutex::new(HashMap::new()),
            builder,
            threshold,
            open_for,
            connect_timeout,
            refreshing: tokio::sync::Mutex::new(()),
            moved: Arc::new(Notify::new()),
        }
    }

    fn node_at(&self, i: u8) -> &Node {
        self.nodes[usize::from(i)]
            .get()
            .unwrap_or_else(|| self.fallback())
    }

    /// The cluster client's node.
    fn fallback(&self) -> &Node {
        self.nodes[0].get().expect("the cluster client is node 0")
    }

    /// The master that owns `slot`.
    #[inline]
    fn node(&self, slot: u16) -> &Node {
        self.node_at(self.slots[usize::from(slot) % SLOTS].load(Ordering::Relaxed))
    }

    /// Runs `cmd` on the master of `slot`. A `MOVED` points the slot at the
    /// master named in it when this process knows that master (and asks for
    /// the whole table to be read again), then retries once there; an `ASK`
    /// retries once on the master it names, after `ASKING`, on that
    /// master's asking connection (the slot keeps its master: only the keys
    /// already migrated are asked for elsewhere). A redirection to a master
    /// not known yet retries once through the cluster client.
    ///
    /// fred's cluster client is not asked to follow an `ASK`: fred 10.1
    /// sends `ASKING` to the target but then the command by its slot map,
    /// to the source again, so it is redirected until it times out
    /// (measured: every read of a migrated key timed out and missed).
    pub fn call<'a, 'f, R, F, Fut>(
        &'a self,
        slot: u16,
        stats: &'a Recorder,
        cmd: F,
    ) -> impl Future<Output = Result<R, Failure>> + 'f + use<'a, 'f, R, F, Fut>
    where
        'a: 'f,
        R: 'f,
        F: Fn(&'a Client) -> Fut + 'f,
        Fut: Future<Output = Result<R, fred::error::Error>> + 'f,
    {
        let node = self.node(slot);
        async move {
            match node.run(stats, cmd(&node.client)).await {
                Err(Failure::Redirect(e)) => {
                    if e.is_ask() {
                        if let Some(node) = self.known(e.details()) {
                            // Boxed: rare, and it would double the state
                            // of every call.
                            return Box::pin(node.ask(stats, &cmd)).await;
                        }
                    }
                    let next = if e.is_moved() {
                        self.moved.notify_one();
                        self.follow_moved(slot, e.details())
                    } else {
                        None
                    }
                    .unwrap_or_else(|| self.fallback());
                    match next.run(stats, cmd(&next.client)).await {
                        Err(Failure::Redirect(e)) => {
                            stats.error(false);
                            Err(Failure::Redis(e))
                        }
                        r => r,
                    }
                }
                r => r,
            }
        }
    }

    /// Runs `cmd` on the master of `slot` if it is healthy, else on any
    /// healthy master: for commands any master can answer for the whole
    /// cluster (`PUBLISH` reaches every node's subscribers from any node).
    pub fn call_any<'a, 'f, R, F, Fut>(
        &'a self,
        slot: u16,
        stats: &'a Recorder,
        cmd: F,
    ) -> impl Future<Output = Result<R, Failure>> + 'f + use<'a, 'f, R, F, Fut>
    where
        'a: 'f,
        R: 'f,
        F: Fn(&'a Client) -> Fut + 'f,
        Fut: Future<Output = Result<R, fred::error::Error>> + 'f,
    {
        let own = self.node(slot);
        let node = if own.healthy() {
            own
        } else {
            self.masters()
                .into_iter()
                .find(|n| n.healthy())
                .unwrap_or(own)
        };
        node.run(stats, cmd(&node.client))
    }

    /// Points `slot` at the master a `MOVED` names, if this process has a
    /// connected client for it.
    fn follow_moved(&self, slot: u16, details: &str) -> Option<&Node> {
        let (i, node) = self.named(details)?;
        self.slots[usize::from(slot) % SLOTS].store(i, Ordering::Relaxed);
        Some(node)
    }

    /// The master a redirection names, if this process has a connected
    /// client for it.
    fn known(&self, details: &str) -> Option<&Node> {
        self.named(details).map(|(_, node)| node)
    }

    fn named(&self, details: &str) -> Option<(u8, &Node)> {
        // "MOVED 3999 127.0.0.1:6381", "ASK 3999 127.0.0.1:6381"
        let addr = details.split_whitespace().nth(2)?;
        let i = *self.names.lock().expect("node names").get(addr)?;
        let node = self.node_at(i);
        if !node.client.is_connected() {
            return None;
        }
        Some((i, node))
    }

    /// The masters that own slots now (each once, in index order).
    pub fn masters(&self) -> Vec<&Node> {
        let used = self.routed();
        (1..NODES)
            .filter(|&i| used[i])
            .filter_map(|i| self.nodes[i].get())
            .collect()
    }

    /// Indexes that own at least one slot now.
    fn routed(&self) -> [bool; NODES] {
        let mut used = [false; NODES];
        for s in self.slots.iter() {
            used[usize::from(s.load(Ordering::Relaxed))] = true;
        }
        used
    }

    /// The index of the master at `server`, creating its client (not
    /// connected yet) the first time. `None` when the table is full or the
    /// client cannot be built.
    fn index(&self, server: &Server) -> Option<u8> {
        let addr = format!("{}:{}", server.host, server.port);
        let mut names = self.names.lock().expect("node names");
        if let Some(&i) = names.get(&addr) {
            return Some(i);
        }
        let i = names.len() + 1;
        if i >= NODES {
            tracing::warn!(
                node = %addr,
                "cache: too many masters seen; this one's slots go through the cluster client"
            );
            return None;
        }
        let mut builder = self.builder.clone();
        let mut config = builder.get_config().cloned().unwrap_or_default();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        builder.set_config(config);
        let (client, asking) = match builder.build().and_then(|c| Ok((c, builder.build()?))) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %addr, error = %e, "cache: cannot build a client for a master");
                return None;
            }
        };
        let node = Node::new(
            addr.clone(),
            server.clone(),
            client,
            asking,
            Breaker::new(self.threshold, self.open_for),
        );
        if self.nodes[i].set(node).is_err() {
            return None;
        }
        names.insert(addr, i as u8);
        Some(i as u8)
    }

    /// Connects node `i` unless its connection task runs.
    async fn start(&self, i: u8) -> Result<(), fred::error::Error> {
        let node = self.node_at(i);
        if i == 0 || node.running() {
            return Ok(());
        }
        let task = super::client::init(&node.client, self.connect_timeout).await?;
        *node.task.lock().expect("node task") = Some(task);
        Ok(())
    }

    /// Points each slot range at its master.
    fn route(&self, table: &[(u16, u16, u8)]) {
        for &(start, end, i) in table {
            for slot in start..=end {
                if let Some(s) = self.slots.get(usize::from(slot)) {
                    s.store(i, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reads the cluster's slot map (`CLUSTER SLOTS` from a connected
    /// master, else the cluster client's view), connects to masters new to
    /// this process, and points the slots at them. Fails when no slot map
    /// can be read, or (`strict`, at connect) when a master cannot be
    /// reached.
    pub async fn refresh(&self, strict: bool) -> Result<(), fred::error::Error> {
        let _one = self.refreshing.lock().await;
        let map = self.slot_map().await?;
        let mut table = Vec::with_capacity(map.slots().len());
        for r in map.slots() {
            let Some(i) = self.index(&r.primary) else {
                table.push((r.start, r.end, 0));
                continue;
            };
            match self.start(i).await {
                Ok(()) => table.push((r.start, r.end, i)),
                Err(e) if strict => return Err(e),
                // Its slots keep their master until it answers (a promoted
                // replica accepts connections at once, a dead master not).
                Err(e) => {
                    tracing::debug!(node = %self.node_at(i).addr, error = %e, "cache: cannot connect to a master yet")
                }
            }
        }
        self.route(&table);
        // Masters that lost their slots (replaced by a failover, or a
        // resharding) are closed when connected; one still down keeps
        // reconnecting and is closed once it answers again.
        let used = self.routed();
        for (node, used) in self.nodes.iter().zip(used).skip(1) {
            let Some(node) = node.get() else {
                break;
            };
            if !used && node.running() && node.client.is_connected() {
                let client = node.client.clone();
                tokio::spawn(async move {
                    let _ = client.quit().await;
                });
            }
        }
        Ok(())
    }

    async fn slot_map(&self) -> Result<ClusterRouting, fred::error::Error> {
        let mut last = None;
        for node in self.masters() {
            if !node.client.is_connected() {
                continue;
            }
            match node.client.cluster_slots::<Value>().await {
                Ok(v) => match ClusterRouting::from_cluster_slots(v, node.server.host.clone()) {
                    Ok(map) if map.len() > 0 => return Ok(map),
                    Ok(_) => {}
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        match self.fallback().client.cached_cluster_state() {
            Some(map) if map.len() > 0 => Ok(map),
            _ => Err(last.unwrap_or_else(|| {
                fred::error::Error::new(fred::error::ErrorKind::Cluster, "no cluster slot map")
            })),
        }
    }

    /// Some master in use does not answer: the slot map may have changed
    /// (a failover).
    fn degraded(&self) -> bool {
        self.masters().iter().any(|n| !n.healthy())
    }

    /// True while the breaker of any master that owns slots (or the
    /// cluster client's) is open.
    pub fn any_open(&self) -> bool {
        self.fallback().breaker.is_open() || self.masters().iter().any(|n| n.breaker.is_open())
    }

    /// Masters (by `host:port`) that own slots and whose breaker is open.
    pub fn open_nodes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .masters()
            .iter()
            .filter(|n| n.breaker.is_open())
            .map(|n| n.addr.clone())
            .collect();
        out.sort();
        out
    }

    /// The clients of every master this process connected to (with their
    /// asking connections).
    pub fn clients(&self) -> Vec<Client> {
        let nodes = || (1..NODES).map_while(|i| self.nodes[i].get());
        nodes()
            .filter(|n| n.running())
            .map(|n| n.client.clone())
            .chain(
                nodes()
                    .filter(|n| n.asking.is_connected())
                    .map(|n| n.asking.clone()),
            )
            .collect()
    }
}

/// Follows the cluster's topology (failovers, resharding): at once after a
/// `MOVED` or a change the cluster client saw, every second while a master
/// in use does not answer, and every 10 s in any case.
pub(super) async fn routes_task<C: Codec>(inner: Weak<Inner<C>>) {
    let Some((mut changes, moved)) = inner
        .upgrade()
        .map(|i| (i.client.cluster_change_rx(), i.routes.moved.clone()))
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u32;
    loop {
        let wanted = tokio::select! {
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                ticks % 10 == 0
            }
            _ = moved.notified() => true,
            r = changes.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                true
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        if wanted || inner.routes.degraded() {
            if let Err(e) = inner.routes.refresh(false).await {
                tracing::debug!(error = %e, "cache: cannot read the cluster's slot map");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(threshold: u32) -> Routes {
        let builder = Builder::default_clustered();
        let cluster = builder.build().expect("a client");
        Routes::new(
            cluster,
            builder,
            threshold,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
    }

    fn assign(r: &Routes, ranges: &[(u16, u16, &str)]) {
        let table: Vec<(u16, u16, u8)> = ranges
            .iter()
            .map(|(s, e, addr)| {
                let (host, port) = addr.rsplit_once(':').expect("host:port");
                let server = Server::new(host, port.parse().expect("port"));
                (*s, *e, r.index(&server).expect("an index"))
            })
            .collect();
        r.route(&table);
    }

    #[test]
    fn a_failing_master_opens_only_the_breaker_of_its_slots() {
        let r = routes(2);
        assign(
            &r,
            &[
                (0, 5460, "a:1"),
                (5461, 10922, "b:1"),
                (10923, 16383, "c:1"),
            ],
        );
        r.node(100).breaker.failure();
        r.node(200).breaker.failure();
        assert!(!r.node(300).breaker.allow(), "a's slots skip redis");
        assert!(r.node(6000).breaker.allow(), "b's slots do not");
        assert!(r.node(16000).breaker.allow(), "c's slots do not");
        assert_eq!(r.open_nodes(), ["a:1"]);
        // After a failover a's slots belong to a promoted replica.
        assign(&r, &[(0, 5460, "d:1")]);
        assert_eq!(r.node(300).addr, "d:1");
        assert!(r.node(300).breaker.allow());
        assert!(
            !r.any_open(),
            "a owns no slot: its open breaker no longer counts"
        );
        assert!(r.open_nodes().is_empty());
        // a comes back as a master: the same node, the same client.
        assign(&r, &[(0, 5460, "a:1")]);
        assert_eq!(r.open_nodes(), ["a:1"]);
    }

    #[test]
    fn slots_with_no_known_master_go_to_the_cluster_client() {
        let r = routes(2);
        assert_eq!(r.node(42).addr, "cluster");
        assign(&r, &[(0, 100, "a:1")]);
        assert_eq!(r.node(42).addr, "a:1");
        assert_eq!(r.node(101).addr, "cluster");
    }

    #[test]
    fn a_moved_points_the_slot_at_a_known_master_only_when_connected() {
        let r = routes(2);
        assign(&r, &[(0, 100, "a:1"), (101, 200, "b:1")]);
        // b's client never connected: the retry goes to the cluster client.
        assert!(r.follow_moved(42, "MOVED 42 b:1").is_none());
        assert!(r.follow_moved(42, "MOVED 42 z:9").is_none());
        assert!(r.follow_moved(42, "MOVED").is_none());
        assert_eq!(r.node(42).addr, "a:1");
    }
}
