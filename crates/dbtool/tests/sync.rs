//! `dbtool sync`, `dbtool cutover` and `dbtool sync stop` through the binary,
//! against a real Postgres, with the forums workload writing the file the
//! whole time (dbtool_sample::workload, about 1,000 writes/s, busy timeout).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbtool_sample::workload::{self, Ack, Op, WorkloadOptions, WorkloadSummary};

use common::{dbtool, run, text};

/// A small sample file in the given journal mode.
fn sample(dir: &Path, wal: bool) -> PathBuf {
    let path = dir.join("forums.db");
    let mut o = dbtool_sample::Options::new(&path);
    o.scale = 0.02;
    dbtool_sample::generate(&o).expect("generate the sample");
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c
        .query_row(
            if wal {
                "PRAGMA journal_mode = WAL"
            } else {
                "PRAGMA journal_mode = DELETE"
            },
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mode, if wal { "wal" } else { "delete" });
    path
}

/// The workload on a thread of its own, collecting acknowledged writes.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    handle: std::thread::JoinHandle<WorkloadSummary>,
}

impl Writer {
    fn start(path: &Path, seconds: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let mut opts = WorkloadOptions::new(path);
        opts.rate = 1000.0;
        // Bounded by itself too, so a failing test never leaves it running.
        opts.duration = Some(Duration::from_secs(seconds));
        let handle = {
            let (stop, acks) = (stop.clone(), acks.clone());
            std::thread::spawn(move || {
                workload::run(&opts, &stop, |a| acks.lock().unwrap().push(a.clone()))
                    .expect("workload")
            })
        };
        Writer { stop, acks, handle }
    }

    fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    fn finish(self) -> (WorkloadSummary, Vec<Ack>) {
        self.stop.store(true, Ordering::SeqCst);
        let s = self.handle.join().expect("workload thread");
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        (s, acks)
    }
}

fn spawn_sync(dir: &Path, args: &[&str], log: &str) -> Child {
    let err = std::fs::File::create(dir.join(log)).unwrap();
    dbtool(dir)
        .arg("sync")
        .args(args)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn dbtool sync")
}

