//! Every timeout of the pool fires as configured, against the shared test
//! server (these tests break nothing, so they run side by side).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{app_name, wait_for};
use dbtool_pool::{Error, RwPool};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `upstream` that can be frozen: while frozen it accepts
/// connections and never answers, like a server that hangs.
async fn freezable_proxy(upstream: String) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if f.load(Ordering::Relaxed) {
                held.push(inbound);
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, frozen)
}

/// A limit far above the one a test measures: a wait that ends before it
/// was ended by the limit under test, however loaded the machine.
const LONG: Duration = Duration::from_secs(60);

/// A server that accepts TCP connections and never sends a byte.
async fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    port
}

fn host_port(url: &str) -> String {
    common::label(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_fires_when_the_server_does_not_answer() {
    let db = dbtool_testkit::pg().await;
    let (port, frozen) = freezable_proxy(host_port(&db.url())).await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/{}", db.name());
    // Every other limit is far longer, so only the connect timeout can end
    // the wait.
    let pool = RwPool::builder()
        .primary(url)
        .connect_timeout(Duration::from_millis(300))
        .checkout_timeout(LONG)
        .query_timeout(LONG)
        .check_interval(LONG)
        .build()
        .await
        .unwrap();
    // The monitor's connection is already up; new connections now hang.
    frozen.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let err = pool.write().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::ConnectTimeout { .. }), "{err:?}");
    assert!(err.is_timeout());
    let host = format!("127.0.0.1:{port}");
    assert_eq!(
        err.to_string(),
        format!("connecting to primary {host} timed out after 300ms (connect_timeout_ms); is the server up and reachable?")
    );
    assert!(
        took >= Duration::from_millis(300) && took < LONG,
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_is_set_on_every_connection() {
    let db = dbtool_testkit::pg().await;
    let pool = RwPool::builder()
        .primary(db.url())
        .statement_timeout(Duration::from_millis(200))
        .query_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let c = pool.write().await.unwrap();
    let shown: String = c
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "200ms");
    let start = Instant::now();
    let err = c.query_one("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    assert!(err.is_statement_timeout(), "{err:?}");
    // The server ended it: before the client-side limit, let alone the sleep.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // The connection stays usable.
    c.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_query_on_the_server() {
    let db = dbtool_testkit::pg().await;
    let app = app_name("query_timeout");
    let pool = RwPool::builder()
        .primary(db.url())
        .statement_timeout(Duration::ZERO)
        .query_timeout(Duration::from_millis(300))
        .application_name(&app)
        .build()
        .await
        .unwrap();
    let c = pool.write().await.unwrap();
    let start = Instant::now();
    let err = c.query_one("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::QueryTimeout { .. }), "{err:?}");
    // Ended by the limit, not by the statement finishing.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(30),
        "took {took:?}"
    );
    drop(c);
    let admin = db.client().await;
    wait_for(Duration::from_secs(5), "the sleeping query to be cancelled", || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    // The pool goes on with a fresh connection.
    pool.write()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_waits_at_most_checkout_timeout() {
    let db = dbtool_testkit::pg().await;
    let pool = RwPool::builder()
        .primary(db.url())
        .max_size(1)
        .checkout_timeout(Duration::from_millis(200))
        .connect_timeout(LONG)
        .query_timeout(LONG)
        .build()
        .await
        .unwrap();
    let _held = pool.write().await.unwrap();
    let start = Instant::now();
    let err = pool.write().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::CheckoutTimeout { .. }), "{err:?}");
    // The held connection is never returned: only the checkout limit ends the wait.
    assert!(
        took >= Duration::from_millis(200) && took < LONG,
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_idle_timeout() {
    let db = dbtool_testkit::pg().await;
    let app = app_name("idle");
    let pool = RwPool::builder()
        .primary(db.url())
        .idle_timeout(Duration::from_millis(300))
        .check_interval(Duration::from_millis(100))
        .application_name(&app)
        .build()
        .await
        .unwrap();
    {
        let a = pool.write().await.unwrap();
        let b = pool.write().await.unwrap();
        let c = pool.write().await.unwrap();
        for x in [&a, &b, &c] {
            x.query_one("SELECT 1", &[]).await.unwrap();
        }
    }
    assert_eq!(pool.status()[0].pool.size, 3);
    let admin = db.client().await;
    let start = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "idle connections to close",
        || async {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0 && pool.status()[0].pool.size == 0).then_some(())
        },
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "closed too early: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_after_max_lifetime() {
    let db = dbtool_testkit::pg().await;
    let pool = RwPool::builder()
        .primary(db.url())
        .idle_timeout(Duration::ZERO)
        .max_lifetime(Duration::from_millis(300), Duration::ZERO)
        .build()
        .await
        .unwrap();
    let pid = |c: dbtool_pool::Conn| async move {
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let first = pid(pool.write().await.unwrap()).await;
    assert_eq!(
        pid(pool.write().await.unwrap()).await,
        first,
        "reused while young"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_ne!(
        pid(pool.write().await.unwrap()).await,
        first,
        "reused past its lifetime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_is_bounded_and_named() {
    let silent = silent_server().await;
    let host = format!("127.0.0.1:{silent}");
    let db = dbtool_testkit::pg().await;
    let url = |port: u16| format!("postgres://postgres:secret@127.0.0.1:{port}/{}", db.name());
    // As the primary: the first check gives up after the connect timeout,
    // writes and reads then fail at once.
    let pool = tokio::time::timeout(
        LONG,
        RwPool::builder()
            .primary(url(silent))
            .connect_timeout(Duration::from_millis(300))
            .build(),
    )
    .await
    .expect("building a pool on a silent server hung")
    .unwrap();
    let s = pool.status();
    assert_eq!(
        s[0].last_error.as_deref(),
        Some("connecting timed out after 300ms (connect_timeout_ms)")
    );
    let err = pool.write().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no primary available for writes: primary {host} is unreachable (connecting \
             timed out after 300ms (connect_timeout_ms)) and no other configured host reports read-write; writes \
             fail until the primary returns or a replica is promoted"
        )
    );
    assert!(!err.to_string().contains("secret"));
    drop(pool);

    // As a replica: its check times out the same way, it never enters
    // rotation, and reads go to the primary.
    let pool = RwPool::builder()
        .primary(db.url())
        .replica(url(silent))
        .connect_timeout(Duration::from_millis(300))
        .checkout_timeout(LONG)
        .build()
        .await
        .unwrap();
    let r = pool.read().await.unwrap();
    assert_eq!(r.host(), host_port(&db.url()));
    let replica = pool.status().remove(1);
    assert_eq!(
        (
            replica.host.as_str(),
            replica.last_error.as_deref(),
            replica.reads
        ),
        (
            host.as_str(),
            Some("connecting timed out after 300ms (connect_timeout_ms)"),
            false
        )
    );
}
