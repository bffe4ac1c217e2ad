//! PostgreSQL from the system's binaries: initdb (cached template), pg_ctl, pg_basebackup.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::error::{Error, Result};
use crate::util;

/// Settings for speed and for replication. fsync and friends are off because a
/// test server's data is thrown away; max_connections is high because pools in
/// tests open many connections; wal_keep_size lets a stopped replica catch up;
/// wal_level = logical and the slot headroom serve the change streams (sync,
/// reverse sync, shard moves), which decode the WAL through replication slots.
pub(crate) const SETTINGS: &str = "
# dbtool-testkit settings
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = logical
max_wal_senders = 32
max_replication_slots = 32
wal_keep_size = 64MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 200ms
checkpoint_timeout = 30min
max_wal_size = 256MB
log_min_messages = warning
log_connections = off
";

/// How long a server gets to start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The PostgreSQL server binaries in use.
#[derive(Debug)]
pub(crate) struct PgBin {
    dir: PathBuf,
    version: String,
    run_as: Option<(u32, u32)>,
}

impl PgBin {
    /// `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else PATH; found once.
    pub(crate) fn get() -> Result<&'static PgBin> {
        static BIN: OnceLock<std::result::Result<PgBin, String>> = OnceLock::new();
        BIN.get_or_init(|| PgBin::find().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Config(e.clone()))
    }

    fn find() -> Result<PgBin> {
        const TOOLS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];
        let mut looked = Vec::new();
        let dir = if let Some(dir) = std::env::var_os("PG_BIN") {
            looked.push(format!("PG_BIN={}", Path::new(&dir).display()));
            Some(PathBuf::from(dir))
        } else {
            looked.push("/usr/lib/postgresql/*/bin".to_string());
            let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((v, bin))
                })
                .collect();
            dirs.sort();
            dirs.pop().map(|(_, d)| d).or_else(|| {
                looked.push("PATH".to_string());
                util::find_in_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
            })
        };
        let missing: Vec<&str> = match &dir {
            Some(d) => TOOLS
                .iter()
                .copied()
                .filter(|t| !d.join(t).is_file())
                .collect(),
            None => TOOLS.to_vec(),
        };
        if !missing.is_empty() {
            return Err(Error::MissingBinary {
                what: format!("PostgreSQL server binaries {}", missing.join(", ")),
                looked: looked.join(", "),
                install: "`apt-get install -y postgresql redis-server redis-tools`, \
                          or set PG_BIN to the directory holding initdb and postgres"
                    .into(),
            });
        }
        let dir = dir.unwrap_or_default();
        let out = std::process::Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| Error::io(format!("running {}/postgres --version", dir.display()), e))?;
        // "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)" -> "15.8"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .nth(2)
            .unwrap_or("unknown")
            .to_string();
        Ok(PgBin {
            dir,
            version,
            run_as: util::pg_run_as()?,
        })
    }

    /// A command for one of the binaries, run as `postgres` when we are root.
    fn cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.dir.join(tool));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // libpq variables of the caller must not redirect our tools elsewhere.
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSERVICE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd.kill_on_drop(false);
        cmd
    }

    /// An initdb'd data dir with our settings, created once per version, user and
    /// settings under the temp dir and copied for every server: initdb takes about
    /// a second, a copy a few milliseconds.
    async fn template(&self) -> Result<PathBuf> {
        let hash = SETTINGS.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let uid = self.run_as.map(|(u, _)| u).unwrap_or_else(util::euid);
        let path = util::temp_base().join(format!(
            "dbtool-testkit-template-pg{}-u{uid}-{:08x}",
            self.version, hash as u32
        ));
        if path.join("PG_VERSION").is_file() {
            return Ok(path);
        }
        let tmp = PathBuf::from(format!(
            "{}.tmp-{}-{}",
            path.display(),
            std::process::id(),
            util::random_hex(6)
        ));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        util::chown(&tmp, self.run_as)?;
        let mut initdb = self.cmd("initdb");
        initdb.arg("-D").arg(&tmp).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let made = util::run(initdb).await.and_then(|_| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(tmp.join("postgresql.conf"))
                .and_then(|mut f| f.write_all(SETTINGS.as_bytes()))
                .map_err(|e| Error::io("writing postgresql.conf of the template", e))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Publish atomically; if another process won the race, use theirs.
        if std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if path.join("PG_VERSION").is_file() {
            remove_outdated_templates(&path);
            Ok(path)
        } else {
            Err(Error::Config(format!(
                "cannot publish the initdb template at {}",
                path.display()
            )))
        }
    }
}

