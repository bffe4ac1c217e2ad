//! Reading the slot and applying it: one stream per target (per shard).

use std::path::Path;

use dbtool_migrate::plan::Plan;
use rusqlite::Connection;
use tokio_postgres::types::Json;
use tokio_postgres::Client;

use super::apply::Applier;
use super::decode::{format_lsn, parse_lsn, Decoder, Txn};
use super::slot::{self, PREFIX};
use crate::Error;

/// How many pgoutput messages one peek reads at most (it always ends on a
/// whole transaction, so a larger transaction comes whole).
pub(crate) const PEEK_MESSAGES: i32 = 20_000;

/// One target's reverse stream.
pub(crate) struct Stream {
    /// Shard name, or `target`.
    pub name: String,
    pub client: Client,
    pub slot: String,
    decoder: Decoder,
    /// The slot's confirmed position (what Postgres may already have freed).
    confirmed: u64,
}

/// What one round read and applied.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Round {
    /// Transactions applied.
    pub txns: u64,
    /// Row changes applied.
    pub rows: u64,
}

impl Stream {
    /// Opens the stream of the one dbtool slot in `client`'s database.
    pub async fn open(name: String, client: Client) -> Result<Stream, Error> {
        let slots = slot::slots(&client).await?;
        // The slot the cutover recorded, if the sync state says; else the
        // one reverse slot in the database (shard moves have their own).
        let recorded: Option<String> = match client
            .query_opt(
                "SELECT reverse_slot FROM dbtool.syncs
                 WHERE phase = 'cut_over' AND reverse_slot IS NOT NULL
                 ORDER BY updated_at DESC LIMIT 1",
                &[],
            )
            .await
        {
            Ok(row) => row.and_then(|r| r.get(0)),
            // No sync state (a cutover made by hand or by an older build).
            Err(_) => None,
        };
        let mut ours = slots.into_iter().filter(|s| {
            s.plugin == "pgoutput"
                && !s.name.starts_with(slot::MOVE_PREFIX)
                && recorded.as_ref().is_none_or(|r| *r == s.name)
        });
        let s = match (ours.next(), ours.next()) {
            (Some(s), None) => s,
            (None, _) => {
                return Err(Error::Reverse(format!(
                    "no reverse sync slot ({PREFIX}*) in target {name}: the cutover creates it; if this target was never cut over there is nothing to stream back"
                )))
            }
            (Some(a), Some(b)) => {
                return Err(Error::Reverse(format!(
                    "target {name} has more than one dbtool slot ({}, {}, ...): remove the stale ones with `dbtool sync stop` after checking which one the cutover recorded",
                    a.name, b.name
                )))
            }
        };
        let confirmed = s
            .confirmed_flush_lsn
            .as_deref()
            .and_then(parse_lsn)
            .unwrap_or(0);
        Ok(Stream {
            name,
            client,
            slot: s.name,
            decoder: Decoder::default(),
            confirmed,
        })
    }

