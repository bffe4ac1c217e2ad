//! Migrates every file of the real-world corpus (`DBTOOL_CORPUS`, default
//! `<workspace>/../shared/corpus`, 85 SQLite files written by other people)
//! into a fresh database and checks, with an independent reader of both
//! sides, that every source row is in the target with equal values or in the
//! reject records, and that the exit code matches.

mod common;

use std::time::Instant;

/// Files in the corpus (besides INDEX.md): 84 that migrate and one corrupt
/// one. A corpus with another count is the wrong directory, not a pass.
const CORPUS_FILES: usize = 85;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_file_migrates_exactly_or_reports_its_rejects() {
    let Some(dir) = common::corpus_dir() else {
        // On a developer's machine without the corpus the test says so and
        // passes; in CI a missing corpus is a failure, never a green skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "corpus not found (DBTOOL_CORPUS, default <workspace>/../shared/corpus) and CI is set: the corpus tests must run in CI"
        );
        println!(
            "corpus not found (set DBTOOL_CORPUS to the directory of the SQLite corpus); skipping"
        );
        return;
    };
    let only = std::env::var("DBTOOL_CORPUS_ONLY").ok();
    let listing = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .expect("read corpus dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x != "md"))
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| p.to_string_lossy().contains(o))
        })
        .collect();
    files.sort();
    if only.is_none() {
        assert_eq!(
            files.len(),
            CORPUS_FILES,
            "{} holds {} files, not the corpus's {CORPUS_FILES}: {files:?}",
            dir.display(),
            files.len()
        );
    }
    let work = tempfile::tempdir().expect("tempdir");
    let config = dbtool_migrate::Config::default();
    let mut failures: Vec<String> = Vec::new();
    let mut migrated_files = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let t0 = Instant::now();
        let db = dbtool_testkit::pg().await;
        let result = common::migrate(path, &db.url(), "corpus", &config, work.path()).await;
        if name == "mbtiles__corrupt.mbtiles.db" {
            match result {
                Ok(_) => failures.push(format!("{name}: migrated, but the file is corrupt")),
                Err(e) => {
                    let msg = e.to_string();
                    if !(msg.contains("mbtiles__corrupt.mbtiles.db")
                        && (msg.contains("corrupt") || msg.contains("malformed")))
                    {
                        failures.push(format!("{name}: unclear error: {msg}"));
                    }
                }
            }
            continue;
        }
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: migrate failed: {e}"));
                continue;
            }
        };
        let client = db.client().await;
        if let Err(e) = common::check_against_source(path, &client, &m.outcome.plan, &m).await {
            failures.push(format!("{name}: {e:#}"));
            continue;
        }
        migrated_files += 1;
        println!(
            "{name}: ok, {} tables, {} rejects, exit {}, {:.1}s",
            m.outcome.plan.tables.len(),
            m.rejects.len(),
            m.outcome.exit_code,
            t0.elapsed().as_secs_f64()
        );
    }
    // Reading must leave the shared corpus as it was: no `-wal`/`-shm`
    // files beside a WAL-mode database, no journal.
    let after = listing();
    if after != before {
        let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
        failures.push(format!(
            "the corpus directory changed while reading it: new files {new:?}"
        ));
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    println!("{migrated_files} corpus files migrated and checked");
    if only.is_none() {
        assert_eq!(
            migrated_files,
            CORPUS_FILES - 1,
            "every file but the corrupt one"
        );
    }
}

// A migration profiles columns declared text without classifying each text
// (`Profiling::Load`); on every real file its plan must decide what
// `dbtool plan` decides.
#[test]
fn every_corpus_file_is_planned_for_the_load_as_plan_plans_it() {
    let Some(dir) = common::corpus_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "corpus not found (DBTOOL_CORPUS, default <workspace>/../shared/corpus) and CI is set: the corpus tests must run in CI"
        );
        println!("corpus not found; skipping");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x != "md"))
        .collect();
    files.sort();
    assert_eq!(files.len(), CORPUS_FILES, "{}", dir.display());
    let mut failures = Vec::new();
    let mut unclassified = 0;
    for path in &files {
        match common::check_load_profiling(path, &Default::default()) {
            Ok(n) => unclassified += n,
            Err(e) => failures.push(format!("{}: {e:#}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(unclassified > 0, "no text was left to the load");
    println!("{unclassified} texts left to the load's cast");
}
