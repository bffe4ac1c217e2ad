//! Error messages: each says what failed, where, and why, in its own text
//! (services log `{e}`), without repeating itself in a cause chain.
//! Shared test server.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{closed_port, host_status, label};
use dbtool_pool::{Error, RwPool};
use tokio::net::{TcpListener, TcpStream};

/// The driver's words for a connection the server side closed.
const CLOSED: [&str; 3] = [
    "connection closed",
    "error communicating with the server: early eof",
    "error communicating with the server: Connection reset by peer (os error 104)",
];

const FORWARD: u8 = 0;
const REFUSE: u8 = 1;

/// A TCP proxy to `upstream`: forwards new connections, or (`REFUSE`)
/// accepts and closes them at once. Connections already made stay up.
async fn proxy(upstream: String) -> (u16, Arc<AtomicU8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mode = Arc::new(AtomicU8::new(FORWARD));
    let m = mode.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if m.load(Ordering::Relaxed) == REFUSE {
                drop(inbound);
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
    (port, mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_carry_the_servers_message_and_sqlstate() {
    let db = dbtool_testkit::pg().await;
    let host = label(&db.url());
    let pool = RwPool::builder()
        .primary(db.url())
        .statement_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let c = pool.write().await.unwrap();

    let err = c.query_one("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert!(err.is_statement_timeout(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "query on {host} failed: canceling statement due to statement timeout (SQLSTATE 57014)"
        )
    );
    // A chain printer shows it once.
    assert_eq!(
        format!("{:#}", anyhow::Error::new(err)),
        format!(
            "query on {host} failed: canceling statement due to statement timeout (SQLSTATE 57014)"
        )
    );

    let err = c.execute("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("query on {host} failed: syntax error at or near \"SELEC\" (SQLSTATE 42601)")
    );
    assert_eq!(
        err.code(),
        Some(&dbtool_pool::tokio_postgres::error::SqlState::SYNTAX_ERROR)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_names_the_primary_even_once_the_pool_has_lost_it() {
    let db = dbtool_testkit::pg().await;
    let (port, mode) = proxy(label(&db.url())).await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/{}", db.name());
    let host = format!("127.0.0.1:{port}");
    // Checks far apart: only the writes themselves find the primary gone.
    let pool = RwPool::builder()
        .primary(url)
        .check_interval(Duration::from_secs(600))
        .build()
        .await
        .unwrap();
    assert_eq!(pool.primary(), Some(host.clone()));
    mode.store(REFUSE, Ordering::Relaxed);

    // Several writes at once: the first failure makes the pool drop its
    // write target while the others are still connecting.
    let writes = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.write().await.map(drop) })
    });
    let mut connect_errors = 0;
    for w in writes {
        match w.await.unwrap().unwrap_err() {
            e @ Error::Connect { .. } => {
                connect_errors += 1;
                // How the closed socket shows depends on timing: an EOF or a reset.
                let msg = e.to_string();
                let cause = msg
                    .strip_prefix(&format!("cannot connect to primary {host}: "))
                    .unwrap_or_else(|| panic!("{msg}"));
                assert!(CLOSED.contains(&cause), "{msg}");
            }
            Error::NoPrimary { .. } => {}
            other => panic!("unexpected error: {other:?}"),
        }
    }
    assert!(connect_errors >= 1);
    // Later writes fail at once, naming the primary and what happened to it.
    let why = host_status(&pool, &host).last_error.unwrap();
    assert!(CLOSED.contains(&why.as_str()), "{why}");
    let err = pool.write().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no primary available for writes: primary {host} is unreachable ({why}) \
             and no other configured host reports read-write; writes fail until the primary \
             returns or a replica is promoted"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_no_host_up_says_no_host_can_take_reads() {
    let primary = format!("postgres://postgres@127.0.0.1:{}/db", closed_port());
    let replica = format!("postgres://postgres@127.0.0.1:{}/db", closed_port());
    let pool = RwPool::builder()
        .primary(&primary)
        .replica(&replica)
        .build()
        .await
        .unwrap();
    let p = label(&primary);
    let why = host_status(&pool, &p).last_error.unwrap();
    assert!(why.contains("Connection refused"), "{why}");
    let err = pool.read().await.unwrap_err();
    assert!(matches!(err, Error::NoHost { .. }), "{err:?}");
    assert!(err.is_unavailable());
    assert_eq!(
        err.to_string(),
        format!(
            "no host available for reads: no replica is in rotation and primary {p} is \
             unreachable ({why}); reads fail until a replica or the primary answers again"
        )
    );
}
