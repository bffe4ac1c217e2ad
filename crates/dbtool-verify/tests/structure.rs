//! The structure checks of `dbtool_verify::verify`, one test each: a clean
//! migrated target is altered by SQL and the report names the exact problem
//! (table, kind, detail) with the documented exit status.

mod common;

use std::path::{Path, PathBuf};

use common::{exec, verify, Fixture};
use dbtool_verify::{Report, StructureIssue};

/// A small source with everything the structure checks look at: a rowid
/// primary key, NOT NULL, a UNIQUE column, a default, an AUTOINCREMENT table
/// with a foreign key and an index, and a table without a key.
fn build_source(dir: &Path) -> PathBuf {
    let path = dir.join("structure.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             email TEXT UNIQUE,
             score REAL,
             status TEXT DEFAULT 'new'
         );
         CREATE TABLE posts (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             user_id INTEGER REFERENCES users(id),
             body TEXT
         );
         CREATE INDEX posts_user ON posts (user_id);
         CREATE TABLE tags (name TEXT, post_id INTEGER);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 1..=20 {
        tx.execute(
            "INSERT INTO users (id, name, email, score) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                i,
                format!("user {i}"),
                format!("u{i}@example.com"),
                i as f64 * 1.5
            ],
        )
        .unwrap();
    }
    for i in 1..=30 {
        tx.execute(
            "INSERT INTO posts (user_id, body) VALUES (?1, ?2)",
            rusqlite::params![i % 20 + 1, format!("post {i}")],
        )
        .unwrap();
    }
    tx.execute_batch("INSERT INTO tags VALUES ('rust', 1), ('sql', 2);")
        .unwrap();
    tx.commit().unwrap();
    path
}

async fn migrated() -> Fixture {
    common::migrated(build_source, 0, "the fixture migrates cleanly").await
}

