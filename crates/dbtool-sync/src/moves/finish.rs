//! Finishing switched moves: drop their streams and delete the old copies
//! on the source in batches. The batched delete is shared with rollback,
//! which uses it on the shard the buckets leave.

use dbtool_shard::catalog::Catalog;
use dbtool_shard::{bucket_of, BucketRange};
use tokio_postgres::Client;

use super::catch_up::drop_stream;
use super::tables::{quote, Table};
use super::{catalog_tag, connect, fault, migrate, slot_name, tables, Error, Options};

/// What [`finish`] did for one move.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The move.
    pub move_id: i64,
    /// The buckets.
    pub range: BucketRange,
    /// The shard the old copies were deleted from.
    pub source: String,
    /// Rows deleted there.
    pub rows_deleted: u64,
}

/// Ends every switched move: drops its reverse stream and deletes the old
/// copies of its rows on the source, in batches of `batch` rows (each its
/// own transaction, so the source's other writes are never blocked long).
/// The source keeps refusing the moved teams' writes.
///
/// # Errors
/// Postgres errors; a rerun continues where it stopped.
pub async fn finish(opts: &Options, batch: i64) -> Result<Vec<Finished>, Error> {
    migrate(&opts.catalog).await?;
    let catalog = Catalog::connect(&opts.catalog).await?;
    let tag = catalog_tag(&catalog).await?;
    let rows = catalog
        .client()
        .query(
            "SELECT id, first_bucket, last_bucket, source, target FROM dbtool.shard_moves \
             WHERE phase = 'switched' ORDER BY id",
            &[],
        )
        .await
        .map_err(Error::pg("cannot read the moves", catalog.name()))?;
    let mut out = Vec::new();
    for r in rows {
        let (id, f, l, source, target): (i64, i32, i32, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let range = BucketRange::new(f as u16, l as u16)?;
        let src = connect(&opts.shard(&source)?.1.primary).await?;
        let dst = connect(&opts.shard(&target)?.1.primary).await?;
        drop_stream(&dst, &target, &slot_name(&tag, id, true)).await?;
        drop_stream(&src, &source, &slot_name(&tag, id, false)).await?;
        let tables = tables::discover(&src, &source, &opts.schema, &opts.keys).await?;
        let deleted =
            delete_copies(&src, &source, &tables, range, batch, "finish-deleting").await?;
        catalog
            .client()
            .execute(
                "UPDATE dbtool.shard_moves SET phase = 'finished', updated_at = now() WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(Error::pg("cannot record the finish", catalog.name()))?;
        out.push(Finished {
            move_id: id,
            range,
            source,
            rows_deleted: deleted,
        });
    }
    Ok(out)
}

/// Deletes the rows of the teams of `range` from a shard that no longer owns
/// them, `batch` rows per transaction (so its other writes never wait long),
/// past the fence (the mover's own connection).
pub(super) async fn delete_copies(
    c: &Client,
    place: &str,
    tables: &[Table],
    range: BucketRange,
    batch: i64,
    fault_point: &str,
) -> Result<u64, Error> {
    let mut deleted = 0;
    for t in tables {
        let teams: Vec<String> = c
            .query(
                &format!(
                    "SELECT DISTINCT {k}::text FROM {t} WHERE {k} IS NOT NULL",
                    k = quote(&t.key),
                    t = t.qualified
                ),
                &[],
            )
            .await
            .map_err(Error::pg("cannot list teams", place))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|team| bucket_of(team).is_ok_and(|b| range.contains(b)))
            .collect();
        let sql = format!(
            "WITH gone AS (SELECT ctid FROM {t} WHERE {k} = ANY($1::text[]::{ty}[]) LIMIT $2) \
             DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM gone)",
            t = t.qualified,
            k = quote(&t.key),
            ty = t.key_type
        );
        loop {
            c.batch_execute(
                "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL dbtool.move_apply = 'on'",
            )
            .await
            .map_err(Error::pg("cannot start a delete batch", place))?;
            let n = match c.execute(&sql, &[&teams, &batch]).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    return Err(Error::pg(
                        format!("cannot delete old rows of {}", t.qualified),
                        place,
                    )(e));
                }
            };
            c.batch_execute("COMMIT")
                .await
                .map_err(Error::pg("cannot commit a delete batch", place))?;
            deleted += n;
            fault::point(fault_point);
            if n < batch as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}
