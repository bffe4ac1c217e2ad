//! `dbtool pool status` against real servers: a split brain after a
//! failover, a replica that is down, a primary that never answers.

mod common;

use common::{run, stderr, stdout, text};
use dbtool_testkit::PgCluster;

/// `host:port` of a testkit URL (`postgres://user@host:port/db`).
fn label(url: &str) -> String {
    let rest = url.split_once('@').expect("a URL with a user").1;
    rest.split_once('/').map_or(rest, |(h, _)| h).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_a_split_brain_and_exits_1() {
    let c = PgCluster::start(1)
        .await
        .expect("start a primary with 1 replica");
    let db = c.fresh_db().await;
    let replica = db.replica_urls().remove(0);
    let (old, new) = (label(&db.url()), label(&replica));
    c.stop_primary().await.unwrap();
    c.promote(0).await.unwrap();
    c.start_primary().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "pool",
            "status",
            "--primary",
            &db.url(),
            "--replica",
            &replica,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The last line (the pool's own log lines come before it).
    assert_eq!(
        stderr(&out).trim_end().lines().last().unwrap_or(""),
        format!(
            "error: split brain: {old} (timeline 1), {new} (timeline 2) all accept writes; \
             the pool writes to {new} (the newest timeline); stop {old} or rebuild it as a \
             replica of {new} before anything else writes to it"
        ),
        "{}",
        text(&out)
    );
    let table = stdout(&out);
    let row = |host: &str| {
        table
            .lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{table}"))
            .to_string()
    };
    assert!(
        row(&old).contains("primary  up      none (stale primary)"),
        "{table}"
    );
    assert!(row(&new).contains("primary  up      writes"), "{table}");

    let out = run(
        dir.path(),
        &[
            "pool",
            "status",
            "--json",
            "--primary",
            &db.url(),
            "--replica",
            &replica,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flags: Vec<(bool, bool, u64)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["split_brain"].as_bool().unwrap(),
                h["writes"].as_bool().unwrap(),
                h["timeline"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(flags, [(true, false, 1), (true, true, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_down_replicas_lag_as_unknown() {
    let db = dbtool_testkit::pg().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "postgres://postgres@127.0.0.1:{}/db",
            l.local_addr().unwrap().port()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["pool", "status", "--primary", &db.url(), "--replica", &dead],
    );
    // The primary answers: exit 0 though a replica is down.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = stdout(&out);
    let row = table
        .lines()
        .find(|l| l.starts_with(&label(&dead)))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("unknown  down    -       unknown"), "{table}");
    assert!(
        row.ends_with("0/16 (idle 0, active 0, waiting 0)"),
        "{table}"
    );
}
