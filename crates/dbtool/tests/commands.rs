//! `plan` and `migrate` through the real binary against the testkit's shared
//! Postgres: plan writes nothing, a bad value exits 3 with its row in the
//! reject file, `--exclude` leaves a table out, `--schema-only` then
//! `--data-only` is a whole migration in two steps.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{run as dbtool, text};
use dbtool_testkit::TestDb;

/// Three small tables; with `bad`, post 2's body is not UTF-8 (rejected).
fn source(dir: &Path, bad: bool) -> PathBuf {
    let path = dir.join("forums.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born DATE);
         CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                             body TEXT, score INTEGER);
         CREATE TABLE audit (msg TEXT);
         INSERT INTO users VALUES (1, 'ann', '2000-01-02'), (2, 'bob', '1999-12-31');
         INSERT INTO posts VALUES (1, 1, 'hi', 5), (2, 2, 'yo', 'not a number'), (3, 1, 'x', 7);
         INSERT INTO audit VALUES ('a'), ('b');",
    )
    .unwrap();
    if bad {
        c.execute_batch("UPDATE posts SET body = CAST(X'FFFE41' AS TEXT) WHERE id = 2")
            .unwrap();
    }
    path
}

/// Every relation outside the system schemas, and every non-system schema.
async fn catalog(db: &TestDb) -> Vec<String> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT 'schema ' || nspname::text FROM pg_namespace
              WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
             UNION ALL
             SELECT c.relkind::text || ' ' || n.nspname::text || '.' || c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn count(db: &TestDb, table: &str) -> i64 {
    db.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn tables(db: &TestDb) -> Vec<String> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn plan_prints_the_ddl_and_casts_and_writes_nothing_to_the_target() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), true);
    let before = catalog(&db).await;
    let out = dbtool(
        dir.path(),
        &["plan", "--from", src.to_str().unwrap(), "--to", &db.url()],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "a reject is predicted: {}",
        text(&out)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for want in [
        "CREATE TABLE \"public\".\"posts\" (",
        "\"score\" text",
        "ALTER TABLE \"public\".\"users\" ADD CONSTRAINT \"users_pkey\" PRIMARY KEY (\"id\");",
        "--   score: INTEGER -> text  [integer 2, text 1]",
        "--   born: DATE -> date  [date text 2]",
        "PREDICTED: 1 invalid UTF-8 text values will be rejected",
    ] {
        assert!(
            stdout.contains(want),
            "plan output lacks {want:?}:\n{stdout}"
        );
    }
    assert_eq!(
        catalog(&db).await,
        before,
        "plan changed the target's catalog"
    );
    assert!(
        !before.iter().any(|s| s == "schema dbtool"),
        "no dbtool schema expected: {before:?}"
    );
    assert!(
        !dir.path().join("forums.db.rejects.jsonl").exists(),
        "plan wrote a reject file"
    );
}

#[tokio::test]
async fn a_bad_value_exits_3_and_its_row_is_in_the_reject_file() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), true);
    let rejects = dir.path().join("rejects.jsonl");
    let out = dbtool(
        dir.path(),
        &[
            "migrate",
            "--from",
            src.to_str().unwrap(),
            "--to",
            &db.url(),
            "--rejects",
            rejects.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let r = &lines[0];
    assert_eq!(
        (&r["table"], &r["rowid"], &r["column"]),
        (
            &serde_json::json!("posts"),
            &serde_json::json!(2),
            &serde_json::json!("body")
        ),
        "{r:#?}"
    );
    assert_eq!(count(&db, "posts").await, 2);
    assert_eq!(count(&db, "users").await, 2);
}

#[tokio::test]
async fn exclude_leaves_the_table_out() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let out = dbtool(
        dir.path(),
        &[
            "migrate",
            "--from",
            src.to_str().unwrap(),
            "--to",
            &db.url(),
            "--exclude",
            "audit",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(tables(&db).await, ["posts", "users"]);
    assert_eq!(count(&db, "posts").await, 3);
}

/// `--schema-only`, then `--data-only`, both with `extra` arguments.
async fn schema_then_data(db: &TestDb, dir: &Path, from: &str, extra: &[&str]) -> Output {
    let url = db.url();
    let mut args = vec!["migrate", "--from", from, "--to", &url, "--schema-only"];
    args.extend_from_slice(extra);
    let out = dbtool(dir, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut want: Vec<&str> = vec!["audit", "posts", "users"];
    want.retain(|t| !extra.contains(t));
    assert_eq!(tables(db).await, want);
    for t in want {
        assert_eq!(count(db, t).await, 0, "{t} has rows after --schema-only");
    }
    let mut args = vec!["migrate", "--from", from, "--to", &url, "--data-only"];
    args.extend_from_slice(extra);
    dbtool(dir, &args)
}

#[tokio::test]
async fn schema_only_creates_empty_tables_and_data_only_fills_them() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let from = src.to_str().unwrap();
    let out = schema_then_data(&db, dir.path(), from, &["--exclude", "posts"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        (count(&db, "users").await, count(&db, "audit").await),
        (2, 2)
    );
    // --data-only moved the identity sequence past the loaded ids (max 2).
    let next: i64 = db
        .client()
        .await
        .query_one("SELECT nextval(pg_get_serial_sequence('users', 'id'))", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 3);
}

/// `--data-only` after `--schema-only` with foreign keys in place: parents
/// load before children (one worker, so the size order alone would put the
/// 3-row `posts` before the 2-row `users`), and the sequences end past max(id),
/// so verify is equal.
#[tokio::test]
async fn data_only_fills_tables_with_foreign_keys() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let from = src.to_str().unwrap();
    let out = schema_then_data(&db, dir.path(), from, &["--jobs", "1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        (
            count(&db, "users").await,
            count(&db, "posts").await,
            count(&db, "audit").await
        ),
        (2, 3, 2)
    );
    let out = dbtool(dir.path(), &["verify", "--from", from, "--to", &db.url()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
