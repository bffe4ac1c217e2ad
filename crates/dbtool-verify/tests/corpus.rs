//! Migrate every file of the shared corpus, then verify it: the rows of each
//! must verify equal, apart from the rows the migration rejected.
//!
//! Structure problems (a planned key, FK or identity the target lacks) are
//! printed but do not fail this test: some are impossible in Postgres (a
//! primary key over NULLs, an FK to a non-unique column) and the migrate tests
//! own the DDL. Verify's own structure checks are tested in `verify.rs`.
//!
//! The corpus is found through `DBTOOL_CORPUS` (default
//! `<workspace>/../shared/corpus`); without it the test says so and passes.

use std::path::PathBuf;

use dbtool_verify::{DiffKind, Options};
use futures::StreamExt;

/// Must fail to migrate (the migrate tests check its error), so not verified.
const CORRUPT: &str = "mbtiles__corrupt.mbtiles.db";
/// Files migrated and verified at once.
const CONCURRENCY: usize = 4;

fn corpus_dir() -> PathBuf {
    std::env::var_os("DBTOOL_CORPUS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
        PathBuf::from,
    )
}

enum Outcome {
    Equal { rejected: u64, rows: u64 },
    MigrateFailed(String),
    Different(String),
    StructureOnly(String),
}

async fn one(path: PathBuf) -> Outcome {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = dbtool_migrate::run::Options::new(&path, db.url().parse().unwrap());
    opts.rejects = Some(dir.path().join("rejects.jsonl"));
    opts.jobs = Some(1);
    if let Err(e) = dbtool_migrate::run::migrate(
        opts,
        &dbtool_migrate::Config::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await
    {
        return Outcome::MigrateFailed(format!("{e}"));
    }
    let mut vopts = Options::new(&path, db.url());
    vopts.jobs = 1;
    match dbtool_verify::verify(&vopts).await {
        Err(e) => Outcome::Different(format!("verify could not run: {e}")),
        Ok(r) if r.is_equal() => Outcome::Equal {
            rejected: r.tables.iter().map(|t| t.rejected).sum(),
            rows: r.tables.iter().map(|t| t.rows_compared).sum(),
        },
        Ok(r) => {
            let mut s = String::new();
            for t in r.tables.iter().filter(|t| t.differs()) {
                s.push_str(&format!(
                    "\n    {}: missing {} extra {} changed {} {}",
                    t.table,
                    t.missing,
                    t.extra,
                    t.changed,
                    t.skipped.as_deref().unwrap_or("")
                ));
            }
            for d in r
                .diffs
                .iter()
                .filter(|d| d.kind != DiffKind::Rejected)
                .take(5)
            {
                s.push_str(&format!(
                    "\n    {} {:?} {} {:?}",
                    d.table, d.kind, d.pk, d.columns
                ));
            }
            for st in r.structure.iter().filter(|s| !s.warning) {
                s.push_str(&format!(
                    "\n    structure: {} {}: {}",
                    st.table, st.kind, st.detail
                ));
            }
            if r.tables.iter().all(|t| !t.differs()) {
                return Outcome::StructureOnly(s);
            }
            // Keep the database for a look when its rows differ.
            let mut db = db;
            db.keep();
            Outcome::Different(s)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_file_verifies_equal_after_migration() {
    let dir = corpus_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        // Without the corpus a developer's run says so and passes; in CI
        // that would be a green test that tested nothing.
        assert!(
            std::env::var_os("CI").is_none(),
            "corpus not found at {} and CI is set: the corpus tests must run in CI",
            dir.display()
        );
        println!(
            "corpus not found at {} (set DBTOOL_CORPUS): skipping",
            dir.display()
        );
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e != "md"))
        .filter(|p| {
            let n = p.to_string_lossy();
            !(n.ends_with("-wal") || n.ends_with("-shm") || n.ends_with("-journal"))
        })
        .filter(|p| p.file_name().is_some_and(|n| n != CORRUPT))
        .collect();
    files.sort();
    // 85 files: 84 that migrate and the corrupt one left out above.
    assert_eq!(
        files.len(),
        84,
        "{} is not the corpus (84 migratable files expected): {files:?}",
        dir.display()
    );
    // Polled concurrently on this task: the migrator does its SQLite reads on
    // blocking threads, so a few files at once keep both cores busy.
    let results: Vec<(String, Outcome)> = futures::stream::iter(files)
        .map(|f| async move {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, one(f).await)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let (mut equal, mut failed_migrations, mut different, mut structure) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for (name, outcome) in results {
        match outcome {
            Outcome::Equal { rejected, rows } => {
                equal += 1;
                println!("equal      {name}: {rows} rows compared, {rejected} rejected");
            }
            Outcome::MigrateFailed(e) => {
                println!("not migrated {name}: {e}");
                failed_migrations.push(name);
            }
            Outcome::StructureOnly(s) => {
                println!("rows equal {name}, STRUCTURE PROBLEMS:{s}");
                structure.push(name);
            }
            Outcome::Different(s) => {
                println!("DIFFERENT  {name}:{s}");
                different.push(name);
            }
        }
    }
    println!(
        "{equal} equal, {} different, {} with structure problems, {} failed to migrate",
        different.len(),
        structure.len(),
        failed_migrations.len()
    );
    // Every file but the corrupt one migrates (the migrate corpus test says
    // why when one does not), and verify then expects 0: equal rows (rejected
    // rows listed as such) and no structure problem.
    assert!(
        different.is_empty(),
        "files that verify found different: {different:?}"
    );
    assert!(
        structure.is_empty(),
        "files whose structure verify found different from the plan: {structure:?}"
    );
    assert!(
        failed_migrations.is_empty(),
        "files that did not migrate: {failed_migrations:?}"
    );
    assert_eq!(equal, 84, "every migratable file verifies equal");
}
