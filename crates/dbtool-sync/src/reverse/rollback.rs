//! `dbtool rollback`: the mirror of the cutover.
//!
//! 1. Catch up: apply the slot into the file while the app still writes
//!    Postgres, and compare every row changed since the cutover (recorded in
//!    the file with the rows) against Postgres.
//! 2. Freeze: in one transaction per target, `LOCK TABLE ... IN EXCLUSIVE
//!    MODE` on the migrated tables (`lock_timeout` = the budget): the app's
//!    writers wait, its readers do not.
//! 3. Drain the slot up to the WAL end seen under the lock; recheck the rows
//!    changed since step 1 (and any that differed then); compare per-table
//!    counts.
//! 4. Switch: in the lock transaction, mark the Postgres tables "moved back"
//!    (writers waiting on the lock then fail naming the file instead of
//!    committing rows the file would never see) and set the sync phase back
//!    to `streaming`; commit (the freeze ends). Lift the file's moved mark and
//!    clear the stream's bookkeeping in one SQLite transaction.
//! 5. Drop the slot and publication.
//!
//! Over budget or a failed check before step 4: the lock transactions roll
//! back, writes continue on Postgres, the slot keeps everything, and the
//! error says why. A rerun starts over from step 1.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dbtool_migrate::plan::Plan;
use rusqlite::TransactionBehavior;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::apply::{Applier, CHANGED_TABLE};
use super::slot::quote;
use super::stream;
use super::{check, mark, run, slot};
use crate::Error;

/// What `dbtool rollback` needs.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// The SQLite file the app goes back to.
    pub file: PathBuf,
    /// The targets: (name, connection), one per shard with `--shards`.
    pub targets: Vec<(String, dbtool_pool::Target)>,
    /// The longest the app's Postgres writes may be held.
    pub max_freeze: Duration,
}

/// What a completed rollback did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// How long the app's Postgres writes were held.
    pub freeze: Duration,
    /// Row changes applied to the file (catch-up and drain).
    pub rows_applied: u64,
    /// Row changes applied during the freeze.
    pub rows_drained: u64,
    /// Changed rows compared between the file and Postgres.
    pub rows_checked: u64,
    /// Slots dropped.
    pub slots_dropped: Vec<String>,
}

