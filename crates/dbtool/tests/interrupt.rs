//! `dbtool migrate` interrupted mid-load, through the real binary: Ctrl-C
//! (SIGINT) stops at a batch boundary, exits 1 and says how to resume; the
//! Postgres server stopped mid-load fails with a message naming the target
//! host (never the password) and the run resumes. In both cases the same
//! command run again completes and the target equals a clean run's (row count
//! and a checksum per table).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use dbtool_testkit::{PgCluster, PgOptions};

/// Rows in the big table: enough for a load of a few seconds at the small
/// batch size below, so the interruption lands mid-load.
const BIG_ROWS: i64 = 150_000;
const LOAD_ARGS: [&str; 4] = ["--jobs", "1", "--batch-rows", "200"];

fn command(dir: &Path, src: &Path, url: &str) -> Command {
    let mut c = common::dbtool(dir);
    c.args(["migrate", "--from", src.to_str().unwrap(), "--to", url]);
    c
}

/// Runs `dbtool migrate` to the end.
fn migrate(dir: &Path, src: &Path, url: &str) -> Output {
    command(dir, src, url)
        .args(LOAD_ARGS)
        .output()
        .expect("run dbtool")
}

/// Starts `dbtool migrate` with stderr piped; returns once stderr says the
/// load began, with the rest of stderr collected by a thread.
fn start_until_loading(dir: &Path, src: &Path, url: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = command(dir, src, url)
        .args(LOAD_ARGS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dbtool");
    let stderr = child.stderr.take().unwrap();
    let (loading_tx, loading_rx) = mpsc::channel();
    let (all_tx, all_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.contains("rows to load") {
                let _ = loading_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = all_tx.send(all);
    });
    if loading_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let all = all_rx.recv().unwrap_or_default();
        panic!("no \"rows to load\" line on stderr:\n{all}");
    }
    (child, all_rx)
}

/// A big table (with a rowid), a small one, and one without a rowid.
fn source(dir: &Path) -> PathBuf {
    let path = dir.join("forums.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                             body TEXT, score REAL);
         CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;
         WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 1000)
         INSERT INTO users SELECT n, 'user ' || n FROM i;
         WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < {BIG_ROWS})
         INSERT INTO posts SELECT n, 1 + n % 1000, printf('post %d %.40c', n, 'x'), n / 7.0 FROM i;
         WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 500)
         INSERT INTO tags SELECT 'tag' || n, n FROM i;"
    ))
    .unwrap();
    path
}

