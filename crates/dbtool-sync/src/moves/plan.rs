//! Planning moves: which bucket ranges go where when a shard is added, and
//! the identity ranges every shard needs before teams can move. Kept apart
//! from the mover: these run before any move and touch no move state.

use dbtool_shard::{BucketRange, ShardMap};

use super::{connect, ids, Error, Options};

/// The moves that give `name` its ~1/(N+1) share of the buckets, as
/// `dbtool shard map --add-shard` shows them: `(buckets, from)` in bucket
/// order, and the map they lead to.
///
/// # Errors
/// The map's errors (hex8-modulo maps, a name already owning buckets, ...).
pub fn plan_add(
    map: &ShardMap,
    name: &str,
) -> Result<(Vec<(BucketRange, String)>, ShardMap), Error> {
    if map.bucket_count(name) > 0 {
        return Err(Error::Usage(format!(
            "shard {name:?} already owns {} buckets: `dbtool shard add` is for a shard that owns none",
            map.bucket_count(name)
        )));
    }
    let next = map.with_shard_added(name)?;
    let moves = map
        .moves_to(&next)
        .into_iter()
        .map(|(r, from, _)| (r, from.to_string()))
        .collect();
    Ok((moves, next))
}

/// Gives every shard of `opts` its identity range (see [`ids`]); returns
/// the sequences changed, as `shard: schema.sequence lo-hi`. Run it before
/// the shards take writes of their own: ids handed out before it are not
/// in any range and may collide when teams move.
///
/// # Errors
/// As [`ids::ensure_ranges`].
pub async fn set_identity_ranges(opts: &Options) -> Result<Vec<String>, Error> {
    let mut changed = Vec::new();
    for (slot, s) in opts.shards.iter().enumerate() {
        let c = connect(&s.primary).await?;
        for seq in ids::ensure_ranges(&c, &s.name, &opts.schema, slot).await? {
            changed.push(format!("{}: {seq}", s.name));
        }
    }
    Ok(changed)
}
