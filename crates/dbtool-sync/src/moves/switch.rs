//! The per-bucket freeze and switch: announce the freeze, take the move
//! lock, drain the slot, check, mark the fence moved and publish the new
//! map within `--max-freeze`; abort and retry past it.

use std::time::{Duration, Instant};

use dbtool_shard::{BucketRange, ShardMap};
use tokio_postgres::Client;

use super::catch_up::drop_stream;
use super::stream::Stream;
use super::{connect, lock_key, Ctx, Error, Event, Outcome};

impl Ctx<'_> {
    /// Freezes until one switch fits in the budget (catching up between
    /// attempts), then finishes the switch.
    pub(super) async fn switch_loop(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
        out: &mut Outcome,
    ) -> Result<(), Error> {
        let mut last_reason = String::new();
        for attempt in 1..=self.opts.freeze_attempts {
            match self.freeze_and_switch(src, dst, fwd).await? {
                Ok((held, version)) => {
                    out.freeze = held;
                    out.freezes.push(held);
                    out.map_version = version;
                    (self.report)(&Event::Freeze {
                        held,
                        switched: true,
                        reason: None,
                    });
                    (self.report)(&Event::Published { version });
                    self.after_switch(src, dst, fwd).await?;
                    return Ok(());
                }
                Err((held, reason)) => {
                    out.freezes.push(held);
                    (self.report)(&Event::Freeze {
                        held,
                        switched: false,
                        reason: Some(reason.clone()),
                    });
                    last_reason = reason;
                    if attempt < self.opts.freeze_attempts {
                        out.changes_applied += self.catch_up(src, dst, fwd).await?;
                    }
                }
            }
        }
        Err(Error::FreezeBudget {
            buckets: self.range.to_string(),
            max_ms: self.opts.max_freeze.as_millis() as u64,
            attempts: self.opts.freeze_attempts,
            reason: last_reason,
        })
    }

    /// One freeze: `Ok(Ok((held, version)))` switched, `Ok(Err((held,
    /// reason)))` aborted within the budget (writes released, map unchanged).
    pub(super) async fn freeze_and_switch(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
    ) -> Result<Result<(Duration, u64), (Duration, String)>, Error> {
        let budget = self.opts.max_freeze;
        // Connected before the freeze starts: a new connection can take
        // longer than the whole budget on a busy server.
        let lock = connect(&self.src_t).await?;
        let started = Instant::now();
        let place = self.catalog.name().to_string();
        self.cat()
            .execute(
                "INSERT INTO dbtool.shard_freeze (move_id, first_bucket, last_bucket, until) \
                 VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
                 ON CONFLICT (move_id) DO UPDATE SET until = EXCLUDED.until",
                &[
                    &self.move_id,
                    &i32::from(self.range.first),
                    &i32::from(self.range.last),
                    &(budget.as_millis() as f64),
                ],
            )
            .await
            .map_err(Error::pg("cannot announce the freeze", &place))?;
        self.notify_freeze().await?;
        let result = self.frozen(&lock, src, dst, fwd, started, budget).await;
        // Whatever happened: release the holds and the lock.
        let _ = self
            .cat()
            .execute(
                "DELETE FROM dbtool.shard_freeze WHERE move_id = $1",
                &[&self.move_id],
            )
            .await;
        let _ = self.notify_freeze().await;
        let _ = lock.execute("SELECT pg_advisory_unlock_all()", &[]).await;
        drop(lock);
        let held = started.elapsed();
        match result {
            Ok(Some(version)) => Ok(Ok((held, version))),
            Ok(None) => Ok(Err((held, "ran past --max-freeze".into()))),
            Err(Abort::Budget(reason)) => Ok(Err((held, reason))),
            Err(Abort::Fatal(e)) => Err(e),
        }
    }

    pub(super) async fn notify_freeze(&self) -> Result<(), Error> {
        self.cat()
            .execute(
                "SELECT pg_notify('dbtool_shard_freeze', $1)",
                &[&self.move_id.to_string()],
            )
            .await
            .map_err(Error::pg("cannot announce the freeze", self.catalog.name()))?;
        Ok(())
    }

    pub(super) async fn frozen(
        &self,
        lock: &Client,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
        started: Instant,
        budget: Duration,
    ) -> Result<Option<u64>, Abort> {
        let left = |what: &str| -> Result<Duration, Abort> {
            budget
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| Abort::Budget(format!("ran past --max-freeze while {what}")))
        };
        let ms = left("announcing")?.as_millis().max(1);
        lock.batch_execute(&format!("SET lock_timeout = {ms}"))
            .await
            .map_err(fatal("cannot set lock_timeout", &self.source))?;
        if let Err(e) = lock
            .execute("SELECT pg_advisory_lock($1)", &[&lock_key(self.move_id)])
            .await
        {
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Err(Abort::Budget(
                    "writes of moving teams still in flight when --max-freeze ran out".into(),
                ));
            }
            return Err(Abort::Fatal(Error::pg(
                "cannot take the move lock",
                &self.source,
            )(e)));
        }
        // Drain: everything committed up to now.
        loop {
            left("draining")?;
            let upto = flushed_lsn(src)
                .await
                .map_err(fatal("cannot flush the WAL", &self.source))?;
            let mut new_teams = 0;
            loop {
                left("draining")?;
                let step = fwd
                    .step(src, dst, Some(&upto), self.opts.batch_changes)
                    .await
                    .map_err(Abort::Fatal)?;
                new_teams += self.fence_seen(src, fwd).await.map_err(Abort::Fatal)?;
                if step.txns == 0 {
                    break;
                }
            }
            // A team first seen while draining was not fenced when the lock
            // was taken: drain once more so its last writes are in too.
            if new_teams == 0 {
                break;
            }
        }
        left("checking")?;
        self.check(src, dst).await.map_err(Abort::Fatal)?;
        left("switching")?;
        let switch_lsn: String = dst
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(fatal("cannot read the WAL position", &self.target))?
            .get(0);
        let next = self
            .catalog
            .latest_version()
            .await
            .map_err(|e| Abort::Fatal(e.into()))?
            .unwrap_or(0)
            + 1;
        let record = if self.rollback {
            "UPDATE dbtool.shard_moves SET phase = 'switching_back', updated_at = now() \
             WHERE id = $1 AND $2::text IS NOT NULL"
        } else {
            "UPDATE dbtool.shard_moves SET phase = 'switching', switch_lsn = $2::text::pg_lsn, \
             updated_at = now() WHERE id = $1"
        };
        self.cat()
            .execute(record, &[&self.move_id, &switch_lsn])
            .await
            .map_err(fatal("cannot record the switch", self.catalog.name()))?;
        src.execute(
            "UPDATE dbtool.move_fence SET state = 'moved', map_version = $2 WHERE move_id = $1",
            &[&self.move_id, &(next as i64)],
        )
        .await
        .map_err(fatal("cannot mark the moving teams moved", &self.source))?;
        if self.rollback {
            // The shard the teams return to takes their writes again.
            dst.execute(
                "DELETE FROM dbtool.move_fence WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(fatal("cannot lift the fence", &self.target))?;
        }
        let version = self.publish(src).await.map_err(Abort::Fatal)?;
        Ok(Some(version))
    }

    /// Publishes the map with the range on the target (idempotent) and
    /// records it.
    pub(super) async fn publish(&self, _src: &Client) -> Result<u64, Error> {
        let map = self.catalog.load(None).await?.ok_or_else(|| {
            Error::Shard(dbtool_shard::Error::NoMap {
                catalog: self.catalog.name().to_string(),
            })
        })?;
        let next = reassign(&map, self.range, &self.target)?;
        let note = format!(
            "{} {}: buckets {} {} -> {}",
            if self.rollback {
                "rollback of move"
            } else {
                "move"
            },
            self.move_id,
            self.range,
            self.source,
            self.target
        );
        let version = self.catalog.publish(&next, &note).await?;
        self.cat()
            .execute(
                "UPDATE dbtool.shard_moves SET phase = $3, map_version = $2, updated_at = now() WHERE id = $1",
                &[
                    &self.move_id,
                    &(version as i64),
                    &if self.rollback { "rolled_back" } else { "switched" },
                ],
            )
            .await
            .map_err(Error::pg("cannot record the switch", self.catalog.name()))?;
        Ok(version)
    }

    /// After the switch: changes that reached the source after the drain (a
    /// team first written there during the switch) are applied too, then
    /// the forward slot and publication go.
    pub(super) async fn after_switch(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
    ) -> Result<(), Error> {
        let upto = flushed_lsn(src)
            .await
            .map_err(Error::pg("cannot flush the WAL", &self.source))?;
        loop {
            let step = fwd
                .step(src, dst, Some(&upto), self.opts.batch_changes)
                .await?;
            let teams: Vec<String> = fwd.teams_seen.drain().collect();
            if !teams.is_empty() {
                self.fence(src, &teams).await?;
                src.execute(
                    "UPDATE dbtool.move_fence SET state = 'moved' WHERE move_id = $1",
                    &[&self.move_id],
                )
                .await
                .map_err(Error::pg("cannot fence late teams", &self.source))?;
            }
            if step.txns == 0 {
                break;
            }
        }
        drop_stream(src, &self.source, &fwd.slot).await
    }
}

