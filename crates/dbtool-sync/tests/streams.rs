//! The library against a real Postgres: every key kind, schema changes while
//! syncing, rejected values, and a 4-shard target with the workload writing.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
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

    let indexes = |table: &'static str| {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1 ORDER BY indexname",
                    &[&table],
                )
                .await
                .unwrap();
            rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
        }
    };
    assert_eq!(indexes("ipk").await, vec!["ipk_pkey", "ipk_v"]);

    // Tables created while syncing are followed: the rows they hold when
    // capture is installed are copied, their later changes streamed; a
    // plain index is created in the target.
    c.execute_batch(
        "
        CREATE TABLE extra (id INTEGER PRIMARY KEY, label TEXT NOT NULL, n REAL);
        INSERT INTO extra VALUES (1, 'one', 1.5), (2, 'two', NULL);
        CREATE TABLE extra_bag (x INTEGER, y TEXT);
        INSERT INTO extra_bag VALUES (1, 'dup'), (1, 'dup');
        CREATE UNIQUE INDEX wr_value ON wr(value DESC);
        ",
    )
    .unwrap();
    until_idle(&file, target(&url), None).await;
    c.execute_batch(
        "
        UPDATE extra SET label = 'uno' WHERE id = 1;
        DELETE FROM extra WHERE id = 2;
        INSERT INTO extra VALUES (3, 'three', 3.0);
        DELETE FROM extra_bag WHERE rowid = (SELECT min(rowid) FROM extra_bag);
        INSERT INTO extra_bag VALUES (2, 'two');
        ",
    )
    .unwrap();
    until_idle(&file, target(&url), None).await;
    let rows = client
        .query("SELECT id, label, n FROM public.extra ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String, Option<f64>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![(1, "uno".into(), Some(1.5)), (3, "three".into(), Some(3.0))]
    );
    let rows = client
        .query("SELECT x, y FROM public.extra_bag ORDER BY x, y", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, "dup".into()), (2, "two".into())]);
    assert_eq!(indexes("extra").await, vec!["extra_pkey"]);
    assert_eq!(indexes("wr").await, vec!["wr_pkey", "wr_value"]);
    let report = verify(&file, &url).await;
    assert_eq!(report.exit_code(), 0, "{report:#?}");

    // An index on an expression: sync stops naming it, and goes on once
    // the target has an index of the name it gave.
    c.execute_batch("CREATE INDEX ipk_lower ON ipk(lower(v))")
        .unwrap();
    let mut o = Options::new(&file, target(&url));
    o.until_idle = true;
    let e = sync::run(o, &Quiet).await.unwrap_err().to_string();
    assert!(
        e.contains(
            "index ipk_lower was created on table ipk (CREATE INDEX ipk_lower ON ipk(lower(v)))"
        ),
        "{e}"
    );
    assert!(
        e.contains(r#"create the equivalent index in the target as "public"."ipk_lower""#),
        "{e}"
    );
    client
        .batch_execute("CREATE INDEX ipk_lower ON public.ipk (lower(v))")
        .await
        .unwrap();
    until_idle(&file, target(&url), None).await;

    // A table dropped: sync stops naming it, nothing dropped.
    c.execute_batch("DROP TABLE bag").unwrap();
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

/// Messages a running sync gave.
#[derive(Clone, Default)]
struct Messages(Arc<Mutex<Vec<String>>>);

impl sync::Observer for Messages {
    fn message(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

fn sqlite_schema(path: &Path) -> Vec<(String, String, String, Option<String>)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The rows of a keyless table, sorted, as text.
fn bag_rows_sqlite(c: &rusqlite::Connection) -> Vec<(Option<i64>, Option<String>)> {
    let mut s = c.prepare("SELECT x, y FROM bag ORDER BY x, y").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_renumbering_a_rowid_only_table_is_reported_and_sync_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vacuum.db");
    let c = rusqlite::Connection::open(&file).unwrap();
    c.execute_batch(KEY_KINDS).unwrap();
    // A gap below bag's rows, so that VACUUM renumbers them.
    c.execute_batch("DELETE FROM bag WHERE rowid = 1; INSERT INTO bag VALUES (1, 'dup')")
        .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let before = sqlite_schema(&file);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    until_idle(&file, target(&url), None).await;

    // sync keeps running (on a thread of its own: it holds SQLite connections).
    let messages = Messages::default();
    let cancel = Arc::new(AtomicBool::new(false));
    let running = {
        let mut o = Options::new(&file, target(&url));
        o.cancel = cancel.clone();
        let obs = messages.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(sync::run(o, &obs))
        })
    };
    let rowids = |c: &rusqlite::Connection| -> Vec<i64> {
        let mut s = c.prepare("SELECT rowid FROM bag ORDER BY rowid").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let old = rowids(&c);
    c.execute_batch("UPDATE bag SET y = 'before vacuum' WHERE x = 2; VACUUM")
        .unwrap();
    assert_ne!(rowids(&c), old, "VACUUM renumbers the rowid-only table");
    // After the VACUUM: changes to rows whose rowids moved.
    c.execute_batch(
        "
        UPDATE bag SET y = 'one of two' WHERE rowid = (SELECT min(rowid) FROM bag WHERE y = 'dup');
        DELETE FROM bag WHERE y = 'before vacuum';
        INSERT INTO bag VALUES (7, 'after vacuum');
        UPDATE ipk SET v = 'after vacuum' WHERE id = 1;
        ",
    )
    .unwrap();
    let source = std::fs::canonicalize(&file).unwrap().display().to_string();
    let expected = format!(
        "VACUUM ran on {source}: tables without a primary key (bag) may now have other rowids than before; sync goes on, because it matches their rows by content, never by rowid (an update or delete applies to a row equal to the old one), and no rowid of these tables is copied to Postgres; nothing to do, unless the app keeps these rowids elsewhere: then give the tables a primary key"
    );
    let client = db.client().await;
    let head: i64 = c
        .query_row("SELECT max(seq) FROM _dbtool_changes", [], |r| r.get(0))
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let pos: i64 = client
            .query_one("SELECT position FROM dbtool.syncs", &[])
            .await
            .unwrap()
            .get(0);
        let said = messages.0.lock().unwrap().contains(&expected);
        if said && pos >= head {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "position {pos} of {head}; messages: {:?}",
            messages.0.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The canary is armed again: a second VACUUM is reported too.
    let canary: i64 = c
        .query_row("SELECT rowid FROM _dbtool_canary", [], |r| r.get(0))
        .unwrap();
    assert_eq!(canary, dbtool_sync::capture::CANARY_ROWID);
    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(running.join().unwrap().expect("sync"), Outcome::Stopped);
    let said = messages
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.starts_with("VACUUM"))
        .count();
    assert_eq!(said, 1, "{:?}", messages.0.lock().unwrap());

    // The target equals the source.
    let rows = client
        .query("SELECT x, y FROM public.bag ORDER BY x NULLS FIRST, y", &[])
        .await
        .unwrap();
    let got: Vec<(Option<i64>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, bag_rows_sqlite(&c));
    assert_eq!(
        got,
        vec![
            (None, Some("null x".into())),
            (Some(1), Some("dup".into())),
            (Some(1), Some("one of two".into())),
            (Some(7), Some("after vacuum".into())),
        ]
    );
    let report = verify(&file, &url).await;
    assert_eq!(report.exit_code(), 0, "{report:#?}");

    // sync stop: the file's schema is what it was, byte for byte.
    drop(c);
    let conn = dbtool_sync::capture::open_rw(&file).unwrap();
    dbtool_sync::capture::remove_all(&conn).unwrap();
    assert_eq!(sqlite_schema(&file), before);
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
