//! Safe on first use, through the real binary against the testkit's
//! Postgres: the mistakes a new user makes (no target, a typo in an
//! override, an unwritable report, a resume with other options, a server that
//! never answers, verifying the wrong file) end with a distinct exit code and
//! a message that says what happened and what to do, before anything is
//! written; a target whose keys failed is not a success (exit 4); and the
//! commands users of other migrators expect (`--if-exists`, `--max-rejects`,
//! `runs`, `clean`, `--log-file`) do what their help says.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{dbtool, run, stderr, stdout, text};
use dbtool_testkit::TestDb;

/// Three small tables; with `bad`, post 2's body is not UTF-8 (rejected).
fn source(dir: &Path, bad: bool) -> PathBuf {
    let path = dir.join("forums.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                             body TEXT, score INTEGER);
         CREATE TABLE audit (msg TEXT);
         INSERT INTO users VALUES (1, 'ann'), (2, 'bob');
         INSERT INTO posts VALUES (1, 1, 'hi', 5), (2, 2, 'yo', 6), (3, 1, 'x', 7);
         INSERT INTO audit VALUES ('a'), ('b');",
    )
    .unwrap();
    if bad {
        c.execute_batch("UPDATE posts SET body = CAST(X'FFFE41' AS TEXT) WHERE id = 2")
            .unwrap();
    }
    path
}

fn migrate(dir: &Path, src: &Path, url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["migrate", "--from", src.to_str().unwrap(), "--to", url];
    args.extend_from_slice(extra);
    run(dir, &args)
}

async fn count(db: &TestDb, table: &str) -> i64 {
    db.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn has_dbtool_schema(db: &TestDb) -> bool {
    db.client()
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'dbtool')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn run_status(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query("SELECT status FROM dbtool.runs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

// Issue item 4: no --to, no DATABASE_URL, no PG* variables, no dbtool.toml.
#[test]
fn migrate_and_verify_without_any_target_exit_2_naming_the_ways_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    for cmd in ["migrate", "verify"] {
        let out = run(dir.path(), &[cmd, "--from", src.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        let err = stderr(&out);
        for want in [
            "no target database given",
            "--to URL",
            "DATABASE_URL",
            "[pool] primary in dbtool.toml",
            "PGHOST",
        ] {
            assert!(err.contains(want), "{cmd}: stderr lacks {want:?}:\n{err}");
        }
    }
}

// Item 4: the resolved target is printed before anything is written, and in
// the summary; the summary is on stdout (item 12).
#[tokio::test]
async fn migrate_names_the_resolved_target_before_writing_and_in_the_summary() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let out = dbtool(dir.path())
        .args(["migrate", "--from", src.to_str().unwrap()])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = dbtool_pool::mask_password(&db.url());
    let shown = shown.split('?').next().unwrap();
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("migrating ")
            && first.contains(" (from DATABASE_URL), schema public")
            && first.contains(&db.name().to_string()),
        "first stderr line does not name the target:\n{err}"
    );
    let summary = stdout(&out);
    assert!(
        summary.lines().next().unwrap_or_default().contains(" -> ") && summary.contains(db.name()),
        "summary on stdout does not name the target:\n{summary}\n(expected {shown})"
    );
    assert!(summary.contains("total"), "{summary}");
    assert!(!err.contains("total "), "summary also on stderr:\n{err}");
}

// Item 12: a missing source is a usage error (2) in migrate, verify and plan.
#[test]
fn a_missing_source_exits_2_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["migrate", "verify", "plan"] {
        let out = run(
            dir.path(),
            &[
                cmd,
                "--from",
                "nosuch.db",
                "--to",
                "postgres://u@127.0.0.1:1/db",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        assert!(
            stderr(&out).contains("--from nosuch.db: No such file or directory"),
            "{cmd}: {}",
            text(&out)
        );
    }
}

// Item 12: a source that is not a database fails before the target gets a
// dbtool schema.
#[tokio::test]
async fn an_unreadable_source_leaves_the_target_untouched() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("forums.db");
    std::fs::write(
        &src,
        b"this is not a database, just text that is long enough",
    )
    .unwrap();
    let out = migrate(dir.path(), &src, &db.url(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("file is not a database"),
        "{}",
        text(&out)
    );
    assert!(
        !has_dbtool_schema(&db).await,
        "an unreadable source created the dbtool schema"
    );
}

// Item 5: an unwritable --report or --rejects is found before the first row
// is read; nothing is written to the target.
#[tokio::test]
async fn an_unwritable_report_or_reject_path_fails_before_the_load() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), true);
    for (flag, what) in [("--report", "report"), ("--rejects", "reject file")] {
        let out = migrate(
            dir.path(),
            &src,
            &db.url(),
            &[flag, "/nonexistent-dir/out.json"],
        );
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "cannot write the {what} /nonexistent-dir/out.json: No such file or directory"
            )),
            "{flag}: {err}"
        );
        assert!(
            !has_dbtool_schema(&db).await,
            "{flag}: the target was written"
        );
    }
}

