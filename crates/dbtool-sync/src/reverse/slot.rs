//! The logical replication slot and publication that carry Postgres changes
//! back to the SQLite file, and the hygiene around them.
//!
//! A slot holds WAL on the primary until it is advanced or dropped, so every
//! slot dbtool creates is named `dbtool_...`, listed by [`slots`] with the WAL
//! it retains, and removed by [`drop_all`] (`dbtool sync stop`) or when the
//! rollback completes.

use tokio_postgres::Client;

use crate::Error;

/// Every slot and publication dbtool creates starts with this prefix.
pub const PREFIX: &str = "dbtool_";

/// Slots and publications of shard moves (`dbtool_sync::moves`): listed by
/// [`slots`], but their life is the move's, so [`drop_all`] and the reverse
/// stream leave them alone.
pub const MOVE_PREFIX: &str = "dbtool_move_";

/// Marker at the start of the comment dbtool puts on its publications; the
/// rest of the comment is a JSON array of the tables whose replica identity
/// was set to FULL for the stream (restored when the publication is dropped).
const COMMENT_MARK: &str = "dbtool reverse sync; replica identity full set on: ";

/// A replication slot dbtool created in the current database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    /// Slot name (`dbtool_...`).
    pub name: String,
    /// Output plugin (`pgoutput`).
    pub plugin: String,
    /// Whether a process is reading it right now.
    pub active: bool,
    /// Oldest WAL position the slot keeps (`X/Y`).
    pub restart_lsn: Option<String>,
    /// Position up to which changes were applied and confirmed.
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the slot keeps on the primary, in bytes
    /// (`pg_current_wal_lsn() - restart_lsn`): this much disk is held until
    /// the slot advances or is dropped.
    pub retained_bytes: Option<i64>,
}

/// The slot name for one target database (and shard): `dbtool_rev_<db>` or
/// `dbtool_rev_<db>_<shard>`, lower-case letters, digits and `_` only, at most
/// 63 bytes. Slots are per server, not per database, so the database name is
/// part of the name.
pub fn slot_name(database: &str, shard: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{PREFIX}rev_{}", clean(database));
    if let Some(shard) = shard {
        name.push('_');
        name.push_str(&clean(shard));
    }
    if name.len() > 63 {
        // Keep it unique with a hash of the full name.
        // FNV-1a: stable across builds, unlike std's hasher.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        name.truncate(46);
        name.push_str(&format!("_{h:016x}"));
    }
    name
}

/// Starts the reverse stream at the cutover point: called by the cutover while
/// the app's writes are frozen, once per target (per shard with `--shards`),
/// after the forward stream has drained. `tables` are the migrated tables as
/// qualified, quoted target names. Returns the stream's start position (the
/// LSN at which the slot became consistent), which the cutover records.
///
/// Nothing committed in Postgres before this call is streamed back; everything
/// committed after it is. The call
/// - creates (or resets) the publication `slot` for exactly `tables`;
/// - sets REPLICA IDENTITY FULL on tables that have no primary key or unique
///   replica identity, so their updates and deletes can be decoded (and are
///   not refused by Postgres once the table is published); restored when the
///   stream is dropped;
/// - removes the "moved back" mark a previous rollback left on the tables;
/// - creates the logical slot `slot` (pgoutput), replacing a slot of that name
///   left by an earlier, aborted cutover: its start point is older than this
///   cutover and would send the forward stream's own writes back.
///
/// `slot` must start with `dbtool_` (see [`slot_name`]) so that `dbtool sync
/// status` and `dbtool sync stop` find it.
pub async fn start_at_cutover(
    client: &Client,
    slot: &str,
    tables: &[String],
) -> Result<String, Error> {
    if !slot.starts_with(PREFIX)
        || slot.len() > 63
        || !slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Usage(format!(
            "reverse slot name {slot:?} must start with {PREFIX:?} and hold only lower-case letters, digits and '_' (at most 63 bytes)"
        )));
    }
    if tables.is_empty() {
        return Err(Error::Usage(
            "no migrated tables to stream back: the cutover must name at least one table".into(),
        ));
    }
    // A slot of this name left behind by an aborted cutover starts too early.
    drop_slot(client, slot).await?;
    super::mark::lift_moved_back(client, tables).await?;

    let mut full = Vec::new();
    for t in tables {
        let row = client
            .query_one(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                                AND (i.indisprimary OR i.indisreplident))
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[t],
            )
            .await
            .map_err(|e| {
                Error::Reverse(format!(
                    "cannot read table {t} in the target: {e}; is it migrated?"
                ))
            })?;
        let ident: String = row.get(0);
        let keyed: bool = row.get(1);
        if ident == "n" || (ident == "d" && !keyed) {
            client
                .batch_execute(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL"))
                .await?;
            full.push(t.clone());
        }
    }
    let list = tables.join(", ");
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&slot])
        .await?
        .is_some();
    let q = quote(slot);
    if exists {
        // Keep the tables marked FULL by an earlier call, so the drop restores them too.
        let old = published_full(client, slot).await?;
        for t in old {
            if !full.contains(&t) {
                full.push(t);
            }
        }
        client
            .batch_execute(&format!("ALTER PUBLICATION {q} SET TABLE {list}"))
            .await?;
    } else {
        client
            .batch_execute(&format!("CREATE PUBLICATION {q} FOR TABLE {list}"))
            .await?;
    }
    let comment = format!(
        "{COMMENT_MARK}{}",
        serde_json::to_string(&full).unwrap_or_else(|_| "[]".into())
    );
    client
        .batch_execute(&format!(
            "COMMENT ON PUBLICATION {q} IS {}",
            literal(&comment)
        ))
        .await?;
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| {
            Error::Reverse(format!(
                "cannot create the reverse replication slot {slot}: {e}; the target needs wal_level = logical and a free slot (max_replication_slots)"
            ))
        })?;
    Ok(row.get(0))
}

