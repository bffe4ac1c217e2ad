//! The generated file: counts, determinism, integrity and the hazards it must carry.

use std::path::Path;

use dbtool_sample::{generate, planned_rows, Error, Options, TABLE_NAMES};
use rusqlite::Connection;

const SMALL: f64 = 0.05; // about 5k rows: fast, but every shape appears

fn make(dir: &Path, name: &str, scale: f64, seed: u64) -> std::path::PathBuf {
    let out = dir.join(name);
    generate(&Options {
        scale,
        seed,
        out: out.clone(),
        overwrite: false,
    })
    .unwrap();
    out
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn same_seed_gives_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = make(dir.path(), "a.db", SMALL, 7);
    let b = make(dir.path(), "b.db", SMALL, 7);
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn different_seeds_give_different_rows() {
    let dir = tempfile::tempdir().unwrap();
    let a = Connection::open(make(dir.path(), "a.db", SMALL, 1)).unwrap();
    let b = Connection::open(make(dir.path(), "b.db", SMALL, 2)).unwrap();
    let body = |c: &Connection| -> String {
        c.query_row("SELECT body FROM posts ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_ne!(body(&a), body(&b));
}

#[test]
fn row_counts_match_the_plan_at_each_scale() {
    let dir = tempfile::tempdir().unwrap();
    for (i, scale) in [0.01, 0.1].into_iter().enumerate() {
        let path = make(dir.path(), &format!("s{i}.db"), scale, 42);
        let conn = Connection::open(path).unwrap();
        let plan = planned_rows(scale).unwrap();
        assert_eq!(plan.len(), TABLE_NAMES.len());
        for t in plan {
            let n = count(&conn, &format!("SELECT count(*) FROM {}", t.table));
            assert_eq!(n as u64, t.rows, "{} at scale {scale}", t.table);
        }
    }
    assert_eq!(planned_rows(0.1).unwrap()[4].rows, 8_800); // posts
}

#[test]
fn summary_reports_rows_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.db");
    let s = generate(&Options {
        scale: SMALL,
        seed: 3,
        out: out.clone(),
        overwrite: false,
    })
    .unwrap();
    assert_eq!(s.bytes, std::fs::metadata(&out).unwrap().len());
    assert_eq!(
        s.total_rows(),
        planned_rows(SMALL).unwrap().iter().map(|t| t.rows).sum()
    );
    let line = s.to_string();
    assert!(line.starts_with("wrote "), "{line}");
    assert!(line.contains("posts 4,400"), "{line}");
}

#[test]
fn foreign_keys_and_integrity_hold() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(make(dir.path(), "f.db", SMALL, 42)).unwrap();
    let mut st = conn.prepare("PRAGMA foreign_key_check").unwrap();
    let violations = st.query_map([], |_| Ok(())).unwrap().count();
    assert_eq!(violations, 0);
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // A post's team is its topic's team and its author's team: rows shard together.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM posts p JOIN topics t ON t.id = p.topic_id
             LEFT JOIN users u ON u.id = p.user_id
             WHERE p.team_id <> t.team_id OR (u.id IS NOT NULL AND u.team_id <> p.team_id)"
        ),
        0
    );
    // A topic's first post is not older than the topic.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM posts p JOIN topics t ON t.id = p.topic_id
             WHERE p.created_at < replace(replace(t.created_at, 'T', ' '), 'Z', '')"
        ),
        0
    );
}

#[test]
fn datetime_columns_hold_epoch_integers_and_text_formats() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(make(dir.path(), "f.db", SMALL, 42)).unwrap();
    // users.last_seen: DATETIME holding epoch seconds; some NULL.
    assert_eq!(
        count(&conn, "SELECT count(*) FROM users WHERE last_seen IS NOT NULL AND typeof(last_seen) <> 'integer'"),
        0
    );
    assert!(count(&conn, "SELECT count(*) FROM users WHERE last_seen IS NULL") > 0);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM users WHERE last_seen IS NOT NULL AND last_seen NOT BETWEEN 1546300800 AND 1735689600"),
        0
    );
    // topics.updated_at: DATETIME holding epoch milliseconds.
    assert_eq!(
        count(&conn, "SELECT count(*) FROM topics WHERE typeof(updated_at) <> 'integer' OR updated_at < 1546300800000"),
        0
    );
    // ISO 8601 with T and Z, SQLite's 'YYYY-MM-DD HH:MM:SS', and milliseconds.
    assert_eq!(
        count(&conn, "SELECT count(*) FROM users WHERE created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'"),
        0
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM posts WHERE created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]'"),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM wiki_pages WHERE updated_at NOT GLOB '*T*.[0-9][0-9][0-9]Z'"
        ),
        0
    );
    let decl: String = conn
        .query_row(
            "SELECT type FROM pragma_table_info('users') WHERE name = 'last_seen'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(decl, "DATETIME");
}

