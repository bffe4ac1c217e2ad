//! `dbtool sync` after a cutover: follow every target's slot into the file.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::apply::Applier;
use super::stream::{self, Stream};
use crate::Error;

/// Where reverse sync reads from and writes to.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file the app used before the cutover.
    pub file: PathBuf,
    /// The targets: (name, connection). One entry named `target` for a plain
    /// target; one per shard with `--shards`.
    pub targets: Vec<(String, dbtool_pool::Target)>,
    /// How long to wait before polling again when every slot is caught up.
    pub idle: Duration,
    /// Stop as soon as every slot is caught up (scripts, tests, benchmarks).
    pub until_idle: bool,
}

impl Options {
    /// Options for one plain target.
    pub fn new(file: impl Into<PathBuf>, target: dbtool_pool::Target) -> Options {
        Options {
            file: file.into(),
            targets: vec![("target".into(), target)],
            idle: Duration::from_millis(100),
            until_idle: false,
        }
    }
}

/// What reverse sync has done so far (reported about once a second and at
/// the end).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    /// Transactions applied to the file since start.
    pub txns: u64,
    /// Row changes applied since start.
    pub rows: u64,
    /// Rows applied per second over the last report interval.
    pub rows_per_sec: f64,
    /// Whether every slot was caught up at the last poll.
    pub caught_up: bool,
}

/// Streams Postgres changes into the SQLite file until `stop` resolves (Ctrl-C,
/// SIGTERM) or an error. Resumable: the file keeps the position of every
/// slot with the rows, so a rerun (after any stop, kill -9 included)
/// continues exactly where the file is. `progress` is called about once a
/// second.
///
/// This is what `dbtool sync --from FILE --to URL` runs when the sync phase
/// is `cut_over`.
pub async fn run(
    opts: &Options,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&Progress),
) -> Result<Progress, Error> {
    let mut streams = open_streams(&opts.targets).await?;
    let plan = stream::load_plan(&streams[0].client, &opts.file).await?;
    let mut conn = stream::open_file(&opts.file)?;
    let mut applier = Applier::new(&plan);
    let mut p = Progress::default();
    let mut last = Instant::now();
    let mut rows_at_last = 0;
    tokio::pin!(stop);
    loop {
        let mut idle = true;
        for s in &mut streams {
            let r = s.round(&mut conn, &mut applier, None).await?;
            p.txns += r.txns;
            p.rows += r.rows;
            idle &= r.txns == 0;
        }
        p.caught_up = idle;
        if last.elapsed() >= Duration::from_secs(1) {
            p.rows_per_sec = (p.rows - rows_at_last) as f64 / last.elapsed().as_secs_f64();
            rows_at_last = p.rows;
            last = Instant::now();
            progress(&p);
        }
        if idle && opts.until_idle {
            // Caught up with the flushed WAL; flush and drain what was
            // committed until now (a commit with synchronous_commit = off
            // may not be flushed yet), then stop.
            for s in &mut streams {
                let end = s.flushed_end().await?;
                loop {
                    let r = s.round(&mut conn, &mut applier, Some(end)).await?;
                    p.txns += r.txns;
                    p.rows += r.rows;
                    if r.txns == 0 {
                        break;
                    }
                }
            }
            break;
        }
        if idle {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(opts.idle) => {}
            }
        } else if futures::poll!(&mut stop).is_ready() {
            break;
        }
    }
    Ok(p)
}

/// `dbtool sync` after a cutover: the same command and options stream
/// Postgres changes back into the file until cancelled (or, with
/// `until_idle`, caught up).
pub(crate) async fn from_sync(
    opts: &crate::sync::Options,
    obs: &dyn crate::sync::Observer,
) -> Result<crate::sync::Outcome, Error> {
    let targets = opts
        .targets
        .iter()
        .map(|t| {
            let name = if t.shard.is_empty() {
                "target".to_string()
            } else {
                t.shard.clone()
            };
            (name, t.to.clone())
        })
        .collect();
    let ropts = Options {
        file: opts.from.clone(),
        targets,
        idle: Duration::from_millis(100),
        until_idle: opts.until_idle,
    };
    obs.message(&format!(
        "{} was cut over: streaming Postgres changes back into it (dbtool rollback switches back; Ctrl-C stops, the same command resumes)",
        opts.from.display()
    ));
    let cancel = opts.cancel.clone();
    let stop = async move {
        while !cancel.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let p = run(&ropts, stop, |p| {
        obs.message(&format!(
            "reverse: applied {:.0} rows/s, {} row changes in {} transactions so far, {}",
            p.rows_per_sec,
            p.rows,
            p.txns,
            if p.caught_up {
                "caught up"
            } else {
                "catching up"
            }
        ))
    })
    .await?;
    obs.message(&format!(
        "reverse sync: {} transactions, {} row changes applied to {}",
        p.txns,
        p.rows,
        opts.from.display()
    ));
    Ok(if opts.until_idle {
        crate::sync::Outcome::Idle
    } else {
        crate::sync::Outcome::Stopped
    })
}

/// Connects to every target and opens its slot.
pub(crate) async fn open_streams(
    targets: &[(String, dbtool_pool::Target)],
) -> Result<Vec<Stream>, Error> {
    if targets.is_empty() {
        return Err(Error::Usage("no target to stream back from".into()));
    }
    let mut out = Vec::with_capacity(targets.len());
    for (name, t) in targets {
        out.push(Stream::open(name.clone(), connect(name, t).await?).await?);
    }
    Ok(out)
}

pub(crate) async fn connect(
    name: &str,
    t: &dbtool_pool::Target,
) -> Result<tokio_postgres::Client, Error> {
    t.connect()
        .await
        .map_err(|e| Error::Reverse(format!("cannot connect to target {name}: {e}")))
}
