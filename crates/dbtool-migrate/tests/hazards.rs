//! One test per hazard of real SQLite files, each on a small file the test
//! builds itself. Planning hazards need no server; migration hazards run the
//! whole pipeline into a fresh database on a real Postgres.

mod common;

use std::path::Path;

use dbtool_migrate::plan::{self, Epoch, IndexKind, PlanConfig, Policy, ReadKey, SkipKind};
use dbtool_migrate::profile::Kind;
use dbtool_migrate::source;
use dbtool_migrate::value::{PgType, Value};
use rusqlite::types::ValueRef;

fn plan_of(path: &Path, config: &PlanConfig) -> plan::Plan {
    let conn = source::open(path).expect("open");
    let src = source::inspect(&conn, path).expect("inspect");
    plan::plan(&conn, &src, config, "public").expect("plan")
}

/// Plans the SQLite file that `sql` builds.
fn plan_sql(sql: &str, config: &PlanConfig) -> plan::Plan {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(dir.path(), "src.db", sql);
    plan_of(&p, config)
}

fn col<'a>(p: &'a plan::Plan, table: &str, column: &str) -> &'a plan::ColumnPlan {
    p.table(table)
        .unwrap_or_else(|| panic!("no table {table}"))
        .column(column)
        .unwrap_or_else(|| panic!("no column {column}"))
}

// ---------------------------------------------------------------- opening

#[test]
fn truncated_file_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut sql = String::from("CREATE TABLE t (a TEXT);");
    for i in 0..2000 {
        sql.push_str(&format!(
            "INSERT INTO t VALUES ('row {i} {}');",
            "x".repeat(50)
        ));
    }
    let p = common::sqlite_file(dir.path(), "big.db", &sql);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let r = source::open(&p).and_then(|c| {
        let s = source::inspect(&c, &p)?;
        plan::plan(&c, &s, &PlanConfig::default(), "public")
    });
    let msg = r.expect_err("a truncated file must not plan").to_string();
    assert!(
        msg.starts_with(&format!("cannot read {}", p.display())),
        "{msg}"
    );
    assert!(
        msg.contains("malformed") || msg.contains("corrupt"),
        "{msg}"
    );
}

#[test]
fn non_sqlite_file_says_it_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secret.db");
    std::fs::write(&p, vec![0x5au8; 4096]).unwrap();
    let msg = source::open(&p).expect_err("not sqlite").to_string();
    assert_eq!(
        msg,
        format!(
            "cannot read {}: file is not a database (is it encrypted?)",
            p.display()
        )
    );
}

#[test]
fn wal_header_without_wal_file_opens_and_creates_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "wal.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2);",
    );
    assert!(
        !dir.path().join("wal.db-wal").exists(),
        "clean close removes -wal"
    );
    let conn = source::open(&p).expect("opens");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    assert_eq!(n, 2);
    assert!(!dir.path().join("wal.db-wal").exists());
    assert!(!dir.path().join("wal.db-shm").exists());
}

#[test]
fn unicase_collation_file_opens_and_sorts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("anki.db");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        c.create_collation("unicase", |a: &str, b: &str| {
            a.to_lowercase().cmp(&b.to_lowercase())
        })
        .unwrap();
        c.execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, name TEXT COLLATE unicase);
             CREATE INDEX ix_name ON notes (name);
             INSERT INTO notes (name) VALUES ('b'), ('A'), ('c');",
        )
        .unwrap();
    }
    let conn = source::open(&p).expect("opens without the app's collation");
    let names: Vec<String> = conn
        .prepare("SELECT name FROM notes ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, ["A", "b", "c"]);
}

#[test]
fn utf16_database_text_reads_as_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "u16.db",
        "PRAGMA encoding='UTF-16le'; CREATE TABLE t (name TEXT); INSERT INTO t VALUES ('héllo ✓');",
    );
    let conn = source::open(&p).unwrap();
    let src = source::inspect(&conn, &p).unwrap();
    assert_eq!(src.encoding, "UTF-16le");
    let pl = plan::plan(&conn, &src, &PlanConfig::default(), "public").unwrap();
    let c = col(&pl, "t", "name");
    assert_eq!(c.pg_type, PgType::Text);
    let v: String = conn
        .query_row("SELECT name FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        c.cast(ValueRef::Text(v.as_bytes())).unwrap(),
        Value::Text("héllo ✓".into())
    );
}

// ---------------------------------------------------------------- planning

#[test]
fn epoch_milliseconds_in_datetime_column_plan_as_timestamptz() {
    let pl = plan_sql(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, created_at DATETIME);
         INSERT INTO posts (created_at) VALUES (1414378823109), (1229691926000);",
        &PlanConfig::default(),
    );
    let c = col(&pl, "posts", "created_at");
    assert_eq!(
        (c.pg_type, c.epoch),
        (PgType::Timestamptz, Some(Epoch::Millis))
    );
    assert_eq!(
        c.cast(ValueRef::Integer(1_414_378_823_109)).unwrap(),
        Value::Timestamptz(1_414_378_823_109_000)
    );
}

#[test]
fn text_in_integer_column_is_predicted_with_rowids_when_not_widening() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "mismatch.db",
        "CREATE TABLE products (id INTEGER PRIMARY KEY, qty INTEGER);
         INSERT INTO products VALUES (1, 5), (2, 'lots'), (3, 7), (4, 'n/a');",
    );
    let widened = plan_of(&p, &PlanConfig::default());
    assert_eq!(col(&widened, "products", "qty").pg_type, PgType::Text);
    assert!(col(&widened, "products", "qty").predicted.is_empty());

    let strict = plan_of(
        &p,
        &PlanConfig {
            widen: false,
            ..PlanConfig::default()
        },
    );
    let c = col(&strict, "products", "qty");
    assert_eq!(c.pg_type, PgType::Int8);
    assert_eq!(c.predicted.len(), 1);
    assert_eq!(c.predicted[0].kind, Kind::Text);
    assert_eq!(c.predicted[0].count, 2);
    assert_eq!(c.predicted[0].sample_rowids, vec![2, 4]);
    assert_eq!(c.predicted[0].policy, Policy::Reject);
}