#[test]
fn booleans_nulls_blobs_reals_and_unicode_are_present() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(make(dir.path(), "f.db", SMALL, 42)).unwrap();
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM users WHERE is_admin NOT IN (0, 1)"
        ),
        0
    );
    assert!(count(&conn, "SELECT count(*) FROM users WHERE is_admin = 1") > 0);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM topics WHERE pinned NOT IN (0, 1)"
        ),
        0
    );
    assert!(count(&conn, "SELECT count(*) FROM topics WHERE pinned = 1") > 0);
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM users WHERE typeof(avatar) = 'blob'"
        ) > 0
    );
    assert!(count(&conn, "SELECT count(*) FROM users WHERE avatar IS NULL") > 0);
    assert!(count(&conn, "SELECT count(*) FROM posts WHERE edited_at IS NULL") > 0);
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM posts WHERE edited_at IS NOT NULL"
        ) > 0
    );
    assert!(count(&conn, "SELECT count(*) FROM posts WHERE user_id IS NULL") > 0);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM posts WHERE typeof(score) <> 'real'"
        ),
        0
    );
    // Non-ASCII text (length in characters < length in bytes), emoji, newlines.
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM posts WHERE length(body) < length(CAST(body AS BLOB))"
        ) > 0
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM posts WHERE instr(body, char(10)) > 0"
        ) > 0
    );
    assert!(
        count(
            &conn,
            "SELECT count(*) FROM posts WHERE instr(body, '\"') > 0"
        ) > 0
    );
    assert!(count(&conn, "SELECT count(*) FROM users WHERE length(display_name) < length(CAST(display_name AS BLOB))") > 0);
    // The typeless settings.value mixes storage classes.
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT typeof(value)) FROM settings"),
        3
    );
}

#[test]
fn autoincrement_has_gaps_and_sequences_above_max_id() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(make(dir.path(), "f.db", SMALL, 42)).unwrap();
    for table in ["users", "posts"] {
        let max = count(&conn, &format!("SELECT max(id) FROM {table}"));
        let rows = count(&conn, &format!("SELECT count(*) FROM {table}"));
        assert!(max > rows, "{table}: no gaps (max {max}, rows {rows})");
        let seq = count(
            &conn,
            &format!("SELECT seq FROM sqlite_sequence WHERE name = '{table}'"),
        );
        assert!(seq > max, "{table}: sequence {seq} not above max(id) {max}");
    }
}

#[test]
fn schema_has_partial_and_unique_indexes_and_team_ids() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(make(dir.path(), "f.db", SMALL, 42)).unwrap();
    let partial = count(
        &conn,
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE '%WHERE%'",
    );
    assert_eq!(partial, 1);
    let unique = count(&conn, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE 'CREATE UNIQUE INDEX%'");
    assert_eq!(unique, 1);
    for table in TABLE_NAMES {
        let has_team = count(
            &conn,
            &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'team_id'"),
        );
        let expected = i64::from(table != "settings" && table != "teams");
        assert_eq!(has_team, expected, "{table}");
    }
    // teams.id is a UUID in text form.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM teams WHERE length(id) <> 36 OR substr(id, 15, 1) <> '4'"
        ),
        0
    );
}

#[test]
fn existing_file_is_kept_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keep.db");
    std::fs::write(&out, b"precious").unwrap();
    let mut options = Options::new(&out);
    options.scale = 0.01;
    let err = generate(&options).unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    options.overwrite = true;
    generate(&options).unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");
    assert!(!dir.path().join("keep.db.partial").exists());
}