/// Runs the rollback (see the module docs).
pub async fn rollback(opts: &RollbackOptions) -> Result<Report, Error> {
    let mut streams = run::open_streams(&opts.targets).await?;
    let plan = stream::load_plan(&streams[0].client, &opts.file).await?;
    let mut conn = stream::open_file(&opts.file)?;
    let mut applier = Applier::new(&plan);
    let mut report = Report::default();
    let tables: Vec<String> = plan
        .tables
        .iter()
        .map(|t| format!("{}.{}", quote(&plan.schema), quote(&t.target_name)))
        .collect();
    let lock_list = lock_order(&plan)
        .into_iter()
        .map(|i| tables[i].as_str())
        .collect::<Vec<_>>()
        .join(", ");

    // 1. Catch up (bounded: under a heavy write load the freeze drains the rest).
    for _ in 0..100 {
        let mut idle = true;
        for s in &mut streams {
            let r = s.round(&mut conn, &mut applier, None).await?;
            report.rows_applied += r.rows;
            idle &= r.txns == 0;
        }
        if idle {
            break;
        }
    }
    let clients: Vec<&Client> = streams.iter().map(|s| &s.client).collect();
    let keys = check::recorded_keys(&conn)?;
    let mut recheck: BTreeSet<_> = check::compare(&conn, &clients, &plan, &keys)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    report.rows_checked = keys.len() as u64;
    applier.changed.clear();

    // 2. Freeze.
    let mut lockers = Vec::with_capacity(opts.targets.len());
    for (name, t) in &opts.targets {
        lockers.push(run::connect(name, t).await?);
    }
    let start = Instant::now();
    let budget = opts.max_freeze;
    let left = |what: &str| -> Result<Duration, Error> {
        budget.checked_sub(start.elapsed()).ok_or_else(|| {
            Error::RollbackAborted(format!(
                "the freeze reached its budget of {} ms while {what}; writes continue on Postgres and nothing was lost: retry at a quieter time or with a larger --max-freeze",
                budget.as_millis()
            ))
        })
    };
    let result = async {
        for (l, s) in lockers.iter().zip(&streams) {
            loop {
                let ms = left("taking the table locks")?.as_millis().max(1);
                let r = l
                    .batch_execute(&format!(
                        "BEGIN; SET LOCAL lock_timeout = '{ms}ms'; LOCK TABLE {lock_list} IN EXCLUSIVE MODE"
                    ))
                    .await;
                match r {
                    Ok(()) => break,
                    // An app transaction took the tables in another order;
                    // Postgres chose this one to fail: try again.
                    Err(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                        l.batch_execute("ROLLBACK").await?;
                    }
                    Err(e) => {
                        return Err(Error::RollbackAborted(format!(
                            "cannot lock the tables of target {} within the freeze budget ({}); writes continue on Postgres and nothing was lost: retry when long write transactions are done",
                            s.name,
                            pg_message(&e)
                        )))
                    }
                }
            }
        }
        // 3. Drain everything committed before the locks, then check.
        for s in &mut streams {
            let upto = s.flushed_end().await?;
            loop {
                let d = left("draining the reverse stream")?;
                let r = tokio::time::timeout(d, s.round(&mut conn, &mut applier, Some(upto)))
                    .await
                    .map_err(|_| {
                        Error::RollbackAborted(format!(
                            "the freeze reached its budget of {} ms while draining; writes continue on Postgres and nothing was lost (what was drained stays applied)",
                            budget.as_millis()
                        ))
                    })??;
                report.rows_applied += r.rows;
                report.rows_drained += r.rows;
                if r.txns == 0 {
                    break;
                }
            }
        }
        recheck.extend(applier.changed.iter().cloned());
        let clients: Vec<&Client> = streams.iter().map(|s| &s.client).collect();
        let d = left("checking")?;
        let (bad, counts) = tokio::time::timeout(d, async {
            let bad = check::compare(&conn, &clients, &plan, &recheck).await?;
            let counts = check::counts(&conn, &clients, &plan).await?;
            Ok::<_, Error>((bad, counts))
        })
        .await
        .map_err(|_| {
            Error::RollbackAborted(format!(
                "the freeze reached its budget of {} ms while checking; writes continue on Postgres and nothing was lost",
                budget.as_millis()
            ))
        })??;
        if let Some(((table, key), why)) = bad.first() {
            return Err(Error::RollbackAborted(format!(
                "{} changed row(s) differ between the file and Postgres, e.g. {table} key {key}: {why}; writes continue on Postgres: run `dbtool verify` and look for writes to the file since the cutover",
                bad.len()
            )));
        }
        if !counts.is_empty() {
            return Err(Error::RollbackAborted(format!(
                "row counts differ: {}; writes continue on Postgres: run `dbtool verify` for the rows",
                counts.join("; ")
            )));
        }
        report.rows_checked += recheck.len() as u64;
        // 4. Switch: Postgres refuses the app's writes from the commit on.
        for l in &lockers {
            left("switching")?;
            mark::mark_moved_back(l, &tables, &opts.file.display().to_string()).await?;
            set_phase_streaming(l).await?;
        }
        left("switching")?;
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = result {
        for l in &lockers {
            // Dropping the connection would roll back too; say it explicitly.
            let _ = l.batch_execute("ROLLBACK").await;
        }
        return Err(e);
    }
    for l in &lockers {
        l.batch_execute("COMMIT").await?;
    }
    report.freeze = start.elapsed();

    // The file takes writes again.
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        crate::capture::lift_moved(&tx)?;
        tx.execute(
            "DELETE FROM _dbtool_meta WHERE key LIKE 'reverse\\_lsn:%' ESCAPE '\\'",
            [],
        )?;
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {CHANGED_TABLE}"))?;
        tx.commit()?;
    }

    // 5. Slot hygiene.
    for s in &streams {
        slot::drop_slot(&s.client, &s.slot).await?;
        slot::drop_publication(&s.client, &s.slot).await?;
        report.slots_dropped.push(s.slot.clone());
    }
    Ok(report)
}

/// Sets the sync state back to `streaming` (the forward stream resumes), if
/// the sync state table exists.
async fn set_phase_streaming(client: &Client) -> Result<(), Error> {
    let has = client
        .query_one(
            "SELECT count(*) > 0 FROM information_schema.columns
             WHERE table_schema = 'dbtool' AND table_name = 'syncs' AND column_name = 'phase'",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if has {
        client
            .batch_execute("UPDATE dbtool.syncs SET phase = 'streaming' WHERE phase = 'cut_over'")
            .await?;
    }
    Ok(())
}

/// The migrated tables (indexes into the plan), each before the tables it
/// references. LOCK TABLE takes its list in order; an app insert into a
/// child table holds the child, then takes a share lock on the parent for
/// its foreign key check. Locking children first waits those inserts out
/// instead of deadlocking with them.
fn lock_order(plan: &Plan) -> Vec<usize> {
    fn visit(i: usize, plan: &Plan, seen: &mut [bool], out: &mut Vec<usize>) {
        if seen[i] {
            return;
        }
        seen[i] = true;
        let name = &plan.tables[i].source_name;
        for (j, t) in plan.tables.iter().enumerate() {
            if j != i
                && t.foreign_keys
                    .iter()
                    .any(|f| f.ref_table.eq_ignore_ascii_case(name))
            {
                visit(j, plan, seen, out);
            }
        }
        out.push(i);
    }
    let mut seen = vec![false; plan.tables.len()];
    let mut out = Vec::with_capacity(plan.tables.len());
    for i in 0..plan.tables.len() {
        visit(i, plan, &mut seen, &mut out);
    }
    out
}

/// A Postgres error's own message (tokio-postgres prints only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}
