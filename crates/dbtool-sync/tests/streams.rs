//! The library against a real Postgres: every key kind, schema changes while
//! syncing, rejected values, and a 4-shard target with the workload writing.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dbtool_sync::state::Target;
use dbtool_sync::sync::{self, Options, Outcome, Quiet};

fn target(url: &str) -> Vec<Target> {
    vec![Target {
        shard: String::new(),
        to: url.parse().unwrap(),
    }]
}

async fn until_idle(file: &Path, targets: Vec<Target>, sharded: Option<sync::Sharded>) {
    let mut o = Options::new(file, targets);
    o.until_idle = true;
    o.sharded = sharded;
    o.rejects = Some(file.with_extension("rejects.jsonl"));
    let out = sync::run(o, &Quiet).await.expect("sync");
    assert_eq!(out, Outcome::Idle);
}

async fn verify(file: &Path, url: &str) -> dbtool_verify::Report {
    let opts = dbtool_verify::Options::new(file, url);
    dbtool_verify::verify(&opts).await.expect("verify")
}

const KEY_KINDS: &str = "
CREATE TABLE ipk (id INTEGER PRIMARY KEY, v TEXT, r REAL, b BLOB);
CREATE TABLE comp (a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY (a, b));
CREATE TABLE wr (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
CREATE TABLE bag (x INTEGER, y TEXT);
INSERT INTO ipk VALUES (1, 'one', 1.5, x'00ff'), (2, 'two', 2.5, NULL), (3, 'three', 0.1, x'01');
INSERT INTO comp VALUES ('a', 1, 'a1'), ('a', 2, 'a2'), ('b', 1, 3.25);
INSERT INTO wr VALUES ('k1', 1), ('k2', 2);
INSERT INTO bag VALUES (1, 'dup'), (1, 'dup'), (2, 'two'), (NULL, 'null x');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_kind_converges_including_key_changes_and_duplicate_rows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.db");
    let c = rusqlite::Connection::open(&file).unwrap();
    c.execute_batch(KEY_KINDS).unwrap();
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    until_idle(&file, target(&url), None).await;
    c.execute_batch(
        "
        UPDATE ipk SET id = 100, v = 'one moved' WHERE id = 1;          -- key change
        UPDATE ipk SET r = 0.1 + 0.2, b = x'deadbeef' WHERE id = 2;     -- exact float bits, blob
        DELETE FROM ipk WHERE id = 3;
        INSERT INTO ipk VALUES (3, 'three again', -0.0, NULL);
        UPDATE comp SET b = 9 WHERE a = 'a' AND b = 1;                  -- composite key change
        UPDATE comp SET v = x'0102' WHERE a = 'b';                       -- untyped column, blob
        DELETE FROM comp WHERE a = 'a' AND b = 2;
        UPDATE wr SET k = 'k3' WHERE k = 'k1';
        INSERT INTO wr VALUES ('k4', 4);
        UPDATE bag SET y = 'one of two' WHERE rowid = (SELECT min(rowid) FROM bag WHERE x = 1);
        DELETE FROM bag WHERE rowid = (SELECT max(rowid) FROM bag WHERE y = 'dup');
        INSERT INTO bag VALUES (1, 'dup');
        UPDATE bag SET x = 5 WHERE x IS NULL;
        ",
    )
    .unwrap();
    until_idle(&file, target(&url), None).await;
    let report = verify(&file, &url).await;
    assert_eq!(report.exit_code(), 0, "{report:#?}");
    let client = db.client().await;
    let r: f64 = client
        .query_one("SELECT r FROM public.ipk WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r.to_bits(), (0.1f64 + 0.2).to_bits());
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM public.bag WHERE x = 1 AND y = 'dup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let gone: i64 = client
        .query_one("SELECT count(*) FROM public.ipk WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_are_followed_or_stop_naming_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("schema.db");
    let c = rusqlite::Connection::open(&file).unwrap();
    c.execute_batch(KEY_KINDS).unwrap();
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    until_idle(&file, target(&url), None).await;
    // Written after the ALTER but before sync regenerates the trigger: the
    // old trigger does not log `note`; the re-logged row must carry it.
    c.execute_batch(
        "
        ALTER TABLE ipk ADD COLUMN note TEXT DEFAULT 'none';
        UPDATE ipk SET note = 'set early', v = 'v2' WHERE id = 2;
        ALTER TABLE wr RENAME COLUMN v TO value;
        UPDATE wr SET value = 22 WHERE k = 'k2';
        CREATE INDEX ipk_v ON ipk(v);
        ",
    )
    .unwrap();
    until_idle(&file, target(&url), None).await;
    c.execute_batch("INSERT INTO ipk (id, v, note) VALUES (7, 'seven', 'late')")
        .unwrap();
    until_idle(&file, target(&url), None).await;
    let client = db.client().await;
    let rows = client
        .query("SELECT id, note FROM public.ipk ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (1, Some("none".into())),
            (2, Some("set early".into())),
            (3, Some("none".into())),
            (7, Some("late".into()))
        ]
    );
    let v: i64 = client
        .query_one("SELECT value FROM public.wr WHERE k = 'k2'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 22);
    let report = verify(&file, &url).await;
    assert_eq!(report.exit_code(), 0, "{report:#?}");

    // A table created or dropped: sync stops naming it, nothing dropped.
    c.execute_batch("CREATE TABLE extra (id INTEGER PRIMARY KEY)")
        .unwrap();
    let mut o = Options::new(&file, target(&url));
    o.until_idle = true;
    let e = sync::run(o, &Quiet).await.unwrap_err().to_string();
    assert!(e.contains("table extra was created"), "{e}");
    c.execute_batch("DROP TABLE extra; DROP TABLE bag").unwrap();
    let mut o = Options::new(&file, target(&url));
    o.until_idle = true;
    let e = sync::run(o, &Quiet).await.unwrap_err().to_string();
    assert!(e.contains("table bag was dropped"), "{e}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM public.bag", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4, "the target's table is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_cast_goes_to_the_reject_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rejects.db");
    let c = rusqlite::Connection::open(&file).unwrap();
    c.execute_batch(KEY_KINDS).unwrap();
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    until_idle(&file, target(&url), None).await;
    // `wr.v` was planned as an integer column; text does not cast.
    c.execute_batch("INSERT INTO wr VALUES ('bad', 'not a number'), ('good', 5)")
        .unwrap();
    until_idle(&file, target(&url), None).await;
    let client = db.client().await;
    let keys: Vec<String> = client
        .query("SELECT k FROM public.wr ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, vec!["good", "k1", "k2"]);
    let rejects = std::fs::read_to_string(file.with_extension("rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{rejects}");
    assert_eq!(lines[0]["table"], "wr");
    assert_eq!(lines[0]["column"], "v");
    assert_eq!(lines[0]["value"], "not a number");
    assert_eq!(lines[0]["pk"], serde_json::json!({"k": "bad"}));
    assert_eq!(lines[0]["action"], "rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_each_change_on_its_teams_shard_then_cutover() {
    use dbtool_shard::{Scheme, ShardMap};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forums.db");
    let mut o = dbtool_sample::Options::new(&file);
    o.scale = 0.05;
    dbtool_sample::generate(&o).unwrap();
    rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    let shards = dbtool_testkit::shared_shards();
    let map = ShardMap::even_n(Scheme::Buckets, 4).unwrap();
    let mut targets = Vec::new();
    let mut dbs = Vec::new();
    for (i, name) in map.shards().iter().enumerate() {
        let db = shards.clusters()[i].fresh_db().await;
        targets.push(Target {
            shard: name.clone(),
            to: db.url().parse().unwrap(),
        });
        dbs.push(db);
    }
    let sharded = sync::Sharded {
        map: map.clone(),
        sharding: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut w = dbtool_sample::workload::WorkloadOptions::new(&file);
        w.duration = Some(Duration::from_secs(60));
        std::thread::spawn(move || {
            let mut acks = Vec::new();
            let s = dbtool_sample::workload::run(&w, &stop, |a| acks.push(a.clone())).unwrap();
            (s, acks)
        })
    };
    until_idle(&file, targets.clone(), Some(sharded.clone())).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = dbtool_sync::cutover::cutover(
        dbtool_sync::cutover::Options {
            from: file.clone(),
            targets: targets.clone(),
            sharded: Some(sharded),
            max_freeze: Duration::from_secs(2),
            wait: Duration::from_secs(30),
            batch: 5000,
        },
        &Quiet,
    )
    .await
    .expect("cutover");
    assert!(report.freeze_ms <= 2000);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (summary, acks) = writer.join().unwrap();
    assert!(summary.failed > 0 || summary.acked == acks.len() as u64);
    // Every post the workload saw committed is on exactly the shard of its team.
    let c = rusqlite::Connection::open(&file).unwrap();
    let mut checked = 0;
    for a in acks.iter().filter(|a| a.table == "posts").take(200) {
        let id: i64 = a.key.parse().unwrap();
        let team: Option<String> = c
            .query_row("SELECT team_id FROM posts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .ok();
        let mut on = Vec::new();
        for (db, t) in dbs.iter().zip(&targets) {
            let n: i64 = db
                .client()
                .await
                .query_one("SELECT count(*) FROM public.posts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                on.push(t.shard.clone());
            }
        }
        match team {
            Some(team) => assert_eq!(
                on,
                vec![map.shard_of(&team).unwrap().to_owned()],
                "post {id}"
            ),
            None => assert!(on.is_empty(), "deleted post {id} still on {on:?}"),
        }
        checked += 1;
    }
    assert!(checked > 20);
}
