//! Reverse sync and rollback against a real Postgres: a workload writes
//! through `dbtool_pool::RwPool` after the cutover, the rollback brings every
//! write back into the SQLite file in the sample's own storage classes and
//! formats, and nothing echoes.

#[path = "common/reverse.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbtool_pool::RwPool;
use dbtool_sync::reverse::{self, RollbackOptions};
use rusqlite::types::Value as Sql;
use rusqlite::Connection;

async fn pool(db: &dbtool_testkit::TestDb) -> RwPool {
    RwPool::builder()
        .primary(db.url())
        .replicas(db.replica_urls())
        .build()
        .await
        .expect("pool")
}

fn row(file: &std::path::Path, sql: &str) -> Vec<Sql> {
    let conn = Connection::open(file).unwrap();
    conn.query_row(sql, [], |r| {
        (0..r.as_ref().column_count())
            .map(|i| r.get::<_, Sql>(i))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
}

fn options(f: &common::Fixture, max_freeze: Duration) -> RollbackOptions {
    RollbackOptions {
        file: f.file.clone(),
        targets: vec![("target".into(), f.db.url().parse().unwrap())],
        max_freeze,
    }
}

/// The app's writes after the cutover, through the pool: inserts, updates,
/// deletes over several tables and every kind of column the sample has.
/// Returns the ids of the posts it inserted.
async fn workload(pool: &RwPool) -> Vec<i64> {
    let c = pool.write().await.unwrap();
    let topic = c
        .query_one("SELECT id, team_id FROM topics ORDER BY id LIMIT 1", &[])
        .await
        .unwrap();
    let (topic_id, team): (i64, String) = (topic.get(0), topic.get(1));
    let mut ids = Vec::new();
    for i in 0..40 {
        let id: i64 = c
            .query_one(
                "INSERT INTO posts (team_id, topic_id, user_id, body, created_at, score)
                 VALUES ($1, $2, NULL, $3, '2025-01-02 03:04:05', $4) RETURNING id",
                &[
                    &team,
                    &topic_id,
                    &format!("reply {i} ✨"),
                    &(0.1 + 0.2 * f64::from(i)),
                ],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    c.batch_execute(&format!(
        "UPDATE posts SET body = 'edited', edited_at = '2025-02-03 04:05:06' WHERE id = {};
         DELETE FROM posts WHERE id IN (SELECT id FROM posts WHERE id < {} ORDER BY id LIMIT 5);
         UPDATE topics SET updated_at = to_timestamp(1735787045.123) WHERE id = {topic_id};
         UPDATE users SET last_seen = to_timestamp(1735787045), is_admin = true,
                          avatar = '\\x00ff10' WHERE id = (SELECT min(id) FROM users);
         UPDATE settings SET value = '42' WHERE key = (SELECT min(key) FROM settings WHERE key LIKE '%.max_size');
         UPDATE settings SET value = '0.25' WHERE key = (SELECT min(key) FROM settings WHERE key LIKE '%.ratio');
         UPDATE settings SET value = 'hello ✨' WHERE key = (SELECT min(key) FROM settings WHERE key LIKE '%.retention_days');
         INSERT INTO teams (id, name, plan, created_at)
             VALUES ('00000000-0000-4000-8000-000000000001', 'new team', 'pro', '2025-03-04T05:06:07Z');",
        ids[0], ids[0]
    ))
    .await
    .unwrap();
    ids
}

#[tokio::test]
async fn rollback_brings_every_write_back_in_the_apps_formats_without_echo() {
    let f = common::fixture().await;
    let pool = pool(&f.db).await;
    // The app's old code path cannot write the file while it is moved.
    let err = Connection::open(&f.file)
        .unwrap()
        .execute("UPDATE settings SET value = 1", [])
        .unwrap_err();
    assert!(err.to_string().contains("moved to PostgreSQL"), "{err}");

    let ids = workload(&pool).await;

    // A writer keeps going through the rollback: what it saw succeed must be
    // in the file; once switched its writes fail, naming the file.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Mutex::new(Vec::<i64>::new()));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (pool, stop, done, refused) =
            (pool.clone(), stop.clone(), done.clone(), refused.clone());
        tokio::spawn(async move {
            for i in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let c = pool.write().await.unwrap();
                let r = c
                    .query_one(
                        "INSERT INTO posts (team_id, topic_id, body, created_at, score)
                         SELECT team_id, id, $1, '2025-01-02 03:04:05', 0 FROM topics ORDER BY id LIMIT 1
                         RETURNING id",
                        &[&format!("live {i}")],
                    )
                    .await;
                match r {
                    Ok(row) => done.lock().unwrap().push(row.get(0)),
                    Err(e) => {
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("{:#}", anyhow::Error::new(e)));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = reverse::rollback(&options(&f, Duration::from_secs(30)))
        .await
        .expect("rollback");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(report.rows_applied >= 48, "{report:?}");
    assert_eq!(report.slots_dropped, vec![f.slot.clone()]);

    // Every write the app saw succeed is in the file.
    let done = done.lock().unwrap().clone();
    assert!(!done.is_empty());
    let conn = Connection::open(&f.file).unwrap();
    for id in ids.iter().chain(&done) {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM posts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "post {id} missing from the file");
    }
    // In the sample's own storage classes and formats.
    assert_eq!(
        row(
            &f.file,
            &format!(
                "SELECT body, typeof(created_at), created_at, score FROM posts WHERE id = {}",
                ids[3]
            )
        ),
        vec![
            Sql::Text("reply 3 ✨".into()),
            Sql::Text("text".into()),
            Sql::Text("2025-01-02 03:04:05".into()),
            Sql::Real(0.1 + 0.2 * 3.0),
        ]
    );
    assert_eq!(
        row(
            &f.file,
            &format!("SELECT body, edited_at FROM posts WHERE id = {}", ids[0])
        ),
        vec![
            Sql::Text("edited".into()),
            Sql::Text("2025-02-03 04:05:06".into())
        ]
    );
    assert_eq!(
        row(&f.file, "SELECT updated_at FROM topics ORDER BY id LIMIT 1"),
        vec![Sql::Integer(1_735_787_045_123)],
        "epoch milliseconds stay an INTEGER in milliseconds"
    );
    assert_eq!(
        row(
            &f.file,
            "SELECT last_seen, is_admin, avatar FROM users ORDER BY id LIMIT 1"
        ),
        vec![
            Sql::Integer(1_735_787_045),
            Sql::Integer(1),
            Sql::Blob(vec![0, 0xff, 0x10])
        ]
    );
    assert_eq!(
        row(
            &f.file,
            "SELECT value FROM settings WHERE key LIKE '%.max_size' ORDER BY key LIMIT 1"
        ),
        vec![Sql::Integer(42)]
    );
    assert_eq!(
        row(
            &f.file,
            "SELECT value FROM settings WHERE key LIKE '%.ratio' ORDER BY key LIMIT 1"
        ),
        vec![Sql::Real(0.25)]
    );
    assert_eq!(
        row(
            &f.file,
            "SELECT value FROM settings WHERE key LIKE '%.retention_days' ORDER BY key LIMIT 1"
        ),
        vec![Sql::Text("hello ✨".into())]
    );
    assert_eq!(
        row(
            &f.file,
            "SELECT created_at FROM teams WHERE name = 'new team'"
        ),
        vec![Sql::Text("2025-03-04T05:06:07Z".into())]
    );
    // No echo: nothing reverse sync wrote was captured for the forward stream.
    assert_eq!(common::captured(&f.file), 0);
    common::assert_verifies(&f.file, &f.db.url()).await;

    // The file takes the app's writes again; Postgres refuses them, naming the file.
    conn.execute(
        "UPDATE settings SET value = 7 WHERE key LIKE '%.enabled'",
        [],
    )
    .expect("the file is writable after the rollback");
    let err =
        f.db.client()
            .await
            .batch_execute("UPDATE settings SET value = '8'")
            .await
            .unwrap_err();
    let msg = format!("{:?}", err.as_db_error().map(|e| e.message()));
    assert!(
        msg.contains("moved back to the SQLite file") && msg.contains("forums.db"),
        "{msg}"
    );
    for r in refused.lock().unwrap().iter() {
        assert!(r.contains("moved back"), "a refused write says why: {r}");
    }
    // Slot hygiene.
    assert!(reverse::slots(&f.db.client().await)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn over_budget_rollback_aborts_and_writes_continue_on_postgres() {
    let f = common::fixture().await;
    let pool = pool(&f.db).await;
    workload(&pool).await;
    // A long write transaction holds the tables: the freeze cannot get its locks.
    let blocker = f.db.client().await;
    blocker
        .batch_execute("BEGIN; UPDATE settings SET updated_at = updated_at")
        .await
        .unwrap();
    let err = reverse::rollback(&options(&f, Duration::from_millis(300)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("rollback aborted:"), "{msg}");
    assert!(msg.contains("writes continue on Postgres"), "{msg}");
    blocker.batch_execute("COMMIT").await.unwrap();

    // Postgres still takes writes; the file is still moved; the slot still
    // holds everything, so a later rollback loses nothing.
    let c = pool.write().await.unwrap();
    c.execute(
        "UPDATE posts SET body = 'after abort' WHERE id = (SELECT min(id) FROM posts)",
        &[],
    )
    .await
    .unwrap();
    let err = Connection::open(&f.file)
        .unwrap()
        .execute("UPDATE settings SET value = 1", [])
        .unwrap_err();
    assert!(err.to_string().contains("moved to PostgreSQL"), "{err}");
    assert_eq!(reverse::slots(&f.db.client().await).await.unwrap().len(), 1);

    reverse::rollback(&options(&f, Duration::from_secs(30)))
        .await
        .expect("rollback");
    assert_eq!(
        row(&f.file, "SELECT body FROM posts ORDER BY id LIMIT 1"),
        vec![Sql::Text("after abort".into())]
    );
    common::assert_verifies(&f.file, &f.db.url()).await;
    assert_eq!(common::captured(&f.file), 0);
}

/// An insert in Postgres whose key the file already holds with another row
/// (two shards handing out the same id, or a write to the file since the
/// cutover) stops reverse sync instead of overwriting the file's row.
#[tokio::test]
async fn an_insert_colliding_with_a_different_row_of_the_file_stops_reverse_sync() {
    let f = common::fixture().await;
    {
        let conn = Connection::open(&f.file).unwrap();
        conn.execute_batch(
            "BEGIN;
             INSERT OR REPLACE INTO _dbtool_meta VALUES ('echo_off', 1);
             INSERT INTO settings (key, value, updated_at) VALUES ('x.collide', 'file', '2025-01-01');
             UPDATE _dbtool_meta SET value = 0 WHERE key = 'echo_off';
             COMMIT;",
        )
        .unwrap();
    }
    f.db.client()
        .await
        .batch_execute(
            "INSERT INTO settings (key, value, updated_at) VALUES ('x.collide', 'postgres', '2025-01-01')",
        )
        .await
        .unwrap();
    let mut opts = reverse::Options::new(&f.file, f.db.url().parse().unwrap());
    opts.until_idle = true;
    for _ in 0..2 {
        let err = reverse::run(&opts, std::future::pending(), |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("settings") && err.contains("x.collide") && err.contains("already holds"),
            "{err}"
        );
    }
    assert_eq!(
        row(
            &f.file,
            "SELECT value FROM settings WHERE key = 'x.collide'"
        ),
        vec![Sql::Text("file".into())]
    );
}