pub(super) enum Abort {
    Budget(String),
    Fatal(Error),
}

pub(super) fn fatal(
    action: &'static str,
    place: &str,
) -> impl FnOnce(tokio_postgres::Error) -> Abort {
    let place = place.to_string();
    move |e| Abort::Fatal(Error::pg(action, place)(e))
}

/// Flushes the WAL and returns the position reached: every transaction
/// committed so far is decodable up to it. Sessions running with
/// `synchronous_commit = off` make commits visible before their WAL is
/// flushed, and logical decoding reads only flushed WAL; a commit with
/// `synchronous_commit = on` of a transaction that wrote WAL flushes
/// everything before it (`dbtool.move_flush` is that write).
pub(super) async fn flushed_lsn(c: &Client) -> Result<String, tokio_postgres::Error> {
    c.batch_execute(
        "BEGIN; SET LOCAL synchronous_commit = on; \
         INSERT INTO dbtool.move_flush (id, at) VALUES (1, clock_timestamp()) \
         ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at; COMMIT",
    )
    .await?;
    Ok(c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

/// `map` with `range` given to `to`, as a new version.
pub(super) fn reassign(map: &ShardMap, range: BucketRange, to: &str) -> Result<ShardMap, Error> {
    let ranges: Vec<(String, BucketRange)> = (0..dbtool_shard::BUCKETS)
        .map(|b| {
            let owner = if range.contains(b) {
                to.to_string()
            } else {
                map.owner_of_bucket(b).unwrap_or_default().to_string()
            };
            (owner, BucketRange { first: b, last: b })
        })
        .collect();
    let next = ShardMap::from_ranges(
        map.shards().to_vec(),
        ranges.iter().map(|(s, r)| (s.as_str(), *r)),
    )?;
    Ok(next.with_version(map.version() + 1)?)
}
