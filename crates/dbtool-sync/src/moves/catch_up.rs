//! Catching up: the publication and logical slot of a stream (created and
//! dropped here) and the loop applying the slot's backlog to the target
//! before a freeze is tried.

use tokio_postgres::Client;

use super::stream::Stream;
use super::tables::{quote, Table};
use super::{Ctx, Error};

impl Ctx<'_> {
    /// Applies the slot's backlog until a batch reads little (the lag is small).
    pub(super) async fn catch_up(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
    ) -> Result<u64, Error> {
        let mut applied = 0;
        loop {
            let step = fwd.step(src, dst, None, self.opts.batch_changes).await?;
            applied += step.applied;
            self.fence_seen(src, fwd).await?;
            if step.txns < 100 {
                return Ok(applied);
            }
        }
    }
}

/// Creates the publication and slot of a stream if missing; true when the
/// slot was created now.
pub(super) async fn ensure_stream(
    c: &Client,
    place: &str,
    name: &str,
    tables: &[Table],
) -> Result<bool, Error> {
    let has_pub: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .map_err(Error::pg("cannot read publications", place))?
        .get(0);
    if !has_pub {
        let list: Vec<&str> = tables.iter().map(|t| t.qualified.as_str()).collect();
        c.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote(name),
            list.join(", ")
        ))
        .await
        .map_err(Error::pg(
            format!("cannot create publication {name}"),
            place,
        ))?;
    }
    let has_slot = slot_exists(c, place, name).await?;
    if !has_slot {
        c.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .map_err(Error::pg(
            format!("cannot create logical replication slot {name} (wal_level must be logical, with a free slot)"),
            place,
        ))?;
    }
    Ok(!has_slot)
}

pub(super) async fn drop_stream(c: &Client, place: &str, name: &str) -> Result<(), Error> {
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
        &[&name],
    )
    .await
    .map_err(Error::pg(format!("cannot drop slot {name}"), place))?;
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote(name)))
        .await
        .map_err(Error::pg(format!("cannot drop publication {name}"), place))?;
    Ok(())
}

/// True when the slot `name` exists in the connection's database.
pub(super) async fn slot_exists(c: &Client, place: &str, name: &str) -> Result<bool, Error> {
    Ok(c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())",
            &[&name],
        )
        .await
        .map_err(Error::pg("cannot read replication slots", place))?
        .get(0))
}