#[test]
fn column_override_sets_type_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "ov.db",
        "CREATE TABLE t (d TEXT); INSERT INTO t VALUES ('2020-01-02 03:04:05'), ('soon');",
    );
    let mut cfg = PlanConfig::default();
    cfg.columns.insert(
        "t.d".into(),
        plan::ColumnOverride {
            pg_type: Some("timestamp".into()),
            policy: Some(Policy::Null),
            epoch: None,
        },
    );
    let pl = plan_of(&p, &cfg);
    let c = col(&pl, "t", "d");
    assert_eq!((c.pg_type, c.policy), (PgType::Timestamp, Policy::Null));
    assert_eq!(c.predicted.len(), 1);
    assert_eq!(c.predicted[0].count, 1);
    assert_eq!(c.predicted[0].sample_rowids, vec![2]);
}

#[test]
fn fts5_content_is_planned_and_its_shadow_tables_are_skipped() {
    let pl = plan_sql(
        "CREATE VIRTUAL TABLE docs USING fts5(title, body);
         INSERT INTO docs VALUES ('a', 'hello'), ('b', 'world');",
        &PlanConfig::default(),
    );
    let names: Vec<&str> = pl.tables.iter().map(|t| t.source_name.as_str()).collect();
    assert_eq!(names, ["docs"]);
    assert_eq!(pl.tables[0].rows, 2);
    assert_eq!(pl.tables[0].columns.len(), 2, "hidden columns are left out");
    let mut shadows: Vec<&str> = pl
        .skipped
        .iter()
        .filter(|s| s.kind == SkipKind::ShadowTable)
        .map(|s| s.name.as_str())
        .collect();
    shadows.sort();
    assert_eq!(
        shadows,
        [
            "docs_config",
            "docs_content",
            "docs_data",
            "docs_docsize",
            "docs_idx"
        ]
    );
}

#[test]
fn virtual_table_of_unknown_module_is_skipped_and_its_shadow_tables_kept() {
    let pl = plan_sql(
        "CREATE TABLE vec_items_chunks (id INTEGER PRIMARY KEY, data BLOB);
         INSERT INTO vec_items_chunks (data) VALUES (x'0102');
         PRAGMA writable_schema = ON;
         INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql)
           VALUES ('table', 'vec_items', 'vec_items', 0, 'CREATE VIRTUAL TABLE vec_items USING vec0(embedding float[3])');
         PRAGMA writable_schema = OFF;",
        &PlanConfig::default(),
    );
    let skipped: Vec<(&str, &str)> = pl
        .skipped
        .iter()
        .map(|s| (s.kind.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(skipped, [("virtual_table", "vec_items")]);
    assert_eq!(pl.tables.len(), 1);
    assert_eq!(pl.tables[0].source_name, "vec_items_chunks");
    assert_eq!(pl.tables[0].rows, 1);
}

#[test]
fn long_colliding_quoted_and_reserved_identifiers_are_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let a = "col_very_long_name_that_exceeds_postgresql_identifier_limit_aaax";
    let b = "col_very_long_name_that_exceeds_postgresql_identifier_limit_aaay";
    let p = common::sqlite_file(
        dir.path(),
        "idents.db",
        &format!(
            "CREATE TABLE \"Order Details\" (\"{a}\" INT, \"{b}\" INT, \"order\" TEXT, \"\"\"name\"\" NOT NULL,\" TEXT);
             CREATE TABLE \"\"\"\"\"\" (x INT);"
        ),
    );
    let pl = plan_of(&p, &PlanConfig::default());
    let t = pl.table("Order Details").unwrap();
    assert_eq!(t.target_name, "order details");
    let (ta, tb) = (&t.columns[0].target_name, &t.columns[1].target_name);
    assert!(ta.len() <= 63 && tb.len() <= 63);
    assert_ne!(ta, tb);
    assert_eq!(t.columns[2].target_name, "order");
    assert_eq!(t.columns[3].target_name, "\"name\" not null,");
    assert_eq!(pl.table("\"\"").unwrap().target_name, "\"\"");
    assert!(pl
        .identifiers
        .iter()
        .any(|m| m.source == a && &m.target == ta));
}

/// Tests of how the loader reads a table: the read key, the rowid
/// expression and the SELECT it issues, one test per table shape.
macro_rules! read_plan {
    ($($name:ident: $sql:expr, $table:expr => ($key:expr, $rowid:expr, $select:expr);)*) => {$(
        #[test]
        fn $name() {
            let pl = plan_sql($sql, &PlanConfig::default());
            let t = pl.table($table).unwrap();
            assert_eq!(t.key, $key);
            assert_eq!(t.rowid_expr(), $rowid);
            assert_eq!(t.select_sql(), $select);
        }
    )*};
}

read_plan! {
    without_rowid_table_is_read_by_primary_key:
        "CREATE TABLE kv (k TEXT, n INT, v BLOB, PRIMARY KEY (n, k)) WITHOUT ROWID;
         INSERT INTO kv VALUES ('a', 1, x'00');", "kv"
        => (ReadKey::PrimaryKey(vec![1, 0]), None, "SELECT \"n\", \"k\", \"k\", \"n\", \"v\" FROM \"kv\"");
    column_named_rowid_makes_the_reader_use_an_alias:
        "CREATE TABLE t (rowid TEXT, a INT); INSERT INTO t VALUES ('x', 1);", "t"
        => (ReadKey::Rowid, Some("_rowid_"), "SELECT _rowid_, \"rowid\", \"a\" FROM \"t\"");
}

#[test]
fn triggers_are_reported_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "trg.db",
        "CREATE TABLE t (a INT); CREATE TABLE log (a INT);
         CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.a); END;",
    );
    let pl = plan_of(&p, &PlanConfig::default());
    let s = pl
        .skipped
        .iter()
        .find(|s| s.kind == SkipKind::Trigger)
        .unwrap();
    assert_eq!(s.name, "t_ins");
    assert!(s.reason.contains("not migrated"));
}

