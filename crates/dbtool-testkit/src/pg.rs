//! PostgreSQL clusters (a primary and streaming replicas) and fresh databases.

use std::sync::OnceLock;
use std::time::Duration;

use crate::backend::{env_list, Backend};
use crate::error::{Error, Result};
use crate::local_pg::{self, LocalPg};
use crate::util;

/// How long a fresh database gets to appear on the replicas.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A primary with streaming replicas, for tests that stop, kill, pause or promote
/// servers. Dropping it stops its servers and removes its files.
///
/// Node indexes stay fixed: after `promote(i)`, `replica_url(i, ..)` still names
/// the server that was replica `i` (now a primary), and `primary_url` the old primary.
#[derive(Debug)]
pub struct PgCluster {
    inner: Inner,
    shared: bool,
}

#[derive(Debug)]
enum Inner {
    Local(LocalPg),
    External(External),
    Docker(crate::docker::DockerPg),
}

/// Servers run by the user; we only create and drop databases on them.
#[derive(Debug)]
struct External {
    primary: url::Url,
    replicas: Vec<url::Url>,
}

fn parse_url(var: &str, value: &str) -> Result<url::Url> {
    url::Url::parse(value).map_err(|e| {
        Error::Config(format!(
            "{var} holds {:?}, which is not a postgres:// URL: {e}",
            crate::mask(value)
        ))
    })
}

fn with_db(base: &url::Url, db: &str) -> String {
    let mut u = base.clone();
    u.set_path(&format!("/{db}"));
    u.to_string()
}

impl External {
    fn from_env(replicas: usize) -> Result<External> {
        let primary = std::env::var("DBTOOL_TEST_PG_URL").map_err(|_| {
            Error::Config(
                "DBTOOL_TEST_BACKEND=external needs DBTOOL_TEST_PG_URL (an admin URL of the \
                 primary, e.g. postgres://postgres@127.0.0.1:5432/postgres)"
                    .into(),
            )
        })?;
        let primary = parse_url("DBTOOL_TEST_PG_URL", &primary)?;
        let all = env_list("DBTOOL_TEST_PG_REPLICA_URLS");
        if all.len() < replicas {
            return Err(Error::Config(format!(
                "the test needs {replicas} replicas but DBTOOL_TEST_PG_REPLICA_URLS names {}",
                all.len()
            )));
        }
        let replicas = all[..replicas]
            .iter()
            .map(|u| parse_url("DBTOOL_TEST_PG_REPLICA_URLS", u))
            .collect::<Result<_>>()?;
        Ok(External { primary, replicas })
    }
}

impl PgCluster {
    /// Starts a dedicated primary with `replicas` streaming replicas on the backend
    /// chosen by `DBTOOL_TEST_BACKEND`, and returns once every replica streams.
    pub async fn start(replicas: usize) -> Result<PgCluster> {
        Self::start_with(PgOptions::new().replicas(replicas)).await
    }

    /// Starts a dedicated cluster with options (e.g. password authentication).
    pub async fn start_with(options: PgOptions) -> Result<PgCluster> {
        let PgOptions {
            replicas,
            password,
            tls,
        } = options;
        let backend = Backend::from_env()?;
        if password.is_some() && backend != Backend::Local {
            return Err(backend.unsupported("password authentication"));
        }
        if tls && backend != Backend::Local {
            return Err(backend.unsupported("TLS"));
        }
        let inner = match backend {
            Backend::Local => Inner::Local(LocalPg::start(replicas, password, tls).await?),
            Backend::External => Inner::External(External::from_env(replicas)?),
            Backend::Docker => Inner::Docker(crate::docker::DockerPg::start(replicas).await?),
        };
        Ok(PgCluster {
            inner,
            shared: false,
        })
    }

