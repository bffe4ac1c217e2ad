//! `dbtool.runs`: one row per migration of one source file into one target
//! schema, with the source's fingerprint, the plan, the options, the status
//! and, once done, the report.
//!
//! The plan, options and report are stored as JSON written by
//! `dbtool-migrate`; this module keeps them as [`serde_json::Value`] so the
//! catalog does not depend on the migrator.

use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use tokio_postgres::GenericClient;

use crate::Error;

/// What identifies the exact contents of a source file, cheaply.
///
/// A resume compares the file with the fingerprint its run recorded and
/// refuses to continue when anything differs: rows copied from two different
/// versions of a file are not a consistent copy of either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// File size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// SQLite header "file change counter" (bytes 24..28), bumped by every
    /// rollback-journal commit.
    pub change_counter: u32,
    /// SQLite header schema cookie (bytes 40..44), bumped by every schema change.
    pub schema_cookie: u32,
    /// Size and mtime of the `-wal` file when there is one: WAL-mode commits
    /// change it, not the main file.
    pub wal: Option<(u64, i128)>,
}

impl Fingerprint {
    /// Reads the fingerprint of the SQLite file at `path`.
    ///
    /// # Errors
    /// [`Error::Source`] when the file cannot be read.
    pub fn of(path: &Path) -> Result<Fingerprint, Error> {
        let source_err = |reason: String| Error::Source {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| source_err(e.to_string()))?;
        let mut header = [0u8; 100];
        let mut f = std::fs::File::open(path).map_err(|e| source_err(e.to_string()))?;
        // A file shorter than a header is not a database; the planner says so
        // with a better message, so read what there is and carry on.
        let mut got = 0;
        while got < header.len() {
            match f.read(&mut header[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(source_err(e.to_string())),
            }
        }
        let be =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = std::fs::metadata(&wal_path)
            .ok()
            .map(|m| (m.len(), mtime_ns(&m)));
        Ok(Fingerprint {
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            change_counter: be(24),
            schema_cookie: be(40),
            wal,
        })
    }

    /// What differs between `self` (recorded) and `now`, in words; empty when equal.
    pub fn differences(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.size != now.size {
            out.push(format!("size {} -> {} bytes", self.size, now.size));
        }
        if self.mtime_ns != now.mtime_ns {
            out.push("modification time changed".to_owned());
        }
        if self.change_counter != now.change_counter {
            out.push(format!(
                "change counter {} -> {}",
                self.change_counter, now.change_counter
            ));
        }
        if self.schema_cookie != now.schema_cookie {
            out.push("schema changed".to_owned());
        }
        if self.wal != now.wal {
            out.push("write-ahead log changed".to_owned());
        }
        out
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Tables created, rows being copied.
    Loading,
    /// Rows copied; constraints, indexes, FKs, sequences being built.
    Finishing,
    /// Complete.
    Done,
    /// Replaced by a later run started with `--restart`.
    Abandoned,
}

impl Status {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Loading => "loading",
            Status::Finishing => "finishing",
            Status::Done => "done",
            Status::Abandoned => "abandoned",
        }
    }

    /// From its stored name (anything unknown reads as abandoned).
    pub fn parse(s: &str) -> Status {
        match s {
            "loading" => Status::Loading,
            "finishing" => Status::Finishing,
            "done" => Status::Done,
            _ => Status::Abandoned,
        }
    }
}

/// A row of `dbtool.runs` (an unfinished run, for a resume).
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run id.
    pub id: i64,
    /// The source's fingerprint when the run started.
    pub fingerprint: Fingerprint,
    /// Target schema.
    pub schema: String,
    /// The cast plan, as JSON.
    pub plan: serde_json::Value,
    /// The options the run started with, as JSON.
    pub options: serde_json::Value,
    /// Where it is.
    pub status: Status,
    /// When it started, RFC 3339.
    pub started_at: String,
}

/// The unfinished run (loading or finishing) of `source_path` into `schema`, if any.
pub async fn find_unfinished(
    client: &impl GenericClient,
    source_path: &str,
    schema: &str,
) -> Result<Option<RunRecord>, Error> {
    let row = client
        .query_opt(
            "SELECT id, source_path, source_fingerprint, target_schema, plan, options, status,
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM dbtool.runs
              WHERE source_path = $1 AND target_schema = $2 AND status IN ('loading', 'finishing')
              ORDER BY id DESC LIMIT 1",
            &[&source_path, &schema],
        )
        .await?;
    row.map(|r| run_record(&r)).transpose()
}

fn run_record(r: &tokio_postgres::Row) -> Result<RunRecord, Error> {
    let Json(fingerprint): Json<Fingerprint> = r.get(2);
    let Json(plan): Json<serde_json::Value> = r.get(4);
    let Json(options): Json<serde_json::Value> = r.get(5);
    Ok(RunRecord {
        id: r.get(0),
        fingerprint,
        schema: r.get(3),
        plan,
        options,
        status: Status::parse(r.get(6)),
        started_at: r.get(7),
    })
}

/// Marks every unfinished run of `source_path` into `schema` abandoned (for `--restart`);
/// returns how many.
pub async fn abandon(
    client: &impl GenericClient,
    source_path: &str,
    schema: &str,
) -> Result<u64, Error> {
    Ok(client
        .execute(
            "UPDATE dbtool.runs SET status = 'abandoned', updated_at = now()
              WHERE source_path = $1 AND target_schema = $2 AND status IN ('loading', 'finishing')",
            &[&source_path, &schema],
        )
        .await?)
}

