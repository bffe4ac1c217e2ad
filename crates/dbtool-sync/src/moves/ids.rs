//! Identity ranges: each shard hands out ids from its own range, so rows a
//! team created on one shard keep their ids, unique, when they move to
//! another.
//!
//! Shard slot `i` (its position in `[[shard.shards]]`, which must therefore
//! never be reordered) owns `[(i + 1) * B, (i + 2) * B - 1]` of every
//! identity or serial sequence, `B = type max / (SLOTS + 1)`: for `bigint`
//! about 1.4 * 10^17 ids per shard, for `integer` about 33 million. The
//! sequence gets that MINVALUE and MAXVALUE, so running out is an error
//! (`reached maximum value of sequence`), never a duplicate. Ids below the
//! ranges (rows migrated from the source, which are unique across shards)
//! are left as they are.
//!
//! Rejected: a stride (`INCREMENT BY N`, start i) ties the ids to a shard
//! count fixed in advance; UUID keys would change the application's schema.

use tokio_postgres::Client;

use super::error::Error;
use super::tables::quote;

/// Shard slots the ranges are cut for.
pub const SLOTS: i64 = 64;

/// The identity range of shard slot `slot` for a sequence of `data_type`.
pub fn range_of(data_type: &str, slot: usize) -> Option<(i64, i64)> {
    let max = match data_type {
        "bigint" => i64::MAX,
        "integer" => i64::from(i32::MAX),
        _ => return None,
    };
    let slot = i64::try_from(slot).ok().filter(|&s| s < SLOTS)?;
    let block = max / (SLOTS + 1);
    Some(((slot + 1) * block, (slot + 2) * block - 1))
}

/// Gives every sequence of `schema` on a shard the range of `slot`; returns
/// the sequences changed (`schema.name lo-hi`).
///
/// # Errors
/// [`Error::Usage`] for a slot over [`SLOTS`], a `smallint` sequence, or a
/// sequence already past its range; [`Error::Postgres`].
pub async fn ensure_ranges(
    client: &Client,
    place: &str,
    schema: &str,
    slot: usize,
) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT sequencename::text, data_type::text, coalesce(last_value, start_value), min_value, max_value \
             FROM pg_sequences WHERE schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(Error::pg("cannot list sequences", place))?;
    let mut changed = Vec::new();
    for r in rows {
        let (name, ty, last, min, max): (String, String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some((lo, hi)) = range_of(&ty, slot) else {
            return Err(Error::Usage(format!(
                "sequence {schema}.{name} on {place} ({ty}) cannot get a per-shard identity range \
                 (shard slot {slot}; ranges exist for bigint and integer sequences and {SLOTS} slots)"
            )));
        };
        if min == lo && max == hi {
            continue;
        }
        let q = format!("{}.{}", quote(schema), quote(&name));
        let sql = if last < lo {
            format!(
                "ALTER SEQUENCE {q} MINVALUE {lo} MAXVALUE {hi} START WITH {lo} RESTART WITH {lo}"
            )
        } else if last <= hi {
            format!("ALTER SEQUENCE {q} MINVALUE {lo} MAXVALUE {hi} START WITH {lo}")
        } else {
            return Err(Error::Usage(format!(
                "sequence {schema}.{name} on {place} is at {last}, past this shard's identity range \
                 {lo}-{hi} (slot {slot}): ids from another shard's range may already be in use; \
                 check the shard order of [[shard.shards]]"
            )));
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(Error::pg(format!("cannot set the range of {q}"), place))?;
        changed.push(format!("{schema}.{name} {lo}-{hi}"));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_and_above_small_ids() {
        let (a_lo, a_hi) = range_of("bigint", 0).unwrap();
        let (b_lo, _) = range_of("bigint", 1).unwrap();
        assert!(a_lo > 1_000_000_000 && a_hi < b_lo);
        let (lo, hi) = range_of("integer", 63).unwrap();
        assert!(lo > 0 && hi <= i64::from(i32::MAX));
        assert_eq!(range_of("integer", 64), None);
        assert_eq!(range_of("smallint", 0), None);
    }
}