    /// The PEM file of the CA that signed the servers' certificates (for
    /// `sslrootcert`), when started with [`PgOptions::tls`].
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        match &self.inner {
            Inner::Local(l) => l.ca_file(),
            _ => None,
        }
    }

    /// The `postgres` role's password, when started with [`PgOptions::password`].
    pub fn password(&self) -> Option<&str> {
        match &self.inner {
            Inner::Local(l) => l.password(),
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

    /// How many replicas the cluster has.
    pub fn replica_count(&self) -> usize {
        match &self.inner {
            Inner::Local(l) => l.replica_count(),
            Inner::External(e) => e.replicas.len(),
            Inner::Docker(d) => d.replica_count(),
        }
    }

    /// URL of database `db` on the primary.
    pub fn primary_url(&self, db: &str) -> String {
        match &self.inner {
            Inner::Local(l) => l.url(l.primary_port(), db),
            Inner::External(e) => with_db(&e.primary, db),
            Inner::Docker(d) => local_pg::url(d.primary_port(), db),
        }
    }

    /// URL of database `db` on replica `i` (0-based). Panics if there is no replica `i`.
    pub fn replica_url(&self, i: usize, db: &str) -> String {
        self.try_replica_url(i, db)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// URL of database `db` on replica `i`, or an error if there is none.
    pub fn try_replica_url(&self, i: usize, db: &str) -> Result<String> {
        let missing = || Error::NoSuchNode {
            kind: "replica",
            index: i,
            count: self.replica_count(),
        };
        match &self.inner {
            Inner::Local(l) => Ok(l.url(l.replica_port(i)?, db)),
            Inner::External(e) => e
                .replicas
                .get(i)
                .map(|u| with_db(u, db))
                .ok_or_else(missing),
            Inner::Docker(d) => Ok(local_pg::url(d.replica_port(i).ok_or_else(missing)?, db)),
        }
    }

    /// URLs of database `db` on every replica.
    pub fn replica_urls(&self, db: &str) -> Vec<String> {
        (0..self.replica_count())
            .map(|i| self.replica_url(i, db))
            .collect()
    }

    /// URL of the `postgres` database on the primary, for administration.
    pub fn admin_url(&self) -> String {
        match &self.inner {
            Inner::External(e) => e.primary.to_string(),
            _ => self.primary_url("postgres"),
        }
    }

    /// A fresh, empty database (`test_<random>`) on the primary, returned once it is
    /// connectable on every replica that is running and replaying (replicas a
    /// test stopped, paused or promoted are not waited for). Dropped when the `TestDb` is dropped, unless
    /// the test is panicking (so you can look at it). Panics if it cannot be created.
    pub async fn fresh_db(&self) -> TestDb {
        self.try_fresh_db().await.unwrap_or_else(|e| {
            panic!(
                "dbtool-testkit: cannot create a fresh database: {}",
                crate::chain(&e)
            )
        })
    }

    /// Like [`fresh_db`](Self::fresh_db), returning the error instead of panicking.
    pub async fn try_fresh_db(&self) -> Result<TestDb> {
        let name = format!("test_{}", util::random_hex(12));
        let admin = local_pg::connect(&self.admin_url()).await.map_err(|e| {
            Error::pg(
                format!("connecting to {}", crate::mask(&self.admin_url())),
                e,
            )
        })?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| Error::pg(format!("CREATE DATABASE {name}"), e))?;
        let replica_urls = self.replica_urls(&name);
        // CREATE DATABASE replays on a replica shortly after commit; wait for it so
        // a test can read from the replicas at once. Replicas a test has stopped,
        // paused or promoted will not get it soon (or ever): do not wait for those.
        for (i, url) in replica_urls.iter().enumerate() {
            if self.replica_is_following(i).await {
                local_pg::connect_retry(url, REPLICATE_TIMEOUT).await?;
            }
        }
        Ok(TestDb {
            url: self.primary_url(&name),
            replica_urls,
            admin_url: self.admin_url(),
            name,
            keep: false,
        })
    }

    /// Whether replica `i` is up, in recovery and replaying (not paused).
    async fn replica_is_following(&self, i: usize) -> bool {
        let Ok(url) = self.try_replica_url(i, "postgres") else {
            return false;
        };
        let Ok(client) = local_pg::connect(&url).await else {
            return false;
        };
        let sql = "SELECT pg_is_in_recovery() AND NOT pg_is_wal_replay_paused()";
        match client.query_one(sql, &[]).await {
            Ok(row) => row.get::<_, bool>(0),
            Err(_) => false,
        }
    }

    fn local(&self, op: &'static str) -> Result<&LocalPg> {
        if self.shared {
            return Err(Error::Unsupported {
                op,
                backend: self.backend().name(),
                hint: "the shared cluster is used by every test in this process; \
                       start a dedicated one with PgCluster::start(n)"
                    .into(),
            });
        }
        match &self.inner {
            Inner::Local(l) => Ok(l),
            _ => Err(self.backend().unsupported(op)),
        }
    }

    async fn on_replica(&self, i: usize, op: &'static str, sql: &str) -> Result<()> {
        self.local(op)?;
        let url = self.try_replica_url(i, "postgres")?;
        let client = local_pg::connect(&url)
            .await
            .map_err(|e| Error::pg(format!("connecting to replica {i} for {op}"), e))?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| Error::pg(format!("{op} on replica {i}"), e))
    }

    /// Stops replica `i` cleanly (`pg_ctl stop -m fast`).
    pub async fn stop_replica(&self, i: usize) -> Result<()> {
        self.local("stop_replica")?.stop_replica(i).await
    }

    /// Starts replica `i` again on the same port; returns once it accepts connections.
    pub async fn start_replica(&self, i: usize) -> Result<()> {
        self.local("start_replica")?.start_replica(i).await
    }

    /// Crashes replica `i`: SIGKILL to the postmaster and its children.
    pub fn kill_replica(&self, i: usize) -> Result<()> {
        self.local("kill_replica")?.kill_replica(i)
    }

    /// Pauses WAL replay on replica `i` (`pg_wal_replay_pause()`): it stays
    /// connectable but stops applying changes, so it lags.
    pub async fn pause_replay(&self, i: usize) -> Result<()> {
        self.on_replica(i, "pause_replay", "SELECT pg_wal_replay_pause()")
            .await
    }

    /// Resumes WAL replay on replica `i` (`pg_wal_replay_resume()`).
    pub async fn resume_replay(&self, i: usize) -> Result<()> {
        self.on_replica(i, "resume_replay", "SELECT pg_wal_replay_resume()")
            .await
    }

    /// Promotes replica `i` to a primary (`pg_promote()`), returning once it accepts
    /// writes. The old primary keeps running unless you stop it.
    pub async fn promote(&self, i: usize) -> Result<()> {
        self.on_replica(i, "promote", "SELECT pg_promote(true, 60)")
            .await?;
        let client = local_pg::connect(&self.try_replica_url(i, "postgres")?)
            .await
            .map_err(|e| Error::pg(format!("connecting to promoted replica {i}"), e))?;
        let start = std::time::Instant::now();
        loop {
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| Error::pg("SELECT pg_is_in_recovery()", e))?
                .get(0);
            if !in_recovery {
                return Ok(());
            }
            if start.elapsed() > REPLICATE_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("promotion of replica {i}"),
                    after: REPLICATE_TIMEOUT,
                    detail: "still in recovery".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After [`promote(i)`](Self::promote): brings the old primary back as a
    /// streaming replica of the promoted replica `i` (stopping it first if it
    /// still runs), on its old port, and returns once it streams. Its data
    /// dir is replaced by a fresh base backup of the new primary.
    /// `primary_url` then names a replica; `local` backend only.
    pub async fn rejoin_primary_as_replica(&self, i: usize) -> Result<()> {
        self.local("rejoin_primary_as_replica")?
            .rejoin_primary_as_replica(i)
            .await
    }

    /// Stops the primary cleanly (`pg_ctl stop -m fast`).
    pub async fn stop_primary(&self) -> Result<()> {
        self.local("stop_primary")?.stop_primary().await
    }

    /// Starts the primary again on the same port.
    pub async fn start_primary(&self) -> Result<()> {
        self.local("start_primary")?.start_primary().await
    }

    /// Crashes the primary: SIGKILL to the postmaster and its children.
    pub fn kill_primary(&self) -> Result<()> {
        self.local("kill_primary")?.kill_primary()
    }

    /// The directory holding the servers' data and logs (`local` backend only).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match &self.inner {
            Inner::Local(l) => Some(l.root()),
            _ => None,
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Inner::Local(l) = &self.inner {
            l.teardown();
        }
    }
}

