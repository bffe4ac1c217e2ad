//! `RwPool` against a dedicated primary with 2 streaming replicas: routing,
//! ejection of stopped and lagging replicas, read-your-writes, status, drop.
//!
//! The tests share one cluster (started once for this binary) and take turns
//! (`LOCK`): some stop or pause a replica, and each puts it back before it ends.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{app_name, closed_port, host_status, label, quick, wait_for};
use dbtool_pool::{EjectReason, Error, Fallback, Health, Role, RwPool, Strategy, Token};
use dbtool_testkit::{PgCluster, TestDb};

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    if let Some(c) = CLUSTER.get() {
        return c;
    }
    // Started on a thread with its own runtime: the servers outlive the test
    // whose runtime happens to start them.
    tokio::task::spawn_blocking(|| {
        CLUSTER.get_or_init(|| {
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(PgCluster::start(2))
                    .expect("start a primary with 2 replicas")
            })
            .join()
            .expect("the cluster start panicked")
        })
    })
    .await
    .unwrap()
}

async fn setup() -> (
    tokio::sync::MutexGuard<'static, ()>,
    &'static PgCluster,
    TestDb,
) {
    let guard = LOCK.lock().await;
    let c = cluster().await;
    let db = c.fresh_db().await;
    (guard, c, db)
}

async fn create_table(db: &TestDb) {
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
}