// A migration profiles columns declared text without classifying each text
// (`Profiling::Load`): every type, policy, key and name must still be the
// one `dbtool plan` shows, whatever mix of values the column holds.
#[test]
fn load_profiling_plans_what_full_profiling_plans() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "src.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY,
            dates TEXT, bad TEXT, only_bad TEXT, bin TEXT, nums STRING,
            tie JSON, nn TEXT NOT NULL, at TEXT, flag CHAR(1), n INTEGER);
         INSERT INTO t VALUES
            (1, '2020-01-01', CAST(x'ff' AS TEXT), CAST(x'ff' AS TEXT), 'a', 1, 'a', 'w', '2020-01-01 10:00:00', 't', 1),
            (2, '2020-01-02', 'ok', 'a' || char(0), x'00ff', 2.5, 7, 'x', '2020-01-02 10:00:00', 'f', 2),
            (3, NULL, CAST(x'fe' AS TEXT), NULL, 'b', 'c', x'00', 'y', '2020-01-03 10:00:00', '1', 3),
            (4, '2020-01-04', 'b' || char(0), CAST(x'c0' AS TEXT), 'c', NULL, NULL, 'z', NULL, 't', 4);",
    );
    let mut config = PlanConfig::default();
    config.columns.insert(
        "t.at".into(),
        plan::ColumnOverride {
            pg_type: Some("timestamp".into()),
            ..Default::default()
        },
    );
    let unclassified = common::check_load_profiling(&p, &config).unwrap();
    assert_eq!(unclassified, 3 + 3 + 3 + 1 + 1 + 4 + 4);
    let conn = source::open(&p).unwrap();
    let src = source::inspect(&conn, &p).unwrap();
    let (load, _) =
        plan::plan_timed_with(&conn, &src, &config, "public", plan::Profiling::Load).unwrap();
    let types: Vec<(&str, PgType, u64)> = load.tables[0]
        .columns
        .iter()
        .map(|c| (c.source_name.as_str(), c.pg_type, c.unclassified_text))
        .collect();
    assert_eq!(
        types,
        vec![
            ("id", PgType::Int8, 0),
            ("dates", PgType::Text, 3),
            ("bad", PgType::Text, 3),
            ("only_bad", PgType::Bytea, 0),
            ("bin", PgType::Bytea, 3),
            ("nums", PgType::Text, 1),
            ("tie", PgType::Text, 1),
            ("nn", PgType::Text, 4),
            ("at", PgType::Timestamp, 0),
            ("flag", PgType::Text, 4),
            ("n", PgType::Int8, 0),
        ]
    );
    // The texts before the first holdable one are classified and predicted;
    // the later ones are the load's to find.
    let bad = col(&load, "t", "bad");
    let kinds: Vec<(Kind, u64)> = bad.predicted.iter().map(|p| (p.kind, p.count)).collect();
    assert_eq!(kinds, vec![(Kind::TextInvalidUtf8, 1)]);
}

#[test]
fn load_profiling_of_the_sample_plans_what_full_profiling_plans() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sample.db");
    let mut o = dbtool_sample::Options::new(&db);
    o.scale = 0.02;
    dbtool_sample::generate(&o).expect("generate the sample");
    let unclassified = common::check_load_profiling(&db, &PlanConfig::default()).unwrap();
    assert!(
        unclassified > 0,
        "the sample's text columns are planned lean"
    );
}

// ---------------------------------------------------------------- migrating

