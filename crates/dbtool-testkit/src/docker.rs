//! The Docker backend: the same servers in containers, through testcontainers.
//!
//! Every container uses host networking and listens on a free host port, so URLs
//! and Redis Cluster addresses are the same `127.0.0.1:<port>` as with local
//! binaries (cluster nodes announce addresses the tests can reach). That needs a
//! Linux Docker engine (Docker Desktop needs host networking enabled). Chaos
//! operations are not offered here: use the local backend for those.
//!
//! Containers are removed when a dedicated cluster is dropped; shared ones (and
//! any left by a killed test process) are removed by the same watchdog as local
//! servers, which runs `docker rm -f` once the test process is gone.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testcontainers::core::{CmdWaitFor, ExecCommand};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::error::{Error, Result};
use crate::local_pg::{self, SETTINGS};
use crate::{resp, util};

const PG_IMAGE: (&str, &str) = ("postgres", "15");
const REDIS_IMAGE: (&str, &str) = ("redis", "7");
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn docker_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Docker(format!("{what}: {e}"))
}

/// Our postgresql.conf settings as `-c key=value` server arguments, minus the
/// ones the image's entrypoint manages (sockets, listen address).
fn pg_args() -> Vec<String> {
    let mut args = vec!["postgres".to_string()];
    for line in SETTINGS.lines().map(str::trim) {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('\''));
        if k.starts_with('#') || k == "unix_socket_directories" || k == "listen_addresses" {
            continue;
        }
        args.push("-c".into());
        args.push(format!("{k}={v}"));
    }
    args
}

fn label() -> String {
    std::process::id().to_string()
}

/// A watchdog that removes the containers when the test process is gone.
fn reaper(ids: &[String]) -> Result<(PathBuf, std::process::Child)> {
    let root = util::make_root("docker", None)?;
    let child = util::spawn_reaper_with(&root, &format!("docker rm -f {}", ids.join(" ")))?;
    Ok((root, child))
}

/// A primary and replicas in containers.
pub(crate) struct DockerPg {
    primary_port: u16,
    replica_ports: Vec<u16>,
    _containers: Vec<ContainerAsync<GenericImage>>,
    reaper: Mutex<Option<std::process::Child>>,
    root: PathBuf,
}

impl std::fmt::Debug for DockerPg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerPg")
            .field("primary_port", &self.primary_port)
            .field("replica_ports", &self.replica_ports)
            .finish_non_exhaustive()
    }
}

impl DockerPg {
    pub(crate) async fn start(replicas: usize) -> Result<DockerPg> {
        let primary_port = util::free_port(false);
        let primary = GenericImage::new(PG_IMAGE.0, PG_IMAGE.1)
            .with_network("host")
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            // The server and the entrypoint's psql both honour PGPORT.
            .with_env_var("PGPORT", primary_port.to_string())
            .with_label("dbtool-testkit", label())
            .with_cmd(pg_args())
            .with_startup_timeout(START_TIMEOUT)
            .start()
            .await
            .map_err(|e| docker_err("starting the postgres primary container", e))?;
        let mut containers = vec![primary];
        local_pg::connect_retry(&local_pg::url(primary_port, "postgres"), START_TIMEOUT).await?;
        let mut replica_ports = Vec::new();
        for _ in 0..replicas {
            let port = util::free_port(false);
            let script = format!(
                "until pg_basebackup -h 127.0.0.1 -p {primary_port} -U postgres -D /tmp/replica \
                 -R -X stream -c fast; do rm -rf /tmp/replica; sleep 1; done; \
                 exec {} -D /tmp/replica -c port={port} -c listen_addresses=127.0.0.1 \
                 -c unix_socket_directories=/tmp",
                pg_args().join(" ")
            );
            let replica = GenericImage::new(PG_IMAGE.0, PG_IMAGE.1)
                .with_entrypoint("sh")
                .with_network("host")
                .with_user("postgres")
                .with_label("dbtool-testkit", label())
                .with_cmd(["-c".to_string(), script])
                .with_startup_timeout(START_TIMEOUT)
                .start()
                .await
                .map_err(|e| docker_err("starting a postgres replica container", e))?;
            containers.push(replica);
            local_pg::connect_retry(&local_pg::url(port, "postgres"), START_TIMEOUT).await?;
            replica_ports.push(port);
        }
        let ids: Vec<String> = containers.iter().map(|c| c.id().to_string()).collect();
        let (root, child) = reaper(&ids)?;
        Ok(DockerPg {
            primary_port,
            replica_ports,
            _containers: containers,
            reaper: Mutex::new(Some(child)),
            root,
        })
    }

