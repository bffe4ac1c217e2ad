//! No servers or files outlive a test process, even one killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbtool_testkit::{PgCluster, RedisCluster};

const VICTIM: &str = "DBTOOL_TESTKIT_CLEANUP_VICTIM";

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|e| ["postmaster.pid", "redis.pid"].map(|f| e.path().join(f)))
        .filter_map(|f| {
            std::fs::read_to_string(f)
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn servers_and_files_are_removed_after_the_test_process_is_sigkilled() {
    if std::env::var_os(VICTIM).is_some() {
        // The child: start servers, report where they live, then wait to be killed.
        let pg = PgCluster::start(1).await.unwrap();
        let redis = RedisCluster::start().await.unwrap();
        println!(
            "DIRS {} {}",
            pg.dir().unwrap().display(),
            redis.dir().unwrap().display()
        );
        std::mem::forget((pg, redis));
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "servers_and_files_are_removed_after_the_test_process_is_sigkilled",
            "--nocapture",
        ])
        .env(VICTIM, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dirs = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("DIRS ") {
            dirs = rest.split(' ').map(PathBuf::from).collect();
            break;
        }
    }
    assert_eq!(dirs.len(), 2, "the child did not report its servers");
    let pids: Vec<u32> = dirs.iter().flat_map(|d| pids_in(d)).collect();
    assert_eq!(
        pids.len(),
        2 + 6,
        "2 postmasters and 6 redis-servers: {pids:?}"
    );
    assert!(pids.iter().all(|p| alive(*p)));

    child.kill().unwrap(); // SIGKILL: no destructor, no atexit, nothing runs
    child.wait().unwrap();

    let start = Instant::now();
    while dirs.iter().any(|d| d.exists()) || pids.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "left behind: dirs {:?}, pids {:?}",
            dirs.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