// Item 2: a primary key that cannot be built (1 and '1' are two keys in
// SQLite, one in a text column) is exit 4, named in the summary.
#[tokio::test]
async fn a_key_that_fails_to_build_exits_4_and_is_named() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("keys.db");
    let c = rusqlite::Connection::open(&src).unwrap();
    c.execute_batch(
        "CREATE TABLE k (code PRIMARY KEY, v TEXT);
         INSERT INTO k VALUES (1, 'one'), ('1', 'text one'), ('x', 'ex');",
    )
    .unwrap();
    drop(c);
    let out = migrate(dir.path(), &src, &db.url(), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("FAILED (exit 4): the rows are loaded but 1 key(s) could not be built: primary key k_pkey"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&db, "public.k").await, 3);
    let help = stdout(&run(dir.path(), &["migrate", "--help"]));
    assert!(
        help.contains(
            "4  rows loaded, but a primary key, unique constraint or foreign key failed to"
        ),
        "{help}"
    );
}

// Item 3: a server that accepts TCP and never answers: every command gives
// up after connect_timeout, naming the host.
#[test]
fn a_server_that_never_answers_fails_after_connect_timeout_naming_the_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, never write a byte.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    listener.set_nonblocking(true).unwrap();
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let url = format!("postgres://u@127.0.0.1:{port}/db?connect_timeout=1&sslmode=disable");
    let host = format!("127.0.0.1:{port}");
    for (cmd, code) in [("migrate", 1), ("verify", 2), ("plan", 1), ("runs", 1)] {
        let mut args = vec![cmd];
        if cmd != "runs" {
            args.extend(["--from", src.to_str().unwrap()]);
        }
        args.extend(["--to", &url]);
        let out = run(dir.path(), &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {err}");
        let err = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default()
            .to_owned();
        assert!(
            err.contains(&host) && err.contains("no answer within 1s (connect_timeout)"),
            "{cmd}: {err}"
        );
        assert_eq!(
            err.matches(&host).count(),
            1,
            "{cmd}: the host is named more than once:\n{err}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    holder.join().unwrap();
}

// Item 7: an override naming no column is exit 2 with the closest match, in
// plan and migrate, before anything is written.
#[tokio::test]
async fn an_override_that_names_no_column_exits_2_with_the_closest_match() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    std::fs::write(
        dir.path().join("dbtool.toml"),
        "[migrate.columns.\"posts.scroe\"]\ntype = \"text\"\n",
    )
    .unwrap();
    for cmd in ["plan", "migrate"] {
        let out = run(
            dir.path(),
            &[cmd, "--from", src.to_str().unwrap(), "--to", &db.url()],
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        assert!(
            stderr(&out)
                .contains("[migrate.columns.\"posts.scroe\"] in the config names no column of")
                && stderr(&out).contains("did you mean \"posts.score\"?"),
            "{cmd}: {}",
            text(&out)
        );
    }
    assert!(!has_dbtool_schema(&db).await);
}

// Item 9: the override example in `plan --help` works on the sample: no
// posts row is predicted to be rejected.
#[test]
fn the_override_example_in_plan_help_rejects_no_sample_row() {
    let dir = tempfile::tempdir().unwrap();
    let help = stdout(&run(dir.path(), &["plan", "--help"]));
    let example: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("[migrate.columns."))
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert!(example.len() >= 3, "no override example in:\n{help}");
    std::fs::write(dir.path().join("dbtool.toml"), example.join("\n")).unwrap();
    let db = dir.path().join("sample.db");
    let mut o = dbtool_sample::Options::new(&db);
    o.scale = 0.01;
    dbtool_sample::generate(&o).expect("generate the sample");
    let out = run(
        dir.path(),
        &["plan", "--from", db.to_str().unwrap(), "--json"],
    );
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let posts = plan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source_name"] == "posts")
        .unwrap();
    let col = posts["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source_name"] == "created_at")
        .unwrap();
    assert_eq!(col["pg_type"], "timestamp", "{col:#}");
    let problems: Vec<&serde_json::Value> = col["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] != "null")
        .collect();
    assert!(
        problems.is_empty(),
        "the example rejects rows: {problems:#?}"
    );
}

// Items 9 and 8: --max-rejects stops the run (exit 1) keeping what it
// committed; a resume with other options is refused naming them (exit 2);
// the same options with a higher limit resume and complete (exit 3, one
// reject, no row twice).
#[tokio::test]
async fn max_rejects_stops_the_run_and_a_resume_with_other_options_is_refused() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), true);
    let out = migrate(dir.path(), &src, &db.url(), &["--max-rejects", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("stopped: 1 rows rejected, more than --max-rejects 0"),
        "{}",
        text(&out)
    );
    assert_eq!(run_status(&db).await, ["loading"]);

    let out = migrate(
        dir.path(),
        &src,
        &db.url(),
        &["--max-rejects", "5", "--include", "posts", "--strict"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is unfinished and was started with other options: --include none (now posts), --strict off (now on)")
            && err.contains("--restart"),
        "{err}"
    );

    let out = migrate(dir.path(), &src, &db.url(), &["--max-rejects", "5"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains("resuming run"), "{}", text(&out));
    // Item 12: a resumed run's total counts from the run's start, so no
    // table's seconds (summed over attempts) exceed it.
    let summary = stdout(&out);
    let seconds = |name: &str| -> f64 {
        let line = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{summary}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    let total = seconds("total");
    for t in ["users", "posts", "audit"] {
        assert!(
            seconds(t) <= total,
            "{t} took longer than the run:\n{summary}"
        );
    }
    assert_eq!(run_status(&db).await, ["done"]);
    assert_eq!(count(&db, "public.posts").await, 2);
    // The default reject file name (the one commands.rs checks plan never writes).
    let rejects = std::fs::read_to_string(dir.path().join("forums.db.rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert_eq!(count(&db, "public.users").await, 2);
}

// Item 10: verify against a target whose run is of another file, or
// unfinished, says so first and exits 2.
#[tokio::test]
async fn verify_of_another_file_or_an_unfinished_run_says_so_and_exits_2() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), true);
    let out = migrate(dir.path(), &src, &db.url(), &["--max-rejects", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = run(
        dir.path(),
        &["verify", "--from", src.to_str().unwrap(), "--to", &db.url()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out)
            .contains("is unfinished (status loading): the target holds only part of the rows"),
        "{}",
        text(&out)
    );

    let other_dir = tempfile::tempdir().unwrap();
    let other = source(other_dir.path(), false);
    let out = run(
        dir.path(),
        &[
            "verify",
            "--from",
            other.to_str().unwrap(),
            "--to",
            &db.url(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the migration runs recorded in the target are of another source file")
            && err.contains(&std::fs::canonicalize(&src).unwrap().display().to_string()),
        "{err}"
    );
}

// Item 12: `verify -q` prints the DIFFERENT verdict; --include and its
// alias --tables are the same option; a copy of the migrated file verifies
// against its run (same size, change counter and schema cookie).
#[tokio::test]
async fn verify_quiet_still_says_different_and_tables_is_include() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let out = migrate(dir.path(), &src, &db.url(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A copy of the migrated file elsewhere is the same data: its run counts.
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("copy.db");
    std::fs::copy(&src, &copy).unwrap();
    let out = run(
        dir.path(),
        &[
            "verify",
            "--from",
            copy.to_str().unwrap(),
            "--to",
            &db.url(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "a copy: {}", text(&out));
    db.client()
        .await
        .execute("UPDATE posts SET body = 'changed' WHERE id = 3", &[])
        .await
        .unwrap();
    let s = src.to_str().unwrap();
    let url = db.url();
    let out = run(dir.path(), &["-q", "verify", "--from", s, "--to", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).starts_with("DIFFERENT: 1 of 3 tables differ (posts)"),
        "{}",
        text(&out)
    );
    for flag in ["--tables", "--include"] {
        let out = run(
            dir.path(),
            &["verify", "--from", s, "--to", &url, flag, "users", "audit"],
        );
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out));
    }
    let out = run(
        dir.path(),
        &["verify", "--from", s, "--to", &url, "--exclude", "posts"],
    );
    assert_eq!(out.status.code(), Some(0), "--exclude: {}", text(&out));
    assert!(!stdout(&out).contains("\nposts "), "{}", text(&out));
}

// Item 12: --data-only does not say it creates tables; no ANSI colours on a
// pipe, even with debug logging.
#[tokio::test]
async fn data_only_does_not_claim_to_create_tables_and_no_colours_off_a_terminal() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let out = migrate(dir.path(), &src, &db.url(), &["--schema-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("creating the target tables"));
    let out = dbtool(dir.path())
        .args([
            "migrate",
            "--from",
            src.to_str().unwrap(),
            "--to",
            &db.url(),
            "--data-only",
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    assert!(!err.contains("creating the target tables"), "{err}");
    assert!(err.contains("DEBUG"), "no debug log to check: {err}");
    assert!(!err.contains('\u{1b}'), "ANSI escapes on a pipe:\n{err:?}");
}

// Item 13: an existing table stops a new run; --if-exists drop replaces it
// (no row twice); --data-only --if-exists truncate reloads into it.
#[tokio::test]
async fn if_exists_drop_and_truncate_replace_existing_tables_without_doubling_rows() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let url = db.url();
    assert_eq!(migrate(dir.path(), &src, &url, &[]).status.code(), Some(0));
    db.client()
        .await
        .batch_execute("DROP SCHEMA dbtool CASCADE")
        .await
        .unwrap();
    let out = migrate(dir.path(), &src, &url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains("--if-exists drop"),
        "{}",
        text(&out)
    );
    let out = migrate(dir.path(), &src, &url, &["--if-exists", "drop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("--if-exists drop: dropping"));
    assert_eq!(count(&db, "public.posts").await, 3);

    let out = migrate(dir.path(), &src, &url, &["--if-exists", "truncate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--if-exists truncate needs --data-only"));
    let out = migrate(
        dir.path(),
        &src,
        &url,
        &["--data-only", "--if-exists", "truncate"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(count(&db, "public.posts").await, 3);
    assert_eq!(count(&db, "public.users").await, 2);
}

// Item 13: `dbtool runs` lists the runs with their state; `dbtool clean`
// says what it would drop, refuses an unfinished run, and drops the schema
// with --yes --force, keeping the migrated tables; --log-file has the log
// and the final error.
#[tokio::test]
async fn runs_lists_the_runs_clean_drops_the_schema_and_log_file_keeps_the_error() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), true);
    let url = db.url();
    let log = dir.path().join("dbtool.log");
    let out = migrate(
        dir.path(),
        &src,
        &url,
        &["--max-rejects", "0", "--log-file", log.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("planning: reading the schema")
            && logged.contains("error: migration of ")
            && logged.contains("more than --max-rejects 0"),
        "{logged}"
    );
    assert!(!logged.contains('\u{1b}'), "{logged:?}");

    let out = run(dir.path(), &["runs", "--to", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed = stdout(&out);
    let line = listed.lines().nth(1).unwrap_or_default();
    assert!(
        line.trim_start().starts_with("1  loading")
            && line.ends_with(&std::fs::canonicalize(&src).unwrap().display().to_string()),
        "{listed}"
    );

    let out = run(dir.path(), &["clean", "--to", &url, "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("is unfinished (loading); add --force"),
        "{}",
        text(&out)
    );
    let out = run(dir.path(), &["clean", "--to", &url, "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("would drop schema dbtool") && stderr(&out).contains("runs"),
        "{}",
        text(&out)
    );
    assert!(has_dbtool_schema(&db).await);
    let out = run(dir.path(), &["clean", "--to", &url, "--force", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!has_dbtool_schema(&db).await);
    assert!(count(&db, "public.users").await > 0, "clean dropped data");
    let out = run(dir.path(), &["runs", "--to", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).starts_with("no migration runs recorded in"));
}

// Item 11: error text has no doubled phrase and no URL repeated.
#[test]
fn error_text_has_no_doubled_phrases() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let s = src.to_str().unwrap();
    let out = run(
        dir.path(),
        &["migrate", "--from", s, "--to", "postgres://u@h:notaport/db"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: --to: invalid connection string: "),
        "{err}"
    );
    assert_eq!(err.matches("invalid connection string").count(), 1, "{err}");
    assert!(err.contains("port"), "the cause is lost: {err}");
    // A refused connection: the target named once, no doubled "db error".
    let out = run(
        dir.path(),
        &[
            "migrate",
            "--from",
            s,
            "--to",
            "postgres://u@127.0.0.1:1/db?sslmode=disable",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    let err = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert_eq!(err.matches("127.0.0.1:1").count(), 1, "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("error: error"), "{err}");
    assert!(!err.contains("db error: db error"), "{err}");
}

// Item 11: `database is locked` on a rollback-journal file says who holds it.
#[tokio::test]
async fn a_locked_source_says_what_holds_the_lock() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), false);
    let writer = rusqlite::Connection::open(&src).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE; INSERT INTO audit VALUES ('c');",
        )
        .unwrap();
    for extra in [&[][..], &["--snapshot"][..]] {
        let out = migrate(dir.path(), &src, &db.url(), extra);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains("database is locked")
                && err.contains("is locked by a writer (it is open in pid ")
                && err.contains(&format!("pid {} (", std::process::id())),
            "{extra:?}: {err}"
        );
    }
    writer.execute_batch("ROLLBACK").unwrap();
    assert!(!has_dbtool_schema(&db).await);
}