/// The independent check of every row (see `common::check_against_source`).
async fn check(p: &Path, c: &tokio_postgres::Client, m: &common::Migrated) {
    common::check_against_source(p, c, &m.outcome.plan, m)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The one bigint a query returns (a count, an id).
async fn scalar(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn migrate_sql(
    sql: &str,
    config: &dbtool_migrate::Config,
) -> (
    dbtool_testkit::TestDb,
    tempfile::TempDir,
    std::path::PathBuf,
    common::Migrated,
) {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(dir.path(), "src.db", sql);
    let db = dbtool_testkit::pg().await;
    let m = common::migrate(&p, &db.url(), "public", config, dir.path())
        .await
        .expect("migrate");
    (db, dir, p, m)
}

/// Asserts the run's exit code and its reject records, exactly: per record
/// the rowid, the column, the action and a word its reason must contain.
fn assert_rejects(m: &common::Migrated, exit_code: u8, expected: &[(i64, &str, &str, &str)]) {
    assert_eq!(m.outcome.exit_code, exit_code);
    let got: Vec<(i64, &str, &str)> = m
        .rejects
        .iter()
        .map(|r| {
            (
                r["rowid"].as_i64().unwrap(),
                r["column"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, &str, &str)> = expected.iter().map(|&(r, c, a, _)| (r, c, a)).collect();
    assert_eq!(got, want);
    for (r, &(_, _, _, why)) in m.rejects.iter().zip(expected) {
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{reason:?} should mention {why:?}");
    }
}

#[tokio::test]
async fn invalid_utf8_and_nul_rows_are_rejected_and_exit_code_is_3() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE files (id INTEGER PRIMARY KEY, filename TEXT);
         INSERT INTO files VALUES (1, 'ok.txt'), (2, CAST(x'66ff6f' AS TEXT));",
        &Default::default(),
    )
    .await;
    assert_rejects(&m, 3, &[(2, "filename", "rejected", "UTF-8")]);
    assert_eq!(m.rejects[0]["value"]["base64"], "Zv9v");
    let c = db.client().await;
    let rows = c
        .query("SELECT id, filename FROM files", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "ok.txt");
    check(&p, &c, &m).await;
}

// The load's plan does not classify texts after the first holdable one, so
// it predicts none of these; the load's cast finds each and rejects it.
#[tokio::test]
async fn unpredicted_nul_and_invalid_utf8_texts_are_rejected_by_the_load() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, tag TEXT);
         INSERT INTO notes VALUES (1, 'fine', 'a'), (2, 'a' || char(0) || 'b', 'b'),
            (3, 'ok', CAST(x'ff' AS TEXT)), (4, 'also fine', NULL);",
        &Default::default(),
    )
    .await;
    let plan = &m.outcome.plan;
    for (c, n) in [("body", 4), ("tag", 3)] {
        let c = col(plan, "notes", c);
        assert!(c.predicted.is_empty(), "{:?}", c.predicted);
        assert_eq!(c.unclassified_text, n);
    }
    assert_rejects(
        &m,
        3,
        &[
            (2, "body", "rejected", "NUL"),
            (3, "tag", "rejected", "UTF-8"),
        ],
    );
    let c = db.client().await;
    let ids: Vec<i64> = c
        .query("SELECT id FROM notes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 4]);
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn text_with_nul_is_rejected_and_recorded() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO notes VALUES (1, 'fine'), (2, 'a' || char(0) || 'b');",
        &Default::default(),
    )
    .await;
    assert_rejects(&m, 3, &[(2, "body", "rejected", "NUL")]);
    let c = db.client().await;
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn policy_null_stores_null_and_records_the_original() {
    let mut config = dbtool_migrate::Config::default();
    config.plan.policy = Policy::Null;
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE files (id INTEGER PRIMARY KEY, filename TEXT);
         INSERT INTO files VALUES (1, 'ok'), (2, CAST(x'ff' AS TEXT));",
        &config,
    )
    .await;
    assert_rejects(&m, 3, &[(2, "filename", "nulled", "UTF-8")]);
    let c = db.client().await;
    let v: Option<String> = c
        .query_one("SELECT filename FROM files WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, None);
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn reserved_and_quoted_identifiers_migrate() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE user (id INTEGER PRIMARY KEY, \"order\" INT, \"group\" TEXT, \"Name With \"\"Quotes\"\"\" TEXT);
         INSERT INTO user VALUES (1, 2, 'g', 'q');
         CREATE TABLE \"\"\"\"\"\" (x INT); INSERT INTO \"\"\"\"\"\" VALUES (5);",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT \"order\", \"group\", \"name with \"\"quotes\"\"\" FROM \"user\"",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, String>(1)),
        (2, "g".to_string())
    );
    let x: i64 = scalar(&c, "SELECT x FROM \"\"\"\"\"\"").await;
    assert_eq!(x, 5);
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn autoincrement_identity_continues_past_sqlite_sequence() {
    let (db, _d, _p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT);
         INSERT INTO t (a) VALUES ('1'),('2'),('3'),('4'),('5'),('6'),('7'),('8'),('9'),('10');
         DELETE FROM t WHERE id > 5;",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let c = db.client().await;
    let id: i64 = scalar(&c, "INSERT INTO t (a) VALUES ('new') RETURNING id").await;
    assert_eq!(id, 11);
    let pk: i64 = scalar(
        &c,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'p'",
    )
    .await;
    assert_eq!(pk, 1);
}

#[tokio::test]
async fn foreign_key_with_orphans_is_created_not_valid() {
    let (db, _d, _p, m) = migrate_sql(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INT REFERENCES parent(id));
         INSERT INTO parent VALUES (1);
         INSERT INTO child VALUES (1, 1), (2, 99);",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let fk = &m.outcome.plan.table("child").unwrap().foreign_keys[0];
    assert_eq!((fk.orphans, fk.orphan_rowids.clone()), (1, vec![2]));
    let c = db.client().await;
    let validated: bool = c
        .query_one("SELECT convalidated FROM pg_constraint WHERE contype = 'f' AND conrelid = 'child'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!validated);
    let err = c
        .execute("INSERT INTO child VALUES (3, 42)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
}

#[tokio::test]
async fn valid_foreign_key_is_validated() {
    let (db, _d, _p, _m) = migrate_sql(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INT REFERENCES parent(id) ON DELETE CASCADE);
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT convalidated, confdeltype::text FROM pg_constraint WHERE contype = 'f' AND conrelid = 'child'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, String>(1), "c");
}

#[tokio::test]
async fn epoch_and_iso_dates_arrive_as_timestamps() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, created_at DATETIME, published DATETIME, day DATE);
         INSERT INTO posts VALUES (1, 1414378823109, '2014-10-27 03:00:23.5', '2014-10-27');",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let c = db.client().await;
    c.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
    let r = c
        .query_one("SELECT created_at::text, published::text, day::text, pg_typeof(published)::text FROM posts", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "2014-10-27 03:00:23.109+00");
    assert_eq!(r.get::<_, String>(1), "2014-10-27 03:00:23.5");
    assert_eq!(r.get::<_, String>(2), "2014-10-27");
    assert_eq!(r.get::<_, String>(3), "timestamp without time zone");
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn reals_keep_every_bit_and_decimals_are_not_rounded() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, r REAL, d DECIMAL(5,2), inf REAL);
         INSERT INTO t VALUES (1, 0.1 + 0.2, 2.99, 1e999), (2, 1.0000000000000002, 3, -1e999);",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT r, d::text, inf, pg_typeof(r)::text FROM t ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, f64>(0), 0.1 + 0.2);
    assert_eq!(rows[0].get::<_, String>(1), "2.99");
    assert_eq!(rows[0].get::<_, f64>(2), f64::INFINITY);
    assert_eq!(rows[0].get::<_, String>(3), "double precision");
    assert_eq!(rows[1].get::<_, f64>(0), 1.000_000_000_000_000_2);
    assert_eq!(rows[1].get::<_, String>(1), "3");
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn defaults_are_translated() {
    let (db, _d, _p, _m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at DATETIME DEFAULT CURRENT_TIMESTAMP, n INT DEFAULT '0', s TEXT DEFAULT 'it''s', b BOOLEAN DEFAULT 1);",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    let r = c
        .query_one(
            "INSERT INTO t DEFAULT VALUES RETURNING at IS NOT NULL, n, s, b",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, i64>(1), 0);
    assert_eq!(r.get::<_, String>(2), "it's");
    assert!(r.get::<_, bool>(3));
}

