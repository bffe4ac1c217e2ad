//! The health monitor: one task per host, each with its own connection, so a
//! pool that is exhausted by the application never starves the checks.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::tls::{ConnectError, Target};
use tokio_util::sync::CancellationToken;

use crate::health::Probe;
use crate::pool::Shared;

// The timeline of a primary is the one it writes WAL on now, read from the
// name of its current WAL file (its first 8 hex digits): it moves up the
// moment a promotion ends, where `pg_control_checkpoint()` only does after
// the next checkpoint. The split-brain rule compares primaries' timelines.
//
// The time lag counts only while WAL is waiting to be replayed: on an idle
// primary the last replayed commit can be hours old on a replica that is
// fully caught up, and `now() - pg_last_xact_replay_timestamp()` alone would
// call it lagging.
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
    CASE WHEN NOT pg_is_in_recovery() THEN NULL \
         WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
         ELSE COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8, 0::float8) END, \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, \
    CASE WHEN pg_is_in_recovery() THEN (pg_control_checkpoint()).timeline_id::int8 \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END";

/// A dedicated connection; its driver task is aborted with it, so a hung
/// server cannot keep a task alive after the pool is gone.
struct MonitorConn {
    client: Client,
    task: JoinHandle<()>,
}

impl Drop for MonitorConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks one host, reconnecting as needed.
pub(crate) struct Prober {
    pg: Target,
    conn: Option<MonitorConn>,
}

impl Prober {
    pub fn new(mut pg: Target, application_name: &str) -> Prober {
        pg.application_name(format!("{application_name} monitor"));
        Prober { pg, conn: None }
    }

    /// One check, bounded by `limit` (connect and query together).
    pub async fn probe(&mut self, limit: Duration) -> Result<Probe, String> {
        match tokio::time::timeout(limit, self.probe_inner()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("health check timed out after {limit:?}"))
            }
        }
    }

    async fn probe_inner(&mut self) -> Result<Probe, String> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            let (client, connection) = self.pg.connect_raw().await.map_err(|e| match e {
                // The host is named by whoever shows this error.
                ConnectError::Timeout { after, .. } => {
                    format!("connecting timed out after {after:?} (connect_timeout_ms)")
                }
                ConnectError::Postgres { source, .. } => crate::error::chain(&source),
                other => other.to_string(),
            })?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            self.conn = Some(MonitorConn { client, task });
        }
        let client = &self.conn.as_ref().expect("connected above").client;
        let row = client
            .query_one(CHECK_SQL, &[])
            .await
            .map_err(|e| crate::error::chain(&e))?;
        let in_recovery: bool = row.get(0);
        let lsn: Option<PgLsn> = row.get(1);
        let lag: Option<f64> = row.get(2);
        let replay_paused: Option<bool> = row.get(3);
        let timeline: Option<i64> = row.get(4);
        Ok(Probe {
            in_recovery,
            lsn: lsn.map(u64::from),
            lag: lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
            replay_paused,
            timeline: timeline.and_then(|t| u32::try_from(t).ok()),
        })
    }
}

/// The loop of one host: check, record, tidy the pool, sleep. Ends when the
/// pool is dropped (the token is cancelled), also in the middle of a check.
pub(crate) async fn run(
    shared: Arc<Shared>,
    idx: usize,
    mut prober: Prober,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(shared.settings.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the pool's build already checked every host.
    tick.tick().await;
    let limit = shared.settings.check_timeout();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = prober.probe(limit) => r,
        };
        shared.apply_probe(idx, result);
        shared.maintain(idx);
    }
}
