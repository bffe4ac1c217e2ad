//! A 6-node Redis Cluster (3 masters, 3 replicas) from the local redis-server.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::resp;
use crate::util;

/// Nodes in a cluster: 3 masters, each with 1 replica.
pub(crate) const NODES: usize = 6;

const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Bins {
    server: PathBuf,
    cli: PathBuf,
}

fn bins() -> Result<Bins> {
    let server = util::find_in_path("redis-server");
    let cli = util::find_in_path("redis-cli");
    match (server, cli) {
        (Some(server), Some(cli)) => Ok(Bins { server, cli }),
        (s, c) => Err(Error::MissingBinary {
            what: [("redis-server", s.is_none()), ("redis-cli", c.is_none())]
                .iter()
                .filter(|(_, missing)| *missing)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" and "),
            looked: "PATH".into(),
            install: "`apt-get install -y postgresql redis-server redis-tools`".into(),
        }),
    }
}

/// One redis-server.
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
}

impl Node {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.dir.join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        util::pid_alive(pid).then_some(pid)
    }
}

/// Role of a node in the cluster, as the cluster sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Serves slots (or is a master without slots).
    Master,
    /// Replicates the node with this index.
    Replica(usize),
    /// Not running, or marked failed by the cluster.
    Down,
}

/// The local cluster: node `i` lives in `root/r<i>` on a fixed port.
#[derive(Debug)]
pub(crate) struct LocalRedis {
    bins: Bins,
    root: PathBuf,
    nodes: Vec<Node>,
    reaper: Mutex<Option<std::process::Child>>,
    security: Option<Security>,
}

/// TLS and passwords for a cluster: TLS only (client, cluster bus and
/// replication), certificates from [`crate::tls::shared_ca`], the `default`
/// user's password, and one ACL user.
#[derive(Debug, Clone)]
pub(crate) struct Security {
    pub password: String,
    pub acl_user: String,
    pub acl_password: String,
}