#[tokio::test]
async fn unique_partial_and_expression_indexes_are_created() {
    let (db, _d, _p, _m) = migrate_sql(
        "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT, deleted INT);
         CREATE INDEX u_live ON u (name) WHERE deleted = 0;
         CREATE INDEX u_lower ON u (lower(name));
         INSERT INTO u VALUES (1, 'a@x', 'A', 0);",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    let defs: Vec<String> = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'u' ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(defs.len(), 4, "{defs:?}");
    assert!(
        defs.iter()
            .any(|d| d.contains("UNIQUE") && d.contains("(email)")),
        "{defs:?}"
    );
    assert!(
        defs.iter().any(|d| d.contains("WHERE (deleted = 0)")),
        "{defs:?}"
    );
    assert!(defs.iter().any(|d| d.contains("lower(name)")), "{defs:?}");
}

#[tokio::test]
async fn views_over_quoted_tables_are_recreated() {
    let (db, _d, _p, _m) = migrate_sql(
        "CREATE TABLE \"Order Details\" (OrderID INT, Qty INT);
         INSERT INTO \"Order Details\" VALUES (1, 2), (1, 3);
         CREATE VIEW \"Order Totals\" AS SELECT OrderID, sum(Qty) AS total FROM \"Order Details\" GROUP BY OrderID;",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    let total: i64 = scalar(&c, "SELECT total::bigint FROM \"order totals\"").await;
    assert_eq!(total, 5);
}

#[tokio::test]
async fn check_constraints_are_added() {
    let (db, _d, _p, _m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, qty INT CHECK (qty >= 0));
         INSERT INTO t VALUES (1, 5);",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    let err = c
        .execute("INSERT INTO t (qty) VALUES (-1)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );
}

#[tokio::test]
async fn type_mismatch_widens_to_text_and_keeps_every_row() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL);
         INSERT INTO products VALUES (1, 5), (2, 'lots');",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let c = db.client().await;
    let q: Vec<String> = c
        .query("SELECT qty FROM products ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(q, ["5", "lots"]);
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn type_mismatch_without_widening_rejects_the_rows() {
    let mut config = dbtool_migrate::Config::default();
    config.plan.widen = false;
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL);
         INSERT INTO products VALUES (1, 5), (2, 'lots');",
        &config,
    )
    .await;
    assert_rejects(&m, 3, &[(2, "qty", "rejected", "does not fit")]);
    assert_eq!(m.rejects[0]["value"], "lots");
    let c = db.client().await;
    check(&p, &c, &m).await;
}

// ------------------------------------------- keys, identities and foreign keys

/// The finish steps that did not fully succeed, as `(kind, name, outcome)`.
fn finish_problems(m: &common::Migrated) -> Vec<(String, String, String)> {
    m.outcome
        .finish
        .as_ref()
        .expect("the finish phase ran")
        .problems()
        .map(|s| {
            (
                s.kind.to_string(),
                s.name.clone(),
                format!("{:?}", s.outcome),
            )
        })
        .collect()
}

// An INTEGER PRIMARY KEY that also declares a DEFAULT: SQLite never uses the
// default (an omitted id is assigned), but a Postgres column with a default
// cannot become an identity column, so the identity used to be dropped.
#[tokio::test]
async fn identity_column_with_a_default_stays_identity() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT DEFAULT 0, a TEXT);
         CREATE TABLE u (id INTEGER PRIMARY KEY DEFAULT (7), a TEXT);
         INSERT INTO t (a) VALUES ('x'), ('y'); INSERT INTO u (a) VALUES ('x');",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    assert_eq!(finish_problems(&m), []);
    let t = m.outcome.plan.table("t").unwrap();
    assert_eq!(t.columns[0].default, None);
    assert!(
        t.notes.iter().any(|n| n
            == "column id is an INTEGER PRIMARY KEY (the rowid): its DEFAULT 0 was never used by SQLite, which assigns the next id instead; it becomes an identity column without the default"),
        "{:?}",
        t.notes
    );
    let c = db.client().await;
    check(&p, &c, &m).await;
    for (table, next) in [("t", 3i64), ("u", 2)] {
        let id: i64 = scalar(
            &c,
            &format!("INSERT INTO {table} (a) VALUES ('new') RETURNING id"),
        )
        .await;
        assert_eq!(id, next, "table {table}");
    }
}

// SQLite lets a PRIMARY KEY that is not an INTEGER PRIMARY KEY hold NULLs;
// Postgres's PRIMARY KEY implies NOT NULL.
#[tokio::test]
async fn primary_key_over_nulls_becomes_unique_and_is_reported() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE codes (code TEXT, region TEXT, v INT, PRIMARY KEY (code, region));
         INSERT INTO codes VALUES (NULL, 'eu', 1), (NULL, 'eu', 2), ('a', 'eu', 3), ('a', NULL, 4);",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    assert_eq!(finish_problems(&m), []);
    let why = "primary key (code, region) of table codes holds 3 NULLs (SQLite allows that, Postgres does not): created as a UNIQUE constraint instead";
    let plan_text = dbtool_migrate::report::render_plan(&m.outcome.plan);
    assert!(
        plan_text.contains(&format!("\n  primary_key codes_pkey: {why}\n")),
        "{plan_text}"
    );
    let summary = m.outcome.render_summary();
    assert!(
        summary.contains(&format!(
            "\nprimary key codes_pkey on codes changed: {why}\n"
        )),
        "{summary}"
    );
    let t = m.outcome.plan.table("codes").unwrap();
    assert_eq!(t.key, ReadKey::Rowid);
    assert!(t.columns.iter().all(|c| !c.not_null));
    let c = db.client().await;
    let types: Vec<String> = c
        .query(
            "SELECT contype::text FROM pg_constraint WHERE conrelid = 'codes'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["u"]);
    check(&p, &c, &m).await;
}

// Postgres refuses a foreign key whose referenced columns are not a primary
// key or unique constraint of the parent (SQLite accepts it and reports a
// "foreign key mismatch" only when it checks it).
#[tokio::test]
async fn foreign_key_to_non_unique_columns_is_not_planned_and_is_reported() {
    let (db, _d, _p, m) = migrate_sql(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT);
         CREATE TABLE child (id INTEGER PRIMARY KEY,
                             parent_id INT REFERENCES parent(id),
                             parent_code TEXT REFERENCES parent(code));
         INSERT INTO parent VALUES (1, 'a'), (2, 'a');
         INSERT INTO child VALUES (1, 1, 'a'), (2, 99, 'a');",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let fks = &m.outcome.plan.table("child").unwrap().foreign_keys;
    assert_eq!(fks.len(), 2);
    let by_code = fks.iter().find(|f| f.columns == ["parent_code"]).unwrap();
    assert!(by_code.sql.is_none());
    assert_eq!(
        by_code.problem.as_deref(),
        Some("foreign key child (parent_code) references parent (code), which is not a primary key or unique constraint of parent; Postgres requires one: add a UNIQUE constraint on parent (code) after checking the values are unique, then add the foreign key by hand")
    );
    // The other foreign key of the same table is still checked for orphans.
    let by_id = fks.iter().find(|f| f.columns == ["parent_id"]).unwrap();
    assert!(by_id.sql.is_some());
    assert_eq!(by_id.problem, None);
    assert_eq!((by_id.orphans, by_id.orphan_rowids.clone()), (1, vec![2]));
    let mut problems = finish_problems(&m);
    problems.sort();
    assert_eq!(
        problems,
        [
            (
                "foreign_key".to_string(),
                "child_parent_code_fkey".to_string(),
                "Skipped".to_string()
            ),
            (
                "foreign_key".to_string(),
                "child_parent_id_fkey".to_string(),
                "NotValid".to_string()
            ),
        ]
    );
    let c = db.client().await;
    let n: i64 = scalar(
        &c,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'child'::regclass",
    )
    .await;
    assert_eq!(n, 1);
}

