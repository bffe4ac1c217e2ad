//! The per-bucket freeze and switch: announce the freeze, take the move
//! lock, drain the slot, check, mark the fence moved and publish the new
//! map within `--max-freeze`; abort and retry past it.

use std::time::{Duration, Instant};

use dbtool_shard::{BucketRange, ShardMap};
use tokio_postgres::Client;

use dbtool_pool::Target;

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
        self.settle_guard(src).await?;
        // Connected before the freeze starts: a new connection can take
        // longer than the whole budget on a busy server.
        let lock = connect(&self.src_t).await?;
        let clock = Clock {
            started: Instant::now(),
            budget,
        };
        let result = async {
            let place = self.catalog.name().to_string();
            clock
                .bounded("announcing the freeze", &[&Cancel::of(self.cat(), &self.opts.catalog)], async {
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
                        .map_err(fatal("cannot announce the freeze", &place))?;
                    Ok(self.notify_freeze().await?)
                })
                .await?;
            self.frozen(&lock, src, dst, fwd, &clock).await
        }
        .await;
        // Whatever happened: release the holds and the lock. These run past
        // the budget if they must: they are what ends the freeze.
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
        let held = clock.started.elapsed();
        if result.is_err() {
            // A step cut short may have left a cancel on its way: the
            // connections get their limits back (retrying past a late
            // cancel) before the next catch-up uses them.
            unbound(src, &self.source).await?;
            unbound(dst, &self.target).await?;
            // An apply cut short between its commit and the answer: the
            // position stored with the data is the one to go on from.
            fwd.load_position(dst).await?;
        }
        match result {
            Ok(version) => Ok(Ok((held, version))),
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

    /// The freeze proper, every step bounded by what is left of the budget
    /// (see [`Clock::bounded`]) up to marking the fence `moved`, the
    /// switch's point of no return: past it the map is published even if
    /// that takes longer, since the source already refuses the moving teams
    /// and only the new map lets them write again.
    pub(super) async fn frozen(
        &self,
        lock: &Client,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
        clock: &Clock,
    ) -> Result<u64, Abort> {
        let on_src = Cancel::of(src, &self.src_t);
        let on_lock = Cancel::of(lock, &self.src_t);
        let on_dst = Cancel::of(dst, &self.dst_t);
        let on_cat = Cancel::of(self.cat(), &self.opts.catalog);
        // Every statement on the shards is bounded on the server too, so
        // one cut short on the client neither runs on nor keeps its locks.
        let ms = clock.left("taking the move lock")?.as_millis().max(1);
        let limits = format!("SET statement_timeout = {ms}; SET lock_timeout = {ms}");
        clock
            .bounded(
                "taking the move lock",
                &[&on_lock, &on_src, &on_dst],
                async {
                    for (c, place) in [
                        (lock, &self.source),
                        (src, &self.source),
                        (&*dst, &self.target),
                    ] {
                        c.batch_execute(&limits)
                            .await
                            .map_err(fatal("cannot bound the freeze's statements", place))?;
                    }
                    match lock
                        .execute("SELECT pg_advisory_lock($1)", &[&lock_key(self.move_id)])
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(e) if is_timeout(&e) => Err(Abort::Budget(
                            "writes of moving teams still in flight when --max-freeze ran out"
                                .into(),
                        )),
                        Err(e) => Err(fatal("cannot take the move lock", &self.source)(e)),
                    }
                },
            )
            .await?;
        self.fault("fence-taken");
        // Drain: everything committed up to now.
        clock
            .bounded("draining the changes", &[&on_src, &on_dst], async {
                loop {
                    let upto = flushed_lsn(src)
                        .await
                        .map_err(fatal("cannot flush the WAL", &self.source))?;
                    let mut new_teams = 0;
                    loop {
                        let step = fwd
                            .step(src, dst, Some(&upto), self.opts.batch_changes)
                            .await?;
                        new_teams += self.fence_seen(src, fwd).await?;
                        if step.txns == 0 {
                            break;
                        }
                    }
                    // A team first seen while draining was not fenced when
                    // the lock was taken: drain once more so its last writes
                    // are in too.
                    if new_teams == 0 {
                        return Ok(());
                    }
                }
            })
            .await?;
        self.fault("drained");
        clock
            .bounded("checking the moved rows", &[&on_src, &on_dst], async {
                Ok(self.check(src, dst).await?)
            })
            .await?;
        self.fault("checked");
        let next = clock
            .bounded("recording the switch", &[&on_dst, &on_cat], async {
                let switch_lsn: String = dst
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .map_err(fatal("cannot read the WAL position", &self.target))?
                    .get(0);
                let next = self.catalog.latest_version().await.map_err(Error::from)?.unwrap_or(0) + 1;
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
                Ok(next)
            })
            .await?;
        // Marking the fence is bounded on the server only: a statement that
        // answers with an error did not commit, so the freeze can still
        // abort; one cut short on the client might have committed.
        let step = "marking the moving teams moved";
        let ms = clock.left(step)?.as_millis().max(1);
        src.batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(fatal("cannot bound the freeze's statements", &self.source))?;
        match src
            .execute(
                "UPDATE dbtool.move_fence SET state = 'moved', map_version = $2 WHERE move_id = $1",
                &[&self.move_id, &(next as i64)],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err(Abort::Budget(over(step))),
            Err(e) => return Err(fatal("cannot mark the moving teams moved", &self.source)(e)),
        }
        // Past the point of no return: no limits.
        unbound(src, &self.source).await?;
        unbound(dst, &self.target).await?;
        if self.rollback {
            // The shard the teams return to takes their writes again.
            dst.execute(
                "DELETE FROM dbtool.move_fence WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(fatal("cannot lift the fence", &self.target))?;
        }
        let version = self.publish(src).await?;
        self.fault("published");
        Ok(version)
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

impl From<Error> for Abort {
    fn from(e: Error) -> Abort {
        Abort::Fatal(e)
    }
}

pub(super) fn fatal(
    action: &'static str,
    place: &str,
) -> impl FnOnce(tokio_postgres::Error) -> Abort {
    let place = place.to_string();
    move |e| Abort::Fatal(Error::pg(action, place)(e))
}

fn over(step: &str) -> String {
    format!("ran past --max-freeze while {step}")
}

/// True for a statement ended by `statement_timeout`, `lock_timeout` or a
/// cancel.
fn is_timeout(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE
    )
}

/// The time a freeze may still take.
pub(super) struct Clock {
    pub(super) started: Instant,
    pub(super) budget: Duration,
}

impl Clock {
    /// What is left of the budget before `step`, or the abort naming it.
    pub(super) fn left(&self, step: &str) -> Result<Duration, Abort> {
        self.budget
            .checked_sub(self.started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Abort::Budget(over(step)))
    }

    /// Runs one step of the freeze within what is left of the budget. Past
    /// it the step is dropped and the statements it may have left running
    /// on `cancel`'s connections are cancelled; a statement the server ended
    /// by `statement_timeout` or `lock_timeout` aborts the same way. Either
    /// abort names the step.
    pub(super) async fn bounded<T>(
        &self,
        step: &str,
        cancel: &[&Cancel<'_>],
        work: impl std::future::Future<Output = Result<T, Abort>>,
    ) -> Result<T, Abort> {
        let left = self.left(step)?;
        match tokio::time::timeout(left, work).await {
            Ok(Err(Abort::Fatal(Error::Postgres { source, .. }))) if is_timeout(&source) => {
                Err(Abort::Budget(over(step)))
            }
            Ok(r) => r,
            Err(_) => {
                for c in cancel {
                    c.cancel().await;
                }
                Err(Abort::Budget(over(step)))
            }
        }
    }
}

/// What cancels the statement running on one connection.
pub(super) struct Cancel<'a> {
    token: tokio_postgres::CancelToken,
    target: &'a Target,
}

impl<'a> Cancel<'a> {
    pub(super) fn of(c: &Client, target: &'a Target) -> Cancel<'a> {
        Cancel {
            token: c.cancel_token(),
            target,
        }
    }

    /// Best effort, bounded: the server-side `statement_timeout` ends the
    /// statement anyway, the cancel only ends it sooner.
    async fn cancel(&self) {
        if let Ok(tls) = self.target.tls() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.token.cancel_query(tls)).await;
        }
    }
}

/// Gives a connection its default statement and lock timeouts back. A
/// cancel sent for a statement that had just ended may hit this one
/// instead: it is retried.
pub(super) async fn unbound(c: &Client, place: &str) -> Result<(), Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match c
            .batch_execute("RESET statement_timeout; RESET lock_timeout")
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 && is_timeout(&e) => {}
            Err(e) => return Err(Error::pg("cannot reset the statement timeouts", place)(e)),
        }
    }
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