impl LocalRedis {
    /// Starts 6 nodes, creates the cluster and waits until it is healthy.
    /// `node_timeout_ms` bounds failover time (a dead master is replaced after
    /// roughly 2x this).
    pub(crate) async fn start(
        node_timeout_ms: u64,
        security: Option<Security>,
    ) -> Result<LocalRedis> {
        let bins = bins()?;
        let root = util::make_root("redis", None)?;
        let reaper = util::spawn_reaper(&root)?;
        let mut cluster = LocalRedis {
            bins,
            root,
            nodes: Vec::new(),
            reaper: Mutex::new(Some(reaper)),
            security,
        };
        if cluster.security.is_some() {
            let ca = cluster.root.join("ca.pem");
            std::fs::write(&ca, crate::tls::shared_ca().cert_pem())
                .map_err(|e| Error::io(format!("writing {}", ca.display()), e))?;
        }
        for i in 0..NODES {
            let node = cluster.start_new_node(i, node_timeout_ms).await?;
            cluster.nodes.push(node);
        }
        let mut create = tokio::process::Command::new(&cluster.bins.cli);
        if let Some(s) = &cluster.security {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(cluster.root.join("ca.pem"))
                .args(["--no-auth-warning", "-a", &s.password]);
        }
        create
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(Node::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"]);
        util::run(create).await?;
        cluster.wait_healthy(START_TIMEOUT).await?;
        Ok(cluster)
    }

    async fn start_new_node(&self, i: usize, node_timeout_ms: u64) -> Result<Node> {
        let mut last = None;
        for _ in 0..5 {
            let node = Node {
                port: util::free_port(true),
                dir: self.root.join(format!("r{i}")),
            };
            std::fs::create_dir_all(&node.dir)
                .map_err(|e| Error::io(format!("creating {}", node.dir.display()), e))?;
            // Same file name per node: restart(i) reuses it, and with it the
            // node id in nodes.conf, so the node rejoins as itself.
            let conf = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize yes\n\
                 dir {dir}\npidfile {dir}/redis.pid\nlogfile {dir}/redis.log\n\
                 cluster-enabled yes\ncluster-config-file nodes.conf\n\
                 cluster-node-timeout {node_timeout_ms}\ncluster-replica-validity-factor 0\n\
                 save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n",
                port = node.port,
                dir = node.dir.display(),
            );
            let conf = match &self.security {
                None => conf,
                Some(s) => {
                    crate::tls::shared_ca().write_server_files(
                        &node.dir,
                        &["localhost", "127.0.0.1"],
                        None,
                    )?;
                    crate::resp::secure(&node.addr(), &s.password);
                    // TLS only: the plaintext port is off.
                    format!(
                        "{conf}port 0\ntls-port {port}\n\
                         tls-cert-file {dir}/server.crt\ntls-key-file {dir}/server.key\n\
                         tls-ca-cert-file {root}/ca.pem\ntls-auth-clients no\n\
                         tls-cluster yes\ntls-replication yes\n\
                         requirepass {pw}\nmasterauth {pw}\n\
                         user {user} on >{upw} ~* &* +@all\n",
                        port = node.port,
                        dir = node.dir.display(),
                        root = self.root.display(),
                        pw = s.password,
                        user = s.acl_user,
                        upw = s.acl_password,
                    )
                }
            };
            std::fs::write(node.dir.join("redis.conf"), conf)
                .map_err(|e| Error::io("writing redis.conf", e))?;
            match self.start_node(&node).await {
                Ok(()) => return Ok(node),
                Err(e) => {
                    let log =
                        std::fs::read_to_string(node.dir.join("redis.log")).unwrap_or_default();
                    if !log.contains("already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no free port".into())))
    }

    async fn start_node(&self, node: &Node) -> Result<()> {
        let _ = std::fs::remove_file(node.dir.join("redis.log"));
        let mut cmd = tokio::process::Command::new(&self.bins.server);
        cmd.arg(node.dir.join("redis.conf"));
        util::run(cmd).await?;
        let start = Instant::now();
        loop {
            match resp::command(&node.addr(), &["PING"]) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    return Err(Error::Timeout {
                        what: format!("redis-server on port {} to answer PING", node.port),
                        after: Duration::from_secs(10),
                        detail: format!(
                            "{e}\nlog:\n{}",
                            util::tail(&node.dir.join("redis.log"), 10)
                        ),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    pub(crate) fn security(&self) -> Option<&Security> {
        self.security.as_ref()
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Node::addr).collect()
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes.get(i).ok_or(Error::NoSuchNode {
            kind: "node",
            index: i,
            count: self.nodes.len(),
        })
    }

    /// Each node's role, from the view of a running, healthy node.
    pub(crate) fn roles(&self) -> Result<Vec<Role>> {
        let mut last = None;
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match resp::command(&node.addr(), &["CLUSTER", "NODES"]) {
                Ok(text) => return Ok(self.parse_roles(&text)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Redis("no node is running".into())))
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        // "127.0.0.1:30001@40001" (optionally ",hostname")
        let port: u16 = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
        self.nodes.iter().position(|n| n.port == port)
    }

    fn parse_roles(&self, text: &str) -> Vec<Role> {
        let mut roles = vec![Role::Down; self.nodes.len()];
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let index_of_id = |id: &str| {
            lines
                .iter()
                .find(|f| f.first() == Some(&id))
                .and_then(|f| self.index_of(f.get(1)?))
        };
        for f in lines.iter().filter(|f| f.len() >= 8) {
            let Some(i) = self.index_of(f[1]) else {
                continue;
            };
            let flags: Vec<&str> = f[2].split(',').collect();
            if flags.contains(&"fail") || flags.contains(&"fail?") || self.nodes[i].pid().is_none()
            {
                continue;
            }
            if flags.contains(&"master") {
                roles[i] = Role::Master;
            } else if let Some(m) = index_of_id(f[3]) {
                roles[i] = Role::Replica(m);
            }
        }
        roles
    }

    /// SIGKILL node `i`, which must be a master now.
    pub(crate) fn kill_master(&self, i: usize) -> Result<()> {
        let node = self.node(i)?;
        let roles = self.roles()?;
        if roles.get(i) != Some(&Role::Master) {
            let masters: Vec<usize> = (0..roles.len())
                .filter(|j| roles[*j] == Role::Master)
                .collect();
            return Err(Error::Config(format!(
                "node {i} is not a master now ({:?}); the masters are nodes {masters:?}",
                roles[i]
            )));
        }
        self.kill_node(node)
    }

    fn kill_node(&self, node: &Node) -> Result<()> {
        if let Some(pid) = node.pid() {
            util::signal("KILL", &[pid]);
            if !util::wait_gone(&[pid], Duration::from_secs(10)) {
                return Err(Error::Timeout {
                    what: format!("redis-server pid {pid} to die after SIGKILL"),
                    after: Duration::from_secs(10),
                    detail: "still alive".into(),
                });
            }
        }
        let _ = std::fs::remove_file(node.dir.join("redis.pid"));
        Ok(())
    }

    /// SIGKILL any node (master or replica).
    pub(crate) fn kill(&self, i: usize) -> Result<()> {
        self.kill_node(self.node(i)?)
    }

    /// Starts node `i` again (same port, same node id); it rejoins the cluster.
    pub(crate) async fn restart(&self, i: usize) -> Result<()> {
        let node = self.node(i)?;
        if node.pid().is_some() {
            self.kill_node(node)?;
        }
        self.start_node(node).await
    }

    /// SIGTERM every node and wait until they are gone.
    pub(crate) fn stop_all(&self) -> Result<()> {
        let pids: Vec<u32> = self.nodes.iter().filter_map(Node::pid).collect();
        util::signal("TERM", &pids);
        if !util::wait_gone(&pids, Duration::from_secs(10)) {
            util::signal("KILL", &pids);
            util::wait_gone(&pids, Duration::from_secs(5));
        }
        Ok(())
    }

    /// Starts every node that is not running and waits until the cluster is healthy.
    pub(crate) async fn start_all(&self) -> Result<()> {
        for node in self.nodes.iter().filter(|n| n.pid().is_none()) {
            self.start_node(node).await?;
        }
        self.wait_healthy(START_TIMEOUT).await
    }

    /// Waits until every running node says `cluster_state:ok` with all 16384 slots
    /// served by running masters, every node agrees on those masters, and every
    /// running replica's link to its master is up.
    pub(crate) async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.health() {
                Ok(()) => return Ok(()),
                Err(why) if start.elapsed() > timeout => {
                    return Err(Error::Timeout {
                        what: "a healthy redis cluster".into(),
                        after: timeout,
                        detail: format!("{why}; logs in {}", self.root.display()),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn health(&self) -> std::result::Result<(), String> {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        if running.is_empty() {
            return Err("no node is running".into());
        }
        let mut views = Vec::new();
        for node in &running {
            let addr = node.addr();
            let info = resp::command(&addr, &["CLUSTER", "INFO"]).map_err(|e| e.to_string())?;
            for (field, want) in [("cluster_state", "ok"), ("cluster_slots_ok", "16384")] {
                let got = resp::info_field(&info, field).unwrap_or("?");
                if got != want {
                    return Err(format!("{addr}: {field}:{got}"));
                }
            }
            let nodes = resp::command(&addr, &["CLUSTER", "NODES"]).map_err(|e| e.to_string())?;
            // Masters that serve slots, in this node's view.
            let mut serving: Vec<usize> = Vec::new();
            let mut me_replica = false;
            for f in nodes
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
            {
                if f.len() < 8 {
                    continue;
                }
                let flags: Vec<&str> = f[2].split(',').collect();
                if flags.contains(&"myself") && flags.contains(&"slave") {
                    me_replica = true;
                }
                if flags.contains(&"master") && f.len() > 8 {
                    let i = self
                        .index_of(f[1])
                        .ok_or(format!("{addr}: unknown node {}", f[1]))?;
                    if flags.contains(&"fail")
                        || flags.contains(&"fail?")
                        || self.nodes[i].pid().is_none()
                    {
                        return Err(format!("{addr}: slots still on failed master {}", f[1]));
                    }
                    serving.push(i);
                }
            }
            serving.sort();
            // The full role map must have converged too: right after creation or
            // a failover, gossip may not yet have told every node who replicates
            // whom, and a restarted node may still be marked failed.
            let roles = self.parse_roles(&nodes);
            for n in &running {
                let i = self
                    .nodes
                    .iter()
                    .position(|m| m.port == n.port)
                    .unwrap_or(0);
                match roles[i] {
                    Role::Down => return Err(format!("{addr}: sees node {i} as down")),
                    Role::Master if !serving.contains(&i) => {
                        return Err(format!("{addr}: sees node {i} as a master without slots"))
                    }
                    _ => {}
                }
            }
            views.push((serving, roles));
            if me_replica {
                let repl =
                    resp::command(&addr, &["INFO", "replication"]).map_err(|e| e.to_string())?;
                if resp::info_field(&repl, "master_link_status") != Some("up") {
                    return Err(format!("{addr}: replica link to its master is not up"));
                }
            }
        }
        if views.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("nodes disagree on the roles: {views:?}"));
        }
        Ok(())
    }

    /// SIGKILL all nodes and remove the files. Sync: runs from `Drop`.
    pub(crate) fn teardown(&self) {
        let pids: Vec<u32> = self.nodes.iter().filter_map(Node::pid).collect();
        util::signal("KILL", &pids);
        util::wait_gone(&pids, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.root);
        util::stop_reaper(&self.reaper);
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}
