//! One `dbtool migrate` at a time per source file and target schema.
//!
//! Two runs of the same file into the same schema would both find (or both
//! start) the same run record and both copy every chunk: the target gets
//! every row twice and every key then fails to build. So a run first takes a
//! session-level Postgres advisory lock keyed on (source path, target
//! schema), on a connection of its own that it keeps open until it ends.
//!
//! Why an advisory lock on a dedicated connection, and not a row in
//! `dbtool.runs` marked "running": the server releases a session lock the
//! moment the holder's connection ends, so a run that crashed, was killed
//! with `kill -9`, or lost its host never blocks the next one; a lock row
//! would need a lease, a heartbeat and a clock to tell a dead holder from a
//! slow one. The lock connection's `application_name` names the holder's
//! host and process id, so a second run can say who holds it (with the
//! connection's start time from `pg_stat_activity`).
//!
//! A second run refuses at once ([`crate::Error::Locked`], exit code 5 in
//! the binary) or, with `wait`, waits for the lock and then proceeds like a
//! fresh command (resuming the run if it is unfinished).

use tokio_postgres::Client;

use crate::Error;

/// The first key of every migrate lock: `hashtext('dbtool migrate')`,
/// computed by the server, so the lock space is dbtool's own.
const SPACE: &str = "dbtool migrate";

/// A held run lock. Dropping it closes the connection, which releases it.
pub struct RunLock {
    _client: Client,
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunLock")
    }
}

/// `dbtool migrate pid=<pid> host=<host>`, at most 63 bytes (Postgres
/// truncates `application_name` there).
pub fn application_name() -> String {
    let mut name = format!(
        "dbtool migrate pid={} host={}",
        std::process::id(),
        hostname()
    );
    while name.len() > 63 {
        name.pop();
    }
    name
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Takes the run lock of `source` (the canonical path) into `schema` on a
/// new connection to `target`. Without `wait`, a lock held by another run is
/// [`Error::Locked`] naming the holder; with `wait`, `waiting` is called
/// with the same description and the lock is awaited.
pub async fn acquire(
    target: &dbtool_pool::Target,
    source: &str,
    schema: &str,
    wait: bool,
    waiting: &dyn Fn(&str),
) -> Result<RunLock, Error> {
    let shown = dbtool_pool::display_config(target);
    let mut target = target.clone();
    target.application_name(application_name());
    let client = target.connect().await.map_err(|e| Error::Target {
        target: shown.clone(),
        reason: format!(
            "{} (check --to, DATABASE_URL or the PG* variables, and that the server is running)",
            connect_reason(&e)
        ),
    })?;
    let key = format!("{source}\n{schema}");
    // A holder that has already ended (its process killed on this host, or
    // its session gone between the two queries) releases the lock within
    // moments, once the server sees its connection close: a rerun right
    // after a `kill -9` waits for that instead of refusing.
    let grace_ends = std::time::Instant::now() + HOLDER_GONE_GRACE;
    let holder = loop {
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))",
                &[&SPACE, &key],
            )
            .await?
            .get(0);
        if got {
            return Ok(RunLock { _client: client });
        }
        let holder = describe_holder(&client, &key).await?;
        if !holder.gone || std::time::Instant::now() >= grace_ends {
            break holder.text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    if !wait {
        return Err(Error::Locked {
            source_path: source.to_owned(),
            schema: schema.to_owned(),
            holder,
        });
    }
    waiting(&format!(
        "waiting for another dbtool migrate of {source} into schema {schema} to end: {holder}"
    ));
    // Waiting for the other run is not a slow statement: the statement
    // bound (`--statement-timeout`) does not apply to it. The connection is
    // still watched, so a frozen server ends the wait with an error.
    client.batch_execute("SET statement_timeout = 0").await?;
    client
        .execute(
            "SELECT pg_advisory_lock(hashtext($1), hashtext($2))",
            &[&SPACE, &key],
        )
        .await?;
    Ok(RunLock { _client: client })
}

/// The reason of a failed connection without the target it names (the
/// callers name it once themselves).
pub(crate) fn connect_reason(e: &dbtool_pool::ConnectError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((head, rest)) if head.starts_with("cannot connect to ") => rest.to_owned(),
        _ => text,
    }
}

/// How long a run waits for a lock whose holder has already ended (see
/// [`Holder::gone`]) before it refuses.
const HOLDER_GONE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Who holds the lock, as [`describe_holder`] found it.
struct Holder {
    /// For the message.
    text: String,
    /// The holder has ended: no session holds the lock any more, or the
    /// holder is a process of this host that no longer exists (killed; its
    /// server session ends as soon as the server sees the socket close).
    gone: bool,
}

/// Whether process `pid` of this host is gone (Linux's /proc; elsewhere
/// nothing is known and the holder counts as alive).
fn process_gone(pid: &str) -> bool {
    std::path::Path::new("/proc/self").exists()
        && pid.parse::<u32>().is_ok()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Who holds the lock: the holder's host and process id (from its
/// `application_name`), its connection's start time and server pid.
async fn describe_holder(client: &Client, key: &str) -> Result<Holder, Error> {
    let row = client
        .query_opt(
            "SELECT a.application_name,
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    l.pid
               FROM pg_locks l
               LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid = hashtext($1)::oid AND l.objid = hashtext($2)::oid
              LIMIT 1",
            &[&SPACE, &key],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Holder {
            text: "the holder has just ended; run the command again".to_owned(),
            gone: true,
        });
    };
    let app: Option<String> = row.get(0);
    let started: Option<String> = row.get(1);
    let server_pid: Option<i32> = row.get(2);
    let app = app.unwrap_or_default();
    let field = |k: &str| {
        app.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    let gone = match (field("pid="), field("host=")) {
        (Some(pid), Some(host)) => host == hostname() && process_gone(&pid),
        _ => false,
    };
    let who = match (field("pid="), field("host=")) {
        (Some(pid), Some(host)) => format!("pid {pid} on host {host}"),
        _ if app.is_empty() => "a session whose name this role cannot see".to_owned(),
        _ => format!("the session {app:?}"),
    };
    let since = started
        .map(|s| format!(", running since {s}"))
        .unwrap_or_default();
    let server = server_pid
        .map(|p| format!(" (server pid {p})"))
        .unwrap_or_default();
    Ok(Holder {
        text: format!("{who}{since}{server}"),
        gone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_names_pid_and_host_within_63_bytes() {
        let name = application_name();
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.starts_with(&format!("dbtool migrate pid={} host=", std::process::id())),
            "{name}"
        );
    }
}
