//! Fixture for the reverse-sync tests: a sample forums.db migrated into a
//! fresh database and "cut over" per the sync/cutover contract (the
//! `_dbtool_meta` table, capture triggers that honour `echo_off`, the moved
//! mark, the reverse slot).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dbtool_sync::reverse;
use dbtool_testkit::TestDb;
use rusqlite::Connection;

pub struct Fixture {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub slot: String,
}

/// The sample's tables (all migrated).
pub const TABLES: &[&str] = &[
    "teams",
    "users",
    "forums",
    "topics",
    "posts",
    "wiki_pages",
    "settings",
];

/// Drops the fixture's slots even when the test failed: a database with a
/// logical slot cannot be dropped, and a slot keeps WAL on the shared server.
impl Drop for Fixture {
    fn drop(&mut self) {
        drop_slots_blocking(&self.db.url());
    }
}

/// Drops every dbtool slot of the database at `url`, from any context.
pub fn drop_slots_blocking(url: &str) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let target: dbtool_pool::Target = url.parse().unwrap();
            if let Ok(c) = target.connect().await {
                let _ = reverse::drop_all(&c).await;
            }
        });
    })
    .join()
    .ok();
}

pub fn sample(dir: &Path) -> PathBuf {
    let file = dir.join("forums.db");
    let mut o = dbtool_sample::Options::new(&file);
    o.scale = 0.01;
    dbtool_sample::generate(&o).expect("sample");
    file
}

/// Migrates `file` into `db` and cuts over: moved mark and capture triggers
/// in the file, the reverse slot in Postgres.
pub async fn cut_over(db: &TestDb, file: &Path, shard: Option<&str>) -> String {
    let report = dbtool_migrate::run::migrate(
        dbtool_migrate::run::Options::new(file, db.url().parse().unwrap()),
        &dbtool_migrate::Config::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await
    .expect("migration runs");
    assert_eq!(report.exit_code, 0);
    let slot = reverse::slot_name(db.name(), shard);
    let tables: Vec<String> = TABLES
        .iter()
        .map(|t| format!("\"public\".\"{t}\""))
        .collect();
    reverse::start_at_cutover(&db.client().await, &slot, &tables)
        .await
        .expect("slot at cutover");
    slot
}

/// What the forward capture and the cutover put in the file (per the
/// contract): every trigger fires only when `echo_off` is not 1.
pub fn mark_file(file: &Path) {
    let conn = Connection::open(file).unwrap();
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS _dbtool_meta (key TEXT PRIMARY KEY, value);
         CREATE TABLE IF NOT EXISTS _dbtool_changes (id INTEGER PRIMARY KEY, tbl TEXT, op TEXT);
         INSERT OR REPLACE INTO _dbtool_meta VALUES ('moved_to', 'postgres://127.0.0.1/test');",
    );
    const WHEN: &str = "WHEN (SELECT value FROM _dbtool_meta WHERE key = 'echo_off') IS NOT 1";
    for t in TABLES {
        for (op, ev) in [("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE")] {
            sql.push_str(&format!(
                "CREATE TRIGGER _dbtool_capture_{t}_{op} AFTER {ev} ON {t} {WHEN}
                 BEGIN INSERT INTO _dbtool_changes (tbl, op) VALUES ('{t}', '{op}'); END;
                 CREATE TRIGGER _dbtool_moved_{t}_{op} BEFORE {ev} ON {t} {WHEN}
                 BEGIN SELECT RAISE(ABORT, 'moved to PostgreSQL (postgres://127.0.0.1/test): write there'); END;"
            ));
        }
    }
    conn.execute_batch(&sql).unwrap();
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path());
    let db = dbtool_testkit::pg().await;
    let slot = cut_over(&db, &file, None).await;
    mark_file(&file);
    Fixture {
        db,
        dir,
        file,
        slot,
    }
}

/// Rows captured by the forward capture stand-in (must stay 0: no echo).
pub fn captured(file: &Path) -> i64 {
    Connection::open(file)
        .unwrap()
        .query_row("SELECT count(*) FROM _dbtool_changes", [], |r| r.get(0))
        .unwrap()
}

/// `dbtool verify` (the library) of the file against the target: no differences.
pub async fn assert_verifies(file: &Path, url: &str) {
    let r = dbtool_verify::verify(&dbtool_verify::Options::new(file, url))
        .await
        .expect("verify runs");
    assert!(
        r.diffs.is_empty() && r.structure.is_empty(),
        "verify found differences: {:?} {:?}",
        r.diffs,
        r.structure
    );
    for t in &r.tables {
        assert_eq!(t.missing + t.extra + t.changed, 0, "{}", t.table);
    }
}

/// Drops every dbtool slot in the database (tests clean up what they made).
pub async fn drop_slots(db: &TestDb) {
    reverse::drop_all(&db.client().await).await.unwrap();
}