/// Inserts a new run in status `loading`; returns its id.
pub async fn create_run(
    client: &impl GenericClient,
    source_path: &str,
    fingerprint: &Fingerprint,
    schema: &str,
    plan: &serde_json::Value,
    options: &serde_json::Value,
) -> Result<i64, Error> {
    let row = client
        .query_one(
            "INSERT INTO dbtool.runs (source_path, source_fingerprint, target_schema, plan, options)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&source_path, &Json(fingerprint), &schema, &Json(plan), &Json(options)],
        )
        .await?;
    Ok(row.get(0))
}

/// Sets a run's status (and its finish time when done).
pub async fn set_status(
    client: &impl GenericClient,
    run: i64,
    status: Status,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET status = $2, updated_at = now(),
                    finished_at = CASE WHEN $2 = 'done' THEN now() ELSE finished_at END
              WHERE id = $1",
            &[&run, &status.as_str()],
        )
        .await?;
    Ok(())
}

/// Counts a resume of the run.
pub async fn note_resume(client: &impl GenericClient, run: i64) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET resumes = resumes + 1, updated_at = now() WHERE id = $1",
            &[&run],
        )
        .await?;
    Ok(())
}

/// Replaces the stored plan of a run: the finish phase completes what the
/// plan left to it (the orphan counts of foreign keys that failed their
/// validation), and `verify` and a resume read the stored plan.
pub async fn store_plan(
    client: &impl GenericClient,
    run: i64,
    plan: &serde_json::Value,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET plan = $2, updated_at = now() WHERE id = $1",
            &[&run, &Json(plan)],
        )
        .await?;
    Ok(())
}

/// Stores the final report of a run.
pub async fn store_report(
    client: &impl GenericClient,
    run: i64,
    report: &serde_json::Value,
) -> Result<(), Error> {
    client
        .execute(
            "UPDATE dbtool.runs SET report = $2, updated_at = now() WHERE id = $1",
            &[&run, &Json(report)],
        )
        .await?;
    Ok(())
}

/// A completed run of a source into a schema, as `verify` and a sharded
/// resume read it back.
#[derive(Debug, Clone)]
pub struct DoneRun {
    /// The run id.
    pub id: i64,
    /// Target schema.
    pub schema: String,
    /// The cast plan, as JSON.
    pub plan: serde_json::Value,
}

/// The run with id `id` (any status), if there is one.
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn by_id(client: &impl GenericClient, id: i64) -> Result<Option<DoneRun>, Error> {
    let row = client
        .query_opt(
            "SELECT id, target_schema, plan FROM dbtool.runs WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| done_run(&r)))
}

/// The latest completed run, into `schema` when given, preferring runs of
/// `source_path` (a run of the same data copied elsewhere still counts).
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn latest_done(
    client: &impl GenericClient,
    schema: Option<&str>,
    source_path: &str,
) -> Result<Option<DoneRun>, Error> {
    let row = client
        .query_opt(
            "SELECT id, target_schema, plan FROM dbtool.runs \
             WHERE status = 'done' AND ($1::text IS NULL OR target_schema = $1) \
             ORDER BY (source_path = $2) DESC, id DESC LIMIT 1",
            &[&schema, &source_path],
        )
        .await?;
    Ok(row.map(|r| done_run(&r)))
}

fn done_run(r: &tokio_postgres::Row) -> DoneRun {
    let Json(plan): Json<serde_json::Value> = r.get(2);
    DoneRun {
        id: r.get(0),
        schema: r.get(1),
        plan,
    }
}

/// The plan of run `id`, if the run exists.
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn plan(
    client: &impl GenericClient,
    id: i64,
) -> Result<Option<serde_json::Value>, Error> {
    Ok(by_id(client, id).await?.map(|r| r.plan))
}

/// Whether any run (unfinished or done, not abandoned) of `source_path`
/// into `schema` is recorded.
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn any(
    client: &impl GenericClient,
    source_path: &str,
    schema: &str,
) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM dbtool.runs WHERE source_path = $1 AND target_schema = $2 AND status <> 'abandoned'",
            &[&source_path, &schema],
        )
        .await?
        .get::<_, i64>(0)
        > 0)
}

/// The latest run (not abandoned) of `source_path` into `schema`: its id,
/// status, fingerprint and stored report (`None` when absent, or written in
/// a form this version cannot read as JSON).
///
/// # Errors
/// [`Error::Postgres`] when the query fails.
pub async fn latest(
    client: &impl GenericClient,
    source_path: &str,
    schema: &str,
) -> Result<Option<(i64, Status, Fingerprint, Option<serde_json::Value>)>, Error> {
    let row = client
        .query_opt(
            "SELECT id, status, source_fingerprint, report FROM dbtool.runs
              WHERE source_path = $1 AND target_schema = $2 AND status <> 'abandoned'
              ORDER BY id DESC LIMIT 1",
            &[&source_path, &schema],
        )
        .await?;
    Ok(row.map(|r| {
        let Json(fingerprint): Json<Fingerprint> = r.get(2);
        let report = r
            .try_get::<_, Option<Json<serde_json::Value>>>(3)
            .ok()
            .flatten()
            .map(|j| j.0);
        (r.get(0), Status::parse(r.get(1)), fingerprint, report)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_when_the_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let before = Fingerprint::of(&path).unwrap();
        assert!(before
            .differences(&Fingerprint::of(&path).unwrap())
            .is_empty());
        c.execute_batch("INSERT INTO t VALUES (2);").unwrap();
        let after = Fingerprint::of(&path).unwrap();
        let diff = before.differences(&after);
        assert!(
            diff.iter().any(|d| d.starts_with("change counter")),
            "{diff:?}"
        );
    }
}
