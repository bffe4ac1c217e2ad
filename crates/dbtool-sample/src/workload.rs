//! A forums workload: inserts, updates and deletes across the sample's tables
//! at a steady rate, each in its own transaction, as an app would write.
//!
//! Used by the live-sync tests and benchmarks (`dbtool sync` must see every
//! write) and runnable on its own:
//!
//! ```text
//! cargo run -p dbtool-sample --example workload -- forums.db --rate 1000 --seconds 30 --acks acks.jsonl
//! ```
//!
//! Every write that SQLite acknowledged (its transaction committed) is passed
//! to the caller as an [`Ack`], so a test can check that each is in the
//! target. A write that fails (busy past the timeout, the file marked moved
//! by a cutover) is counted and its message kept; the workload goes on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use rusqlite::{params, Connection};

use crate::Error;

/// What to write.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// The forums.db file (made by [`crate::generate`]).
    pub path: PathBuf,
    /// Writes per second (0: as fast as possible).
    pub rate: f64,
    /// Stop after this long (None: until the stop flag is set).
    pub duration: Option<Duration>,
    /// Stop after this many acknowledged writes (None: no limit).
    pub max_writes: Option<u64>,
    /// Seed of the random choices.
    pub seed: u64,
    /// How long a write waits for the lock (SQLite's busy timeout).
    pub busy_timeout: Duration,
    /// `PRAGMA synchronous` of the writer's connection (None: SQLite's
    /// default, FULL). Default `NORMAL`, what an app in WAL mode uses: a
    /// commit appends to the WAL without an fsync (the WAL is synced at
    /// checkpoints), so the rate is bound by the CPU rather than the
    /// disk's fsync latency, as in production.
    pub synchronous: Option<String>,
}

impl WorkloadOptions {
    /// 1,000 writes/s with a 5 s busy timeout and `synchronous = NORMAL`,
    /// until stopped.
    pub fn new(path: impl Into<PathBuf>) -> WorkloadOptions {
        WorkloadOptions {
            path: path.into(),
            rate: 1000.0,
            duration: None,
            max_writes: None,
            seed: 1,
            busy_timeout: Duration::from_secs(5),
            synchronous: Some("NORMAL".into()),
        }
    }
}

/// The kind of write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
}

/// One acknowledged write: the table, the row's key (as text) and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Table name.
    pub table: &'static str,
    /// The row's primary key (`id`, or `key` for settings), as text.
    pub key: String,
    /// What was done.
    pub op: Op,
}

/// What a workload run did.
#[derive(Debug, Clone, Default)]
pub struct WorkloadSummary {
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes that failed.
    pub failed: u64,
    /// The first few failure messages.
    pub errors: Vec<String>,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs the workload until `stop` is set, the duration passes or
/// `max_writes` are acknowledged, calling `on_ack` for each acknowledged write.
pub fn run(
    opts: &WorkloadOptions,
    stop: &AtomicBool,
    mut on_ack: impl FnMut(&Ack),
) -> Result<WorkloadSummary, Error> {
    let sql_err = |source| Error::Sqlite {
        path: opts.path.clone(),
        source,
    };
    let conn = Connection::open(&opts.path).map_err(sql_err)?;
    conn.busy_timeout(opts.busy_timeout).map_err(sql_err)?;
    if let Some(mode) = &opts.synchronous {
        conn.execute_batch(&format!("PRAGMA synchronous = {mode}"))
            .map_err(sql_err)?;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let ids = |sql: &str| -> Result<Vec<i64>, Error> {
        let mut s = conn.prepare(sql).map_err(sql_err)?;
        let v = s
            .query_map([], |r| r.get(0))
            .map_err(sql_err)?
            .collect::<Result<Vec<i64>, _>>()
            .map_err(sql_err)?;
        Ok(v)
    };
    let topics: Vec<(i64, String)> = {
        let mut s = conn
            .prepare("SELECT id, team_id FROM topics ORDER BY id LIMIT 2000")
            .map_err(sql_err)?;
        let v = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        v
    };
    let users = ids("SELECT id FROM users ORDER BY id LIMIT 2000")?;
    let mut posts = ids("SELECT id FROM posts ORDER BY id DESC LIMIT 2000")?;
    if topics.is_empty() || users.is_empty() {
        return Err(Error::Sqlite {
            path: opts.path.clone(),
            source: rusqlite::Error::QueryReturnedNoRows,
        });
    }
    let started = Instant::now();
    let mut summary = WorkloadSummary::default();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if opts.duration.is_some_and(|d| started.elapsed() >= d)
            || opts.max_writes.is_some_and(|m| summary.acked >= m)
        {
            break;
        }
        if opts.rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / opts.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        n += 1;
        let pick = rng.random_range(0..100u32);
        let now_s = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
        let result: Result<Ack, rusqlite::Error> = match pick {
            // New posts.
            0..=34 => {
                let (topic, team) = &topics[rng.random_range(0..topics.len())];
                let user = users[rng.random_range(0..users.len())];
                let score: f64 = rng.random_range(-5.0..50.0);
                conn.execute(
                    "INSERT INTO posts (team_id, topic_id, user_id, body, created_at, score) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![team, topic, user, format!("workload post {n} ✓"), now_s, score],
                )
                .map(|_| {
                    let id = conn.last_insert_rowid();
                    posts.push(id);
                    Ack { table: "posts", key: id.to_string(), op: Op::Insert }
                })
            }
            // Edited posts.
            35..=59 if !posts.is_empty() => {
                let id = posts[rng.random_range(0..posts.len())];
                conn.execute(
                    "UPDATE posts SET body = body || ' (edited)', edited_at = ?2, score = score + 0.5 WHERE id = ?1",
                    params![id, now_s],
                )
                .map(|_| Ack { table: "posts", key: id.to_string(), op: Op::Update })
            }
            // Deleted posts.
            60..=69 if posts.len() > 10 => {
                let i = rng.random_range(0..posts.len());
                let id = posts.swap_remove(i);
                conn.execute("DELETE FROM posts WHERE id = ?1", [id])
                    .map(|_| Ack {
                        table: "posts",
                        key: id.to_string(),
                        op: Op::Delete,
                    })
            }
            // Topic views.
            70..=84 => {
                let (topic, _) = &topics[rng.random_range(0..topics.len())];
                conn.execute(
                    "UPDATE topics SET view_count = view_count + 1, updated_at = ?2 WHERE id = ?1",
                    params![topic, chrono::Utc::now().timestamp_millis()],
                )
                .map(|_| Ack {
                    table: "topics",
                    key: topic.to_string(),
                    op: Op::Update,
                })
            }
            // Users seen.
            85..=94 => {
                let id = users[rng.random_range(0..users.len())];
                conn.execute(
                    "UPDATE users SET last_seen = ?2 WHERE id = ?1",
                    params![id, chrono::Utc::now().timestamp()],
                )
                .map(|_| Ack {
                    table: "users",
                    key: id.to_string(),
                    op: Op::Update,
                })
            }
            // Settings (text key, untyped value).
            _ => {
                let key = format!("workload.k{}", rng.random_range(0..50));
                conn.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![key, n as i64, now_s],
                )
                .map(|_| Ack { table: "settings", key, op: Op::Update })
            }
        };
        match result {
            Ok(ack) => {
                summary.acked += 1;
                on_ack(&ack);
            }
            Err(e) => {
                summary.failed += 1;
                if summary.errors.len() < 5 {
                    summary.errors.push(e.to_string());
                }
            }
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}