#[test]
fn foreign_key_to_a_unique_index_is_planned() {
    let pl = plan_sql(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c TEXT UNIQUE);
         CREATE UNIQUE INDEX parent_ab ON parent (b, a);
         CREATE TABLE child (x TEXT, y TEXT, z TEXT REFERENCES parent(c),
                             FOREIGN KEY (x, y) REFERENCES parent (a, b));",
        &PlanConfig::default(),
    );
    let fks = &pl.table("child").unwrap().foreign_keys;
    // Both keys are planned: a loop over an empty list would pass.
    let mut planned: Vec<(Vec<String>, String)> = fks
        .iter()
        .map(|fk| (fk.columns.clone(), fk.ref_table.clone()))
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        [
            (vec!["x".to_string(), "y".to_string()], "parent".to_string()),
            (vec!["z".to_string()], "parent".to_string()),
        ],
        "{fks:#?}"
    );
    for fk in fks {
        assert_eq!(fk.problem, None, "{}", fk.target_name);
        assert!(fk.sql.is_some(), "{}", fk.target_name);
    }
}

// The loader reads a table by its key (and resumes after the last key read),
// so the key must be one the plan keeps: columns of the planned table that
// hold no NULLs. A primary key over NULLs is not a usable key.
#[test]
fn read_key_comes_from_the_planned_primary_key() {
    let pl = plan_sql(
        "CREATE TABLE shadowed (rowid TEXT, _rowid_ TEXT, oid TEXT, \"K\" TEXT, n INT, PRIMARY KEY (n, k));
         INSERT INTO shadowed VALUES ('r', 'r', 'o', 'a', 1), ('r', 'r', 'o', 'b', 1);
         CREATE TABLE nullkey (rowid TEXT, _rowid_ TEXT, oid TEXT, k TEXT PRIMARY KEY);
         INSERT INTO nullkey VALUES ('r', 'r', 'o', NULL), ('r', 'r', 'o', NULL), ('r', 'r', 'o', 'x');",
        &PlanConfig::default(),
    );
    let t = pl.table("shadowed").unwrap();
    assert_eq!(t.key, ReadKey::PrimaryKey(t.primary_key.clone()));
    assert_eq!(t.primary_key, [4, 3]);
    assert_eq!(t.key_exprs(), ["\"n\"", "\"K\""]);
    let t = pl.table("nullkey").unwrap();
    assert_eq!(t.key, ReadKey::None);
    assert!(
        t.notes.iter().any(|n| n
            == "no rowid, and the primary key (k) holds NULLs, so it cannot order the rows: read in one pass (an interrupted load of this table starts it over)"),
        "{:?}",
        t.notes
    );
}

#[tokio::test]
async fn report_times_each_phase() {
    let (_db, _d, _p, m) = migrate_sql(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INT REFERENCES parent(id));
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);",
        &Default::default(),
    )
    .await;
    let p = m.outcome.phases;
    for (name, s) in [
        ("inspect", p.inspect),
        ("profile", p.profile),
        ("plan", p.plan),
        ("data", p.data),
        ("finish", p.finish),
    ] {
        assert!(
            s > 0.0 && s < m.outcome.seconds,
            "{name}: {s} s of {}",
            m.outcome.seconds
        );
    }
    let json = serde_json::to_value(&m.outcome).unwrap();
    assert_eq!(json["phases"]["finish"].as_f64(), Some(p.finish));
    let summary = m.outcome.render_summary();
    let line = summary
        .lines()
        .find(|l| l.starts_with("phases: "))
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(
        line,
        format!(
            "phases: inspect {:.2} s, profile {:.2} s, plan {:.2} s, data {:.2} s, finish {:.2} s",
            p.inspect, p.profile, p.plan, p.data, p.finish
        )
    );
}

// Big tables are profiled in rowid ranges on several threads; the merged
// profile must be the one a single scan gives (counts, ranges, samples).
#[test]
fn parallel_profile_equals_one_scan() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "big.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v, d TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120000)
         INSERT INTO t SELECT i * 3,
           CASE i % 7 WHEN 0 THEN 'x' || i WHEN 1 THEN i * 0.5 WHEN 2 THEN NULL ELSE i END,
           CASE i % 5 WHEN 0 THEN '2020-01-02' WHEN 1 THEN '2020-01-02 10:00:0' || (i % 10) ELSE 'n' END
         FROM n;",
    );
    let conn = source::open(&p).unwrap();
    let src = source::inspect(&conn, &p).unwrap();
    let t = src.table("t").unwrap();
    let one = dbtool_migrate::profile::profile_table(&conn, t, Some("rowid")).unwrap();
    let many = dbtool_migrate::profile::profile_tables(&conn, &p, &[(t, Some("rowid"))], 3)
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(one.rows, 120_000);
    assert_eq!(
        serde_json::to_value(&many).unwrap(),
        serde_json::to_value(&one).unwrap()
    );
}

// ------------------------------------------------- more hazards, end to end

