//! `dbtool_verify::verify` against a real Postgres: a clean migration verifies
//! equal; each single quiet change on the target is found with its table and key.

mod common;

use std::path::{Path, PathBuf};

use common::{exec, verify, verify_with, Fixture};
use dbtool_verify::{DiffKind, Options, Report, RowDiff, RunChoice};

const USERS: i64 = 3000;

/// A small forums-like source: a rowid-keyed table big enough to bisect, an
/// AUTOINCREMENT table with an FK, an index and one row that must be rejected
/// (invalid UTF-8), a table without a key holding duplicates, and a
/// WITHOUT ROWID table with a text key.
fn build_source(dir: &Path) -> PathBuf {
    let path = dir.join("forums.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             email TEXT UNIQUE,
             created_at DATETIME,
             score REAL,
             active BOOLEAN,
             bio TEXT
         );
         CREATE TABLE posts (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             user_id INTEGER REFERENCES users(id),
             body TEXT,
             created TEXT
         );
         CREATE INDEX posts_user ON posts (user_id);
         CREATE TABLE tags (name TEXT, post_id INTEGER);
         CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 1..=USERS {
        let bio: Option<String> = (i % 3 != 0).then(|| format!("bio of {i}"));
        tx.execute(
            "INSERT INTO users VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                i,
                format!("user {i}"),
                format!("u{i}@example.com"),
                1_600_000_000 + i * 3600,
                i as f64 * 1.37,
                i % 2,
                bio
            ],
        )
        .unwrap();
    }
    for i in 1..=200 {
        tx.execute(
            "INSERT INTO posts (user_id, body, created) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                i % 50 + 1,
                format!("post body {i}"),
                format!("2024-01-{:02} 10:00:00", i % 28 + 1)
            ],
        )
        .unwrap();
    }
    // Row 13's body is not UTF-8: the migration rejects the row.
    tx.execute(
        "UPDATE posts SET body = CAST(X'FFFE41' AS TEXT) WHERE id = 13",
        [],
    )
    .unwrap();
    for (name, post) in [("rust", 1), ("rust", 1), ("sql", 2), ("go", 3), ("rust", 4)] {
        tx.execute(
            "INSERT INTO tags VALUES (?1, ?2)",
            rusqlite::params![name, post],
        )
        .unwrap();
    }
    for i in 0..50 {
        tx.execute(
            "INSERT INTO kv VALUES (?1, ?2)",
            rusqlite::params![format!("k{i}"), vec![i as u8; 4]],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    path
}

async fn migrated() -> Fixture {
    common::migrated(build_source, 3, "the fixture has one rejected row").await
}

/// The only non-rejected differing rows of the report.
fn differences(r: &Report) -> Vec<&RowDiff> {
    r.diffs
        .iter()
        .filter(|d| d.kind != DiffKind::Rejected)
        .collect()
}

fn table<'a>(r: &'a Report, name: &str) -> &'a dbtool_verify::TableReport {
    r.tables.iter().find(|t| t.table == name).unwrap()
}

/// Asserts exactly one difference: `kind` in `table` at `pk`, and returns it.
fn only_difference<'a>(
    r: &'a Report,
    table: &str,
    pk: serde_json::Value,
    kind: DiffKind,
) -> &'a RowDiff {
    let d = differences(r);
    assert_eq!(d.len(), 1, "one difference expected, got {d:#?}");
    assert_eq!(d[0].table, table);
    assert_eq!(d[0].pk, pk);
    assert_eq!(d[0].kind, kind);
    assert_eq!(r.exit_code(), 1);
    d[0]
}

#[tokio::test]
async fn clean_migration_verifies_equal_with_the_rejected_row_listed_as_rejected() {
    let f = migrated().await;
    let r = verify(&f).await;
    assert!(r.is_equal(), "{r:#?}");
    assert_eq!(r.exit_code(), 0);
    assert!(r.structure.iter().all(|s| s.warning), "{:#?}", r.structure);
    let users = table(&r, "users");
    assert_eq!(
        (users.rows_compared, users.equal),
        (USERS as u64, USERS as u64)
    );
    let posts = table(&r, "posts");
    assert_eq!(
        (posts.rows_compared, posts.rejected, posts.missing),
        (199, 1, 0)
    );
    let rejected: Vec<&RowDiff> = r
        .diffs
        .iter()
        .filter(|d| d.kind == DiffKind::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].table.as_str(), rejected[0].rowid),
        ("posts", Some(13))
    );
    assert_eq!(table(&r, "tags").rows_compared, 5);
    assert_eq!(table(&r, "kv").rows_compared, 50);
}

#[tokio::test]
async fn one_character_in_a_text_is_found() {
    let f = migrated().await;
    exec(&f, "UPDATE users SET name = 'user 4X' WHERE id = 42").await;
    let r = verify(&f).await;
    let d = only_difference(
        &r,
        "users",
        serde_json::json!({"id": 42}),
        DiffKind::Changed,
    );
    assert_eq!(d.columns.len(), 1);
    assert_eq!(
        (
            d.columns[0].column.as_str(),
            d.columns[0].source.as_str(),
            d.columns[0].target.as_str()
        ),
        ("name", "user 42", "user 4X")
    );
    assert_eq!(table(&r, "users").changed, 1);
}