    /// Reads whole transactions up to `upto` (all committed so far when
    /// None), applies those past the file's position, records the position
    /// with them, then advances the slot. Returns what it applied; zero
    /// transactions means the stream is caught up (to `upto`).
    pub async fn round(
        &mut self,
        conn: &mut Connection,
        applier: &mut Applier<'_>,
        upto: Option<u64>,
    ) -> Result<Round, Error> {
        let applied = Applier::position(conn, &self.slot)?.unwrap_or(0);
        if applied > self.confirmed {
            // Applied and recorded, but killed before the slot advanced.
            self.advance(applied).await?;
        }
        let upto = upto.map(format_lsn);
        let mut tries = 0;
        let rows = loop {
            let r = self
                .client
                .query(
                    "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3,
                         'proto_version', '1', 'publication_names', $4, 'binary', 'true')",
                    &[&self.slot, &upto, &PEEK_MESSAGES, &self.slot],
                )
                .await;
            match r {
                Ok(rows) => break rows,
                // Another process is reading the slot right now (a
                // `dbtool sync` next to `dbtool rollback`): its reads are
                // short; wait for it.
                Err(e)
                    if tries < 100
                        && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
                {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                    return Err(Error::Reverse(format!(
                        "reverse sync slot {} no longer exists in target {}: a dbtool rollback completed (the file takes writes again) or dbtool sync stop removed it; there is nothing more to stream",
                        self.slot, self.name
                    )))
                }
                Err(e) => {
                    return Err(Error::Reverse(format!(
                        "cannot read reverse sync slot {} in target {}: {e}",
                        self.slot, self.name
                    )))
                }
            }
        };
        let mut txns: Vec<Txn> = Vec::new();
        for r in &rows {
            let data: &[u8] = r.get(0);
            if let Some(t) = self.decoder.feed(data)? {
                if t.end_lsn > applied {
                    txns.push(t);
                }
            }
        }
        let mut round = Round::default();
        if let Some(last) = txns.last().map(|t| t.end_lsn) {
            round.txns = txns.len() as u64;
            round.rows = applier.apply(conn, &self.decoder, &txns, &self.slot)?;
            self.advance(last).await?;
        }
        Ok(round)
    }

    async fn advance(&mut self, lsn: u64) -> Result<(), Error> {
        if lsn <= self.confirmed {
            return Ok(());
        }
        self.client
            .execute(
                // Never behind the slot: another reader may have advanced it.
                "SELECT pg_replication_slot_advance($1, GREATEST($2::text::pg_lsn, confirmed_flush_lsn))
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot, &format_lsn(lsn)],
            )
            .await?;
        self.confirmed = lsn;
        Ok(())
    }

    /// A position after every transaction committed so far on this target,
    /// flushed: logical decoding reads only flushed WAL, and with
    /// `synchronous_commit = off` a commit can return before its record is
    /// flushed. A transactional logical message committed with
    /// `synchronous_commit = on` flushes the WAL up to itself (pgoutput does
    /// not send messages unless asked, so the stream never sees it).
    pub async fn flushed_end(&self) -> Result<u64, Error> {
        let rows = self
            .client
            .simple_query(
                "BEGIN; SET LOCAL synchronous_commit = on;
                 SELECT pg_logical_emit_message(true, 'dbtool', 'drain')::text; COMMIT;",
            )
            .await?;
        let s = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        parse_lsn(&s).ok_or_else(|| Error::Reverse(format!("unreadable LSN {s:?}")))
    }
}

/// The cast plan of the migration into `client`'s database: the latest
/// finished `dbtool migrate` run of `file` (or of any file, when the path
/// differs, e.g. the file was moved), else planned afresh from the file.
pub(crate) async fn load_plan(client: &Client, file: &Path) -> Result<Plan, Error> {
    let path = std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .to_string_lossy()
        .into_owned();
    // The sync's plan (the migration's, extended by the schema changes the
    // forward stream followed), else the migration run's.
    let has_syncs = client
        .query_one("SELECT to_regclass('dbtool.syncs') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if has_syncs {
        let row = client
            .query_opt(
                "SELECT plan FROM dbtool.syncs WHERE plan IS NOT NULL
                 ORDER BY (source_path = $1) DESC, updated_at DESC LIMIT 1",
                &[&path],
            )
            .await?;
        if let Some(row) = row {
            let Json(plan): Json<Plan> = row.get(0);
            return Ok(plan);
        }
    }
    let has_runs = client
        .query_one("SELECT to_regclass('dbtool.runs') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if has_runs {
        let row = client
            .query_opt(
                "SELECT plan FROM dbtool.runs WHERE status = 'done'
                 ORDER BY (source_path = $1) DESC, id DESC LIMIT 1",
                &[&path],
            )
            .await?;
        if let Some(row) = row {
            let Json(plan): Json<Plan> = row.get(0);
            return Ok(plan);
        }
    }
    let conn = dbtool_migrate::source::open(file)
        .map_err(|e| Error::Reverse(format!("cannot read {}: {e}", file.display())))?;
    let src = dbtool_migrate::source::inspect(&conn, file)
        .map_err(|e| Error::Reverse(format!("cannot read {}: {e}", file.display())))?;
    dbtool_migrate::plan::plan(
        &conn,
        &src,
        &dbtool_migrate::plan::PlanConfig::default(),
        "public",
    )
    .map_err(|e| Error::Reverse(format!("cannot plan {}: {e}", file.display())))
}

/// Opens the SQLite file for reverse apply: read-write, waiting up to
/// `busy` for the app's readers and the forward capture.
pub(crate) fn open_file(file: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Reverse(format!("cannot open {} for writing: {e}", file.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Postgres enforced the foreign keys; applying in its commit order keeps
    // them, and SQLite's own enforcement (off by default) must not cascade.
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    Applier::prepare(&conn)?;
    Ok(conn)
}
