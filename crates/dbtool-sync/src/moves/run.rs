//! Starting or resuming a move ([`move_buckets`]) and the order of its
//! phases (copy, catch up, switch). The work of each phase lives in its own
//! file; this one only decides which of them a move still needs.

use std::collections::HashSet;
use std::time::Instant;

use dbtool_shard::catalog::Catalog;
use dbtool_shard::BucketRange;
use tokio_postgres::Client;

use super::catch_up::{ensure_stream, slot_exists};
use super::stream::{Snapshot, Stream};
use super::{
    catalog_tag, connect, ids, migrate, slot_name, tables, Ctx, Error, Event, Options, Outcome,
    Report,
};

/// Moves the buckets `range` to shard `to`, online; resumes an unfinished
/// move of the same range. Returns once the new map version is published.
///
/// # Errors
/// [`Error::Usage`] for a range spanning shards or an unknown shard,
/// [`Error::FreezeBudget`] when no switch fits in `max_freeze`,
/// [`Error::Mismatch`], [`Error::Collision`], and Postgres errors; the map
/// is unchanged in every case.
pub async fn move_buckets(
    opts: &Options,
    range: BucketRange,
    to: &str,
    report: Report<'_>,
) -> Result<Outcome, Error> {
    migrate(&opts.catalog).await?;
    let catalog = Catalog::connect(&opts.catalog).await?;
    let place = catalog.name().to_string();
    let c = catalog.client();
    let open = c
        .query(
            "SELECT id, first_bucket, last_bucket, source, target, phase FROM dbtool.shard_moves \
             WHERE phase NOT IN ('finished', 'rolled_back') AND first_bucket <= $2 AND last_bucket >= $1",
            &[&i32::from(range.first), &i32::from(range.last)],
        )
        .await
        .map_err(Error::pg("cannot read the moves", &place))?;
    let mut resumed = None;
    for r in &open {
        let (id, f, l, s, t, phase): (i64, i32, i32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        if f == i32::from(range.first) && l == i32::from(range.last) && t == to {
            resumed = Some((id, s, phase));
        } else {
            return Err(Error::Usage(format!(
                "buckets {range} overlap move {id} (buckets {f}-{l}, {s} -> {t}, {phase}): \
                 finish it first (`dbtool shard move --finish`) or rerun it with its own range"
            )));
        }
    }
    let (move_id, source, phase) = match resumed {
        Some(x) => x,
        None => {
            let map = catalog.load(None).await?.ok_or_else(|| {
                Error::Shard(dbtool_shard::Error::NoMap {
                    catalog: place.clone(),
                })
            })?;
            let owners: HashSet<&str> = (range.first..=range.last)
                .filter_map(|b| map.owner_of_bucket(b))
                .collect();
            if owners.len() != 1 {
                let mut o: Vec<&str> = owners.into_iter().collect();
                o.sort_unstable();
                return Err(Error::Usage(format!(
                    "buckets {range} belong to shards {o:?} in map version {}: move each shard's part separately",
                    map.version()
                )));
            }
            let source = owners.into_iter().next().expect("one owner").to_string();
            if source == to {
                return Err(Error::Usage(format!(
                    "buckets {range} already belong to {to} (map version {})",
                    map.version()
                )));
            }
            if !map.shards().iter().any(|s| s == to) {
                return Err(Error::Usage(format!(
                    "shard {to:?} is not in the map's shards {:?}: publish a map naming it (owning no buckets) first",
                    map.shards()
                )));
            }
            opts.shard(to)?;
            opts.shard(&source)?;
            let id: i64 = c
                .query_one(
                    "INSERT INTO dbtool.shard_moves (first_bucket, last_bucket, source, target) \
                     VALUES ($1, $2, $3, $4) RETURNING id",
                    &[
                        &i32::from(range.first),
                        &i32::from(range.last),
                        &source,
                        &to,
                    ],
                )
                .await
                .map_err(Error::pg("cannot record the move", &place))?
                .get(0);
            (id, source, "copying".to_string())
        }
    };
    report(&Event::Started {
        move_id,
        range,
        source: source.clone(),
        target: to.into(),
        phase: phase.clone(),
    });
    let (src_slot, src) = opts.shard(&source)?;
    let (dst_slot, dst) = opts.shard(to)?;
    let (src_t, dst_t) = (src.primary.clone(), dst.primary.clone());
    migrate(&src_t).await?;
    migrate(&dst_t).await?;
    let src_c = connect(&src_t).await?;
    let dst_c = connect(&dst_t).await?;
    let tables = tables::discover(&src_c, &source, &opts.schema, &opts.keys).await?;
    let on_target = tables::discover(&dst_c, to, &opts.schema, &opts.keys).await?;
    for t in &tables {
        if !on_target.iter().any(|o| o.name == t.name && o.key == t.key) {
            return Err(Error::Usage(format!(
                "table {} (key {}) is not on {to}: create the application schema there first \
                 (`dbtool migrate --schema-only`, or a dump of the schema)",
                t.qualified, t.key
            )));
        }
    }
    ids::ensure_ranges(&src_c, &source, &opts.schema, src_slot).await?;
    ids::ensure_ranges(&dst_c, to, &opts.schema, dst_slot).await?;
    let tag = catalog_tag(&catalog).await?;
    let ctx = Ctx {
        opts,
        catalog,
        move_id,
        range,
        source,
        target: to.to_string(),
        src_t,
        dst_t,
        tables,
        report,
        tag,
        rollback: false,
    };
    ctx.run(&phase, src_c, dst_c).await
}

impl Ctx<'_> {
    pub(super) async fn run(
        &self,
        phase: &str,
        src: Client,
        mut dst: Client,
    ) -> Result<Outcome, Error> {
        let mut out = Outcome {
            move_id: self.move_id,
            ..Outcome::default()
        };
        let fwd_slot = slot_name(&self.tag, self.move_id, false);
        if phase == "copying" || phase == "catching_up" {
            // Clear what an earlier move of these buckets away from the
            // target left there: the target owns them again after this one.
            dst.execute(
                "DELETE FROM dbtool.move_fence WHERE state = 'moved' AND bucket BETWEEN $1 AND $2",
                &[&i32::from(self.range.first), &i32::from(self.range.last)],
            )
            .await
            .map_err(Error::pg("cannot clear old fences", &self.target))?;
            self.install_guard(&src, &self.source).await?;
            let fresh_slot = ensure_stream(&src, &self.source, &fwd_slot, &self.tables).await?;
            if fresh_slot {
                // Copies made before this slot existed have no seam with it.
                self.forget_copies(&src, &dst).await?;
            }
            let started = Instant::now();
            out.rows_copied = self.copy_all(&src).await?;
            out.copy_time = started.elapsed();
            self.set_phase("catching_up").await?;
        }
        let mut fwd = Stream::new(
            self.move_id,
            "forward",
            fwd_slot.clone(),
            fwd_slot.clone(),
            self.range,
            self.tables.clone(),
            self.source.clone(),
            self.target.clone(),
        );
        fwd.load_position(&dst).await?;
        for r in dst
            .query(
                "SELECT table_name, snapshot FROM dbtool.move_copies WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's copies", &self.target))?
        {
            fwd.snapshots
                .insert(r.get(0), Snapshot::parse(r.get::<_, &str>(1))?);
        }
        if phase == "switched" {
            // Killed after publishing: the changes that reached the source
            // during the switch may still be in the forward slot.
            out.map_version = self.switched_version().await?;
            if slot_exists(&src, &self.source, &fwd_slot).await? {
                self.after_switch(&src, &mut dst, &mut fwd).await?;
            }
            return Ok(out);
        }
        let rev_slot = slot_name(&self.tag, self.move_id, true);
        if phase != "switching" {
            ensure_stream(&dst, &self.target, &rev_slot, &self.tables).await?;
        }
        if phase == "switching" && self.fence_moved(&src).await? {
            // Killed between marking the source and publishing: the target
            // was checked already; publish.
            let version = self.publish(&src).await?;
            out.map_version = version;
            self.after_switch(&src, &mut dst, &mut fwd).await?;
            return Ok(out);
        }
        let started = Instant::now();
        out.changes_applied += self.catch_up(&src, &mut dst, &mut fwd).await?;
        out.catch_up_time = started.elapsed();
        (self.report)(&Event::CaughtUp {
            applied: out.changes_applied,
        });
        self.fault("caught-up");
        self.switch_loop(&src, &mut dst, &mut fwd, &mut out).await?;
        Ok(out)
    }
}

impl Ctx<'_> {
    /// The map version a switched move published.
    pub(super) async fn switched_version(&self) -> Result<u64, Error> {
        let v: Option<i64> = self
            .cat()
            .query_one(
                "SELECT map_version FROM dbtool.shard_moves WHERE id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move", self.catalog.name()))?
            .get(0);
        Ok(v.unwrap_or(0) as u64)
    }
}
