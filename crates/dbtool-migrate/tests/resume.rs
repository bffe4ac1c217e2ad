//! Exactly-once resume: SIGKILL a migration at several points, resume it,
//! and compare the target with a clean run's, row by row.
//!
//! How the kill tests get a process to kill: this test binary re-runs
//! itself (`current_exe()`) with `--exact child_migrates_from_env --ignored`,
//! so the child is the ignored test `child_migrates_from_env`, which calls
//! `run::migrate` with settings from `DBTOOL_CHILD_*` variables and prints an
//! `EVENT ...` line on stdout at each phase and committed batch. The parent
//! reads those lines and kills the child with SIGKILL at chosen points.
//! No separate binary or example has to be built first, so
//! `cargo test -p dbtool-migrate --test resume` is all it takes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use dbtool_migrate::run::{self, Options, Phase, Progress, Quiet};
use dbtool_migrate::Error;

/// Rows of the multi-table source.
const USERS: i64 = 3000;
const POSTS: i64 = 12000;
const TAGS: i64 = 4000;
const LOGS: i64 = 2500;
/// Every 500th post body holds a NUL: Postgres text cannot, so it is rejected.
const NUL_EVERY: i64 = 500;

/// Builds a source with a rowid table split into ranges (posts), a WITHOUT
/// ROWID table (tags, keyset by primary key), a table with no usable key
/// (odd: its columns shadow every rowid alias), and rows to reject.
fn make_source(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, score REAL,
                             created DATETIME, avatar BLOB);
         CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), body TEXT, n INTEGER);
         CREATE TABLE tags (name TEXT, post_id INTEGER, weight REAL, PRIMARY KEY (name, post_id)) WITHOUT ROWID;
         CREATE TABLE odd (rowid TEXT, _rowid_ TEXT, oid INTEGER);
         BEGIN;",
    )
    .unwrap();
    for i in 1..=USERS {
        c.execute(
            "INSERT INTO users (name, score, created, avatar) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                format!("user {i} ü🙂"),
                i as f64 / 7.0,
                format!("2024-01-{:02} 10:{:02}:00", i % 28 + 1, i % 60),
                vec![(i % 256) as u8, 0, 1, 2]
            ],
        )
        .unwrap();
    }
    for i in 1..=POSTS {
        let body = if i % NUL_EVERY == 0 {
            format!("bad\0post {i}")
        } else {
            format!("post {i} {}", "lorem ipsum ".repeat((i % 7) as usize))
        };
        c.execute(
            "INSERT INTO posts (id, user_id, body, n) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![i * 3, i % USERS + 1, body, i * 1000],
        )
        .unwrap();
    }
    for i in 0..TAGS {
        c.execute(
            "INSERT INTO tags VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("tag{}", i % 97), i, i as f64 * 0.25],
        )
        .unwrap();
    }
    for i in 0..LOGS {
        c.execute(
            "INSERT INTO odd VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("r{i}"), format!("x{i}"), i],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// Small chunks, so the posts table is split into several rowid ranges
/// loaded in parallel.
fn config() -> dbtool_migrate::Config {
    let mut c = dbtool_migrate::Config::default();
    c.load.chunk_rows = 2000;
    c
}

fn options(from: &Path, url: &str, rejects: &Path) -> Options {
    let mut o = Options::new(from, url.parse().unwrap());
    o.rejects = Some(rejects.to_path_buf());
    o.batch_rows = Some(500);
    o.jobs = Some(2);
    // A killed run's lock session may outlive it by a moment (its server
    // process ends when it notices the client is gone): the next attempt
    // waits for it rather than stopping with "another dbtool migrate ...".
    o.wait = true;
    o
}

/// Every table of `schema` (except dbtool's), each as its sorted rows' text.
async fn snapshot_target(url: &str) -> Vec<(String, Vec<String>)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let mut rows: Vec<String> = client
            .query(&format!("SELECT t::text FROM public.\"{t}\" t"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        out.push((t, rows));
    }
    out
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// Decides, for an event line and the batches committed so far, whether to kill now.
type KillPoint = dyn Fn(&str, usize) -> bool;

/// How a child run ended.
#[derive(Debug, PartialEq)]
enum End {
    Killed,
    Exited(u8),
}

/// Runs the migration in a child process and SIGKILLs it once `kill_at`
/// says so for an event line (None: let it finish).
fn run_child(from: &Path, url: &str, rejects: &Path, kill_at: Option<&KillPoint>) -> End {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_migrates_from_env",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("DBTOOL_CHILD_FROM", from)
        .env("DBTOOL_CHILD_TO", url)
        .env("DBTOOL_CHILD_REJECTS", rejects)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut batches = 0;
    let mut code = None;
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        seen.push(line.clone());
        let Some(event) = line.strip_prefix("EVENT ") else {
            continue;
        };
        if event.starts_with("batch") {
            batches += 1;
        }
        if let Some(c) = event.strip_prefix("exit ") {
            code = c
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u8>().ok());
        }
        if let Some(f) = kill_at {
            if f(event, batches) {
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                return End::Killed;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "child test process failed: {status:?}");
    let code = code.unwrap_or_else(|| panic!("child printed no exit code; its output: {seen:#?}"));
    if seen.iter().any(|l| l.contains("EVENT problem")) {
        eprintln!("child output: {seen:#?}");
    }
    End::Exited(code)
}

/// Child process entry point for the kill tests; does nothing unless
/// spawned by them (it is `#[ignore]`d so `cargo test` skips it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry for the kill tests"]
async fn child_migrates_from_env() {
    let (Ok(from), Ok(to), Ok(rejects)) = (
        std::env::var("DBTOOL_CHILD_FROM"),
        std::env::var("DBTOOL_CHILD_TO"),
        std::env::var("DBTOOL_CHILD_REJECTS"),
    ) else {
        return;
    };
    struct Events;
    impl Progress for Events {
        fn message(&self, text: &str) {
            println!("EVENT message {text}");
        }
        fn phase(&self, phase: Phase) {
            println!("EVENT phase {phase:?}");
        }
        fn rows(&self, table: &str, rows: u64, _rejected: u64) {
            println!("EVENT batch {table} {rows}");
        }
        fn finish_task(&self, kind: &str, table: &str, _name: &str) {
            println!("EVENT task {kind} {table}");
        }
    }
    let opts = options(Path::new(&from), &to, Path::new(&rejects));
    match run::migrate(opts, &config(), &Events).await {
        Ok(report) => {
            for p in report.finish.iter().flat_map(|f| f.problems()) {
                println!("EVENT problem {p:?}");
            }
            println!("EVENT exit {}", report.exit_code)
        }
        Err(e) => println!("EVENT exit 1 {e}"),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    source: PathBuf,
    clean: Vec<(String, Vec<String>)>,
    clean_rejects: Vec<String>,
    /// The clean run's schema objects ([`snapshot_structure`]).
    clean_structure: Vec<String>,
    /// The clean run's finish report ([`finish_steps`]).
    clean_steps: Vec<String>,
    dir: PathBuf,
}

/// A source and the target of a clean, uninterrupted run of it.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("forums.db");
    make_source(&source);
    let db = dbtool_testkit::pg().await;
    let rejects = dir.path().join("clean.rejects.jsonl");
    let report = run::migrate(options(&source, &db.url(), &rejects), &config(), &Quiet)
        .await
        .unwrap();
    assert_eq!(report.exit_code, 3, "the NUL posts are rejected");
    let clean = snapshot_target(&db.url()).await;
    let clean_structure = snapshot_structure(&db.url()).await;
    let client = db.client().await;
    let clean_steps = finish_steps(&client).await;
    let chunks: i64 = client
        .query_one(
            "SELECT count(*) FROM dbtool.checkpoints WHERE table_name = 'posts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        chunks >= 3,
        "posts is split into rowid ranges ({chunks} chunks)"
    );
    let clean_rejects = sorted_lines(&rejects);
    assert_eq!(clean_rejects.len() as i64, POSTS / NUL_EVERY);
    let names: Vec<&str> = clean.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["odd", "posts", "tags", "users"]);
    let posts = &clean.iter().find(|(t, _)| t == "posts").unwrap().1;
    assert_eq!(posts.len() as i64, POSTS - POSTS / NUL_EVERY);
    Setup {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        source,
        clean,
        clean_rejects,
        clean_structure,
        clean_steps,
    }
}

/// Runs the migration of `s` into `db` in a child once per kill point,
/// killing it there, and after each kill waits until the killed client's
/// server processes are idle; then, unless a run ended before its kill
/// point (it must exit 3, and ends the series), once more to the end.
/// Asserts that the target then holds the clean run's rows and `rejects`
/// its rejects, exactly once. Returns how many runs were killed.
async fn kill_and_resume(
    s: &Setup,
    db: &dbtool_testkit::TestDb,
    rejects: &Path,
    points: &[&KillPoint],
) -> usize {
    let client = db.client().await;
    let mut kills = 0;
    let mut finished = false;
    for &point in points {
        match run_child(&s.source, &db.url(), rejects, Some(point)) {
            End::Killed => kills += 1,
            End::Exited(code) => {
                assert_eq!(code, 3, "the run ended before its kill point");
                finished = true;
                break;
            }
        }
        wait_idle(&client).await;
    }
    if !finished {
        assert_eq!(
            run_child(&s.source, &db.url(), rejects, None),
            End::Exited(3)
        );
    }
    assert_eq!(snapshot_target(&db.url()).await, s.clean);
    assert_eq!(
        sorted_lines(rejects),
        s.clean_rejects,
        "rejects are recorded exactly once"
    );
    kills
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kills_at_every_phase_equals_a_clean_run() {
    let s = setup().await;
    let db = dbtool_testkit::pg().await;
    let rejects = s.dir.join("killed.rejects.jsonl");
    // Kill points: right after the schema phase starts (the DDL transaction
    // may or may not have committed), after the first batch, in the middle
    // of the load, as the finish phase starts; then let it complete.
    let at_schema = |e: &str, _: usize| e == "phase Schema" || e == "phase Load";
    let after_one = |_: &str, b: usize| b >= 1;
    let after_seven = |_: &str, b: usize| b >= 7;
    let at_finish = |e: &str, _: usize| e == "phase Finish";
    let points = [
        &at_schema as &KillPoint,
        &after_one,
        &after_seven,
        &after_seven,
        &at_finish,
    ];
    assert_eq!(kill_and_resume(&s, &db, &rejects, &points).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kills_at_random_moments_has_no_duplicates_or_gaps() {
    let s = setup().await;
    let db = dbtool_testkit::pg().await;
    let rejects = s.dir.join("random.rejects.jsonl");
    // Kill at a moment unrelated to batch boundaries: after a varying number
    // of events, plus whatever the child did while the parent read the line.
    let points: Vec<Box<KillPoint>> = [3usize, 11, 5, 17]
        .into_iter()
        .map(|n| {
            let seen = AtomicUsize::new(0);
            Box::new(move |_: &str, _: usize| seen.fetch_add(1, Ordering::SeqCst) + 1 >= n)
                as Box<KillPoint>
        })
        .collect();
    let points: Vec<&KillPoint> = points.iter().map(|p| p.as_ref()).collect();
    let kills = kill_and_resume(&s, &db, &rejects, &points).await;
    assert!(kills >= 2, "killed {kills} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_source_modified_since_the_run_began() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("forums.db");
    make_source(&source);
    let db = dbtool_testkit::pg().await;
    let rejects = dir.path().join("r.jsonl");
    let end = run_child(
        &source,
        &db.url(),
        &rejects,
        Some(&|_: &str, b: usize| b >= 2),
    );
    assert_eq!(end, End::Killed);
    let c = rusqlite::Connection::open(&source).unwrap();
    c.execute("INSERT INTO users (name) VALUES ('late')", [])
        .unwrap();
    drop(c);
    let err = run::migrate(options(&source, &db.url(), &rejects), &config(), &Quiet)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
    assert!(err.to_string().contains("--restart"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_the_source_during_the_load_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("forums.db");
    make_source(&source);
    let db = dbtool_testkit::pg().await;
    // At the first committed batch, an application commits a row (WAL mode
    // lets it while the loader's snapshots are open) and the load goes on
    // slowly enough for the watcher to notice.
    struct Writer {
        path: PathBuf,
        done: AtomicUsize,
    }
    impl Progress for Writer {
        fn rows(&self, _table: &str, _rows: u64, _rejected: u64) {
            if self.done.fetch_add(1, Ordering::SeqCst) == 0 {
                let c = rusqlite::Connection::open(&self.path).unwrap();
                c.execute("INSERT INTO users (name) VALUES ('concurrent')", [])
                    .unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let w = Writer {
        path: source.clone(),
        done: AtomicUsize::new(0),
    };
    let mut opts = options(&source, &db.url(), &dir.path().join("r.jsonl"));
    opts.batch_rows = Some(100);
    let err = run::migrate(opts, &config(), &w).await.unwrap_err();
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_stops_at_the_first_bad_value_naming_table_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("forums.db");
    make_source(&source);
    let db = dbtool_testkit::pg().await;
    let mut opts = options(&source, &db.url(), &dir.path().join("r.jsonl"));
    opts.strict = true;
    opts.include = vec!["posts".into()];
    let err = run::migrate(opts, &config(), &Quiet).await.unwrap_err();
    match &err {
        Error::RowFailed {
            table, row, column, ..
        } => {
            assert_eq!(table, "posts");
            assert_eq!(column, "body");
            assert!(row.starts_with("rowid "), "{row}");
            let rowid: i64 = row["rowid ".len()..].parse().unwrap();
            assert_eq!(rowid % (3 * NUL_EVERY), 0, "a post with a NUL");
        }
        other => panic!("expected RowFailed, got {other}"),
    }
}

/// Every schema object of `public` the finish phase makes, as text:
/// constraints (with whether they are validated), indexes, identity
/// columns, sequence positions, views.
async fn snapshot_structure(url: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for sql in [
        "SELECT format('constraint %s %s %s %s %s', conrelid::regclass, conname, contype, convalidated, pg_get_constraintdef(oid))
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT format('index %s %s', indexname, indexdef) FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT format('identity %s.%s', table_name, column_name) FROM information_schema.columns
          WHERE table_schema = 'public' AND is_identity = 'YES'",
        "SELECT format('view %s %s', viewname, definition) FROM pg_views WHERE schemaname = 'public'",
    ] {
        for r in client.query(sql, &[]).await.unwrap() {
            out.push(r.get(0));
        }
    }
    let seqs: Vec<String> = client
        .query(
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in seqs {
        let r = client
            .query_one(&format!("SELECT last_value, is_called FROM {s}"), &[])
            .await
            .unwrap();
        out.push(format!(
            "sequence {s} {} {}",
            r.get::<_, i64>(0),
            r.get::<_, bool>(1)
        ));
    }
    out.sort();
    out
}

/// The finish steps of the last run's stored report, without timings, sorted.
async fn finish_steps(client: &tokio_postgres::Client) -> Vec<String> {
    let report: serde_json::Value = client
        .query_one(
            "SELECT report FROM dbtool.runs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut steps: Vec<String> = report["finish"]["steps"]
        .as_array()
        .expect("the report has finish steps")
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {} {}",
                s["kind"], s["table"], s["name"], s["outcome"], s["error"]
            )
        })
        .collect();
    steps.sort();
    steps
}

/// Waits until no other session of the database runs a statement (a killed
/// client's server process finishes the statement it was in first).
async fn wait_idle(client: &tokio_postgres::Client) {
    for _ in 0..300 {
        let busy: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if busy == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("sessions of the killed run are still busy after 30 s");
}

// The finish phase is idempotent: killed while it builds keys and indexes
// (with some tables done, one waiting, foreign keys not begun), then run
// again, the target ends with the same objects and finish report as a clean
// run; so does a run killed after its last statement, before it was marked done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_killed_midway_and_rerun_equals_a_clean_run() {
    let s = setup().await;
    assert!(
        s.clean_structure
            .iter()
            .any(|o| o.starts_with("constraint posts posts_user_id_fkey f t ")),
        "{:#?}",
        s.clean_structure
    );

    let db = dbtool_testkit::pg().await;
    let rejects = s.dir.join("killed.rejects.jsonl");
    let after_one = |_: &str, b: usize| b >= 1;
    assert_eq!(
        run_child(&s.source, &db.url(), &rejects, Some(&after_one)),
        End::Killed
    );
    // The tables exist now. Holding posts in ACCESS SHARE lets the load
    // (ROW EXCLUSIVE) and the other tables' keys through, and holds up the
    // primary key of posts (ACCESS EXCLUSIVE), and with it every foreign key.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE public.posts IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let in_finish = |e: &str, _: usize| {
        let now = e == "phase Finish";
        if now {
            std::thread::sleep(std::time::Duration::from_millis(1500));
        }
        now
    };
    assert_eq!(
        run_child(&s.source, &db.url(), &rejects, Some(&in_finish)),
        End::Killed
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    wait_idle(&locker).await;
    let partial = snapshot_structure(&db.url()).await;
    assert!(
        !partial.iter().any(|o| o.contains("posts_user_id_fkey")),
        "killed before the foreign keys: {partial:#?}"
    );

    kill_and_resume(&s, &db, &rejects, &[]).await;
    assert_eq!(snapshot_structure(&db.url()).await, s.clean_structure);
    assert_eq!(finish_steps(&locker).await, s.clean_steps);

    // Killed after the last statement of the finish phase: everything exists.
    locker
        .execute("UPDATE dbtool.runs SET status = 'finishing'", &[])
        .await
        .unwrap();
    kill_and_resume(&s, &db, &rejects, &[]).await;
    assert_eq!(snapshot_structure(&db.url()).await, s.clean_structure);
    assert_eq!(finish_steps(&locker).await, s.clean_steps);
}

// Finish steps run per table during the load. Killed at the first of them
// (others still loading), then at a foreign key's validation, then at an
// ANALYZE, each time resumed: the target ends with the same rows, objects and
// finish report as a clean run, and the rejects are recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_tables_finish_during_the_load_resumes_to_a_clean_run() {
    let s = setup().await;
    let db = dbtool_testkit::pg().await;
    let rejects = s.dir.join("killed.rejects.jsonl");
    // The first finish task of the first attempt, and whether the load was
    // still running then (no "phase Finish" yet).
    static FINISHING: AtomicUsize = AtomicUsize::new(0);
    static EARLY: AtomicUsize = AtomicUsize::new(0);
    let first_task = |e: &str, _: usize| {
        if e == "phase Finish" {
            FINISHING.store(1, Ordering::SeqCst);
        }
        let now = e.starts_with("task ");
        if now && FINISHING.load(Ordering::SeqCst) == 0 {
            EARLY.store(1, Ordering::SeqCst);
        }
        now
    };
    let at_fk = |e: &str, _: usize| e.starts_with("task foreign_key");
    let at_analyze = |e: &str, _: usize| e.starts_with("task analyze");
    let points = [&first_task as &KillPoint, &at_fk, &at_analyze];
    assert_eq!(kill_and_resume(&s, &db, &rejects, &points).await, 3);
    assert_eq!(
        EARLY.load(Ordering::SeqCst),
        1,
        "the first finish task started while the load ran"
    );
    let client = db.client().await;
    assert_eq!(snapshot_structure(&db.url()).await, s.clean_structure);
    assert_eq!(finish_steps(&client).await, s.clean_steps);
}