#[tokio::test]
async fn rtree_content_is_migrated_and_its_shadow_tables_are_not() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE VIRTUAL TABLE geo USING rtree(id, minx, maxx, miny, maxy);
         INSERT INTO geo VALUES (1, 0.5, 1.5, -2.0, 2.0), (7, 10, 20, 30, 40);",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let mut shadows: Vec<&str> = m
        .outcome
        .plan
        .skipped
        .iter()
        .filter(|s| s.kind == SkipKind::ShadowTable)
        .map(|s| s.name.as_str())
        .collect();
    shadows.sort_unstable();
    assert_eq!(shadows, ["geo_node", "geo_parent", "geo_rowid"]);
    let c = db.client().await;
    let rows: Vec<(i64, f64, f64)> = c
        .query("SELECT id, minx, maxy FROM geo ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // R*Tree stores 32-bit floats: 0.5 and 40 are exact in both.
    assert_eq!(rows, [(1, 0.5, 2.0), (7, 10.0, 40.0)]);
    let tables: i64 = scalar(
        &c,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'geo%'",
    )
    .await;
    assert_eq!(tables, 1, "no shadow tables in the target");
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn generated_columns_are_copied_as_plain_columns_and_noted() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a INT,
                         twice INT GENERATED ALWAYS AS (a * 2) VIRTUAL,
                         next INT AS (a + 1) STORED);
         INSERT INTO t (id, a) VALUES (1, 10), (2, 21);",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let notes = &m.outcome.plan.table("t").unwrap().notes;
    for c in ["twice", "next"] {
        assert!(
            notes
                .iter()
                .any(|n| n.contains(&format!("column {c} is a generated column"))),
            "{notes:?}"
        );
    }
    let c = db.client().await;
    let rows: Vec<(i64, i64, i64)> = c
        .query("SELECT a, twice, next FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows, [(10, 20, 11), (21, 42, 22)]);
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn untranslatable_view_default_and_index_are_reported_and_the_rest_lands() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT,
                         token BLOB DEFAULT (randomblob(16)));
         INSERT INTO t (id, name) VALUES (1, 'ab'), (2, 'cd');
         CREATE INDEX t_glob ON t (name GLOB 'a*');
         CREATE VIEW v AS SELECT id, printf('%05d', id) AS padded FROM t;",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let plan = &m.outcome.plan;
    let t = plan.table("t").unwrap();
    assert!(
        t.notes
            .iter()
            .any(|n| n.starts_with("default of column token (randomblob(16)) not translated")),
        "{:?}",
        t.notes
    );
    // GLOB has no Postgres operator: the index is tried, fails, and is
    // reported with Postgres's error; so is the view over printf().
    let problems = finish_problems(&m);
    for (kind, name) in [("index", "t_glob"), ("view", "v")] {
        assert!(
            problems.iter().any(|(k, n, _)| k == kind && n == name),
            "{kind} {name} not reported: {problems:?}"
        );
    }
    let steps = &m.outcome.finish.as_ref().unwrap().steps;
    for name in ["t_glob", "v"] {
        let s = steps.iter().find(|s| s.name == name).unwrap();
        assert!(s.error.as_deref().is_some_and(|e| !e.is_empty()), "{s:?}");
    }
    let c = db.client().await;
    let views: i64 = scalar(
        &c,
        "SELECT count(*) FROM pg_views WHERE schemaname = 'public'",
    )
    .await;
    assert_eq!(views, 0);
    check(&p, &c, &m).await;
}

const ORPHANS: &str = "PRAGMA foreign_keys = OFF;
     CREATE TABLE parent (id INTEGER PRIMARY KEY);
     CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INT REFERENCES parent(id));
     INSERT INTO parent VALUES (1);
     INSERT INTO child VALUES (1, 1), (2, 99), (3, 98);";

#[tokio::test]
async fn foreign_key_policy_skip_leaves_it_out_and_says_why() {
    let mut config = dbtool_migrate::Config::default();
    config.plan.foreign_keys = plan::FkPolicy::Skip;
    let (db, _d, p, m) = migrate_sql(ORPHANS, &config).await;
    assert_eq!(m.outcome.exit_code, 0);
    let step = m
        .outcome
        .finish
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .find(|s| s.kind == dbtool_migrate::StepKind::ForeignKey)
        .expect("a foreign-key step");
    let why = step.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("2 orphan rows") && why.contains("[2, 3]") && why.contains("policy skip"),
        "{why}"
    );
    let c = db.client().await;
    let fks: i64 = scalar(
        &c,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'child'::regclass",
    )
    .await;
    assert_eq!(fks, 0);
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn foreign_key_policy_fail_stops_with_the_orphans_named() {
    let mut config = dbtool_migrate::Config::default();
    config.plan.foreign_keys = plan::FkPolicy::Fail;
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(dir.path(), "src.db", ORPHANS);
    let db = dbtool_testkit::pg().await;
    let err = common::migrate(&p, &db.url(), "public", &config, dir.path())
        .await
        .err()
        .expect("the migration fails");
    let msg = err.to_string();
    assert!(
        msg.contains("table child has 2 orphan rows") && msg.contains("[2, 3]"),
        "{msg}"
    );
    assert!(
        msg.contains("foreign_keys = \"not_valid\" or \"skip\""),
        "{msg}"
    );
    // The orphans were found when the foreign key failed validation, after
    // the rows were in: the constraint is dropped again, and the same
    // command stops the same way (the run is left unfinished, not done).
    let c = db.client().await;
    let fk_count =
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'child'::regclass";
    assert_eq!(scalar(&c, fk_count).await, 0);
    assert_eq!(scalar(&c, "SELECT count(*) FROM child").await, 3);
    let again = common::migrate(&p, &db.url(), "public", &config, dir.path())
        .await
        .err()
        .expect("the same command fails again")
        .to_string();
    assert!(
        again.contains("table child has 2 orphan rows") && again.contains("[2, 3]"),
        "{again}"
    );
    assert_eq!(scalar(&c, fk_count).await, 0);
}

// A migration does not search the source for orphans before its first row
// (`Profiling::Load`): the foreign key is validated on the target, and
// only a failed validation counts them. `dbtool plan` still counts them.
#[test]
fn a_migration_plan_leaves_the_orphan_count_to_the_finish_phase() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(dir.path(), "src.db", ORPHANS);
    let conn = source::open(&p).unwrap();
    let src = source::inspect(&conn, &p).unwrap();
    let config = PlanConfig::default();
    let fk_of = |profiling| {
        let (pl, _) = plan::plan_timed_with(&conn, &src, &config, "public", profiling).unwrap();
        let fk = pl.table("child").unwrap().foreign_keys[0].clone();
        (
            fk.orphans,
            fk.orphan_rowids,
            fk.orphans_deferred,
            fk.ref_columns,
        )
    };
    assert_eq!(
        fk_of(plan::Profiling::Full),
        (2, vec![2, 3], false, vec!["id".to_string()])
    );
    assert_eq!(
        fk_of(plan::Profiling::Load),
        (0, vec![], true, vec!["id".to_string()])
    );
}

