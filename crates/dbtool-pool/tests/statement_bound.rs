//! The statement bound of a connection opened with `Target::connect`: the
//! server cancels a statement that runs past it, a server that stops
//! answering fails the waiting request naming the host, and a long
//! statement on a live server is not cut short by the watch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_pool::tokio_postgres::error::SqlState;
use dbtool_pool::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(1);
const CONNECT: Duration = Duration::from_secs(2);

fn target(url: &str) -> Target {
    let mut t: Target = url.parse().unwrap();
    t.set_statement_timeout(BOUND);
    t.connect_timeout(CONNECT);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cancels_a_statement_that_runs_past_the_bound() {
    let db = dbtool_testkit::pg().await;
    let client = target(&db.url()).connect().await.unwrap();
    let shown: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "1s");
    let started = Instant::now();
    let err = client
        .query_one("SELECT pg_sleep(60)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(
        err.to_string()
            .contains("canceling statement due to statement timeout")
            || format!("{:?}", err).contains("canceling statement due to statement timeout"),
        "{err:?}"
    );
    // Cancelled by the bound, not run to its end.
    assert!(started.elapsed() < Duration::from_secs(60) / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_in_the_url_options_wins() {
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let t = target(&format!("{url}{sep}options=-c%20statement_timeout%3D7s"));
    let client = t.connect().await.unwrap();
    let shown: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "7s");
}

/// Forwards to `upstream` until `silent` is set; from then on forwards
/// nothing either way and holds new connections without a byte.
async fn proxy(upstream: u16, silent: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            if silent.load(Ordering::SeqCst) {
                held.push(inbound);
                continue;
            }
            let out = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = out.into_split();
            tokio::spawn(pump(ri, wo, silent.clone()));
            tokio::spawn(pump(ro, wi, silent.clone()));
        }
    });
    port
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            // Hold both halves and never send again.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn port_of(url: &str) -> u16 {
    let t: Target = url.parse().unwrap();
    t.get_ports()[0]
}

fn proxied(url: &str, port: u16) -> String {
    url.replacen(&format!(":{}/", port_of(url)), &format!(":{port}/"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_silent_fails_the_waiting_query_naming_the_host() {
    let db = dbtool_testkit::pg().await;
    let silent = Arc::new(AtomicBool::new(false));
    let port = proxy(port_of(&db.url()), silent.clone()).await;
    let t = target(&proxied(&db.url(), port));
    let client = t.connect().await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = client.simple_query("SELECT 2").await.unwrap_err();
    let took = started.elapsed();
    let db_error = err.as_db_error().expect("the failure as a server error");
    assert_eq!(db_error.code(), &SqlState::CONNECTION_FAILURE);
    let host = match &t.get_hosts()[0] {
        dbtool_pool::tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
        other => panic!("{other:?}"),
    };
    assert!(
        db_error
            .message()
            .starts_with(&format!("no answer from {host} for ")),
        "{}",
        db_error.message()
    );
    assert!(
        db_error.message().contains("(statement_timeout 1 s)")
            && db_error.message().contains("within 2 s (connect_timeout)"),
        "{}",
        db_error.message()
    );
    // The watch (bound + grace) and the check (connect_timeout), with room.
    let bound = (BOUND + dbtool_pool::watchdog::GRACE + CONNECT) * 5;
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    assert!(
        took >= BOUND + dbtool_pool::watchdog::GRACE,
        "took {took:?}"
    );
    // The connection is finished: the next request says so at once.
    assert!(client
        .simple_query("SELECT 3")
        .await
        .unwrap_err()
        .is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_statement_on_a_live_server_outlasts_the_watch() {
    let db = dbtool_testkit::pg().await;
    let client = target(&db.url()).connect().await.unwrap();
    // The server-side bound lifted for this step, as a bulk step does: the
    // watch still runs on the 1 s bound and finds the server alive.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap();
    let sleep = (BOUND + dbtool_pool::watchdog::GRACE) * 2 + Duration::from_secs(1);
    let rows = client
        .simple_query(&format!("SELECT pg_sleep({})", sleep.as_secs()))
        .await
        .unwrap();
    let rows = rows
        .iter()
        .filter(|m| matches!(m, dbtool_pool::tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1);
}