#[tokio::test]
async fn one_second_on_a_timestamp_is_found() {
    let f = migrated().await;
    exec(
        &f,
        "UPDATE users SET created_at = created_at + interval '1 second' WHERE id = 2500",
    )
    .await;
    let r = verify(&f).await;
    let d = only_difference(
        &r,
        "users",
        serde_json::json!({"id": 2500}),
        DiffKind::Changed,
    );
    assert_eq!(d.columns[0].column, "created_at");
}

#[tokio::test]
async fn a_float_times_one_plus_1e_12_is_found() {
    let f = migrated().await;
    exec(
        &f,
        "UPDATE users SET score = score * (1 + 1e-12) WHERE id = 7",
    )
    .await;
    let r = verify(&f).await;
    let d = only_difference(&r, "users", serde_json::json!({"id": 7}), DiffKind::Changed);
    assert_eq!(d.columns[0].column, "score");
}

#[tokio::test]
async fn a_deleted_row_is_missing() {
    let f = migrated().await;
    exec(&f, "DELETE FROM users WHERE id = 1024").await;
    let r = verify(&f).await;
    only_difference(
        &r,
        "users",
        serde_json::json!({"id": 1024}),
        DiffKind::Missing,
    );
    assert_eq!(table(&r, "users").missing, 1);
}

#[tokio::test]
async fn an_inserted_row_is_extra() {
    let f = migrated().await;
    exec(
        &f,
        "INSERT INTO users (id, name) VALUES (1500000, 'intruder')",
    )
    .await;
    let r = verify(&f).await;
    only_difference(
        &r,
        "users",
        serde_json::json!({"id": 1500000}),
        DiffKind::Extra,
    );
}

#[tokio::test]
async fn a_null_set_to_a_value_is_found() {
    let f = migrated().await;
    exec(&f, "UPDATE users SET bio = '' WHERE id = 9").await;
    let r = verify(&f).await;
    let d = only_difference(&r, "users", serde_json::json!({"id": 9}), DiffKind::Changed);
    assert_eq!(
        (d.columns[0].source.as_str(), d.columns[0].target.as_str()),
        ("NULL", "")
    );
}

#[tokio::test]
async fn a_duplicated_row_of_a_table_without_key_is_extra() {
    let f = migrated().await;
    exec(&f, "INSERT INTO tags SELECT * FROM tags WHERE name = 'sql'").await;
    let r = verify(&f).await;
    let d = only_difference(&r, "tags", serde_json::Value::Null, DiffKind::Extra);
    assert_eq!(d.copies, Some(1));
    assert_eq!(
        d.row,
        Some(serde_json::json!({"name": "sql", "post_id": 2}))
    );
    assert_eq!(table(&r, "tags").extra, 1);
}

#[tokio::test]
async fn a_removed_duplicate_of_a_table_without_key_is_missing() {
    let f = migrated().await;
    exec(&f, "DELETE FROM tags WHERE ctid = (SELECT min(ctid) FROM tags WHERE name = 'rust' AND post_id = 1)").await;
    let r = verify(&f).await;
    let d = only_difference(&r, "tags", serde_json::Value::Null, DiffKind::Missing);
    assert_eq!(d.copies, Some(1));
}

#[tokio::test]
async fn a_changed_value_in_a_text_keyed_table_is_found() {
    let f = migrated().await;
    exec(&f, "UPDATE kv SET v = '\\x00'::bytea WHERE k = 'k5'").await;
    let r = verify(&f).await;
    let d = only_difference(&r, "kv", serde_json::json!({"k": "k5"}), DiffKind::Changed);
    assert_eq!(d.columns[0].column, "v");
}

#[tokio::test]
async fn a_dropped_index_is_a_structure_problem() {
    let f = migrated().await;
    let c = f.db.client().await;
    let name: String = c
        .query_one(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'posts' AND indexdef LIKE '%(user_id)%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute(&format!("DROP INDEX \"{name}\""))
        .await
        .unwrap();
    let r = verify(&f).await;
    assert_eq!(r.exit_code(), 1);
    assert!(differences(&r).is_empty());
    let problems: Vec<_> = r.structure.iter().filter(|s| !s.warning).collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        (problems[0].table.as_str(), problems[0].kind.as_str()),
        ("posts", "missing index")
    );
}

#[tokio::test]
async fn a_sequence_behind_max_id_is_a_structure_problem() {
    let f = migrated().await;
    exec(
        &f,
        "SELECT setval(pg_get_serial_sequence('public.posts', 'id'), 5)",
    )
    .await;
    let r = verify(&f).await;
    assert_eq!(r.exit_code(), 1);
    let problems: Vec<_> = r.structure.iter().filter(|s| !s.warning).collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        (problems[0].table.as_str(), problems[0].kind.as_str()),
        ("posts", "sequence behind max(id)")
    );
}

