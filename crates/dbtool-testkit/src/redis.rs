//! Redis Clusters: a shared one per test process (with a key prefix per test) and
//! dedicated ones for tests that kill masters.

use std::sync::OnceLock;
use std::time::Duration;

use crate::backend::{env_list, Backend};
use crate::error::{Error, Result};
use crate::local_redis::LocalRedis;
pub use crate::local_redis::Role;
use crate::util;

/// Node timeout of the shared cluster: generous, so a busy CI machine does not
/// trigger failovers under the other tests.
const SHARED_NODE_TIMEOUT_MS: u64 = 5000;
/// Node timeout of dedicated clusters: short, so a killed master's replica takes
/// over within a few seconds.
const DEDICATED_NODE_TIMEOUT_MS: u64 = 1500;
/// How long `wait_healthy` waits.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Redis Cluster of 6 nodes (3 masters with 1 replica each). Node indexes are
/// fixed for the cluster's life; which nodes are masters changes with failovers:
/// ask [`roles`](Self::roles), [`masters`](Self::masters), [`replicas_of`](Self::replicas_of).
/// Right after start, nodes 0, 1, 2 are the masters. Dropping a dedicated
/// cluster stops its servers and removes its files.
#[derive(Debug)]
pub struct RedisCluster {
    inner: Inner,
    shared: bool,
}

#[derive(Debug)]
enum Inner {
    Local(LocalRedis),
    External(Vec<String>),
    Docker(crate::docker::DockerRedis),
}

impl RedisCluster {
    /// Starts a dedicated cluster (backend from `DBTOOL_TEST_BACKEND`) and returns
    /// once every node reports `cluster_state:ok` and every replica is attached.
    pub async fn start() -> Result<RedisCluster> {
        Self::start_with(DEDICATED_NODE_TIMEOUT_MS, false).await
    }

    async fn start_with(node_timeout_ms: u64, shared: bool) -> Result<RedisCluster> {
        let inner = match Backend::from_env()? {
            Backend::Local => Inner::Local(LocalRedis::start(node_timeout_ms, None).await?),
            Backend::Docker => {
                Inner::Docker(crate::docker::DockerRedis::start(node_timeout_ms).await?)
            }
            Backend::External => {
                let nodes = env_list("DBTOOL_TEST_REDIS_NODES");
                if nodes.is_empty() {
                    return Err(Error::Config(
                        "DBTOOL_TEST_BACKEND=external needs DBTOOL_TEST_REDIS_NODES \
                         (comma-separated host:port of the cluster's nodes)"
                            .into(),
                    ));
                }
                Inner::External(nodes)
            }
        };
        Ok(RedisCluster { inner, shared })
    }

    /// Starts a dedicated cluster that speaks only TLS (clients, cluster bus
    /// and replication; certificates from a throwaway CA, see
    /// [`ca_file`](Self::ca_file)) and requires a password: the `default`
    /// user's ([`password`](Self::password)) or an ACL user's
    /// ([`acl_user`](Self::acl_user)). Passwords are random. Local backend only.
    pub async fn start_tls() -> Result<RedisCluster> {
        let backend = Backend::from_env()?;
        if backend != Backend::Local {
            return Err(backend.unsupported("TLS"));
        }
        let security = crate::local_redis::Security {
            password: format!("pw{}", util::random_hex(16)),
            acl_user: "app".into(),
            acl_password: format!("apw{}", util::random_hex(16)),
        };
        Ok(RedisCluster {
            inner: Inner::Local(
                LocalRedis::start(DEDICATED_NODE_TIMEOUT_MS, Some(security)).await?,
            ),
            shared: false,
        })
    }

