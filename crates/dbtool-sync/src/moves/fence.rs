//! The fence on the source: the guard trigger on each moved table and the
//! `dbtool.move_fence` rows of the moving teams, which make their writes
//! wait on the move lock during the switch and be refused after it.
//!
//! The guard costs other teams one bit test per row write: each key
//! column's trigger function carries a bitmap of the fenced teams' hashes,
//! recompiled by the shard whenever the fence gains or loses teams, and
//! only a set bit looks the team up in the fence.

use dbtool_shard::bucket_of;
use tokio_postgres::Client;

use super::stream::Stream;
use super::{lock_key, Ctx, Error};

/// The longest a freeze waits for transactions older than the guard's last
/// recompile (see [`Ctx::settle_guard`]).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Ctx<'_> {
    /// Puts the guard on each moved table of `c` (the trigger and its
    /// function compiled from the fence: see
    /// `migrations/20261207000003_move_guard.sql`).
    pub(super) async fn install_guard(&self, c: &Client, place: &str) -> Result<(), Error> {
        for t in &self.tables {
            c.execute(
                "SELECT dbtool.move_guard_install($1::text::regclass, $2)",
                &[&t.qualified, &t.key],
            )
            .await
            .map_err(Error::pg(
                format!("cannot install the move guard on {}", t.qualified),
                place,
            ))?;
        }
        Ok(())
    }

    /// Waits, before a freeze, until no transaction on the source that had
    /// written before the guard's last recompile is still open (at most
    /// [`SETTLE_LIMIT`]). A session picks up a recompiled guard at its next
    /// transaction, or at its next lock on a table; a transaction that had
    /// already written a moved table may still test the bitmap it started
    /// with, which lacks the teams fenced since. Waiting for those to end
    /// makes every write of a fenced team, from the freeze on, go through
    /// the exact check (and so wait on the move lock). No writes are held
    /// while it waits; past the limit the freeze goes ahead, as it did
    /// before the guard was compiled, and the drain after the switch
    /// applies what those transactions commit until then.
    pub(super) async fn settle_guard(&self, src: &Client) -> Result<(), Error> {
        let started = std::time::Instant::now();
        loop {
            let open: i64 = src
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity AS a \
                     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
                       AND a.backend_xid IS NOT NULL \
                       AND age(a.backend_xid) > (SELECT min(age(p.xmin)) FROM pg_proc AS p \
                            WHERE p.pronamespace = 'dbtool'::regnamespace \
                              AND p.proname LIKE 'move\\_guard\\_%' AND p.pronargs = 0)",
                    &[],
                )
                .await
                .map_err(Error::pg("cannot read the open transactions", &self.source))?
                .get(0);
            if open == 0 || started.elapsed() >= SETTLE_LIMIT {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(super) async fn fenced_teams(&self, src: &Client) -> Result<Vec<String>, Error> {
        Ok(src
            .query(
                "SELECT team_id FROM dbtool.move_fence WHERE move_id = $1 ORDER BY 1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's fence", &self.source))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub(super) async fn fence(&self, src: &Client, teams: &[String]) -> Result<(), Error> {
        if teams.is_empty() {
            return Ok(());
        }
        let buckets: Vec<i32> = teams
            .iter()
            .map(|t| bucket_of(t).map(i32::from).unwrap_or(-1))
            .collect();
        src.execute(
            "INSERT INTO dbtool.move_fence (team_id, move_id, bucket, lock_key, state, owner) \
             SELECT t, $2, b, $3, 'moving', $4 FROM unnest($1::text[], $5::int[]) AS u(t, b) \
             ON CONFLICT (team_id) DO NOTHING",
            &[
                &teams,
                &self.move_id,
                &lock_key(self.move_id),
                &self.target,
                &buckets,
            ],
        )
        .await
        .map_err(Error::pg("cannot fence the moving teams", &self.source))?;
        Ok(())
    }

    /// Fences the teams the stream saw; they stay to be fenced until the
    /// insert succeeded (a freeze step cut short may drop it midway).
    pub(super) async fn fence_seen(&self, src: &Client, fwd: &mut Stream) -> Result<usize, Error> {
        let teams: Vec<String> = fwd.teams_seen.iter().cloned().collect();
        self.fence(src, &teams).await?;
        for t in &teams {
            fwd.teams_seen.remove(t);
        }
        Ok(teams.len())
    }

    pub(super) async fn fence_moved(&self, src: &Client) -> Result<bool, Error> {
        let row = src
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'moved'), count(*) FROM dbtool.move_fence WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's fence", &self.source))?;
        let (moved, all): (i64, i64) = (row.get(0), row.get(1));
        Ok(all > 0 && moved == all)
    }
}