#[tokio::test]
async fn epoch_microseconds_arrive_exactly() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE ev (id INTEGER PRIMARY KEY, created_at DATETIME);
         INSERT INTO ev VALUES (1, 1700000000123456), (2, 1700000001000001), (3, NULL);",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let col = m
        .outcome
        .plan
        .table("ev")
        .unwrap()
        .column("created_at")
        .unwrap();
    assert_eq!(
        (col.pg_type, col.epoch),
        (PgType::Timestamptz, Some(Epoch::Micros))
    );
    let c = db.client().await;
    let got: Vec<Option<String>> = c
        .query(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ev ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        got,
        [
            Some("2023-11-14 22:13:20.123456".to_string()),
            Some("2023-11-14 22:13:21.000001".to_string()),
            None
        ]
    );
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn identity_continues_past_max_id_when_sqlite_sequence_is_behind() {
    let (db, _d, _p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT);
         INSERT INTO t (a) VALUES ('1'), ('2');
         INSERT INTO t (id, a) VALUES (40, 'explicit');
         UPDATE sqlite_sequence SET seq = 3 WHERE name = 't';",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let c = db.client().await;
    let id: i64 = scalar(&c, "INSERT INTO t (a) VALUES ('new') RETURNING id").await;
    assert_eq!(id, 41);
}

#[tokio::test]
async fn nocase_unique_key_is_created_and_the_collation_change_reported() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE UNIQUE);
         INSERT INTO u VALUES (1, 'a@x.org'), (2, 'B@x.org');",
        &Default::default(),
    )
    .await;
    assert_eq!(m.outcome.exit_code, 0);
    let ix: Vec<_> = m
        .outcome
        .plan
        .table("u")
        .unwrap()
        .indexes
        .iter()
        .filter(|i| i.kind == IndexKind::Unique)
        .collect();
    assert_eq!(ix.len(), 1, "{ix:?}");
    assert!(
        ix[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("non-binary collation")),
        "{ix:?}"
    );
    let c = db.client().await;
    // Postgres compares exactly: a case variant is now a different key,
    // which is what the note warns about.
    c.execute("INSERT INTO u VALUES (3, 'A@X.ORG')", &[])
        .await
        .unwrap();
    let dup = c
        .execute("INSERT INTO u VALUES (4, 'a@x.org')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        dup.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    c.execute("DELETE FROM u WHERE id = 3", &[]).await.unwrap();
    check(&p, &c, &m).await;
}

#[tokio::test]
async fn snapshot_reads_a_copy_and_lands_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::sqlite_file(
        dir.path(),
        "src.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);
         INSERT INTO t VALUES (1, 'one'), (2, 'two');",
    );
    let before = std::fs::read(&p).unwrap();
    let db = dbtool_testkit::pg().await;
    let mut opts = dbtool_migrate::run::Options::new(&p, db.url().parse().unwrap());
    opts.snapshot = true;
    opts.jobs = Some(2);
    let config = dbtool_migrate::Config::default();
    let outcome = dbtool_migrate::run::migrate(opts, &config, &dbtool_migrate::run::Quiet)
        .await
        .expect("migrate from a snapshot");
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "the source is untouched"
    );
    let c = db.client().await;
    let m = common::Migrated {
        outcome,
        rejects: Vec::new(),
    };
    check(&p, &c, &m).await;
    let n: i64 = scalar(&c, "SELECT count(*) FROM t").await;
    assert_eq!(n, 2);
}

// The oracle itself: a check that cannot fail would prove nothing, so
// tamper with the target and make sure it notices.
#[tokio::test]
async fn the_check_catches_a_changed_value_a_lost_row_and_an_extra_row() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, x REAL, s TEXT, at DATETIME);
         INSERT INTO t VALUES (1, 0.1, 'a', '2024-01-02 03:04:05.123456+00:00'),
                              (2, 2.5, 'b', '2024-01-02T03:04:05Z');",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    check(&p, &c, &m).await;
    let tamper = [
        // The 17th significant digit of a double.
        (
            "UPDATE t SET x = 0.10000000000000002 WHERE id = 1",
            "UPDATE t SET x = 0.1 WHERE id = 1",
        ),
        (
            "UPDATE t SET at = at + interval '1 microsecond' WHERE id = 1",
            "UPDATE t SET at = at - interval '1 microsecond' WHERE id = 1",
        ),
        (
            "UPDATE t SET s = 'b ' WHERE id = 2",
            "UPDATE t SET s = 'b' WHERE id = 2",
        ),
        (
            "DELETE FROM t WHERE id = 2",
            "INSERT INTO t VALUES (2, 2.5, 'b', '2024-01-02T03:04:05Z')",
        ),
        (
            "INSERT INTO t VALUES (3, 1, 'c', NULL)",
            "DELETE FROM t WHERE id = 3",
        ),
    ];
    for (break_it, mend_it) in tamper {
        c.batch_execute(break_it).await.unwrap();
        let res = common::check_against_source(&p, &c, &m.outcome.plan, &m).await;
        assert!(res.is_err(), "the check missed: {break_it}");
        c.batch_execute(mend_it).await.unwrap();
        common::check_against_source(&p, &c, &m.outcome.plan, &m)
            .await
            .unwrap_or_else(|e| panic!("after mending {break_it}: {e:#}"));
    }
}

// The oracle again: a regression that rejects a good row, and records it
// faithfully in the reject file, must not pass. The row is removed from the
// target and recorded as rejected with its true value: the check must say
// the value fits its column.
#[tokio::test]
async fn the_check_catches_a_good_row_recorded_as_rejected() {
    let (db, _d, p, m) = migrate_sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        &Default::default(),
    )
    .await;
    let c = db.client().await;
    check(&p, &c, &m).await;
    c.batch_execute("DELETE FROM t WHERE id = 2").await.unwrap();
    let mut outcome = m.outcome.clone();
    outcome.exit_code = 3;
    let claimed = common::Migrated {
        outcome,
        rejects: vec![serde_json::json!({
            "table": "t", "rowid": 2, "pk": {"id": 2}, "column": "s",
            "reason": "made up", "value": "b", "action": "rejected",
        })],
    };
    let err = common::check_against_source(&p, &c, &claimed.outcome.plan, &claimed)
        .await
        .expect_err("a good row recorded as rejected passed the check");
    assert!(
        format!("{err:#}")
            .contains("the row is rejected (\"made up\"), but its value \"b\" fits the column"),
        "{err:#}"
    );
}