/// Options for [`PgCluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    replicas: usize,
    password: Option<String>,
    tls: bool,
}

impl PgOptions {
    /// No replicas, trust authentication.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many streaming replicas to start.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// Require this password for the `postgres` role on TCP logins
    /// (scram-sha-256; replication stays trusted). URLs from the cluster carry
    /// it, so print them only through [`crate::mask`]. Local backend only.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Serve TLS (a certificate for `localhost` and `127.0.0.1` signed by a
    /// throwaway CA, see [`PgCluster::ca_file`]) and accept only TLS logins
    /// (`hostssl`). URLs from the cluster say `sslmode=require`. Local
    /// backend only.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A fresh database for one test, on the primary (and replicated). Dropped when
/// this value is dropped, unless the thread is panicking (the failed test's data
/// stays for inspection until the servers stop at process exit).
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    replica_urls: Vec<String>,
    admin_url: String,
    keep: bool,
}

impl TestDb {
    /// URL of this database on the primary.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// URLs of this database on each replica.
    pub fn replica_urls(&self) -> Vec<String> {
        self.replica_urls.clone()
    }

    /// The database name (`test_<random>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client connected to this database on the primary, driven by the current
    /// tokio runtime. Panics if it cannot connect.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("{}", crate::chain(&e)))
    }

    /// Like [`client`](Self::client), returning the error.
    pub async fn try_client(&self) -> Result<tokio_postgres::Client> {
        local_pg::connect(&self.url)
            .await
            .map_err(|e| Error::pg(format!("connecting to {}", crate::mask(&self.url)), e))
    }

    /// A client connected to this database on replica `i`. Panics if it cannot connect.
    pub async fn replica_client(&self, i: usize) -> tokio_postgres::Client {
        let url = self
            .replica_urls
            .get(i)
            .unwrap_or_else(|| panic!("no replica {i}: there are {}", self.replica_urls.len()));
        local_pg::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", crate::mask(url)))
    }

    /// Keeps the database after the test (it still goes when the servers stop).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Drops the database now (`DROP DATABASE .. WITH (FORCE)`).
    pub async fn drop_now(mut self) -> Result<()> {
        self.keep = true;
        drop_database(self.admin_url.clone(), self.name.clone()).await
    }
}

