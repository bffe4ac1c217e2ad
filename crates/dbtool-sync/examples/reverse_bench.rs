//! Reverse sync and rollback benchmark: the reverse apply rate (single-row
//! Postgres transactions applied to the SQLite file per second) and the
//! rollback freeze (p50/p99) with the app writing Postgres at a steady rate.
//!
//! ```sh
//! cargo run --release -p dbtool-sync --example reverse_bench -- [CHANGES] [ROLLBACKS] [WRITES_PER_SEC] [SCALE]
//! ```
//! Defaults: 20000 changes, 20 rollbacks, 1000 writes/s, sample scale 1
//! (about 100k rows: the rollback's per-table counts read every row). Starts its own
//! Postgres through dbtool-testkit and prints one line per number.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbtool_sync::reverse;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const TABLES: &[&str] = &[
    "teams",
    "users",
    "forums",
    "topics",
    "posts",
    "wiki_pages",
    "settings",
];

fn tables() -> Vec<String> {
    TABLES
        .iter()
        .map(|t| format!("\"public\".\"{t}\""))
        .collect()
}

/// The cutover's part in the file: the moved mark (and `_dbtool_meta`).
fn mark(file: &Path) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(file)?;
    dbtool_sync::capture::mark_moved(&conn, &file.display().to_string(), "postgres")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let changes = arg(1, 20_000);
    let rollbacks = arg(2, 20);
    let rate = arg(3, 1_000);
    let scale: f64 = std::env::args()
        .nth(4)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("forums.db");
    let mut o = dbtool_sample::Options::new(&file);
    o.scale = scale;
    dbtool_sample::generate(&o)?;
    let db = dbtool_testkit::pg().await;
    let url = db.url();
    let report = dbtool_migrate::run::migrate(
        dbtool_migrate::run::Options::new(&file, url.parse()?),
        &dbtool_migrate::Config::default(),
        &dbtool_migrate::run::Quiet,
    )
    .await?;
    anyhow::ensure!(report.exit_code == 0, "migration failed");
    let client = db.client().await;
    let slot = reverse::slot_name(db.name(), None);
    mark(&file)?;
    reverse::start_at_cutover(&client, &slot, &tables()).await?;

    // 1. Apply rate: `changes` single-row transactions (inserts and updates).
    let topic: (i64, String) = {
        let r = client
            .query_one("SELECT id, team_id FROM topics ORDER BY id LIMIT 1", &[])
            .await?;
        (r.get(0), r.get(1))
    };
    let ins = client
        .prepare(
            "INSERT INTO posts (team_id, topic_id, body, created_at, score)
             VALUES ($1, $2, $3, '2025-01-02 03:04:05', $4)",
        )
        .await?;
    let upd = client
        .prepare("UPDATE posts SET score = $1 WHERE id = (SELECT max(id) FROM posts)")
        .await?;
    let mut done = 0;
    while done < changes {
        let n = (changes - done).min(500);
        let futs = (0..n).map(|i| {
            let (ins, upd, client, topic) = (&ins, &upd, &client, &topic);
            async move {
                let score = (done + i) as f64 / 7.0;
                if i % 2 == 0 {
                    client
                        .execute(ins, &[&topic.1, &topic.0, &format!("bench {i}"), &score])
                        .await
                } else {
                    client.execute(upd, &[&score]).await
                }
            }
        });
        futures::future::try_join_all(futs).await?;
        done += n;
    }
    // What an unread slot costs the primary: the WAL it retains.
    let retained = reverse::slots(&client).await?[0]
        .retained_bytes
        .unwrap_or(0);
    println!(
        "slot retains {:.1} MB of WAL for {changes} unread changes ({:.0} bytes per change)",
        retained as f64 / 1e6,
        retained as f64 / changes as f64
    );
    let mut opts = reverse::Options::new(&file, url.parse()?);
    opts.until_idle = true;
    let t = Instant::now();
    let p = reverse::run(&opts, std::future::pending(), |_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "reverse apply: {} single-row transactions ({} rows) in {:.2} s = {:.0} rows/s",
        p.txns,
        p.rows,
        secs,
        p.rows as f64 / secs
    );

    // 2. Rollback freeze with the app writing `rate` writes/s.
    let pool = dbtool_pool::RwPool::builder().primary(&url).build().await?;
    let mut freezes = Vec::new();
    let mut aborted = 0;
    for _ in 0..rollbacks {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let writer = {
            let (pool, stop, acked, topic) =
                (pool.clone(), stop.clone(), acked.clone(), topic.clone());
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (pool, acked, topic) = (pool.clone(), acked.clone(), topic.clone());
                    tokio::spawn(async move {
                        if let Ok(c) = pool.write().await {
                            let r = c
                                .execute(
                                    "INSERT INTO posts (team_id, topic_id, body, created_at, score)
                                     VALUES ($1, $2, 'live', '2025-01-02 03:04:05', 0)",
                                    &[&topic.1, &topic.0],
                                )
                                .await;
                            if r.is_ok() {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = reverse::rollback(&reverse::RollbackOptions {
            file: file.clone(),
            targets: vec![("target".into(), url.parse()?)],
            max_freeze: Duration::from_secs(2),
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        writer.await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        match r {
            Ok(rep) => {
                freezes.push(rep.freeze);
                // Cut over again for the next round.
                mark(&file)?;
                reverse::start_at_cutover(&client, &slot, &tables()).await?;
            }
            Err(e) => {
                aborted += 1;
                eprintln!("rollback aborted: {e}");
            }
        }
    }
    freezes.sort();
    let pct = |q: f64| -> u128 {
        if freezes.is_empty() {
            return 0;
        }
        let i = ((freezes.len() as f64 - 1.0) * q).round() as usize;
        freezes[i].as_millis()
    };
    println!(
        "rollback freeze at {rate} writes/s (sample scale {scale}): p50 {} ms, p99 {} ms, max {} ms over {} rollbacks ({} aborted)",
        pct(0.5),
        pct(0.99),
        freezes.last().map_or(0, |d| d.as_millis()),
        freezes.len(),
        aborted
    );
    reverse::drop_all(&client).await?;
    Ok(())
}
