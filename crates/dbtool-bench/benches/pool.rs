//! Pool scenario (goals from issue 6): `SELECT 1` and a point select on a
//! forums table, 32 concurrent tasks, through `RwPool::read()`, bare
//! deadpool-postgres, and deadpool through pgbouncer (transaction mode), all on the
//! same replica of a testkit cluster. Throughput and p50/p99 latency.
//!
//! ```text
//! cargo bench -p dbtool-bench --bench pool -- [--quick] [--runs N] [--seconds S]
//! ```
//! All three use the simple query protocol: pgbouncer 1.18 in transaction mode
//! cannot keep tokio-postgres's prepared statements, and the comparison must be
//! the same work for everyone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use dbtool_bench::{closed_loop, rotated, Args, Record};
use dbtool_pool::RwPool;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

const TASKS: usize = 32;
const POOL_SIZE: usize = 32;
const ROWS: u64 = 100_000;

fn bare_pool(url: &str) -> Pool {
    let cfg: tokio_postgres::Config = url.parse().expect("a postgres URL");
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a deadpool")
}

/// A pgbouncer in transaction mode in front of `target`, run as the postgres user
/// when we are root (pgbouncer refuses root). Killed on drop.
struct Bouncer {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

async fn start_pgbouncer(target: &str) -> Result<Bouncer, String> {
    let cfg: tokio_postgres::Config = target.parse().map_err(|e| format!("{e}"))?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or("postgres").to_owned();
    let user = cfg.get_user().unwrap_or("postgres").to_owned();
    let dir = std::env::temp_dir().join(format!("dbtool-bench-pgbouncer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let listen = free_port();
    let ini = format!(
        "[databases]\nbench = host={host} port={port} dbname={db} user={user}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\n\
         max_client_conn = 500\ndefault_pool_size = {POOL_SIZE}\n\
         logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
         ignore_startup_parameters = extra_float_digits\n",
        d = dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n"))
        .map_err(|e| e.to_string())?;
    let ini_path = dir.join("pgbouncer.ini");
    let child = if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status();
        Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(&ini_path)
            .spawn()
    } else {
        Command::new("pgbouncer").arg(&ini_path).spawn()
    }
    .map_err(|e| format!("cannot start pgbouncer: {e} (apt-get install pgbouncer)"))?;
    let b = Bouncer {
        child,
        url: format!("postgres://{user}@127.0.0.1:{listen}/bench"),
        dir,
    };
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", listen))
            .await
            .is_ok()
        {
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "pgbouncer did not listen, see {}",
        log_of(&b.dir).display()
    ))
}

fn log_of(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.log")
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    RwPool,
    Deadpool,
    Bouncer,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::RwPool => "dbtool RwPool::read()",
            Who::Deadpool => "deadpool-postgres",
            Who::Bouncer => "pgbouncer (transaction)",
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let db = dbtool_testkit::pg().await;
    let primary = db.client().await;
    primary
        .batch_execute(&format!(
            "CREATE TABLE topics (id bigint PRIMARY KEY, team_id text NOT NULL, title text NOT NULL,
                                  view_count bigint NOT NULL, updated_at timestamptz NOT NULL);
             INSERT INTO topics SELECT g, md5((g % 220)::text), 'topic ' || g || ' ' || md5(g::text),
                                       g % 997, now() - g * interval '1 minute'
             FROM generate_series(1, {ROWS}) g;
             ANALYZE topics;"
        ))
        .await
        .expect("create the topics table");
    let replica_url = db.replica_urls()[0].clone();
    let replica = db.replica_client(0).await;
    // Wait for the replica to have the rows: every contender reads them there.
    for _ in 0..600 {
        let n: Option<i64> = replica
            .query_opt("SELECT count(*) FROM topics", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if n == Some(ROWS as i64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let rw = RwPool::builder()
        .primary(db.url())
        .replica(&replica_url)
        .max_size(POOL_SIZE)
        .build()
        .await
        .expect("an RwPool");
    let bare = bare_pool(&replica_url);
    let mut who = vec![Who::RwPool, Who::Deadpool];
    let bouncer = match start_pgbouncer(&replica_url).await {
        Ok(b) => {
            who.push(Who::Bouncer);
            Some(b)
        }
        Err(e) => {
            for s in ["pool-select1", "pool-point"] {
                Record::missing(s, Who::Bouncer.name(), &e).emit();
            }
            None
        }
    };
    let via_bouncer = bouncer.as_ref().map(|b| bare_pool(&b.url));

    for (section, point) in [("pool-select1", false), ("pool-point", true)] {
        eprintln!(
            "{section}: {TASKS} tasks, {} runs of {} s",
            args.runs, args.seconds
        );
        for run in 1..=args.runs {
            for w in rotated(&who, run) {
                let sql = move |i: u64| {
                    if point {
                        format!(
                            "SELECT id, team_id, title, view_count, updated_at FROM topics WHERE id = {}",
                            i % ROWS + 1
                        )
                    } else {
                        "SELECT 1".to_owned()
                    }
                };
                let l = match w {
                    Who::RwPool => {
                        let p = rw.clone();
                        closed_loop(TASKS, args.seconds, move |i| {
                            let p = p.clone();
                            let q = sql(i);
                            async move {
                                match p.read().await {
                                    Ok(c) => c.simple_query(&q).await.is_ok(),
                                    Err(_) => false,
                                }
                            }
                        })
                        .await
                    }
                    Who::Deadpool | Who::Bouncer => {
                        let p = if w == Who::Deadpool {
                            bare.clone()
                        } else {
                            via_bouncer.clone().expect("pgbouncer pool")
                        };
                        closed_loop(TASKS, args.seconds, move |i| {
                            let p = p.clone();
                            let q = sql(i);
                            async move {
                                match p.get().await {
                                    Ok(c) => c.simple_query(&q).await.is_ok(),
                                    Err(_) => false,
                                }
                            }
                        })
                        .await
                    }
                };
                for r in l.records(section, w.name(), "qps", run) {
                    r.emit();
                }
            }
        }
    }
    drop(via_bouncer);
    drop(bouncer);
}
