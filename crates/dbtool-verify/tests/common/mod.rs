//! What the verify integration tests share: a source file built by the test,
//! migrated into a fresh database of the shared Postgres, then verified.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};

use dbtool_testkit::TestDb;
use dbtool_verify::{Options, Report};

pub struct Fixture {
    pub db: TestDb,
    pub _dir: tempfile::TempDir,
    pub source: PathBuf,
}

/// Builds the source with `build` in a temporary directory and migrates it
/// (rejects beside it), asserting the migration's exit code: `why` says what
/// the fixture holds that makes it so.
pub async fn migrated(build: fn(&Path) -> PathBuf, exit_code: u8, why: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let source = build(dir.path());
    let db = dbtool_testkit::pg().await;
    let mut opts = dbtool_migrate::run::Options::new(&source, db.url().parse().unwrap());
    opts.rejects = Some(dir.path().join("rejects.jsonl"));
    let outcome = dbtool_migrate::run::migrate(
        opts,
        &dbtool_migrate::Config::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await
    .expect("migration runs");
    assert_eq!(outcome.exit_code, exit_code, "{why}");
    Fixture {
        db,
        _dir: dir,
        source,
    }
}

pub async fn verify(f: &Fixture) -> Report {
    verify_with(f, |_| {}).await
}

pub async fn verify_with(f: &Fixture, tweak: impl FnOnce(&mut Options)) -> Report {
    let mut opts = Options::new(&f.source, f.db.url());
    tweak(&mut opts);
    dbtool_verify::verify(&opts).await.expect("verify runs")
}

pub async fn exec(f: &Fixture, sql: &str) {
    f.db.client().await.batch_execute(sql).await.unwrap();
}