/// dbtool's replication slots in the current database, with the WAL each one
/// retains. `dbtool sync status` shows them: a forgotten slot keeps WAL on the
/// primary until its disk is full.
pub async fn slots(client: &Client) -> Result<Vec<SlotInfo>, Error> {
    let rows = client
        .query(
            "SELECT slot_name::text, plugin::text, active, restart_lsn::text,
                    confirmed_flush_lsn::text,
                    CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END
             FROM pg_replication_slots
             WHERE slot_name LIKE 'dbtool\\_%' AND database = current_database()
             ORDER BY slot_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SlotInfo {
            name: r.get(0),
            plugin: r.get(1),
            active: r.get(2),
            restart_lsn: r.get(3),
            confirmed_flush_lsn: r.get(4),
            retained_bytes: r.get(5),
        })
        .collect())
}

/// Removes every slot and publication of dbtool's sync streams in the
/// current database (`dbtool sync stop`, test cleanup), and restores the
/// replica identity of tables the stream had set to FULL. Returns the names of
/// the slots dropped. A slot being read by a running `dbtool sync` is an error
/// (stop that process first). Shard moves' slots (`dbtool_move_*`) are left
/// to their move.
pub async fn drop_all(client: &Client) -> Result<Vec<String>, Error> {
    let mut dropped = Vec::new();
    for s in slots(client).await? {
        if s.name.starts_with(MOVE_PREFIX) {
            continue;
        }
        drop_slot(client, &s.name).await?;
        dropped.push(s.name);
    }
    let pubs = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'dbtool\\_%'",
            &[],
        )
        .await?;
    for p in pubs {
        let name: String = p.get(0);
        if name.starts_with(MOVE_PREFIX) {
            continue;
        }
        drop_publication(client, &name).await?;
    }
    Ok(dropped)
}

/// Drops one slot if it exists.
pub(crate) async fn drop_slot(client: &Client, slot: &str) -> Result<(), Error> {
    let active: Option<bool> = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .map(|r| r.get(0));
    match active {
        None => Ok(()),
        Some(true) => Err(Error::Reverse(format!(
            "replication slot {slot} is in use by another process (a running `dbtool sync`?): stop it, then retry"
        ))),
        Some(false) => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await?;
            Ok(())
        }
    }
}

/// Drops one publication if it exists, restoring the replica identity of the
/// tables it had set to FULL.
pub(crate) async fn drop_publication(client: &Client, name: &str) -> Result<(), Error> {
    for t in published_full(client, name).await? {
        // The table may be gone by now; restoring is best effort.
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
            .await?
            .get::<_, bool>(0);
        if exists {
            client
                .batch_execute(&format!("ALTER TABLE {t} REPLICA IDENTITY DEFAULT"))
                .await?;
        }
    }
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote(name)))
        .await?;
    Ok(())
}

/// The tables a publication's comment says were set to REPLICA IDENTITY FULL.
async fn published_full(client: &Client, name: &str) -> Result<Vec<String>, Error> {
    let comment: Option<String> = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?
        .and_then(|r| r.get(0));
    Ok(comment
        .as_deref()
        .and_then(|c| c.strip_prefix(COMMENT_MARK))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default())
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_and_unique_per_database_and_shard() {
        assert_eq!(slot_name("forums", None), "dbtool_rev_forums");
        assert_eq!(
            slot_name("Test-DB", Some("shard-1")),
            "dbtool_rev_test_db_shard_1"
        );
        let long = "x".repeat(80);
        let a = slot_name(&long, Some("a"));
        let b = slot_name(&long, Some("b"));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }
}