    /// The CA certificate file that signed the nodes' certificates, for a
    /// cluster from [`start_tls`](Self::start_tls).
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        match &self.inner {
            Inner::Local(l) => l.security().map(|_| l.root().join("ca.pem")),
            _ => None,
        }
    }

    /// The `default` user's password, for a cluster from [`start_tls`](Self::start_tls).
    pub fn password(&self) -> Option<&str> {
        match &self.inner {
            Inner::Local(l) => l.security().map(|s| s.password.as_str()),
            _ => None,
        }
    }

    /// The ACL user and its password, for a cluster from [`start_tls`](Self::start_tls).
    pub fn acl_user(&self) -> Option<(&str, &str)> {
        match &self.inner {
            Inner::Local(l) => l
                .security()
                .map(|s| (s.acl_user.as_str(), s.acl_password.as_str())),
            _ => None,
        }
    }

    /// The backend these servers come from.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Local(_) => Backend::Local,
            Inner::External(_) => Backend::External,
            Inner::Docker(_) => Backend::Docker,
        }
    }

    /// Every node as `host:port` (e.g. `127.0.0.1:23456`), in node-index order.
    pub fn nodes(&self) -> Vec<String> {
        match &self.inner {
            Inner::Local(l) => l.addrs(),
            Inner::External(n) => n.clone(),
            Inner::Docker(d) => d.addrs(),
        }
    }

    /// A `redis-cluster://` URL naming every node (fred's `Config::from_url` reads it).
    pub fn url(&self) -> String {
        let nodes = self.nodes();
        let mut url = format!("redis-cluster://{}", nodes[0]);
        for (i, n) in nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str("node=");
            url.push_str(n);
        }
        url
    }

    /// A fred client config in cluster mode with every node as a seed.
    pub fn fred_config(&self) -> fred::prelude::Config {
        fred::prelude::Config::from_url_clustered(&self.url())
            .expect("dbtool-testkit builds valid redis-cluster URLs")
    }

    /// A unique key prefix (`t<random>:`), different on every call, so tests sharing
    /// a cluster never touch each other's keys. It holds no `{hash tag}`, so keys
    /// spread over all slots; add your own tag when keys must share a slot.
    pub fn prefix(&self) -> String {
        format!("t{}:", util::random_hex(10))
    }

    /// Sends one command to node `i` (e.g. `["CLUSTER", "INFO"]`) and returns the
    /// reply as text (array elements joined by newlines).
    pub fn command(&self, i: usize, args: &[&str]) -> Result<String> {
        let nodes = self.nodes();
        let node = nodes.get(i).ok_or(Error::NoSuchNode {
            kind: "node",
            index: i,
            count: nodes.len(),
        })?;
        crate::resp::command(node, args)
    }

    fn local(&self, op: &'static str) -> Result<&LocalRedis> {
        if self.shared {
            return Err(Error::Unsupported {
                op,
                backend: self.backend().name(),
                hint: "the shared cluster is used by every test in this process; \
                       start a dedicated one with RedisCluster::start()"
                    .into(),
            });
        }
        match &self.inner {
            Inner::Local(l) => Ok(l),
            _ => Err(self.backend().unsupported(op)),
        }
    }

    /// Each node's role now (local backend).
    pub fn roles(&self) -> Result<Vec<Role>> {
        match &self.inner {
            Inner::Local(l) => l.roles(),
            _ => Err(self.backend().unsupported("roles")),
        }
    }

    /// Indexes of the nodes that are masters now.
    pub fn masters(&self) -> Result<Vec<usize>> {
        let roles = self.roles()?;
        Ok((0..roles.len())
            .filter(|i| roles[*i] == Role::Master)
            .collect())
    }

    /// Indexes of the running replicas of node `i` now.
    pub fn replicas_of(&self, i: usize) -> Result<Vec<usize>> {
        let roles = self.roles()?;
        Ok((0..roles.len())
            .filter(|j| roles[*j] == Role::Replica(i))
            .collect())
    }

    /// SIGKILLs node `i`, which must be a master now (see [`masters`](Self::masters)).
    /// Its replica takes over after about twice the node timeout (1.5 s); call
    /// [`wait_healthy`](Self::wait_healthy) to wait for that.
    pub fn kill_master(&self, i: usize) -> Result<()> {
        self.local("kill_master")?.kill_master(i)
    }

    /// SIGKILLs node `i`, whatever its role.
    pub fn kill(&self, i: usize) -> Result<()> {
        self.local("kill")?.kill(i)
    }

    /// Starts node `i` again (killing it first if it runs) on the same port with
    /// the same node id; an old master comes back as a replica of its successor.
    /// Returns once it answers PING; call `wait_healthy` to wait for it to sync.
    pub async fn restart(&self, i: usize) -> Result<()> {
        self.local("restart")?.restart(i).await
    }

    /// Waits (up to 60 s) until the cluster is whole: every running node reports
    /// `cluster_state:ok` with all 16384 slots served by running masters (so a
    /// dead master's replica has been promoted), the nodes agree on the masters,
    /// and every running replica's link is up.
    pub async fn wait_healthy(&self) -> Result<()> {
        match &self.inner {
            Inner::Local(l) => l.wait_healthy(HEALTHY_TIMEOUT).await,
            _ => Err(self.backend().unsupported("wait_healthy")),
        }
    }

    /// Stops every node (SIGTERM, waits until gone).
    pub fn stop_all(&self) -> Result<()> {
        self.local("stop_all")?.stop_all()
    }

    /// Starts every stopped node and waits until the cluster is healthy.
    pub async fn start_all(&self) -> Result<()> {
        self.local("start_all")?.start_all().await
    }

    /// The directory with the nodes' config and logs (`local` backend only).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match &self.inner {
            Inner::Local(l) => Some(l.root()),
            _ => None,
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Inner::Local(l) = &self.inner {
            l.teardown();
        }
    }
}

/// The shared Redis Cluster of this test process: 6 nodes, started on first use,
/// stopped when the process exits (even after a panic or SIGKILL). Use
/// [`RedisCluster::prefix`] for your keys. Operations that break servers return
/// an error on it. Panics if it cannot start, saying what to install or set.
pub async fn redis() -> &'static RedisCluster {
    static SHARED: OnceLock<std::result::Result<RedisCluster, String>> = OnceLock::new();
    if let Some(Ok(c)) = SHARED.get() {
        return c;
    }
    let result = tokio::task::spawn_blocking(|| {
        SHARED.get_or_init(|| {
            util::block_on_thread(async {
                RedisCluster::start_with(SHARED_NODE_TIMEOUT_MS, true)
                    .await
                    .map_err(|e| crate::chain(&e))
            })
        })
    })
    .await
    .expect("dbtool-testkit: the start of the shared redis cluster panicked");
    match result {
        Ok(c) => c,
        Err(e) => panic!("dbtool-testkit: cannot start the shared redis cluster: {e}"),
    }
}
