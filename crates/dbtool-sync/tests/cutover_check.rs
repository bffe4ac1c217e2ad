//! The cutover's check in two parts: the rows changed before the freeze are
//! compared while the app still writes (the pre-check), and the freeze
//! compares only the rows written after it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use dbtool_sync::cutover::{self, Options};
use dbtool_sync::state::Target;
use dbtool_sync::sync::{self, Observer, Outcome, Quiet};

fn target(url: &str) -> Vec<Target> {
    vec![Target {
        shard: String::new(),
        to: url.parse().unwrap(),
    }]
}

async fn until_idle(file: &Path, url: &str) {
    let mut o = sync::Options::new(file, target(url));
    o.until_idle = true;
    let out = sync::run(o, &Quiet).await.expect("sync");
    assert_eq!(out, Outcome::Idle);
}

fn options(file: &Path, url: &str) -> Options {
    Options {
        from: file.to_path_buf(),
        targets: target(url),
        sharded: None,
        max_freeze: Duration::from_secs(5),
        wait: Duration::from_secs(30),
        batch: 5000,
    }
}

/// A file with 100 posts, synced into a fresh database, then 40 of them
/// edited and synced again (their keys are the "changed since the sync
/// started" the check compares).
async fn synced(dir: &Path) -> (PathBuf, dbtool_testkit::TestDb) {
    let file = dir.join("forum.db");
    let c = rusqlite::Connection::open(&file).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT NOT NULL, score REAL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
         INSERT INTO posts SELECT i, 'post ' || i, i * 0.5 FROM n;",
    )
    .unwrap();
    let db = dbtool_testkit::pg().await;
    until_idle(&file, &db.url()).await;
    c.execute_batch("UPDATE posts SET body = body || ' edited' WHERE id <= 40")
        .unwrap();
    until_idle(&file, &db.url()).await;
    (file, db)
}

/// Writes like the app the moment the pre-check reports, before the freeze.
struct AppAfterPrecheck {
    file: PathBuf,
    sql: &'static str,
    seen: Mutex<Vec<String>>,
}

impl Observer for AppAfterPrecheck {
    fn message(&self, text: &str) {
        if text.starts_with("pre-check:") {
            rusqlite::Connection::open(&self.file)
                .unwrap()
                .execute_batch(self.sql)
                .unwrap();
        }
        self.seen.lock().unwrap().push(text.to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freeze_compares_only_rows_written_after_the_precheck() {
    let dir = tempfile::tempdir().unwrap();
    let (file, db) = synced(dir.path()).await;
    let obs = AppAfterPrecheck {
        file: file.clone(),
        sql: "UPDATE posts SET score = 99.5 WHERE id IN (3, 77)",
        seen: Mutex::new(Vec::new()),
    };
    let report = cutover::cutover(options(&file, &db.url()), &obs)
        .await
        .expect("cutover");
    // The 40 edited rows were compared before the freeze; under the lock,
    // only the two written after the pre-check.
    assert_eq!(report.keys_prechecked, 40, "{:?}", obs.seen.lock().unwrap());
    assert_eq!(report.keys_checked, 2);
    let client = db.client().await;
    let score: f64 = client
        .query_one("SELECT score FROM public.posts WHERE id = 77", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(score, 99.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_row_altered_after_the_precheck_aborts_the_cutover_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (file, db) = synced(dir.path()).await;
    // The target alters the row the app writes after the pre-check (a
    // stand-in for anything that changes Postgres behind the sync's back).
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION public.tamper() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.body = 'after the pre-check' THEN NEW.body := 'altered'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER tamper BEFORE INSERT OR UPDATE ON public.posts
             FOR EACH ROW EXECUTE FUNCTION public.tamper();",
        )
        .await
        .unwrap();
    let obs = AppAfterPrecheck {
        file: file.clone(),
        sql: "UPDATE posts SET body = 'after the pre-check' WHERE id = 7",
        seen: Mutex::new(Vec::new()),
    };
    let err = cutover::cutover(options(&file, &db.url()), &obs)
        .await
        .expect_err("the cutover must abort")
        .to_string();
    assert!(
        err.contains(r#"table posts key {"id":7}: values differ"#),
        "{err}"
    );
    assert!(err.contains("cutover aborted, nothing switched"), "{err}");
    // Row 7 was equal (and compared) in the pre-check: the recheck caught it.
    let seen = obs.seen.lock().unwrap().join("\n");
    assert!(seen.contains("pre-check: 40 changed rows equal"), "{seen}");
    // Nothing switched: the app still writes to the file.
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute("UPDATE posts SET score = 1 WHERE id = 8", [])
        .unwrap();
    let phase: String = client
        .query_one("SELECT phase FROM dbtool.syncs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "streaming");
}
