//! The statement bound, through the real binary: a server that completes
//! the handshake and then stops answering (a stopped process, a silent
//! network path) fails `migrate`, `verify` and `sync` with the documented
//! exit code and a message naming the host, within a time derived from the
//! configured bounds; and a statement that runs past `--statement-timeout`
//! on a live server is cancelled by the server.
//!
//! The silent server is a proxy in front of the testkit's Postgres (the
//! shared server is never stopped): it forwards both ways until the first
//! `ReadyForQuery` of any connection has passed (a handshake completed),
//! then forwards nothing more, and holds new connections without a byte.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run, stderr, text};

/// `--statement-timeout` and `connect_timeout` of the runs, in seconds.
const STATEMENT_S: u64 = 2;
const CONNECT_S: u64 = 2;

/// The bound a run against the silent server must end within: the watch
/// (statement bound + 2 s grace) and the sign-of-life check
/// (connect_timeout), with room for a loaded machine.
fn bound() -> Duration {
    Duration::from_secs(5 * (STATEMENT_S + 2 + CONNECT_S))
}

struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards to `upstream` until a handshake completed, then goes silent.
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frozen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) if f.load(Ordering::SeqCst) => held.push(client),
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                        pump(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            &f,
                            &s,
                            false,
                        );
                        pump(server, client, &f, &s, true);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { port, frozen, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until frozen; the server-to-client direction
/// freezes everything once a `ReadyForQuery` ('Z', length 5) has passed.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    frozen: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
    from_server: bool,
) {
    let (frozen, stop) = (frozen.clone(), stop.clone());
    std::thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 16384];
        let mut tail: Vec<u8> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if frozen.load(Ordering::SeqCst) {
                // Silent: hold the socket, read and send nothing.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            };
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
            if from_server {
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(5).any(|w| w == [b'Z', 0, 0, 0, 5]) {
                    frozen.store(true, Ordering::SeqCst);
                }
                let keep = tail.len().saturating_sub(5);
                tail.drain(..keep);
            }
        }
    });
}

fn source(dir: &Path) -> PathBuf {
    let path = dir.join("forums.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         INSERT INTO users VALUES (1, 'ann'), (2, 'bob');",
    )
    .unwrap();
    path
}

/// The testkit database's URL with the proxy's port and the test's
/// connect_timeout, and the host:port the messages must name.
fn proxied(url: &str, proxy: &Proxy) -> (String, String) {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let port = config.get_ports()[0];
    let url = url.replacen(&format!(":{port}/"), &format!(":{}/", proxy.port), 1);
    let sep = if url.contains('?') { '&' } else { '?' };
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the testkit's URL names no TCP host: {other:?}"),
    };
    (
        format!("{url}{sep}connect_timeout={CONNECT_S}"),
        format!("{host}:{}", proxy.port),
    )
}

/// Runs `dbtool CMD --from SOURCE --to URL` with URL pointing at a proxy in
/// front of `db_url` that goes silent after the first handshake, and checks
/// the outcome: exit `code`, the proxy's host named, no password, within
/// [`bound`], and the proxy really went silent.
fn assert_fails_naming_the_host(dir: &Path, db_url: &str, cmd: &str, src: &Path, code: i32) {
    let statement = STATEMENT_S.to_string();
    let mut dbtool = common::dbtool(dir);
    dbtool.args(["--statement-timeout", statement.as_str(), cmd]);
    assert_bounded_by_the_statement_timeout(dbtool, db_url, src, code);
}

/// [`assert_fails_naming_the_host`] for `dbtool` (the command and its
/// statement bound, [`STATEMENT_S`], given by the caller).
fn assert_bounded_by_the_statement_timeout(
    mut dbtool: std::process::Command,
    db_url: &str,
    src: &Path,
    code: i32,
) {
    let proxy = Proxy::start(upstream_port(db_url));
    let (url, host) = proxied(db_url, &proxy);
    dbtool.args(["--from", src.to_str().unwrap(), "--to", &url]);
    let args: Vec<_> = dbtool.get_args().map(|a| a.to_owned()).collect();
    let started = Instant::now();
    let out = dbtool.output().expect("run dbtool");
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    assert!(
        err.contains(&format!("no answer from {host} for"))
            && err.contains(&format!("(statement_timeout {STATEMENT_S} s)"))
            && err.contains("is the server frozen"),
        "{}",
        text(&out)
    );
    if let Some(pw) = password(db_url) {
        assert!(!err.contains(&pw), "the password is shown:\n{err}");
    }
    assert!(
        took < bound(),
        "{args:?} took {took:?}, bound {:?}",
        bound()
    );
    assert!(
        proxy.frozen.load(Ordering::SeqCst),
        "the proxy never went silent"
    );
}

/// `statement_timeout = SECS` in `dir`'s dbtool.toml.
fn config_file(dir: &Path, secs: u64) {
    std::fs::write(
        dir.join("dbtool.toml"),
        format!("statement_timeout = {secs}\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_timeout_in_dbtool_toml_bounds_a_command_run_without_the_option() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    config_file(dir.path(), STATEMENT_S);
    let mut dbtool = common::dbtool(dir.path());
    dbtool.env_remove("DBTOOL_STATEMENT_TIMEOUT").arg("migrate");
    assert_bounded_by_the_statement_timeout(dbtool, &db.url(), &src, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_statement_timeout_option_and_variable_win_over_dbtool_toml() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    config_file(dir.path(), STATEMENT_S + 1);
    let statement = STATEMENT_S.to_string();
    let mut dbtool = common::dbtool(dir.path());
    dbtool.args(["--statement-timeout", statement.as_str(), "migrate"]);
    assert_bounded_by_the_statement_timeout(dbtool, &db.url(), &src, 1);
    let mut dbtool = common::dbtool(dir.path());
    dbtool
        .env("DBTOOL_STATEMENT_TIMEOUT", &statement)
        .arg("migrate");
    assert_bounded_by_the_statement_timeout(dbtool, &db.url(), &src, 1);
}

// Issue 21, item 3: a server that answers the handshake and then goes
// silent hung migrate forever.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_against_a_server_gone_silent_after_the_handshake_fails_naming_the_host() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    assert_fails_naming_the_host(dir.path(), &db.url(), "migrate", &src, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_against_a_server_gone_silent_after_the_handshake_fails_naming_the_host() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let out = run(
        dir.path(),
        &[
            "migrate",
            "--from",
            src.to_str().unwrap(),
            "--to",
            &db.url(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_fails_naming_the_host(dir.path(), &db.url(), "verify", &src, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_against_a_server_gone_silent_after_the_handshake_fails_naming_the_host() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    assert_fails_naming_the_host(dir.path(), &db.url(), "sync", &src, 1);
}

fn upstream_port(url: &str) -> u16 {
    let config: tokio_postgres::Config = url.parse().unwrap();
    config.get_ports()[0]
}

fn password(url: &str) -> Option<String> {
    let config: tokio_postgres::Config = url.parse().unwrap();
    config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| !p.is_empty())
}
