//! The fence on the source: the guard trigger on each moved table and the
//! `dbtool.move_fence` rows of the moving teams, which make their writes
//! wait on the move lock during the switch and be refused after it.

use dbtool_shard::bucket_of;
use tokio_postgres::Client;

use super::stream::Stream;
use super::{lock_key, tables, Ctx, Error};

impl Ctx<'_> {
    pub(super) async fn install_guard(&self, c: &Client, place: &str) -> Result<(), Error> {
        for t in &self.tables {
            c.batch_execute(&format!(
                "CREATE OR REPLACE TRIGGER dbtool_move_guard BEFORE INSERT OR UPDATE OR DELETE ON {} \
                 FOR EACH ROW EXECUTE FUNCTION dbtool.move_guard({})",
                t.qualified,
                tables::quote_literal(&t.key)
            ))
            .await
            .map_err(Error::pg(
                format!("cannot install the move guard on {}", t.qualified),
                place,
            ))?;
        }
        Ok(())
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