async fn phase(client: &tokio_postgres::Client) -> Option<String> {
    client
        .query_opt("SELECT phase FROM dbtool.syncs LIMIT 1", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Waits (bounded) until the sync streams.
async fn wait_streaming(client: &tokio_postgres::Client, child: &mut Child, dir: &Path, log: &str) {
    let t0 = Instant::now();
    loop {
        if phase(client).await.as_deref() == Some("streaming") {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "dbtool sync exited with {status} before streaming:\n{}",
                std::fs::read_to_string(dir.join(log)).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "sync did not reach streaming:\n{}",
            std::fs::read_to_string(dir.join(log)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Every acknowledged write's last state is in Postgres: inserted or
/// updated rows exist, deleted ones do not.
async fn check_acks(client: &tokio_postgres::Client, acks: &[Ack]) {
    let mut last: HashMap<(&str, &str), Op> = HashMap::new();
    for a in acks {
        last.insert((a.table, a.key.as_str()), a.op);
    }
    assert!(last.len() > 100, "too few writes to check: {}", last.len());
    for ((table, key), op) in last {
        let n: i64 = if table == "settings" {
            client
                .query_one(
                    "SELECT count(*) FROM public.settings WHERE key = $1",
                    &[&key],
                )
                .await
                .unwrap()
                .get(0)
        } else {
            let id: i64 = key.parse().unwrap();
            client
                .query_one(
                    &format!("SELECT count(*) FROM public.{table} WHERE id = $1"),
                    &[&id],
                )
                .await
                .unwrap()
                .get(0)
        };
        let want = i64::from(op != Op::Delete);
        assert_eq!(n, want, "{table} {key}: last acknowledged write was {op:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sync_then_cutover_with_the_writer_running_wal() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path(), true);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let client = db.client().await;
    let f = file.to_str().unwrap();

    let writer = Writer::start(&file, 120);
    let mut sync = spawn_sync(dir.path(), &["--from", f, "--to", &url], "sync.log");
    wait_streaming(&client, &mut sync, dir.path(), "sync.log").await;
    // Let changes stream for a while, and check status from "another terminal".
    let t0 = Instant::now();
    while writer.acked() < 1500 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let st = run(
        dir.path(),
        &["sync", "status", "--from", f, "--to", &url, "--json"],
    );
    assert_eq!(st.status.code(), Some(0), "{}", text(&st));
    let json: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert_eq!(json[0]["phase"], "streaming", "{}", text(&st));
    assert!(json[0]["applied"].as_i64().unwrap() > 0, "{}", text(&st));

    let cut = run(
        dir.path(),
        &["cutover", "--from", f, "--to", &url, "--max-freeze", "2s"],
    );
    assert_eq!(cut.status.code(), Some(0), "{}", text(&cut));
    let out = String::from_utf8_lossy(&cut.stdout);
    let freeze = out
        .lines()
        .find_map(|l| l.strip_prefix("freeze: "))
        .and_then(|l| l.strip_suffix(" ms"))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(freeze.is_some_and(|ms| ms <= 2000), "{}", text(&cut));

    // The running sync sees the cutover and ends by itself.
    let status = wait_exit(&mut sync, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "sync did not end after the cutover: {status:?}\n{}",
        std::fs::read_to_string(dir.path().join("sync.log")).unwrap_or_default()
    );
    // Writes after the cutover fail, naming the target.
    let before = writer.acked();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (summary, acks) = writer.finish();
    assert_eq!(
        acks.len(),
        before,
        "a write landed in SQLite after the cutover"
    );
    assert!(summary.failed > 0, "{summary:?}");
    let target = dbtool_testkit::mask(&url);
    let host_port = target
        .split('@')
        .nth(1)
        .unwrap_or(&target)
        .split('/')
        .next()
        .unwrap();
    assert!(
        summary.errors[0].contains("has moved to") && summary.errors[0].contains(host_port),
        "{summary:?}"
    );

    let v = run(dir.path(), &["verify", "--from", f, "--to", &url]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    check_acks(&client, &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_several_points_then_rerun_converges_rollback_journal() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path(), false);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let client = db.client().await;
    let f = file.to_str().unwrap();

    let writer = Writer::start(&file, 120);
    // Killed during the copy, then twice while streaming.
    for (i, ms) in [300u64, 2500, 1500].iter().enumerate() {
        let log = format!("sync{i}.log");
        let mut sync = spawn_sync(dir.path(), &["--from", f, "--to", &url], &log);
        if i > 0 {
            wait_streaming(&client, &mut sync, dir.path(), &log).await;
        }
        tokio::time::sleep(Duration::from_millis(*ms)).await;
        sync.kill().expect("kill -9");
        let _ = sync.wait();
    }
    let (summary, acks) = writer.finish();
    assert_eq!(summary.failed, 0, "{summary:?}");
    // Rerun until every logged change is applied.
    let o = run(
        dir.path(),
        &["sync", "--from", f, "--to", &url, "--until-idle"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = run(dir.path(), &["verify", "--from", f, "--to", &url]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    check_acks(&client, &acks).await;
}

fn schema_of(path: &Path) -> Vec<(String, String, String, Option<String>)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_cutover_aborts_the_app_keeps_writing_and_stop_restores_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path(), true);
    let before = schema_of(&file);
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let f = file.to_str().unwrap();

    let writer = Writer::start(&file, 120);
    let o = run(
        dir.path(),
        &["sync", "--from", f, "--to", &url, "--until-idle"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_ne!(schema_of(&file), before, "capture adds _dbtool objects");
    // A budget nothing fits in: the cutover gives up and releases.
    let cut = run(
        dir.path(),
        &[
            "cutover",
            "--from",
            f,
            "--to",
            &url,
            "--max-freeze",
            "1ms",
            "--wait",
            "2s",
        ],
    );
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut));
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(
        err.contains("cutover aborted, nothing switched"),
        "{}",
        text(&cut)
    );
    assert!(err.contains("--max-freeze"), "{}", text(&cut));
    // The app keeps writing to SQLite.
    let n = writer.acked();
    let t0 = Instant::now();
    while writer.acked() < n + 200 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (summary, acks) = writer.finish();
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert!(acks.len() >= n + 200);
    let c = rusqlite::Connection::open(&file).unwrap();
    let moved: i64 = c
        .query_row(
            "SELECT count(*) FROM _dbtool_meta WHERE key = 'moved_to'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(moved, 0);
    drop(c);
    // Nothing lost: a rerun applies the rest and verifies equal.
    let o = run(
        dir.path(),
        &["sync", "--from", f, "--to", &url, "--until-idle"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = run(dir.path(), &["verify", "--from", f, "--to", &url]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    // sync stop: the schema is exactly as before.
    let s = run(dir.path(), &["sync", "stop", "--from", f]);
    assert_eq!(s.status.code(), Some(0), "{}", text(&s));
    assert_eq!(schema_of(&file), before);
}