/// (table, row count, md5 of the rows' text in order) of every table in `public`.
async fn contents(client: &tokio_postgres::Client) -> Vec<(String, i64, String)> {
    let names: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
              WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in names {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
                       FROM public.\"{t}\" t"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((t, row.get(0), row.get(1)));
    }
    out
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The rerun (`again`) completed, and the target then equals a clean run of
/// the same command into `clean`: same tables, row counts and checksums.
async fn assert_rerun_equals_a_clean_run(
    again: Output,
    target: &tokio_postgres::Client,
    dir: &Path,
    src: &Path,
    clean: &dbtool_testkit::TestDb,
) {
    assert_eq!(
        again.status.code(),
        Some(0),
        "the rerun completes:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let reference = migrate(dir, src, &clean.url());
    assert_eq!(
        reference.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let got = contents(target).await;
    assert_eq!(got, contents(&clean.client().await).await);
    assert_eq!(
        got.iter()
            .map(|(t, n, _)| (t.as_str(), *n))
            .collect::<Vec<_>>(),
        [("posts", BIG_ROWS), ("tags", 500), ("users", 1000)]
    );
}

#[tokio::test]
async fn ctrl_c_mid_load_stops_says_how_to_resume_and_the_rerun_equals_a_clean_run() {
    interrupted_by("-INT").await;
}

// SIGTERM (what systemd, Kubernetes and `timeout` send) ends the same way as
// Ctrl-C: the same message, the same resumable state.
#[tokio::test]
async fn sigterm_mid_load_stops_like_ctrl_c_and_the_rerun_equals_a_clean_run() {
    interrupted_by("-TERM").await;
}

async fn interrupted_by(signal: &str) {
    let db = dbtool_testkit::pg().await;
    let clean = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());

    let (child, stderr) = start_until_loading(dir.path(), &src, &db.url());
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
    let out = child.wait_with_output().unwrap();
    let err = stderr.recv().unwrap();
    assert_eq!(out.status.code(), Some(1), "{signal} exits 1:\n{err}");
    for want in [
        "interrupted: stopping at the next batch boundary",
        "migration of ",
        " stopped",
        "interrupted; every committed batch is kept: run the same command again (or add --resume) to continue",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    let client = db.client().await;
    let partial = count(&client, "public.posts").await;
    assert!(
        partial < BIG_ROWS,
        "stopped mid-load, yet posts holds all {partial} rows:\n{err}"
    );

    let again = migrate(dir.path(), &src, &db.url());
    assert_rerun_equals_a_clean_run(again, &client, dir.path(), &src, &clean).await;
}

#[tokio::test]
async fn server_stopped_mid_load_fails_naming_the_host_and_the_rerun_equals_a_clean_run() {
    let password = "s3cret-Pw-interrupt";
    let cluster = PgCluster::start_with(PgOptions::new().password(password))
        .await
        .expect("start a dedicated Postgres");
    let db = cluster.fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let url = db.url();
    // postgres://postgres:PASSWORD@HOST:PORT/DB -> HOST:PORT
    let host = url
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    let (child, stderr) = start_until_loading(dir.path(), &src, &url);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop_primary().await.expect("stop the primary");
    let out = child.wait_with_output().unwrap();
    let err = stderr.recv().unwrap();
    assert_eq!(out.status.code(), Some(1), "a lost server exits 1:\n{err}");
    assert!(err.contains(&host), "stderr does not name {host}:\n{err}");
    assert!(
        err.contains("run the same command again to resume"),
        "stderr does not say how to resume:\n{err}"
    );
    assert!(!err.contains(password), "stderr shows the password:\n{err}");

    cluster.start_primary().await.expect("start the primary");
    let client = db.client().await;
    let partial = count(&client, "public.posts").await;
    assert!(
        partial < BIG_ROWS,
        "stopped mid-load, yet posts holds all {partial} rows"
    );
    let again = migrate(dir.path(), &src, &url);
    let clean = cluster.fresh_db().await;
    assert_rerun_equals_a_clean_run(again, &client, dir.path(), &src, &clean).await;
}

// The target running out of disk mid-load. A test cannot fill the machine's
// disk safely, so the real server is made to fail the way a full disk fails
// it: a row trigger on `posts` raises SQLSTATE 53100 (disk_full) with
// Postgres's own message once 20,000 rows are in, then is dropped ("space
// freed"), and the same command resumes.
#[tokio::test]
async fn disk_full_mid_load_fails_saying_so_and_the_rerun_equals_a_clean_run() {
    let db = dbtool_testkit::pg().await;
    let clean = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let schema = command(dir.path(), &src, &db.url())
        .arg("--schema-only")
        .output()
        .expect("run dbtool");
    assert_eq!(
        schema.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&schema.stderr)
    );
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE SEQUENCE fill_seq;
             CREATE FUNCTION fill() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF nextval('fill_seq') > 20000 THEN
                 RAISE EXCEPTION 'could not extend file \"base/1/2\": No space left on device'
                   USING ERRCODE = 'disk_full',
                         HINT = 'Check free disk space.';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER fill BEFORE INSERT ON public.posts
               FOR EACH ROW EXECUTE FUNCTION fill();",
        )
        .await
        .unwrap();

    let data_only = |url: &str| {
        command(dir.path(), &src, url)
            .arg("--data-only")
            .args(LOAD_ARGS)
            .output()
            .expect("run dbtool")
    };
    let out = data_only(&db.url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a full disk exits 1:\n{err}");
    for want in [
        "No space left on device",
        "out of disk space or memory; free some, then run the same command again to resume",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    let partial = count(&client, "public.posts").await;
    assert!(
        (1..BIG_ROWS).contains(&partial),
        "committed batches are kept, the failed one is not: posts holds {partial}"
    );

    client
        .batch_execute(
            "DROP TRIGGER fill ON public.posts; DROP FUNCTION fill(); DROP SEQUENCE fill_seq;",
        )
        .await
        .unwrap();
    let again = data_only(&db.url());
    assert_rerun_equals_a_clean_run(again, &client, dir.path(), &src, &clean).await;
}

// Two runs of the same file into the same schema at once: the second exits 5
// naming the first (pid, host, start time) and writes nothing; a third with
// --wait waits; the first killed with SIGKILL releases the lock with its
// connection, so the waiting run takes over, resumes and completes with
// every row exactly once.
#[tokio::test]
async fn a_second_run_exits_5_naming_the_first_and_a_waiting_run_takes_over_a_killed_one() {
    let db = dbtool_testkit::pg().await;
    let clean = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let url = db.url();

    let (mut first, first_err) = start_until_loading(dir.path(), &src, &url);
    let client = db.client().await;
    let before = count(&client, "public.posts").await;
    let second = migrate(dir.path(), &src, &url);
    let err = String::from_utf8_lossy(&second.stderr).into_owned();
    assert_eq!(second.status.code(), Some(5), "{err}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for want in [
        format!("another dbtool migrate of {} into schema public is running: pid {} on host {}, running since ",
            std::fs::canonicalize(&src).unwrap().display(), first.id(), host.trim()),
        "or add --wait to wait for it".to_owned(),
    ] {
        assert!(err.contains(&want), "stderr lacks {want:?}:\n{err}");
    }
    let runs: i64 = client
        .query_one("SELECT count(*) FROM dbtool.runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the refused run recorded a run");
    let after = count(&client, "public.posts").await;
    assert!(after >= before, "rows went away: {before} -> {after}");

    // A run that waits: it says so, then takes over once the first is killed.
    let mut waiting = command(dir.path(), &src, &url)
        .args(LOAD_ARGS)
        .arg("--wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dbtool");
    let waiting_err = waiting.stderr.take().unwrap();
    let (said_tx, said_rx) = mpsc::channel();
    let (all_tx, all_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(waiting_err).lines() {
            let line = line.unwrap_or_default();
            if line.starts_with("waiting for another dbtool migrate of ") {
                let _ = said_tx.send(line.clone());
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = all_tx.send(all);
    });
    let said = said_rx.recv();
    let _ = first.kill();
    let _ = first.wait();
    let _ = first_err.recv();
    let said = said.unwrap_or_else(|_| {
        panic!(
            "the waiting run never said it waits:\n{}",
            all_rx.recv().unwrap_or_default()
        )
    });
    assert!(
        said.contains(&format!("pid {} on host", first.id())),
        "{said}"
    );
    let out = waiting.wait_with_output().unwrap();
    let err = all_rx.recv().unwrap_or_default();
    assert!(err.contains("resuming run 1 of "), "{err}");
    let out = Output {
        status: out.status,
        stdout: out.stdout,
        stderr: err.into_bytes(),
    };
    assert_rerun_equals_a_clean_run(out, &client, dir.path(), &src, &clean).await;
}

// A rerun right after `kill -9` of a run, without --wait, does not refuse
// with exit 5: the killed holder is a process of this host that no longer
// exists, so the rerun waits the moment its server session takes to end,
// then resumes and completes with every row exactly once.
#[tokio::test]
async fn a_rerun_right_after_kill_9_takes_the_lock_without_wait() {
    let db = dbtool_testkit::pg().await;
    let clean = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let url = db.url();

    let (mut first, first_err) = start_until_loading(dir.path(), &src, &url);
    let _ = first.kill();
    let _ = first.wait();
    let _ = first_err.recv();
    let again = migrate(dir.path(), &src, &url);
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    assert_ne!(
        again.status.code(),
        Some(5),
        "refused after the holder died:\n{err}"
    );
    assert!(err.contains("resuming run 1 of "), "{err}");
    let client = db.client().await;
    assert_rerun_equals_a_clean_run(again, &client, dir.path(), &src, &clean).await;
}

// On a terminal (a pty from `script`), the progress bars show whole rows
// per second and no rate or ETA for a table not started yet: indicatif's own
// `{per_sec}` printed `106,418.9285/s` and `{eta}` said `0s` for those.
#[tokio::test]
async fn progress_bars_on_a_terminal_show_whole_rates_and_no_eta_for_tables_not_started() {
    let db = dbtool_testkit::pg().await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let line = format!(
        "{} migrate --from {} --to '{}' {}",
        env!("CARGO_BIN_EXE_dbtool"),
        src.display(),
        db.url(),
        LOAD_ARGS.join(" ")
    );
    let mut c = Command::new("script");
    c.args(["-qfec", &line, "/dev/null"])
        .current_dir(dir.path());
    for v in common::PG_VARS {
        c.env_remove(v);
    }
    let out = c.output().expect("run script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains("rows/s") && screen.contains("- rows/s  ETA -"),
        "no bar of a table not started:\n{screen}"
    );
    let fractional = screen
        .split("/s")
        .filter_map(|before| before.rsplit(' ').next())
        .find(|rate| rate.contains('.'));
    assert_eq!(fractional, None, "a rate with decimals:\n{screen}");
}