/// Writes a row every few milliseconds until stopped, so WAL keeps flowing.
fn spawn_writer(pool: RwPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let c = pool.write().await.expect("write connection");
            c.execute("INSERT INTO w (at) VALUES (clock_timestamp())", &[])
                .await
                .expect("insert");
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_evenly_over_replicas_round_robin() {
    let (_guard, _c, db) = setup().await;
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas).build().await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let c = pool.read().await.unwrap();
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            in_recovery,
            "read served by {}, which is not a replica",
            c.host()
        );
        *seen.entry(c.host().to_string()).or_default() += 1;
    }
    assert_eq!(seen.get(&label(&replicas[0])), Some(&100), "{seen:?}");
    assert_eq!(seen.get(&label(&replicas[1])), Some(&100), "{seen:?}");
    assert_eq!(seen.get(&label(&db.url())), None, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sends_reads_to_the_less_busy_replica() {
    let (_guard, _c, db) = setup().await;
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas)
        .strategy(Strategy::LeastOutstanding)
        .build()
        .await
        .unwrap();
    let held = pool.read().await.unwrap();
    let busy = held.host().to_string();
    for _ in 0..20 {
        let c = pool.read().await.unwrap();
        assert_ne!(
            c.host(),
            busy,
            "a read went to the replica with a connection out"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_transactions_run_on_the_primary() {
    let (_guard, _c, db) = setup().await;
    create_table(&db).await;
    let pool = quick(&db.url(), &db.replica_urls()).build().await.unwrap();
    let mut c = pool.write().await.unwrap();
    assert_eq!(c.host(), label(&db.url()));
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1, 'kept')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    {
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO t VALUES (2, 'rolled back')", &[])
            .await
            .unwrap();
        // Dropped without commit.
    }
    let ids: Vec<i32> = c
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1]);
    assert_eq!(pool.primary(), Some(label(&db.url())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_role_health_lag_and_connections_of_every_host() {
    let (_guard, _c, db) = setup().await;
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas).build().await.unwrap();
    let _w = pool.write().await.unwrap();
    let status = pool.status();
    assert_eq!(status.len(), 3);
    let p = &status[0];
    assert_eq!(
        (p.role, p.health, p.writes, p.reads),
        (Role::Primary, Health::Up, true, false)
    );
    assert_eq!(p.configured_role, Role::Primary);
    assert_eq!((p.pool.size, p.pool.active), (1, 1));
    assert!(
        p.lsn.as_deref().is_some_and(|l| l.parse::<Token>().is_ok()),
        "{p:?}"
    );
    for (r, url) in status[1..].iter().zip(&replicas) {
        assert_eq!(r.host, label(url));
        assert_eq!(
            (r.role, r.health, r.writes, r.reads),
            (Role::Replica, Health::Up, false, true)
        );
        assert_eq!(r.ejected, None);
        assert!(r.lag_bytes.is_some() && r.lag_ms.is_some(), "{r:?}");
        assert_eq!(r.replay_paused, Some(false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_discovered_from_the_servers_not_taken_from_the_config() {
    let (_guard, _c, db) = setup().await;
    let replicas = db.replica_urls();
    // Configured the wrong way round: a replica as "primary", the primary as a "replica".
    let pool = quick(&replicas[0], &[db.url(), replicas[1].clone()])
        .build()
        .await
        .unwrap();
    let w = pool.write().await.unwrap();
    assert_eq!(w.host(), label(&db.url()));
    let in_recovery: bool = w
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery);
    let mut read_hosts = std::collections::HashSet::new();
    for _ in 0..10 {
        read_hosts.insert(pool.read().await.unwrap().host().to_string());
    }
    let expected: std::collections::HashSet<String> = replicas.iter().map(|u| label(u)).collect();
    assert_eq!(read_hosts, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_primary_when_no_replica_is_healthy() {
    let (_guard, _c, db) = setup().await;
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        closed_port(),
        db.name()
    );
    let pool = quick(&db.url(), &[dead]).build().await.unwrap();
    let c = pool.read().await.unwrap();
    assert_eq!(c.host(), label(&db.url()));
    c.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_error_refuses_reads_when_no_replica_is_healthy() {
    let (_guard, _c, db) = setup().await;
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        closed_port(),
        db.name()
    );
    let pool = quick(&db.url(), &[dead])
        .fallback(Fallback::Error)
        .build()
        .await
        .unwrap();
    let err = pool.read().await.unwrap_err();
    assert!(matches!(err, Error::NoReplica), "{err:?}");
    // Writes are unaffected.
    pool.write().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_fast_with_a_clear_error_when_no_host_is_primary() {
    let (_guard, _c, db) = setup().await;
    let replicas = db.replica_urls();
    let dead = format!(
        "postgres://postgres:secret@127.0.0.1:{}/{}",
        closed_port(),
        db.name()
    );
    // No checks after the first: only a write could add a failure.
    let pool = quick(&dead, &replicas)
        .check_interval(Duration::from_secs(600))
        .build()
        .await
        .unwrap();
    let before = pool.status()[0].consecutive_failures;
    let err = pool.write().await.unwrap_err();
    // Failing fast: the write did not try to connect to the dead primary.
    assert_eq!(pool.status()[0].consecutive_failures, before);
    assert!(matches!(err, Error::NoPrimary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("no primary available for writes: primary 127.0.0.1:"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "{msg}");
    // Reads still work from the replicas.
    pool.read()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_is_ejected_and_reads_never_fail() {
    let (_guard, c, db) = setup().await;
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas)
        .max_size(4)
        .build()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (pool, stop, errors) = (pool.clone(), stop.clone(), errors.clone());
        readers.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let c = pool.read().await?;
                    c.query_one("SELECT 1", &[]).await?;
                    Ok::<_, Error>(())
                }
                .await;
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        eprintln!("read failed: {e:#}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop_replica(1).await.unwrap();
    let gone = label(&replicas[1]);
    wait_for(
        Duration::from_secs(10),
        "the stopped replica to be ejected",
        || async {
            let s = host_status(&pool, &gone);
            s.ejected
                .filter(|e| e.reason == EjectReason::Down)
                .map(|_| ())
        },
    )
    .await;
    // While it is out, reads only go to the other replica.
    for _ in 0..20 {
        assert_eq!(pool.read().await.unwrap().host(), label(&replicas[0]));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for r in readers {
        ok += r.await.unwrap();
    }
    c.start_replica(1).await.unwrap();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "reads failed while a replica stopped"
    );
    assert!(ok > 100, "only {ok} reads");
    // Back in rotation once it answers again and the eject time is over.
    wait_for(
        Duration::from_secs(15),
        "the restarted replica to be re-admitted",
        || async { host_status(&pool, &gone).reads.then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_is_ejected_and_readmitted_once_caught_up() {
    let (_guard, c, db) = setup().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE w (at timestamptz)")
        .await
        .unwrap();
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas)
        .max_lag(u64::MAX, Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(pool.clone(), stop.clone());
    c.pause_replay(0).await.unwrap();
    let slow = label(&replicas[0]);
    let r = wait_for(
        Duration::from_secs(10),
        "the paused replica to be ejected for lag",
        || async { host_status(&pool, &slow).ejected.map(|e| e.reason) },
    )
    .await;
    let after_eject = async {
        assert_eq!(r, EjectReason::Lag);
        let s = host_status(&pool, &slow);
        assert_eq!(s.replay_paused, Some(true));
        assert!(s.lag_ms.unwrap() > 300, "{s:?}");
        assert!(host_status(&pool, &label(&replicas[1])).reads);
        for _ in 0..20 {
            assert_eq!(pool.read().await.unwrap().host(), label(&replicas[1]));
        }
    };
    after_eject.await;
    c.resume_replay(0).await.unwrap();
    wait_for(
        Duration::from_secs(10),
        "the caught-up replica to be re-admitted",
        || async { host_status(&pool, &slow).reads.then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_half_the_replicas_are_ejected_for_lag() {
    let (_guard, c, db) = setup().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE w (at timestamptz)")
        .await
        .unwrap();
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas)
        .max_lag(u64::MAX, Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(pool.clone(), stop.clone());
    c.pause_replay(0).await.unwrap();
    c.pause_replay(1).await.unwrap();
    let result = async {
        // Both lag; wait until both are seen lagging for a while.
        wait_for(Duration::from_secs(10), "both replicas to lag", || async {
            let s = pool.status();
            s[1..]
                .iter()
                .all(|h| h.lag_ms.unwrap_or(0) > 600)
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ejected = pool.status()[1..]
            .iter()
            .filter(|h| h.ejected.is_some())
            .count();
        let reading = pool.status()[1..].iter().filter(|h| h.reads).count();
        (ejected, reading)
    }
    .await;
    c.resume_replay(0).await.unwrap();
    c.resume_replay(1).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(result, (1, 1), "(ejected, still reading)");
}

/// Writes row `i`, takes a token, reads the row back through `read_after`.
/// Returns whether the row was there and whether a replica answered.
async fn write_then_read_after(pool: &RwPool, i: i32) -> (bool, bool) {
    let token = {
        let w = pool.write().await.unwrap();
        w.execute("INSERT INTO t VALUES ($1, 'x')", &[&i])
            .await
            .unwrap();
        pool.commit_token(&w).await.unwrap()
    };
    // Tokens travel as strings between requests.
    let token: Token = token.to_string().parse().unwrap();
    let r = pool.read_after(&token).await.unwrap();
    let row = r
        .query_opt("SELECT v FROM t WHERE id = $1", &[&i])
        .await
        .unwrap();
    let on_replica = pool.primary().as_deref() != Some(r.host());
    (row.is_some(), on_replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_never_returns_stale_data() {
    let (_guard, c, db) = setup().await;
    create_table(&db).await;
    let replicas = db.replica_urls();
    // The test servers run with synchronous_commit = off (see the next test);
    // a service's primary usually has it on, so WAL ships at each commit.
    let primary = format!("{}?options=-c%20synchronous_commit%3Don", db.url());
    let pool = quick(&primary, &replicas)
        .read_after_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let (mut from_replica, mut from_primary, mut stale) = (0, 0, 0);
    let total = 1500;
    let started = Instant::now();
    for i in 0..total {
        match i {
            300 => c.pause_replay(0).await.unwrap(),
            700 => c.pause_replay(1).await.unwrap(),
            730 => c.resume_replay(0).await.unwrap(),
            1100 => c.resume_replay(1).await.unwrap(),
            _ => {}
        }
        let (found, on_replica) = write_then_read_after(&pool, i).await;
        stale += usize::from(!found);
        if on_replica {
            from_replica += 1;
        } else {
            from_primary += 1;
        }
    }
    eprintln!(
        "{total} writes read back in {:?}: {from_replica} from replicas, {from_primary} from the primary",
        started.elapsed()
    );
    assert_eq!(stale, 0, "read_after returned stale data");
    // While both replicas were paused, the primary answered.
    assert!(from_primary >= 30, "{from_primary} from the primary");
    assert!(from_replica >= total / 2, "{from_replica} from replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_covers_commits_not_yet_flushed() {
    // With synchronous_commit = off (as on the test servers) COMMIT returns
    // before its WAL is written: pg_current_wal_lsn() would give a token from
    // before the commit, and replicas would pass it without the row.
    let (_guard, _c, db) = setup().await;
    create_table(&db).await;
    let primary = format!("{}?options=-c%20synchronous_commit%3Doff", db.url());
    let pool = quick(&primary, &db.replica_urls())
        .read_after_wait(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let (mut from_replica, mut stale) = (0, 0);
    for i in 0..20 {
        let (found, on_replica) = write_then_read_after(&pool, i).await;
        stale += usize::from(!found);
        from_replica += usize::from(on_replica);
    }
    assert_eq!(stale, 0, "read_after returned stale data");
    assert!(
        from_replica >= 10,
        "only {from_replica} of 20 from replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_stops_its_monitors_and_closes_its_connections() {
    let (_guard, _c, db) = setup().await;
    let app = app_name("drop");
    let pool = quick(&db.url(), &db.replica_urls())
        .application_name(&app)
        .build()
        .await
        .unwrap();
    pool.write()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    pool.read()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    let clients = [
        db.client().await,
        db.replica_client(0).await,
        db.replica_client(1).await,
    ];
    // The primary has the write connection and a monitor connection.
    assert_eq!(connections_named(&clients[0], &app).await, 2);
    drop(pool);
    wait_for(
        Duration::from_secs(5),
        "the pool's connections to close",
        || async {
            let mut n = 0;
            for c in &clients {
                n += connections_named(c, &app).await;
            }
            (n == 0).then_some(())
        },
    )
    .await;
}

/// Connections of the pool (`app`) and of its monitor (`app monitor`) on one server.
async fn connections_named(client: &dbtool_pool::tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ($1, $1 || ' monitor')",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_shows_unknown_lag_and_no_connections_in_use() {
    let (_guard, c, db) = setup().await;
    let replicas = db.replica_urls();
    let pool = quick(&db.url(), &replicas).build().await.unwrap();
    let gone = label(&replicas[1]);
    // Open a few connections to the replica, all returned to the pool.
    {
        let mut held = Vec::new();
        while held.len() < 3 {
            let r = pool.read().await.unwrap();
            if r.host() == gone {
                r.query_one("SELECT 1", &[]).await.unwrap();
                held.push(r);
            }
        }
    }
    let before = host_status(&pool, &gone);
    assert_eq!((before.pool.size, before.pool.active), (3, 0));
    assert_eq!(
        (before.lag_bytes.is_some(), before.lag_ms.is_some()),
        (true, true)
    );

    c.stop_replica(1).await.unwrap();
    let down = wait_for(
        Duration::from_secs(10),
        "the stopped replica to be seen down and its dead connections dropped",
        || async {
            let s = host_status(&pool, &gone);
            (s.health == Health::Down && s.pool.size == 0).then_some(s)
        },
    )
    .await;
    c.start_replica(1).await.unwrap();
    assert_eq!(
        (down.lag_bytes, down.lag_ms, down.replay_paused),
        (None, None, None),
        "a down replica's lag is unknown: {down:?}"
    );
    assert_eq!((down.pool.active, down.pool.idle), (0, 0), "{down:?}");
    assert_eq!(down.role, Role::Replica);
    wait_for(
        Duration::from_secs(15),
        "the restarted replica to be re-admitted",
        || async { host_status(&pool, &gone).reads.then_some(()) },
    )
    .await;
}

/// With `read_after_wait = 0` the replicas are not asked: a token the
/// monitor has not seen replayed is read from the primary at once, fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_without_wait_reads_a_fresh_write_from_the_primary() {
    let (_guard, _c, db) = setup().await;
    create_table(&db).await;
    let primary = format!("{}?options=-c%20synchronous_commit%3Don", db.url());
    let pool = quick(&primary, &db.replica_urls())
        .read_after_wait(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let (mut stale, mut from_replica) = (0, 0);
    let total = 50;
    for i in 0..total {
        let (found, on_replica) = write_then_read_after(&pool, i).await;
        stale += usize::from(!found);
        from_replica += usize::from(on_replica);
    }
    assert_eq!(stale, 0, "read_after returned stale data");
    // A replica answers only when the monitor's reading, taken between the
    // commit and the read, already covered the token: rare, never most.
    assert!(
        from_replica <= 5,
        "{from_replica} of {total} fresh writes read from a replica"
    );
}