#[tokio::test]
async fn rows_beyond_the_watermark_are_new_writes_not_differences() {
    let f = migrated().await;
    // New writes take ids from the identity, as the application's would.
    exec(
        &f,
        "INSERT INTO users (name) VALUES ('after cutover'), ('another')",
    )
    .await;
    let r = verify_with(&f, |o| o.watermark = Some(RunChoice::Auto)).await;
    assert!(r.is_equal(), "{r:#?}");
    let users = table(&r, "users");
    assert_eq!(
        (users.watermark, users.new_since_watermark),
        (Some(USERS), 2)
    );
    // Without the watermark the same rows are differences.
    let r = verify(&f).await;
    assert_eq!(table(&r, "users").extra, 2);
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test]
async fn max_diffs_caps_the_listing_not_the_detection() {
    let f = migrated().await;
    exec(&f, "UPDATE users SET name = name || '!' WHERE id % 100 = 0").await;
    let r = verify_with(&f, |o| o.max_diffs = 5).await;
    assert_eq!(table(&r, "users").changed, 30);
    assert_eq!(differences(&r).len(), 5);
    assert_eq!(r.diffs_not_listed, 25);
}

#[tokio::test]
async fn a_sample_checks_a_deterministic_subset_and_is_equal_on_equal_data() {
    let f = migrated().await;
    let a = verify_with(&f, |o| o.sample = Some(30.0)).await;
    let b = verify_with(&f, |o| o.sample = Some(30.0)).await;
    assert!(a.is_equal());
    let users = table(&a, "users");
    assert!(users.rows_compared < USERS as u64, "{users:?}");
    assert_eq!(users.rows_compared, table(&b, "users").rows_compared);
}

#[tokio::test]
async fn verify_reads_from_a_replica() {
    let f = migrated().await;
    let replica = f.db.replica_urls()[0].clone();
    let mut last = None;
    for _ in 0..50 {
        let opts = Options::new(&f.source, replica.clone());
        match dbtool_verify::verify(&opts).await {
            Ok(r) if r.is_equal() => return,
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("the replica never verified equal: {last:?}");
}

#[tokio::test]
async fn an_unreachable_target_is_an_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let source = build_source(dir.path());
    let opts = Options::new(
        &source,
        "postgres://bob:s3cret@127.0.0.1:1/nope?connect_timeout=2",
    );
    let err = dbtool_verify::verify(&opts).await.unwrap_err().to_string();
    assert!(err.contains("postgres://bob:***@127.0.0.1:1/nope"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn tables_limits_the_comparison_and_the_structure_checks() {
    let f = migrated().await;
    exec(
        &f,
        "UPDATE users SET name = 'changed' WHERE id = 1; ALTER TABLE posts ALTER COLUMN body TYPE varchar(100)",
    )
    .await;
    let r = verify_with(&f, |o| o.tables = vec!["kv".to_owned()]).await;
    let names: Vec<&str> = r.tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(names, ["kv"]);
    assert!(r.structure.iter().all(|s| s.table == "kv"), "{r:#?}");
    assert!(r.is_equal(), "{r:#?}");
    assert_eq!(r.exit_code(), 0);
    // Without --tables both changes are found.
    let r = verify(&f).await;
    assert_eq!(table(&r, "users").changed, 1);
    assert!(r
        .structure
        .iter()
        .any(|s| !s.warning && s.kind == "column type"));
    // A table not in the plan is refused, by name.
    let mut opts = Options::new(&f.source, f.db.url());
    opts.tables = vec!["nope".to_owned()];
    let err = dbtool_verify::verify(&opts).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "table \"nope\" is not in the migration plan (check the name with `dbtool plan`)"
    );
}

#[tokio::test]
async fn a_bytea_over_the_mask_size_is_masked_in_the_report() {
    let f = migrated().await;
    // 33 bytes: masked; 32 bytes: shown in full.
    exec(
        &f,
        "UPDATE kv SET v = decode(repeat('ab', 33), 'hex') WHERE k = 'k5';
         UPDATE kv SET v = decode(repeat('cd', 32), 'hex') WHERE k = 'k6'",
    )
    .await;
    let r = verify(&f).await;
    let d = differences(&r);
    assert_eq!(d.len(), 2, "{d:#?}");
    let col = |k: &str| {
        let d = d
            .iter()
            .find(|d| d.pk == serde_json::json!({ "k": k }))
            .unwrap();
        assert_eq!(d.columns.len(), 1);
        (d.columns[0].source.clone(), d.columns[0].target.clone())
    };
    let masked = format!(
        "<bytea 33 bytes, xxh3 {:016x}>",
        xxhash_rust::xxh3::xxh3_64(&[0xab; 33])
    );
    assert_eq!(col("k5"), ("\\x05050505".to_owned(), masked));
    assert_eq!(
        col("k6"),
        ("\\x06060606".to_owned(), format!("\\x{}", "cd".repeat(32)))
    );
    assert_eq!(r.exit_code(), 1);
}
