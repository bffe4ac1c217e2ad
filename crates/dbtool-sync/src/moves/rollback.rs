//! Rolling a switched move back through its reverse stream, with the same
//! catch-up, freeze, check and fence as the move itself.

use std::time::Instant;

use dbtool_shard::catalog::Catalog;
use dbtool_shard::BucketRange;

use super::catch_up::drop_stream;
use super::finish::delete_copies;
use super::stream::{self, Stream};
use super::{
    catalog_tag, connect, migrate, slot_name, tables, Ctx, Error, Event, Options, Outcome, Report,
};

/// Switches a switched (not yet finished) move back: the buckets return to
/// the shard they came from, with every change made on the new shard since
/// the switch, read from the reverse stream (a slot created before the
/// switch). The same freeze, check and fence as the move itself; then the
/// new shard's copies are deleted in batches. Nothing written after the
/// switch is lost.
///
/// # Errors
/// [`Error::Usage`] when no switched move has exactly this range or its
/// reverse stream is gone (finished); as
/// [`move_buckets`](super::move_buckets) otherwise.
pub async fn rollback(
    opts: &Options,
    range: BucketRange,
    report: Report<'_>,
) -> Result<Outcome, Error> {
    migrate(&opts.catalog).await?;
    let catalog = Catalog::connect(&opts.catalog).await?;
    let tag = catalog_tag(&catalog).await?;
    let place = catalog.name().to_string();
    let row = catalog
        .client()
        .query_opt(
            "SELECT id, source, target, phase, switch_lsn::text FROM dbtool.shard_moves \
             WHERE first_bucket = $1 AND last_bucket = $2 ORDER BY id DESC LIMIT 1",
            &[&i32::from(range.first), &i32::from(range.last)],
        )
        .await
        .map_err(Error::pg("cannot read the moves", &place))?
        // The latest move of the range; a rolled-back one is taken up again
        // to finish its cleanup (a rollback killed after its switch).
        .filter(|r| {
            matches!(
                r.get::<_, &str>(3),
                "switched" | "switching_back" | "rolled_back"
            )
        })
        .ok_or_else(|| {
            Error::Usage(format!(
                "no switched move of buckets {range} to roll back (a finished move has no reverse \
                 stream: move the buckets back with `dbtool shard move`)"
            ))
        })?;
    let (move_id, source, target, phase, switch_lsn): (
        i64,
        String,
        String,
        String,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    report(&Event::Started {
        move_id,
        range,
        source: target.clone(),
        target: source.clone(),
        phase: phase.clone(),
    });
    let (_, s) = opts.shard(&source)?;
    let (_, t) = opts.shard(&target)?;
    let (back_t, new_t) = (s.primary.clone(), t.primary.clone());
    let new_c = connect(&new_t).await?;
    let mut back_c = connect(&back_t).await?;
    let tables = tables::discover(&new_c, &target, &opts.schema, &opts.keys).await?;
    let rev_slot = slot_name(&tag, move_id, true);
    let has_slot: bool = new_c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())",
            &[&rev_slot],
        )
        .await
        .map_err(Error::pg("cannot read replication slots", &target))?
        .get(0);
    let ctx = Ctx {
        opts,
        catalog,
        move_id,
        range,
        source: target.clone(),
        target: source.clone(),
        src_t: new_t,
        dst_t: back_t.clone(),
        tables: tables.clone(),
        report,
        tag: tag.clone(),
        rollback: true,
    };
    let mut out = Outcome {
        move_id,
        ..Outcome::default()
    };
    let mut rev = Stream::new(
        move_id,
        "reverse",
        rev_slot.clone(),
        rev_slot,
        range,
        tables.clone(),
        target.clone(),
        source.clone(),
    );
    rev.applied_lsn = switch_lsn
        .as_deref()
        .and_then(stream::parse_lsn)
        .unwrap_or(0);
    rev.load_position(&back_c).await?;
    if phase == "rolled_back" || (phase == "switching_back" && ctx.fence_moved(&new_c).await?) {
        // Killed after marking the fence or publishing: publish (again, it
        // is idempotent) and apply what reached the new shard meanwhile.
        out.map_version = if phase == "rolled_back" {
            ctx.switched_version().await?
        } else {
            ctx.publish(&new_c).await?
        };
        if has_slot {
            ctx.after_switch(&new_c, &mut back_c, &mut rev).await?;
        }
    } else {
        if !has_slot {
            return Err(Error::Usage(format!(
                "the reverse stream of move {move_id} (buckets {range}) is gone: move the buckets \
                 back with `dbtool shard move --buckets {range} --to {source}`"
            )));
        }
        ctx.install_guard(&new_c, &target).await?;
        let teams: Vec<String> = back_c
            .query(
                "SELECT team_id FROM dbtool.move_fence WHERE move_id = $1",
                &[&move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's fence", &source))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ctx.fence(&new_c, &teams).await?;
        let started = Instant::now();
        out.changes_applied += ctx.catch_up(&new_c, &mut back_c, &mut rev).await?;
        out.catch_up_time = started.elapsed();
        (ctx.report)(&Event::CaughtUp {
            applied: out.changes_applied,
        });
        ctx.fault("caught-up");
        ctx.switch_loop(&new_c, &mut back_c, &mut rev, &mut out)
            .await?;
    }
    if has_slot {
        drop_stream(&new_c, &target, &slot_name(&tag, move_id, true)).await?;
    }
    delete_copies(&new_c, &target, &tables, range, 5000, "rollback-deleting").await?;
    Ok(out)
}
