//! Least privilege, with the real binary: `migrate` as a role that may create
//! only in its own schemas, `verify` and `pool status` as a read-only role.
//! The grants are the ones docs/security.md documents.

mod common;

use std::path::{Path, PathBuf};

use dbtool_testkit::TestDb;

use common::{run as dbtool, text};

fn source(dir: &Path) -> PathBuf {
    let path = dir.join("forums.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE topics (id INTEGER PRIMARY KEY AUTOINCREMENT,
                              team_id INTEGER NOT NULL REFERENCES teams(id), title TEXT);
         CREATE INDEX topics_team ON topics(team_id);
         INSERT INTO teams VALUES (1, 'a'), (2, 'b');
         INSERT INTO topics (team_id, title) VALUES (1, 'x'), (2, 'y'), (2, 'z');",
    )
    .unwrap();
    path
}

/// `db`'s URL for another role (the testkit's shared cluster trusts local TCP logins).
fn url_as(db: &TestDb, role: &str) -> String {
    db.url()
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)
}

/// Roles are cluster-wide: a name unique to this database.
fn role(db: &TestDb, what: &str) -> String {
    format!("{what}_{}", db.name())
}

/// The migrator: no CREATE on the database, CREATE only in the schemas it owns.
async fn migrator(db: &TestDb) -> String {
    let m = role(db, "migrator");
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {m} LOGIN;
             REVOKE CREATE ON DATABASE {d} FROM PUBLIC;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             CREATE SCHEMA app AUTHORIZATION {m};
             CREATE SCHEMA dbtool AUTHORIZATION {m};",
            d = db.name()
        ))
        .await
        .unwrap();
    m
}

async fn migrate_as_migrator(db: &TestDb, dir: &Path) -> PathBuf {
    let src = source(dir);
    let m = migrator(db).await;
    let out = dbtool(
        dir,
        &[
            "migrate",
            "--from",
            src.to_str().unwrap(),
            "--to",
            &url_as(db, &m),
            "--schema",
            "app",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    src
}

#[tokio::test]
async fn migrate_needs_only_create_in_its_own_schemas() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    migrate_as_migrator(&db, dir.path()).await;
    let m = role(&db, "migrator");
    let row = db
        .client()
        .await
        .query_one(
            "SELECT has_database_privilege($1, current_database(), 'CREATE'),
                    has_schema_privilege($1, 'public', 'CREATE'),
                    (SELECT count(*) FROM app.topics),
                    (SELECT tableowner::text FROM pg_tables WHERE schemaname = 'app' AND tablename = 'topics')",
            &[&m],
        )
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "the migrator may not create schemas"
    );
    assert!(
        !row.get::<_, bool>(1),
        "the migrator may not create in public"
    );
    assert_eq!(row.get::<_, i64>(2), 3);
    assert_eq!(row.get::<_, String>(3), m);
}

/// The documented read-only role: USAGE on the schemas, SELECT on their
/// tables and sequences (verify reads sequences' last values).
async fn reader(db: &TestDb) -> String {
    let r = role(db, "reader");
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {r} LOGIN;
             GRANT CONNECT ON DATABASE {d} TO {r};
             GRANT USAGE ON SCHEMA app, dbtool TO {r};
             GRANT SELECT ON ALL TABLES IN SCHEMA app, dbtool TO {r};
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA app, dbtool TO {r};",
            d = db.name()
        ))
        .await
        .unwrap();
    r
}

#[tokio::test]
async fn verify_works_as_a_read_only_role() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = migrate_as_migrator(&db, dir.path()).await;
    let r = reader(&db).await;
    let out = dbtool(
        dir.path(),
        &[
            "verify",
            "--from",
            src.to_str().unwrap(),
            "--to",
            &url_as(&db, &r),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn pool_status_works_as_a_read_only_role() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    migrate_as_migrator(&db, dir.path()).await;
    let r = reader(&db).await;
    let mut args = vec![
        "pool".to_owned(),
        "status".to_owned(),
        "--primary".to_owned(),
        url_as(&db, &r),
    ];
    for replica in db.replica_urls() {
        args.push("--replica".to_owned());
        args.push(replica.replacen("postgres://postgres@", &format!("postgres://{r}@"), 1));
    }
    // The role must have replayed to the replica before the replica can check it.
    for replica in db.replica_urls() {
        let url = replica.replacen("postgres://postgres@", &format!("postgres://{r}@"), 1);
        let start = std::time::Instant::now();
        while tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err()
        {
            assert!(
                start.elapsed().as_secs() < 20,
                "{r} never reached the replica"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dbtool(dir.path(), &args);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(!shown.contains("down"), "{shown}");
}