async fn drop_database(admin_url: String, name: String) -> Result<()> {
    let client = local_pg::connect(&admin_url)
        .await
        .map_err(|e| Error::pg("connecting to drop a test database", e))?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| Error::pg(format!("DROP DATABASE {name}"), e))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            return;
        }
        // The caller's runtime may be shutting down (or be current-thread and
        // blocked in this drop), so drop on a helper thread with its own runtime.
        // Errors are ignored: a test that stopped its primary cannot drop, and
        // the database goes with the servers anyway.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = util::block_on_thread(async move {
            tokio::time::timeout(Duration::from_secs(10), drop_database(admin, name)).await
        });
    }
}

fn shared_cell() -> &'static OnceLock<std::result::Result<PgCluster, String>> {
    static SHARED: OnceLock<std::result::Result<PgCluster, String>> = OnceLock::new();
    &SHARED
}

/// The shared cluster of this test process (a primary with 1 streaming replica),
/// started on first use and stopped when the process exits, even after a panic
/// or SIGKILL. Panics if it cannot start, with what to install or set.
pub async fn shared_pg() -> &'static PgCluster {
    shared(
        shared_cell(),
        || PgOptions::new().replicas(1),
        "postgres cluster",
    )
    .await
}

/// The shared secured cluster of this test process: a primary with 1
/// streaming replica that accept only TLS logins with a password
/// (scram-sha-256), see [`PgOptions::tls`] and [`PgOptions::password`]. The
/// password is random per process ([`PgCluster::password`]), so tests can
/// grep output for it. Local backend only.
pub async fn shared_tls_pg() -> &'static PgCluster {
    static SHARED: OnceLock<std::result::Result<PgCluster, String>> = OnceLock::new();
    shared(
        &SHARED,
        || {
            PgOptions::new()
                .replicas(1)
                .password(format!("pw{}", util::random_hex(16)))
                .tls()
        },
        "TLS postgres cluster",
    )
    .await
}

