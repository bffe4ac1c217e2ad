//! The finish phase runs during the load: each table's keys and indexes
//! start once its own data is in, each foreign key once both its tables are
//! in; never earlier. The order is read from a log of progress events
//! (committed chunks and started finish tasks), not from clocks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use dbtool_migrate::run::{self, Options, Phase, Progress};

/// One line per event, in the order they happened.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Progress for Log {
    fn phase(&self, phase: Phase) {
        self.push(format!("phase {phase:?}"));
    }
    fn chunk_done(&self, table: &str) {
        self.push(format!("chunk {table}"));
    }
    fn finish_task(&self, kind: &str, table: &str, name: &str) {
        self.push(format!("task {kind} {table} {name}"));
    }
}

/// `users` (small parent), `posts` (big, several chunks, references
/// users), `comments` (references posts and users, loads after posts), `tags`
/// (no foreign keys).
fn make_source(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
                             body TEXT, n INTEGER);
         CREATE INDEX posts_user ON posts (user_id);
         CREATE INDEX posts_n ON posts (n);
         CREATE TABLE comments (id INTEGER PRIMARY KEY, post_id INTEGER REFERENCES posts(id),
                                user_id INTEGER REFERENCES users(id), body TEXT CHECK (length(body) > 0));
         CREATE INDEX comments_post ON comments (post_id);
         CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER);
         BEGIN;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 500)
           INSERT INTO users SELECT i, 'user ' || i FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 16000)
           INSERT INTO posts SELECT i, i % 500 + 1, 'post ' || i || ' ' || hex(randomblob(20)), i * 7 FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 6000)
           INSERT INTO comments SELECT i, i % 16000 + 1, i % 500 + 1, 'comment ' || i FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
           INSERT INTO tags SELECT 'tag' || i, i FROM s;
         COMMIT;",
    )
    .unwrap();
}

/// Position of the last line equal to `line` (None: absent).
fn last(log: &[String], line: &str) -> Option<usize> {
    log.iter().rposition(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_steps_start_only_after_their_tables_and_referenced_tables_are_in() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("forums.db");
    make_source(&source);
    let db = dbtool_testkit::pg().await;
    let mut config = dbtool_migrate::Config::default();
    config.load.chunk_rows = 2000;
    let mut opts = Options::new(&source, db.url().parse().unwrap());
    opts.rejects = Some(dir.path().join("rejects.jsonl"));
    opts.batch_rows = Some(200);
    opts.jobs = Some(2);
    let log = Log::default();
    let report = run::migrate(opts, &config, &log).await.unwrap();
    assert_eq!(report.exit_code, 0, "{report:?}");
    let log = log.lines();

    let client = db.client().await;
    let chunks: HashMap<String, usize> = client
        .query(
            "SELECT table_name, count(*) FROM dbtool.checkpoints GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as usize))
        .collect();
    assert!(
        chunks["posts"] >= 3,
        "posts loads in several chunks: {chunks:?}"
    );
    for (t, n) in &chunks {
        let seen = log.iter().filter(|l| *l == &format!("chunk {t}")).count();
        assert_eq!(seen, *n, "every chunk of {t} is logged once");
    }
    // The position where each table's data is complete.
    let loaded = |t: &str| last(&log, &format!("chunk {t}")).unwrap();

    // Every table is keyed, checked and analyzed exactly once, and each of
    // its tasks starts after its own last chunk.
    let tasks: Vec<(usize, Vec<&str>)> = log
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.strip_prefix("task ").map(|t| (i, t.split(' ').collect())))
        .collect();
    for t in ["users", "posts", "comments", "tags"] {
        for kind in ["keys", "checks", "analyze"] {
            let n = tasks
                .iter()
                .filter(|(_, w)| w[0] == kind && w[1] == t)
                .count();
            assert_eq!(n, 1, "{kind} of {t} once: {log:#?}");
        }
    }
    let mut fks = 0;
    for (at, w) in &tasks {
        assert!(
            *at > loaded(w[1]),
            "{w:?} started before {} was in: {log:#?}",
            w[1]
        );
        if w[0] != "foreign_key" {
            continue;
        }
        fks += 1;
        // The referenced table: named in the constraint's definition.
        let parent: String = client
            .query_one(
                "SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = $1 AND connamespace = 'public'::regnamespace",
                &[&w[2]],
            )
            .await
            .unwrap()
            .get(0);
        let parent = parent.trim_start_matches("public.").to_owned();
        assert!(
            *at > loaded(&parent),
            "{w:?} validated before {parent} was in: {log:#?}"
        );
        // ... and settled: its keys, indexes and CHECKs started before.
        let checks = last(&log, &format!("task checks {parent} {parent}")).unwrap();
        assert!(
            *at > checks,
            "{w:?} before the checks of {parent}: {log:#?}"
        );
    }
    assert_eq!(fks, 3, "{log:#?}");

    // Every foreign key is there and validated.
    let valid: Vec<(String, bool)> = client
        .query(
            "SELECT conname::text, convalidated FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(valid.len(), 3);
    assert!(valid.iter().all(|(_, v)| *v), "{valid:?}");

    // The overlap is real: a table's finish starts while another still
    // loads (four tables on two workers: one completes before the last).
    let first_task = log.iter().position(|l| l.starts_with("task ")).unwrap();
    let load_end = log.iter().rposition(|l| l.starts_with("chunk ")).unwrap();
    assert!(
        first_task < load_end,
        "the finish waited for the whole load: {log:#?}"
    );
    assert!(last(&log, "phase Finish").unwrap() > load_end);
}