async fn query_text(f: &Fixture, sql: &str) -> String {
    f.db.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

fn problems(r: &Report) -> Vec<&StructureIssue> {
    r.structure.iter().filter(|s| !s.warning).collect()
}

/// Asserts that the report's only structure problem is `kind` on `table`
/// with exactly `detail`, and that the exit status is 1.
fn only_problem(r: &Report, table: &str, kind: &str, detail: &str) {
    let p = problems(r);
    assert_eq!(p.len(), 1, "one structure problem expected, got {p:#?}");
    assert_eq!(
        (
            p[0].table.as_str(),
            p[0].kind.as_str(),
            p[0].detail.as_str()
        ),
        (table, kind, detail)
    );
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test]
async fn a_clean_target_has_no_structure_problem() {
    let f = migrated().await;
    let r = verify(&f).await;
    assert!(problems(&r).is_empty(), "{:#?}", r.structure);
    assert_eq!(r.exit_code(), 0, "{r:#?}");
}

/// Tests that break the migrated target with one statement and expect
/// exactly one structure problem for it (and exit status 1): one test per
/// row, named for the behaviour.
macro_rules! one_break_one_problem {
    ($($name:ident: $sql:expr => ($table:expr, $kind:expr, $detail:expr);)*) => {$(
        #[tokio::test]
        async fn $name() {
            let f = migrated().await;
            exec(&f, $sql).await;
            only_problem(&verify(&f).await, $table, $kind, $detail);
        }
    )*};
}

one_break_one_problem! {
    a_dropped_table_is_a_missing_table:
        "DROP TABLE tags" => ("tags", "missing table", "\"public\".\"tags\" does not exist");
    a_dropped_column_is_a_missing_column:
        "ALTER TABLE users DROP COLUMN score" => ("users", "missing column", "users.score does not exist");
    a_column_of_another_type_is_a_column_type_problem:
        "ALTER TABLE users ALTER COLUMN score TYPE numeric"
        => ("users", "column type", "users.score is numeric, planned double precision");
    a_dropped_not_null_is_found:
        "ALTER TABLE users ALTER COLUMN name DROP NOT NULL"
        => ("users", "not null", "users.name lacks the planned NOT NULL");
    a_dropped_default_is_found:
        "ALTER TABLE users ALTER COLUMN status DROP DEFAULT"
        => ("users", "missing default", "users.status has no default; planned DEFAULT 'new'");
    a_dropped_identity_is_found:
        "ALTER TABLE posts ALTER COLUMN id DROP IDENTITY"
        => ("posts", "missing identity", "posts.id is planned as an identity column but has none");
}

#[tokio::test]
async fn a_dropped_primary_key_is_found() {
    let f = migrated().await;
    let pk = primary_key_name(&f).await;
    exec(&f, &format!("ALTER TABLE posts DROP CONSTRAINT \"{pk}\"")).await;
    let r = verify(&f).await;
    only_problem(
        &r,
        "posts",
        "missing primary key",
        "posts has no PRIMARY KEY (id)",
    );
}

#[tokio::test]
async fn a_primary_key_on_other_columns_is_found() {
    let f = migrated().await;
    let pk = primary_key_name(&f).await;
    exec(
        &f,
        &format!(
            "ALTER TABLE posts DROP CONSTRAINT \"{pk}\"; ALTER TABLE posts ADD PRIMARY KEY (id, user_id)"
        ),
    )
    .await;
    let r = verify(&f).await;
    // user_id became NOT NULL with the new key: more than planned is no problem.
    only_problem(
        &r,
        "posts",
        "primary key",
        "posts PRIMARY KEY is (id, user_id), planned (id)",
    );
}

#[tokio::test]
async fn a_dropped_unique_constraint_is_found() {
    let f = migrated().await;
    let name = query_text(
        &f,
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = 'users'::regclass AND i.indisunique AND NOT i.indisprimary",
    )
    .await;
    let is_constraint = query_text(
        &f,
        &format!(
            "SELECT (count(*) > 0)::text FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = '{name}'"
        ),
    )
    .await;
    if is_constraint == "true" {
        exec(&f, &format!("ALTER TABLE users DROP CONSTRAINT \"{name}\"")).await;
    } else {
        exec(&f, &format!("DROP INDEX \"{name}\"")).await;
    }
    assert_eq!(name, "users_email_key");
    let r = verify(&f).await;
    only_problem(
        &r,
        "users",
        "missing unique constraint",
        "users_email_key (sqlite_autoindex_users_1) on users",
    );
}

async fn primary_key_name(f: &Fixture) -> String {
    query_text(
        f,
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'posts'::regclass AND contype = 'p'",
    )
    .await
}

async fn foreign_key_name(f: &Fixture) -> String {
    query_text(
        f,
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'posts'::regclass AND contype = 'f'",
    )
    .await
}

#[tokio::test]
async fn a_dropped_foreign_key_is_found() {
    let f = migrated().await;
    let fk = foreign_key_name(&f).await;
    exec(&f, &format!("ALTER TABLE posts DROP CONSTRAINT \"{fk}\"")).await;
    let r = verify(&f).await;
    only_problem(
        &r,
        "posts",
        "missing foreign key",
        &format!("{fk} on posts (user_id) REFERENCES users"),
    );
}

#[tokio::test]
async fn a_not_valid_foreign_key_with_new_orphans_is_a_problem() {
    let f = migrated().await;
    let fk = foreign_key_name(&f).await;
    exec(
        &f,
        &format!(
            "ALTER TABLE posts DROP CONSTRAINT \"{fk}\";
             UPDATE posts SET user_id = 999 WHERE id = 3;
             ALTER TABLE posts ADD CONSTRAINT \"{fk}\" FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID"
        ),
    )
    .await;
    let r = verify(&f).await;
    only_problem(
        &r,
        "posts",
        "foreign key orphans",
        &format!("{fk} on posts is NOT VALID with 1 orphan rows on the target (0 in the source)"),
    );
    // The orphan is also a changed row.
    assert_eq!(
        r.tables
            .iter()
            .find(|t| t.table == "posts")
            .unwrap()
            .changed,
        1
    );
}

#[tokio::test]
async fn a_not_valid_foreign_key_without_orphans_is_a_warning() {
    let f = migrated().await;
    let fk = foreign_key_name(&f).await;
    exec(
        &f,
        &format!(
            "ALTER TABLE posts DROP CONSTRAINT \"{fk}\";
             ALTER TABLE posts ADD CONSTRAINT \"{fk}\" FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID"
        ),
    )
    .await;
    let r = verify(&f).await;
    assert!(problems(&r).is_empty(), "{:#?}", r.structure);
    let w: Vec<_> = r
        .structure
        .iter()
        .filter(|s| s.kind == "foreign key not valid")
        .collect();
    assert_eq!(w.len(), 1, "{:#?}", r.structure);
    assert_eq!(
        (w[0].table.as_str(), w[0].detail.as_str(), w[0].warning),
        (
            "posts",
            format!(
                "{fk} on posts is NOT VALID with 0 orphan rows on the target (0 in the source)"
            )
            .as_str(),
            true
        )
    );
    assert_eq!(r.exit_code(), 0);
}

#[tokio::test]
async fn a_changed_default_is_not_compared() {
    // Documented: only the presence of a default is checked, not its text.
    let f = migrated().await;
    exec(
        &f,
        "ALTER TABLE users ALTER COLUMN status SET DEFAULT 'old'",
    )
    .await;
    let r = verify(&f).await;
    assert!(problems(&r).is_empty(), "{:#?}", r.structure);
    assert_eq!(r.exit_code(), 0);
}
