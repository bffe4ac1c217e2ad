//! Process, port and temp-dir helpers shared by the local backends.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::error::{Error, Result};

/// Effective uid of this process, read from /proc (no unsafe `geteuid`).
pub(crate) fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// The uid/gid of a user from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// When running as root, PostgreSQL refuses to start, so its processes run as the
/// `postgres` user: returns that user's (uid, gid); `None` when not root.
pub(crate) fn pg_run_as() -> Result<Option<(u32, u32)>> {
    if euid() != 0 {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).ok_or_else(|| {
        Error::Config(
            "running as root, but there is no `postgres` user to run PostgreSQL as \
             (initdb refuses root); install the postgresql package (it creates the user) \
             or run the tests as a non-root user"
                .into(),
        )
    })
}

/// Where test servers live: `DBTOOL_TEST_TMPDIR` if set, else `/dev/shm` when it
/// is a shared tmpfs with at least 2 GiB free (copying data dirs and base
/// backups to RAM is several times faster than to a busy disk), else the temp
/// dir (`/tmp` when root: the servers run as `postgres`, which must reach it).
pub(crate) fn temp_base() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DBTOOL_TEST_TMPDIR") {
            return PathBuf::from(dir);
        }
        if shm_usable() {
            return PathBuf::from("/dev/shm");
        }
        if euid() == 0 {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        }
    })
    .clone()
}

fn shm_usable() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let world_writable = std::fs::metadata("/dev/shm")
        .map(|m| m.is_dir() && m.permissions().mode() & 0o1777 == 0o1777)
        .unwrap_or(false);
    if !world_writable {
        return false;
    }
    // `df -Pk`: the 4th field of the 2nd line is the available KiB.
    Command::new("df")
        .args(["-Pk", "/dev/shm"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>()
                .ok()
        })
        .is_some_and(|kib| kib >= 2 * 1024 * 1024)
}

/// Finds an executable in PATH.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Random lowercase hex.
pub(crate) fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Ports handed out by this process, so two servers never get the same one before
/// the first has bound it.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free TCP port on 127.0.0.1 in 20000..30000 (below the ephemeral range, so
/// outgoing connections do not take it). With `bus`, port + 10000 must be free too
/// (Redis Cluster's bus port). Another process may still take it before the server
/// binds: callers retry with a new port when the server reports the address in use.
pub(crate) fn free_port(bus: bool) -> u16 {
    let mut rng = rand::rng();
    loop {
        let port: u16 = rng.random_range(20000..30000);
        let mut used = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if used.contains(&port) {
            continue;
        }
        if bindable(port) && (!bus || bindable(port + 10000)) {
            used.insert(port);
            return port;
        }
    }
}

/// Creates `<temp>/dbtool-testkit-<pid>-<kind>-<random>`, owned by `owner` if given.
/// The first call in a process also sweeps what crashed runs left behind.
pub(crate) fn make_root(kind: &str, owner: Option<(u32, u32)>) -> Result<PathBuf> {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_stale);
    let root = temp_base().join(format!(
        "dbtool-testkit-{}-{kind}-{}",
        std::process::id(),
        random_hex(6)
    ));
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    chown(&root, owner)?;
    Ok(root)
}

/// chown a path (not recursive) when running as root for another user.
pub(crate) fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

/// Starts the watchdog for a server root dir. Statics are never dropped and a
/// SIGKILLed test process runs no code at all, so cleanup cannot live in this
/// process: a detached `sh` polls our pid and, once it is gone, stops every
/// postmaster (SIGQUIT: immediate shutdown) and redis-server (SIGKILL) under
/// `root`, then removes it. It runs in its own process group so a Ctrl-C to the
/// test does not kill the reaper before it has cleaned up.
pub(crate) fn spawn_reaper(root: &Path) -> Result<Child> {
    spawn_reaper_with(root, "")
}

/// Like [`spawn_reaper`], also running the shell snippet `extra` once the test
/// process is gone (the Docker backend removes its containers this way).
pub(crate) fn spawn_reaper_with(root: &Path, extra: &str) -> Result<Child> {
    const SCRIPT: &str = r#"
P="$1"; R="$2"; X="$3"
while kill -0 "$P" 2>/dev/null; do sleep 1; done
[ -n "$X" ] && eval "$X" >/dev/null 2>&1
pids=""
for f in "$R"/*/postmaster.pid; do
  [ -f "$f" ] || continue
  p=$(head -n 1 "$f"); [ -n "$p" ] && kill -QUIT "$p" 2>/dev/null && pids="$pids $p"
done
for f in "$R"/*/redis.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f"); [ -n "$p" ] && kill -KILL "$p" 2>/dev/null
done
i=0
while [ $i -lt 50 ]; do
  alive=0
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.2; i=$((i+1))
done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
rm -rf "$R"
"#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("dbtool-testkit-reaper")
        .arg(std::process::id().to_string())
        .arg(root)
        .arg(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("spawning the cleanup watchdog (sh)", e))
}

/// Stops a reaper we no longer need (the servers were torn down in-process).
pub(crate) fn stop_reaper(reaper: &Mutex<Option<Child>>) {
    if let Some(mut child) = reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether a pid is running (and not a zombie).
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Direct children of a pid (from /proc).
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Sends a signal (`KILL`, `QUIT`, `TERM`) to the given pids with kill(1).
pub(crate) fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until none of the pids is alive; false on timeout.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let start = Instant::now();
    while pids.iter().any(|p| pid_alive(*p)) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Runs a future to completion on a fresh thread with its own runtime. Process-wide
/// servers must not depend on the runtime of whichever test happened to start them
/// (each `#[tokio::test]` has its own, dropped when the test ends).
pub(crate) fn block_on_thread<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("dbtool-testkit: cannot build a tokio runtime")
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The last `n` lines of a file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command to completion, returning stdout; on failure the error carries
/// the exit status and stderr.
pub(crate) async fn run(mut cmd: tokio::process::Command) -> Result<String> {
    let display = display(cmd.as_std());
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::io(format!("running `{display}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: display,
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }
}

/// A command line for messages.
pub(crate) fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A belt to the watchdog's braces: if a watchdog itself was killed (say, the
/// whole process group got SIGKILL), its servers and files would stay. Removes
/// `dbtool-testkit-<pid>-*` dirs (and half-made templates) whose process is gone
/// and which have not changed for a minute, stopping the servers inside first.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir(temp_base()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("dbtool-testkit-") else {
            continue;
        };
        let pid_part = match rest.split_once(".tmp-") {
            Some((_, tmp)) => tmp,
            None if rest.starts_with("template-") => continue,
            None => rest,
        };
        let Some(pid) = pid_part
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let recent = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| {
                t.elapsed()
                    .map(|e| e < Duration::from_secs(60))
                    .unwrap_or(true)
            })
            .unwrap_or(true);
        if pid_alive(pid) || recent {
            continue;
        }
        let mut pids = Vec::new();
        for sub in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            for (file, comm) in [
                ("postmaster.pid", "postgres"),
                ("redis.pid", "redis-server"),
            ] {
                let server = std::fs::read_to_string(sub.path().join(file))
                    .ok()
                    .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
                // Only signal the pid if it still is that kind of server.
                if let Some(p) = server.filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .map(|c| c.trim().starts_with(comm))
                        .unwrap_or(false)
                }) {
                    pids.push(p);
                }
            }
        }
        signal("KILL", &pids);
        wait_gone(&pids, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&path);
    }
}