/// Templates of the same version and user made with other settings (older
/// testkit versions) are dead weight, possibly in RAM: remove them once a new
/// one is made. A half-made one (`.tmp-<pid>-..`) is left to the stale sweep.
fn remove_outdated_templates(current: &Path) {
    let (Some(dir), Some(name)) = (
        current.parent(),
        current.file_name().and_then(|n| n.to_str()),
    ) else {
        return;
    };
    // "dbtool-testkit-template-pg15.8-u101-<hash>" -> keep up to the last '-'.
    let Some(prefix) = name.rfind('-').map(|i| &name[..=i]) else {
        return;
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        if other.starts_with(prefix) && other != name && !other.contains(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One postgres server (primary or replica) under the cluster root.
#[derive(Debug)]
struct Node {
    name: String,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

/// A primary and its streaming replicas from local binaries.
#[derive(Debug)]
pub(crate) struct LocalPg {
    bin: &'static PgBin,
    root: PathBuf,
    /// nodes[0] is the primary; nodes[1..] are replicas.
    nodes: Vec<Node>,
    reaper: Mutex<Option<std::process::Child>>,
    /// The `postgres` role's password once password auth is on.
    password: Option<String>,
    /// TLS on (certificates from [`crate::tls::shared_ca`]); TCP logins other
    /// than replication must use it.
    tls: bool,
}

impl LocalPg {
    /// Starts a primary and `replicas` streaming replicas; returns when all stream.
    /// With `password`, TCP logins (except replication) then need it (scram-sha-256).
    /// With `tls`, every node serves TLS with a certificate for `localhost` and
    /// `127.0.0.1` signed by the process's throwaway CA, and only TLS logins
    /// are accepted (`hostssl` in pg_hba.conf).
    pub(crate) async fn start(
        replicas: usize,
        password: Option<String>,
        tls: bool,
    ) -> Result<LocalPg> {
        let bin = PgBin::get()?;
        let template = bin.template().await?;
        let root = util::make_root("pg", bin.run_as)?;
        // The watchdog first: if anything below fails or the test dies, it cleans up.
        let reaper = util::spawn_reaper(&root)?;
        let mut pg = LocalPg {
            bin,
            root,
            nodes: Vec::new(),
            reaper: Mutex::new(Some(reaper)),
            password: None,
            tls: false,
        };
        pg.start_nodes(&template, replicas).await?;
        if password.is_some() || tls {
            pg.secure(password, tls).await?;
        }
        Ok(pg)
    }

    /// The `postgres` role's password, when password auth is on.
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The CA file clients should trust (`sslrootcert`), when TLS is on.
    pub(crate) fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.root.join("ca.pem"))
    }

    /// Sets the `postgres` password (it replicates) and switches every node's
    /// pg_hba.conf to scram-sha-256, keeping trust for replication so the
    /// replicas' streaming connections (which carry no password) keep working.
    /// With `tls`, also turns on TLS on every node and accepts only TLS logins.
    async fn secure(&mut self, password: Option<String>, tls: bool) -> Result<()> {
        if let Some(password) = &password {
            let admin = connect(&self.admin_url())
                .await
                .map_err(|e| Error::pg("connecting to set the password", e))?;
            let quoted = password.replace('\'', "''");
            admin
                .batch_execute(&format!(
                    "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{quoted}'"
                ))
                .await
                .map_err(|e| Error::pg("ALTER ROLE postgres PASSWORD", e))?;
        }
        if tls {
            let ca = crate::tls::shared_ca();
            let ca_file = self.root.join("ca.pem");
            std::fs::write(&ca_file, ca.cert_pem())
                .map_err(|e| Error::io(format!("writing {}", ca_file.display()), e))?;
        }
        let auth = if password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let host = if tls { "hostssl" } else { "host" };
        let hba = format!(
            "host replication all 127.0.0.1/32 trust\n{host} all all 127.0.0.1/32 {auth}\n"
        );
        for node in &self.nodes {
            if tls {
                crate::tls::shared_ca().write_server_files(
                    &node.data,
                    &["localhost", "127.0.0.1"],
                    self.bin.run_as,
                )?;
                let conf = node.data.join("postgresql.conf");
                let mut text = std::fs::read_to_string(&conf)
                    .map_err(|e| Error::io(format!("reading {}", conf.display()), e))?;
                text.push_str(
                    "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
                );
                std::fs::write(&conf, text)
                    .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
            }
            std::fs::write(node.data.join("pg_hba.conf"), &hba)
                .map_err(|e| Error::io(format!("writing pg_hba.conf of {}", node.name), e))?;
            let mut reload = self.bin.cmd("pg_ctl");
            reload.arg("-D").arg(&node.data).arg("reload");
            util::run(reload).await?;
        }
        self.password = password;
        self.tls = tls;
        // Wait until the role's password has replayed (and TLS is on) and the reload is in force.
        for node in &self.nodes {
            connect_retry(&self.url(node.port, "postgres"), START_TIMEOUT).await?;
        }
        Ok(())
    }

    /// The URL of database `db` on the node at `port`, with the password if any.
    /// With TLS on, the URL says `sslmode=require` (which tokio-postgres
    /// parses too); add `sslrootcert` and `verify-full` to check the server.
    pub(crate) fn url(&self, port: u16, db: &str) -> String {
        let base = match &self.password {
            Some(pw) => format!(
                "postgres://postgres:{}@127.0.0.1:{port}/{db}",
                percent_encoding::utf8_percent_encode(pw, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => url(port, db),
        };
        if self.tls {
            format!("{base}?sslmode=require")
        } else {
            base
        }
    }

    async fn start_nodes(&mut self, template: &Path, replicas: usize) -> Result<()> {
        let data = self.root.join("n0");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(template).arg(&data);
        util::run(cp).await?;
        let primary = self.start_new_node("primary", data).await?;
        let primary_port = primary.port;
        self.nodes.push(primary);
        for i in 1..=replicas {
            let data = self.root.join(format!("n{i}"));
            self.basebackup(primary_port, &data).await?;
            let node = self.start_new_node(&format!("replica{i}"), data).await?;
            self.nodes.push(node);
        }
        self.wait_streaming(replicas).await
    }

    /// A streaming replica's data directory at `data`, copied from the server
    /// on `port` (`-R` writes the standby settings).
    async fn basebackup(&self, port: u16, data: &Path) -> Result<()> {
        let mut bb = self.bin.cmd("pg_basebackup");
        bb.args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "stream",
            "-c",
            "fast",
            "-R",
            "--no-sync",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg("-D")
        .arg(data);
        util::run(bb).await.map(drop)
    }

    /// Starts a server on a new free port, retrying when another process grabbed it.
    async fn start_new_node(&self, name: &str, data: PathBuf) -> Result<Node> {
        let mut last = None;
        for _ in 0..5 {
            let node = Node {
                name: name.to_string(),
                log: self.root.join(format!("{name}.log")),
                data: data.clone(),
                port: util::free_port(false),
            };
            match self.pg_ctl_start(&node).await {
                Ok(()) => return Ok(node),
                Err(e) => {
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no free port".into())))
    }

    async fn pg_ctl_start(&self, node: &Node) -> Result<()> {
        let _ = std::fs::remove_file(&node.log);
        let mut cmd = self.bin.cmd("pg_ctl");
        cmd.arg("-D")
            .arg(&node.data)
            .arg("-l")
            .arg(&node.log)
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string(), "-o"])
            .arg(format!(
                "-p {} -c cluster_name=dbtool-testkit-{}-{}",
                node.port,
                std::process::id(),
                node.name
            ))
            .arg("start");
        if let Err(e) = util::run(cmd).await {
            return Err(Error::Command {
                command: format!("pg_ctl start ({} on port {})", node.name, node.port),
                detail: format!(
                    "{e}\nserver log {}:\n{}",
                    node.log.display(),
                    util::tail(&node.log, 15)
                ),
            });
        }
        // pg_ctl -w waits for the postmaster; a standby may still refuse
        // connections until it is consistent, so poll a real connection.
        connect_retry(&self.url(node.port, "postgres"), START_TIMEOUT)
            .await
            .map(drop)
    }

    async fn wait_streaming(&self, replicas: usize) -> Result<()> {
        if replicas == 0 {
            return Ok(());
        }
        let client = connect_retry(&self.admin_url(), START_TIMEOUT).await?;
        let start = Instant::now();
        loop {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await
                .map_err(|e| Error::pg("reading pg_stat_replication", e))?
                .get(0);
            if n as usize >= replicas {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("{replicas} replicas streaming"),
                    after: START_TIMEOUT,
                    detail: format!("{n} streaming; logs in {}", self.root.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn replica_count(&self) -> usize {
        self.nodes.len() - 1
    }

    pub(crate) fn primary_port(&self) -> u16 {
        self.nodes[0].port
    }

    pub(crate) fn replica_port(&self, i: usize) -> Result<u16> {
        Ok(self.replica(i)?.port)
    }

    fn replica(&self, i: usize) -> Result<&Node> {
        self.nodes.get(i + 1).ok_or(Error::NoSuchNode {
            kind: "replica",
            index: i,
            count: self.replica_count(),
        })
    }

    pub(crate) fn admin_url(&self) -> String {
        self.url(self.primary_port(), "postgres")
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    async fn pg_ctl_stop(&self, node: &Node, mode: &str) -> Result<()> {
        let mut cmd = self.bin.cmd("pg_ctl");
        cmd.arg("-D").arg(&node.data).args([
            "-m",
            mode,
            "-w",
            "-t",
            &START_TIMEOUT.as_secs().to_string(),
            "stop",
        ]);
        util::run(cmd).await.map(drop)
    }

    pub(crate) async fn stop_replica(&self, i: usize) -> Result<()> {
        self.pg_ctl_stop(self.replica(i)?, "fast").await
    }

    pub(crate) async fn start_replica(&self, i: usize) -> Result<()> {
        self.pg_ctl_start(self.replica(i)?).await
    }

    pub(crate) fn kill_replica(&self, i: usize) -> Result<()> {
        kill_node(self.replica(i)?)
    }

    pub(crate) async fn stop_primary(&self) -> Result<()> {
        self.pg_ctl_stop(&self.nodes[0], "fast").await
    }

    pub(crate) async fn start_primary(&self) -> Result<()> {
        self.pg_ctl_start(&self.nodes[0]).await
    }

    pub(crate) fn kill_primary(&self) -> Result<()> {
        kill_node(&self.nodes[0])
    }

    /// Brings the old primary (node 0) back as a streaming replica of replica
    /// `i`, which must have been promoted: stops it if it runs, replaces its
    /// data dir with a base backup of replica `i` (`pg_basebackup -R`) and
    /// starts it on its old port. Returns once its WAL receiver streams.
    ///
    /// A fresh base backup rather than `pg_rewind`: rewind needs
    /// `wal_log_hints` or data checksums, which these throwaway servers run
    /// without, and a test database copies in a fraction of a second.
    pub(crate) async fn rejoin_primary_as_replica(&self, i: usize) -> Result<()> {
        let source_port = self.replica(i)?.port;
        let old = &self.nodes[0];
        if postmaster_pid(&old.data).is_some() {
            self.pg_ctl_stop(old, "fast").await?;
        }
        std::fs::remove_dir_all(&old.data)
            .map_err(|e| Error::io(format!("removing {}", old.data.display()), e))?;
        self.basebackup(source_port, &old.data).await?;
        self.pg_ctl_start(old).await?;
        let client = connect_retry(&self.url(old.port, "postgres"), START_TIMEOUT).await?;
        let start = Instant::now();
        loop {
            let streaming: bool = client
                .query_one(
                    "SELECT pg_is_in_recovery() AND EXISTS \
                     (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
                    &[],
                )
                .await
                .map_err(|e| Error::pg("reading pg_stat_wal_receiver of the old primary", e))?
                .get(0);
            if streaming {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("the old primary to stream from replica {i}"),
                    after: START_TIMEOUT,
                    detail: format!("log {}:\n{}", old.log.display(), util::tail(&old.log, 15)),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops everything now (immediate shutdown) and removes the root dir. Sync:
    /// runs from `Drop`, possibly without a runtime.
    pub(crate) fn teardown(&self) {
        let pids: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| postmaster_pid(&n.data))
            .collect();
        util::signal("QUIT", &pids);
        if !util::wait_gone(&pids, Duration::from_secs(10)) {
            util::signal("KILL", &pids);
            util::wait_gone(&pids, Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.root);
        util::stop_reaper(&self.reaper);
    }
}

/// SIGKILL a postmaster and its children (a crash), and wait until they are gone
/// so the server can be started again at once.
fn kill_node(node: &Node) -> Result<()> {
    let Some(pid) = postmaster_pid(&node.data) else {
        return Err(Error::Config(format!("{} is not running", node.name)));
    };
    let mut pids = util::children_of(pid);
    pids.push(pid);
    util::signal("KILL", &pids);
    if !util::wait_gone(&pids, Duration::from_secs(10)) {
        return Err(Error::Timeout {
            what: format!("{} (pid {pid}) to die after SIGKILL", node.name),
            after: Duration::from_secs(10),
            detail: "processes still alive".into(),
        });
    }
    // A stale pid file could name a reused pid and block the next start.
    let _ = std::fs::remove_file(node.data.join("postmaster.pid"));
    Ok(())
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    util::pid_alive(pid).then_some(pid)
}

/// The URL of database `db` on a local server (trust auth, no password).
pub(crate) fn url(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

/// Connects and drives the connection on the current runtime.
pub(crate) async fn connect(
    url: &str,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // TLS servers of the testkit are signed by its CA; others get plain TCP.
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        let (client, conn) = config.connect(crate::tls::pg_connector()).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(client);
    }
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Polls until a connection succeeds.
pub(crate) async fn connect_retry(url: &str, timeout: Duration) -> Result<tokio_postgres::Client> {
    let start = Instant::now();
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > timeout => {
                return Err(Error::Timeout {
                    what: format!("a connection to {}", crate::mask(url)),
                    after: timeout,
                    detail: e.to_string(),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_error_names_them_and_the_install_command() {
        // The only test in this crate's unit tests that touches PG_BIN.
        std::env::set_var("PG_BIN", "/nonexistent/bin");
        let err = PgBin::find().unwrap_err().to_string();
        std::env::remove_var("PG_BIN");
        assert!(
            err.contains("initdb, pg_ctl, postgres, pg_basebackup"),
            "{err}"
        );
        assert!(err.contains("PG_BIN=/nonexistent/bin"), "{err}");
        assert!(
            err.contains("apt-get install -y postgresql redis-server redis-tools"),
            "{err}"
        );
    }
}