    pub(crate) fn primary_port(&self) -> u16 {
        self.primary_port
    }

    pub(crate) fn replica_port(&self, i: usize) -> Option<u16> {
        self.replica_ports.get(i).copied()
    }

    pub(crate) fn replica_count(&self) -> usize {
        self.replica_ports.len()
    }
}

impl Drop for DockerPg {
    fn drop(&mut self) {
        // testcontainers removes each container when it is dropped.
        util::stop_reaper(&self.reaper);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A 6-node Redis Cluster in containers.
pub(crate) struct DockerRedis {
    ports: Vec<u16>,
    _containers: Vec<ContainerAsync<GenericImage>>,
    reaper: Mutex<Option<std::process::Child>>,
    root: PathBuf,
}

impl std::fmt::Debug for DockerRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRedis")
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl DockerRedis {
    pub(crate) async fn start(node_timeout_ms: u64) -> Result<DockerRedis> {
        let mut ports = Vec::new();
        let mut containers = Vec::new();
        for _ in 0..crate::local_redis::NODES {
            let port = util::free_port(true);
            let c = GenericImage::new(REDIS_IMAGE.0, REDIS_IMAGE.1)
                .with_network("host")
                .with_label("dbtool-testkit", label())
                .with_cmd([
                    "redis-server".to_string(),
                    "--port".into(),
                    port.to_string(),
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-node-timeout".into(),
                    node_timeout_ms.to_string(),
                    "--cluster-replica-validity-factor".into(),
                    "0".into(),
                    "--save".into(),
                    "".into(),
                    "--appendonly".into(),
                    "no".into(),
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                ])
                .with_startup_timeout(START_TIMEOUT)
                .start()
                .await
                .map_err(|e| docker_err("starting a redis container", e))?;
            containers.push(c);
            ports.push(port);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        for addr in &addrs {
            wait(START_TIMEOUT, "redis nodes to answer PING", || {
                resp::command(addr, &["PING"])
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await?;
        }
        let mut create = vec!["redis-cli".to_string(), "--cluster".into(), "create".into()];
        create.extend(addrs.iter().cloned());
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        // Exit { code: Some(0) } makes exec fail unless redis-cli succeeds. The
        // result is dropped at once: it is not Sync, and this future must be Send.
        drop(
            containers[0]
                .exec(
                    ExecCommand::new(create)
                        .with_cmd_ready_condition(CmdWaitFor::Exit { code: Some(0) }),
                )
                .await
                .map_err(|e| {
                    docker_err("running redis-cli --cluster create in the first node", e)
                })?,
        );
        wait(START_TIMEOUT, "cluster_state:ok on every node", || {
            for addr in &addrs {
                let info = resp::command(addr, &["CLUSTER", "INFO"]).map_err(|e| e.to_string())?;
                if resp::info_field(&info, "cluster_state") != Some("ok")
                    || resp::info_field(&info, "cluster_known_nodes") != Some("6")
                {
                    return Err(format!("{addr} not ok yet"));
                }
            }
            Ok(())
        })
        .await?;
        let ids: Vec<String> = containers.iter().map(|c| c.id().to_string()).collect();
        let (root, child) = reaper(&ids)?;
        Ok(DockerRedis {
            ports,
            _containers: containers,
            reaper: Mutex::new(Some(child)),
            root,
        })
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for DockerRedis {
    fn drop(&mut self) {
        util::stop_reaper(&self.reaper);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn wait(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(detail) if start.elapsed() > timeout => {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    detail,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