async fn shared(
    cell: &'static OnceLock<std::result::Result<PgCluster, String>>,
    options: fn() -> PgOptions,
    what: &'static str,
) -> &'static PgCluster {
    if let Some(Ok(c)) = cell.get() {
        return c;
    }
    // Start on a thread of its own with its own runtime: the servers outlive the
    // runtime of the test that happens to start them.
    let result = tokio::task::spawn_blocking(move || {
        cell.get_or_init(|| {
            let options = options();
            util::block_on_thread(async move {
                PgCluster::start_with(options)
                    .await
                    .map(|mut c| {
                        c.shared = true;
                        c
                    })
                    .map_err(|e| crate::chain(&e))
            })
        })
    })
    .await
    .unwrap_or_else(|_| panic!("dbtool-testkit: the start of the shared {what} panicked"));
    match result {
        Ok(c) => c,
        Err(e) => panic!("dbtool-testkit: cannot start the shared {what}: {e}"),
    }
}

/// A fresh database on the shared primary (which has 1 streaming replica), like
/// `#[sqlx::test]`: created for this test, connectable on the replica when
/// returned, dropped when the `TestDb` is dropped (unless the test panics).
pub async fn pg() -> TestDb {
    shared_pg().await.fresh_db().await
}

/// `n` independent PostgreSQL servers, each with its own replicas.
#[derive(Debug)]
pub struct Shards {
    clusters: Vec<PgCluster>,
}

impl Shards {
    /// Starts `n` clusters with `replicas_each` replicas each (concurrently). With
    /// `DBTOOL_TEST_BACKEND=external`, uses the first `n` of `DBTOOL_TEST_PG_SHARD_URLS`
    /// (which have no replicas).
    pub async fn start(n: usize, replicas_each: usize) -> Result<Shards> {
        if Backend::from_env()? == Backend::External {
            let urls = env_list("DBTOOL_TEST_PG_SHARD_URLS");
            if urls.len() < n || replicas_each > 0 {
                return Err(Error::Config(format!(
                    "the test needs {n} shard servers with {replicas_each} replicas each; \
                     DBTOOL_TEST_PG_SHARD_URLS names {} servers (without replicas)",
                    urls.len()
                )));
            }
            let clusters = urls[..n]
                .iter()
                .map(|u| {
                    Ok(PgCluster {
                        inner: Inner::External(External {
                            primary: parse_url("DBTOOL_TEST_PG_SHARD_URLS", u)?,
                            replicas: Vec::new(),
                        }),
                        shared: false,
                    })
                })
                .collect::<Result<_>>()?;
            return Ok(Shards { clusters });
        }
        let started =
            futures::future::join_all((0..n).map(|_| PgCluster::start(replicas_each))).await;
        let clusters = started.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Shards { clusters })
    }

    /// The clusters, one per shard.
    pub fn clusters(&self) -> &[PgCluster] {
        &self.clusters
    }
}

/// Four single-server shards shared by every test of one test binary, started
/// once on a thread with its own runtime (the servers outlive each test's
/// runtime). Tests take a fresh database on each shard.
///
/// # Panics
///
/// When the servers cannot be started: the test cannot run without them.
pub fn shared_shards() -> &'static Shards {
    static SHARDS: OnceLock<Shards> = OnceLock::new();
    SHARDS.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the shard servers")
                .block_on(Shards::start(4, 0))
                .unwrap_or_else(|e| panic!("cannot start 4 postgres shards: {e}"))
        })
        .join()
        .expect("the shard starter thread")
    })
}
