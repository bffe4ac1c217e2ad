//! `dbtool rollback` and reverse sync through the binary, on top of the real
//! `dbtool sync` and `dbtool cutover`: the app writes Postgres through the
//! pool (and through the shard router on four shards) after the cutover;
//! `dbtool sync` streams the writes back, survives kill -9; `dbtool rollback`
//! switches back within its freeze; `dbtool verify` exits 0; every write the
//! app saw succeed is in the file, in the sample's storage classes.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dbtool_pool::RwPool;
use rusqlite::types::Value as Sql;
use rusqlite::Connection;

use common::{dbtool, run, stdout, text};

fn sample(dir: &Path) -> String {
    let out = run(
        dir,
        &["sample", "--scale", "0.01", "--out", "forums.db", "-q"],
    );
    assert!(out.status.success(), "{}", text(&out));
    dir.join("forums.db").to_str().unwrap().to_owned()
}

/// The freeze the command printed.
fn freeze_ms(out: &std::process::Output) -> u64 {
    stdout(out)
        .lines()
        .find_map(|l| {
            l.strip_prefix("freeze: ")?
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `freeze: N ms` line: {}", text(out)))
}

fn q1(file: &str, sql: &str) -> Sql {
    Connection::open(file)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn log_rows(file: &str) -> i64 {
    match q1(file, "SELECT count(*) FROM _dbtool_changes") {
        Sql::Integer(n) => n,
        v => panic!("{v:?}"),
    }
}

/// `dbtool verify` exits 0: the file and Postgres hold the same rows.
fn verify_equal(d: &Path, file: &str, url: &str) {
    let out = run(d, &["verify", "--from", file, "--to", url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// `dbtool sync --until-idle` (the initial copy and the stream drained), then
/// `dbtool cutover --max-freeze 30s`; both must succeed. Returns the
/// cutover's output.
fn sync_and_cut_over(d: &Path, file: &str, url: &str) -> std::process::Output {
    let out = run(
        d,
        &["sync", "--from", file, "--to", url, "--until-idle", "-q"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        d,
        &[
            "cutover",
            "--from",
            file,
            "--to",
            url,
            "--max-freeze",
            "30s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// The replication slots left in the test's database.
async fn slot_count(db: &dbtool_testkit::TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Drops the database's dbtool slots even when the test fails (a database
/// with a logical slot cannot be dropped, and the slot holds WAL).
struct Slots(String);
impl Drop for Slots {
    fn drop(&mut self) {
        let url = self.0.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let t: dbtool_pool::Target = url.parse().unwrap();
                    if let Ok(c) = t.connect().await {
                        let _ = dbtool_sync::reverse::drop_all(&c).await;
                    }
                })
        })
        .join()
        .ok();
    }
}

/// The app after the cutover: inserts, updates, deletes of posts and an
/// epoch column; returns (post id, body) of every insert it saw succeed.
async fn app_writes(pool: &RwPool, n: usize, tag: &str) -> Vec<(i64, String)> {
    let mut ok = Vec::new();
    for i in 0..n {
        let c = pool.write().await.unwrap();
        let body = format!("{tag} {i} ✨");
        let id: i64 = c
            .query_one(
                "INSERT INTO posts (team_id, topic_id, body, created_at, score)
                 SELECT team_id, id, $1, '2025-01-02 03:04:05', $2 FROM topics ORDER BY id LIMIT 1
                 RETURNING id",
                &[&body, &(i as f64 / 3.0)],
            )
            .await
            .unwrap()
            .get(0);
        ok.push((id, body));
        if i % 10 == 0 {
            c.execute(
                "UPDATE topics SET updated_at = to_timestamp($1::float8 / 1000) WHERE id = (SELECT min(id) FROM topics)",
                &[&(1_735_787_045_000.0 + i as f64)],
            )
            .await
            .unwrap();
            c.execute(
                "DELETE FROM posts WHERE id = (SELECT min(id) FROM posts WHERE body NOT LIKE $1)",
                &[&format!("{tag}%")],
            )
            .await
            .unwrap();
        }
    }
    ok
}

#[tokio::test]
async fn rollback_after_a_real_cutover_loses_no_write_and_reverse_sync_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = sample(d);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let _slots = Slots(url.clone());

    freeze_ms(&sync_and_cut_over(d, &file, &url));
    let logged = log_rows(&file);

    let pool = RwPool::builder()
        .primary(&url)
        .replicas(db.replica_urls())
        .build()
        .await
        .unwrap();
    let mut written = app_writes(&pool, 600, "first").await;

    // Reverse sync, killed with SIGKILL once it has applied something.
    let mut child = dbtool(d)
        .args(["sync", "--from", &file, "--to", &url, "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pos = Connection::open(&file)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM _dbtool_meta WHERE key LIKE 'reverse_lsn:%'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        if pos > 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    written.extend(app_writes(&pool, 100, "second").await);

    // The same command resumes and converges.
    let out = run(
        d,
        &["sync", "--from", &file, "--to", &url, "--until-idle", "-q"],
    );
    assert!(out.status.success(), "{}", text(&out));
    verify_equal(d, &file, &url);

    written.extend(app_writes(&pool, 50, "third").await);
    let out = run(
        d,
        &[
            "rollback",
            "--from",
            &file,
            "--to",
            &url,
            "--max-freeze",
            "30s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    freeze_ms(&out);
    verify_equal(d, &file, &url);

    // Every write the app saw succeed, as the app's old code path reads it.
    let conn = Connection::open(&file).unwrap();
    for (id, body) in &written {
        let got: (String, String, String, String) = conn
            .query_row(
                "SELECT body, typeof(created_at), created_at, typeof(score) FROM posts WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap_or_else(|e| panic!("post {id} is not in the file: {e}"));
        assert_eq!(
            got,
            (
                body.clone(),
                "text".into(),
                "2025-01-02 03:04:05".into(),
                "real".into()
            )
        );
    }
    assert_eq!(
        q1(
            &file,
            "SELECT typeof(updated_at) || ' ' || updated_at FROM topics ORDER BY id LIMIT 1"
        ),
        Sql::Text("integer 1735787045040".into()),
        "epoch milliseconds stay INTEGER milliseconds"
    );
    // No echo: the forward capture logged nothing reverse sync wrote.
    assert_eq!(log_rows(&file), logged);
    // The file takes writes again (the moved mark is lifted) and they are captured.
    conn.execute(
        "UPDATE posts SET body = 'back on sqlite' WHERE id = ?1",
        [written[0].0],
    )
    .unwrap();
    assert_eq!(log_rows(&file), logged + 1);
    // Slot hygiene: nothing left in Postgres.
    assert_eq!(slot_count(&db).await, 0);
}

#[tokio::test]
async fn rollback_over_budget_exits_1_and_postgres_keeps_taking_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = sample(d);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let _slots = Slots(url.clone());
    sync_and_cut_over(d, &file, &url);

    // A write transaction left open holds a table: the freeze cannot start in time.
    let blocker = db.client().await;
    blocker
        .batch_execute(
            "BEGIN; UPDATE posts SET score = score + 1 WHERE id = (SELECT min(id) FROM posts)",
        )
        .await
        .unwrap();
    let out = run(
        d,
        &[
            "rollback",
            "--from",
            &file,
            "--to",
            &url,
            "--max-freeze",
            "200ms",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("rollback aborted") && err.contains("writes continue on Postgres"),
        "{err}"
    );
    blocker.batch_execute("COMMIT").await.unwrap();

    // Postgres still takes the app's writes; the file is still marked moved.
    db.client()
        .await
        .batch_execute("UPDATE posts SET body = 'kept' WHERE id = (SELECT min(id) FROM posts)")
        .await
        .unwrap();
    let e = Connection::open(&file)
        .unwrap()
        .execute("DELETE FROM posts", [])
        .unwrap_err();
    assert!(e.to_string().contains("has moved to"), "{e}");
    // A rollback with room for it completes and loses nothing.
    let out = run(
        d,
        &[
            "rollback",
            "--from",
            &file,
            "--to",
            &url,
            "--max-freeze",
            "30s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        q1(&file, "SELECT body FROM posts ORDER BY id LIMIT 1"),
        Sql::Text("kept".into())
    );
}

/// Four shards: the app writes through the shard router after the cutover;
/// the rollback brings every shard's writes into the one file.
#[tokio::test]
async fn rollback_from_four_shards_brings_every_shards_writes_into_the_file() {
    use dbtool_shard::{Router, Scheme, ShardMap};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = sample(d);
    let map = ShardMap::even_n(Scheme::Buckets, 4).unwrap();
    // Two teams on each shard, each with a forum.
    let mut teams = Vec::new();
    {
        let c = Connection::open(&file).unwrap();
        let mut per: std::collections::BTreeMap<String, usize> = Default::default();
        for i in 0u64.. {
            if per.len() == 4 && per.values().all(|&n| n == 2) {
                break;
            }
            let team = format!("{i:08x}-c1c1-4000-8000-{i:012x}");
            let n = per
                .entry(map.shard_of(&team).unwrap().to_owned())
                .or_default();
            if *n == 2 {
                continue;
            }
            *n += 1;
            let id = 900_000 + teams.len();
            c.execute_batch(&format!(
                "INSERT INTO teams (id, name, plan, created_at) VALUES ('{team}', 'team {id}', 'free', '2024-01-02T03:04:05Z');
                 INSERT INTO forums (id, team_id, name, position, created_at)
                      VALUES ({id}, '{team}', 'forum {id}', 0, '2024-01-02T03:04:05Z');"
            ))
            .unwrap();
            teams.push((team, id as i64));
        }
    }
    let mut dbs = Vec::new();
    for c in dbtool_testkit::shared_shards().clusters() {
        dbs.push(c.fresh_db().await);
    }
    let _slots: Vec<Slots> = dbs.iter().map(|db| Slots(db.url())).collect();
    let mut toml = String::from("[migrate.sharding]\nkeys = { teams = \"id\" }\n\n");
    for (i, db) in dbs.iter().enumerate() {
        toml.push_str(&format!(
            "[[shard.shards]]\nname = \"shard-{i}\"\nprimary = \"{}\"\n\n",
            db.url()
        ));
    }
    std::fs::write(d.join("shards.toml"), toml).unwrap();
    let out = run(
        d,
        &[
            "sync",
            "--from",
            &file,
            "--shards",
            "shards.toml",
            "--until-idle",
            "-q",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        d,
        &[
            "cutover",
            "--from",
            &file,
            "--shards",
            "shards.toml",
            "--max-freeze",
            "30s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let logged = log_rows(&file);

    let mut pools = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        pools.push((
            format!("shard-{i}"),
            RwPool::builder().primary(db.url()).build().await.unwrap(),
        ));
    }
    let router = Router::new(map, pools, Default::default()).unwrap();
    let mut acked = Vec::new();
    for round in 0..5 {
        for (team, forum) in &teams {
            let c = router.team(team).unwrap().write().await.unwrap();
            let title = format!("topic {round} of {team}");
            let id: i64 = c
                .query_one(
                    "INSERT INTO topics (team_id, forum_id, title, created_at, updated_at)
                     VALUES ($1, $2, $3, '2025-01-02T03:04:05Z', to_timestamp(1735787045.5)) RETURNING id",
                    &[team, forum, &title],
                )
                .await
                .unwrap()
                .get(0);
            acked.push((id, title));
        }
    }
    // The cutover gave each shard its own identity range: the topics the
    // app created on different shards never share an id, so the one file
    // can take them all back.
    let ids: std::collections::BTreeSet<i64> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), acked.len(), "ids handed out twice: {acked:?}");
    for (team, forum) in &teams {
        let c = router.team(team).unwrap().write().await.unwrap();
        c.execute(
            "UPDATE forums SET name = 'renamed ' || team_id WHERE id = $1",
            &[forum],
        )
        .await
        .unwrap();
    }

    let out = run(
        d,
        &[
            "rollback",
            "--from",
            &file,
            "--shards",
            "shards.toml",
            "--max-freeze",
            "30s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    freeze_ms(&out);
    let out = run(d, &["verify", "--from", &file, "--shards", "shards.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let conn = Connection::open(&file).unwrap();
    for (id, title) in &acked {
        let got: (String, String, i64) = conn
            .query_row(
                "SELECT title, typeof(updated_at), updated_at FROM topics WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap_or_else(|e| panic!("topic {id} is not in the file: {e}"));
        assert_eq!(got, (title.clone(), "integer".into(), 1_735_787_045_500));
    }
    for (team, forum) in &teams {
        assert_eq!(
            q1(
                &file,
                &format!("SELECT name FROM forums WHERE id = {forum}")
            ),
            Sql::Text(format!("renamed {team}"))
        );
    }
    assert_eq!(log_rows(&file), logged, "no echo");
    for db in &dbs {
        assert_eq!(slot_count(db).await, 0);
    }
}

/// `dbtool sync status` shows the reverse slot with the WAL it keeps on the
/// primary; `dbtool sync stop --to` removes it with the file's capture.
#[tokio::test]
async fn sync_status_shows_the_reverse_slot_and_sync_stop_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = sample(d);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let _slots = Slots(url.clone());
    sync_and_cut_over(d, &file, &url);
    db.client()
        .await
        .batch_execute("UPDATE posts SET score = score + 1")
        .await
        .unwrap();

    let out = run(
        d,
        &["sync", "status", "--from", &file, "--to", &url, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let slots = v[0]["reverse_slots"].as_array().expect("reverse_slots");
    assert_eq!(slots.len(), 1, "{v}");
    assert!(slots[0]["name"].as_str().unwrap().starts_with("dbtool_"));
    assert!(slots[0]["retained_bytes"].as_i64().unwrap() > 0, "{v}");
    let out = run(d, &["sync", "status", "--from", &file, "--to", &url]);
    assert!(
        stdout(&out).contains("of WAL on the primary"),
        "{}",
        text(&out)
    );

    let out = run(d, &["sync", "stop", "--from", &file, "--to", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("dropped 1 replication slot(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(slot_count(&db).await, 0);
}
