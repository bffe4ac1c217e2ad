//! The change stream of a move: a logical slot (pgoutput) on one shard, read
//! with `pg_logical_slot_peek_binary_changes`, filtered to the moving
//! buckets, applied to the other shard by key, and the slot advanced only
//! after the applied position committed on the receiving shard.
//!
//! - **Seam with the copy.** The slot exists before any table is copied; each
//!   table's copy records the source snapshot it read
//!   (`pg_current_snapshot()`). A transaction whose xid is visible in that
//!   snapshot is already in the copy and is skipped for that table; every
//!   other one is applied. So the target replays exactly the source's
//!   history after the copy, and the result does not depend on timing.
//! - **Position with the data.** Each applied batch and its commit position
//!   (`dbtool.move_progress`) commit in one transaction on the receiving
//!   shard; the slot is advanced afterwards. After a crash the slot replays
//!   from its older position and transactions at or below the stored
//!   position are skipped: nothing is applied twice or lost.
//! - **Collisions.** An upsert only replaces a row of the same team
//!   (`ON CONFLICT (pk) DO UPDATE ... WHERE key IS NOT DISTINCT FROM`); a
//!   primary key held by another team's row on the receiving shard stops
//!   the stream with [`Error::Collision`] naming both.

use std::collections::{HashMap, HashSet};

use dbtool_shard::{bucket_of, BucketRange};
use tokio_postgres::{Client, Statement};

use super::error::Error;
use super::pgoutput::{self, Message, Relation, Value};
use super::tables::{quote, Table};

/// A `pg_current_snapshot()`: `xmin:xmax:xip,...` (64-bit xids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: HashSet<u64>,
}

impl Snapshot {
    pub fn parse(s: &str) -> Result<Snapshot, Error> {
        let bad = || Error::Decode(format!("snapshot {s:?} is not xmin:xmax:xip"));
        let mut parts = s.split(':');
        let xmin = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let xip = match parts.next() {
            Some("") | None => HashSet::new(),
            Some(list) => list
                .split(',')
                .map(|v| v.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// True when the committed transaction `xid` (32 bits, as decoding gives
    /// it) was visible to this snapshot: its changes are in the copy.
    pub fn sees(&self, xid: u32) -> bool {
        // Widen with the epoch of xmax, the nearest 64-bit xid.
        let base = self.xmax & !0xffff_ffff;
        let mut full = base | u64::from(xid);
        if full > self.xmax + (1 << 31) && full >= 1 << 32 {
            full -= 1 << 32;
        }
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// Formats an LSN as Postgres writes it (`16/B374D848`).
pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub(crate) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// One decoded source transaction.
#[derive(Debug)]
pub(crate) struct Txn {
    xid: u32,
    commit_lsn: u64,
    end_lsn: u64,
    changes: Vec<Message>,
}

/// What one [`Stream::step`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Step {
    /// Transactions read from the slot.
    pub txns: usize,
    /// Row changes applied to the receiving shard.
    pub applied: u64,
}

/// A move's stream in one direction.
pub(crate) struct Stream {
    pub move_id: i64,
    /// `forward` (source -> target) or `reverse` (target -> source).
    pub direction: &'static str,
    pub slot: String,
    pub publication: String,
    pub range: BucketRange,
    pub tables: Vec<Table>,
    /// Per table name: the copy's snapshot (forward only).
    pub snapshots: HashMap<String, Snapshot>,
    /// Transactions committed at or below this position are not applied
    /// (applied before a crash, or, for the reverse stream, written by the
    /// mover before the switch).
    pub applied_lsn: u64,
    /// Teams of the moving buckets seen in changes (to fence on the source).
    pub teams_seen: HashSet<String>,
    relations: HashMap<u32, Relation>,
    statements: HashMap<String, Statement>,
    /// Where the slot lives and where changes go, for messages.
    pub from_place: String,
    pub to_place: String,
}

impl Stream {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        move_id: i64,
        direction: &'static str,
        slot: String,
        publication: String,
        range: BucketRange,
        tables: Vec<Table>,
        from_place: String,
        to_place: String,
    ) -> Stream {
        Stream {
            move_id,
            direction,
            slot,
            publication,
            range,
            tables,
            snapshots: HashMap::new(),
            applied_lsn: 0,
            teams_seen: HashSet::new(),
            relations: HashMap::new(),
            statements: HashMap::new(),
            from_place,
            to_place,
        }
    }

    /// Reads the applied position stored on the receiving shard.
    pub async fn load_position(&mut self, to: &Client) -> Result<(), Error> {
        let row = to
            .query_opt(
                "SELECT lsn::text FROM dbtool.move_progress WHERE move_id = $1 AND direction = $2",
                &[&self.move_id, &self.direction],
            )
            .await
            .map_err(Error::pg(
                "cannot read the move's stream position",
                &self.to_place,
            ))?;
        if let Some(r) = row {
            let lsn: String = r.get(0);
            self.applied_lsn = self.applied_lsn.max(parse_lsn(&lsn).unwrap_or(0));
        }
        Ok(())
    }

    /// Reads at most about `max_changes` changes (whole transactions) up to
    /// `upto` (an LSN text; `None`: the end of the WAL) from the slot.
    async fn pull(
        &mut self,
        from: &Client,
        upto: Option<&str>,
        max_changes: i32,
    ) -> Result<Vec<Txn>, Error> {
        let rows = from
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
                 'proto_version', '1', 'publication_names', $4)",
                &[&self.slot, &upto, &max_changes, &self.publication],
            )
            .await
            .map_err(Error::pg(
                format!("cannot read changes from slot {}", self.slot),
                &self.from_place,
            ))?;
        let mut txns = Vec::new();
        let mut cur: Option<Txn> = None;
        for r in rows {
            let data: &[u8] = r.get(0);
            match pgoutput::decode(data)? {
                Message::Begin { xid, .. } => {
                    cur = Some(Txn {
                        xid,
                        commit_lsn: 0,
                        end_lsn: 0,
                        changes: Vec::new(),
                    })
                }
                Message::Commit {
                    commit_lsn,
                    end_lsn,
                } => {
                    if let Some(mut t) = cur.take() {
                        t.commit_lsn = commit_lsn;
                        t.end_lsn = end_lsn;
                        txns.push(t);
                    }
                }
                Message::Relation(rel) => {
                    self.relations.insert(rel.oid, rel);
                }
                Message::Other(_) => {}
                m => {
                    if let Some(t) = cur.as_mut() {
                        t.changes.push(m);
                    }
                }
            }
        }
        Ok(txns)
    }

    /// Reads and applies one batch; returns what it did (0 transactions: the
    /// slot had nothing up to `upto`).
    pub async fn step(
        &mut self,
        from: &Client,
        to: &mut Client,
        upto: Option<&str>,
        max_changes: i32,
    ) -> Result<Step, Error> {
        let txns = self.pull(from, upto, max_changes).await?;
        let mut step = Step {
            txns: txns.len(),
            applied: 0,
        };
        let Some(last_end) = txns.last().map(|t| t.end_lsn) else {
            return Ok(step);
        };
        let todo: Vec<&Txn> = txns
            .iter()
            .filter(|t| t.commit_lsn > self.applied_lsn)
            .collect();
        if !todo.is_empty() {
            let place = self.to_place.clone();
            let tx = to
                .transaction()
                .await
                .map_err(Error::pg("cannot begin applying changes", &place))?;
            tx.batch_execute(
                "SET LOCAL session_replication_role = replica; SET LOCAL dbtool.move_apply = 'on'",
            )
            .await
            .map_err(Error::pg(
                "cannot set session_replication_role = replica for the apply (the mover's role must be allowed to)",
                &place,
            ))?;
            for t in &todo {
                step.applied += self.apply_txn(&tx, t).await?;
            }
            let last_commit = todo.last().map_or(0, |t| t.commit_lsn);
            tx.execute(
                "INSERT INTO dbtool.move_progress (move_id, direction, lsn) VALUES ($1, $2, $3::text::pg_lsn) \
                 ON CONFLICT (move_id, direction) DO UPDATE SET lsn = EXCLUDED.lsn",
                &[&self.move_id, &self.direction, &lsn_text(last_commit)],
            )
            .await
            .map_err(Error::pg("cannot record the stream position", &place))?;
            tx.commit()
                .await
                .map_err(Error::pg("cannot commit applied changes", &place))?;
            self.applied_lsn = last_commit;
        }
        from.execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&self.slot, &lsn_text(last_end)],
        )
        .await
        .map_err(Error::pg(
            format!("cannot advance slot {}", self.slot),
            &self.from_place,
        ))?;
        Ok(step)
    }

    fn in_range(&self, team: Option<&str>) -> bool {
        team.and_then(|t| bucket_of(t).ok())
            .is_some_and(|b| self.range.contains(b))
    }

    async fn apply_txn(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &Txn,
    ) -> Result<u64, Error> {
        let mut applied = 0;
        for change in &t.changes {
            let oid = match change {
                Message::Insert { oid, .. }
                | Message::Update { oid, .. }
                | Message::Delete { oid, .. } => *oid,
                Message::Truncate { oids } => {
                    for oid in oids {
                        if let Some(ti) = self.table_of(*oid) {
                            if self.skips(ti, t.xid) {
                                continue;
                            }
                            applied += self.truncate(tx, ti).await?;
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(ti) = self.table_of(oid) else {
                continue;
            };
            if self.skips(ti, t.xid) {
                continue;
            }
            let rel = self.relations[&oid].clone();
            let table = self.tables[ti].clone();
            let key_at = rel.columns.iter().position(|c| c.name == table.key);
            let key_of = |vals: &[Value]| {
                key_at
                    .and_then(|i| vals.get(i))
                    .and_then(Value::text)
                    .map(str::to_owned)
            };
            match change {
                Message::Insert { new, .. } => {
                    let team = key_of(new);
                    if self.in_range(team.as_deref()) {
                        self.upsert(tx, &table, &rel, new).await?;
                        self.teams_seen.extend(team);
                        applied += 1;
                    }
                }
                Message::Update { old, new, .. } => {
                    let team = key_of(new);
                    let moving = self.in_range(team.as_deref());
                    if let Some(old) = old {
                        let old_team = key_of(old);
                        let pk_changed =
                            self.pk_values(&table, &rel, old) != self.pk_values(&table, &rel, new);
                        if (old_team.is_some() && self.in_range(old_team.as_deref()) && !moving)
                            || (moving && pk_changed)
                        {
                            self.delete(tx, &table, &rel, old, old_team.as_deref())
                                .await?;
                        }
                    }
                    if moving {
                        self.upsert(tx, &table, &rel, new).await?;
                        self.teams_seen.extend(team);
                        applied += 1;
                    }
                }
                Message::Delete { old, .. } => {
                    let team = key_of(old);
                    if team.is_none() || self.in_range(team.as_deref()) {
                        applied += self.delete(tx, &table, &rel, old, team.as_deref()).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(applied)
    }

    fn table_of(&self, oid: u32) -> Option<usize> {
        let rel = self.relations.get(&oid)?;
        self.tables
            .iter()
            .position(|t| t.schema == rel.schema && t.name == rel.name)
    }

    fn skips(&self, table: usize, xid: u32) -> bool {
        self.snapshots
            .get(&self.tables[table].name)
            .is_some_and(|s| s.sees(xid))
    }

    fn pk_values<'v>(
        &self,
        table: &Table,
        rel: &Relation,
        vals: &'v [Value],
    ) -> Vec<Option<&'v str>> {
        table
            .pk
            .iter()
            .map(|k| {
                rel.columns
                    .iter()
                    .position(|c| &c.name == k)
                    .and_then(|i| vals.get(i))
                    .and_then(Value::text)
            })
            .collect()
    }

    async fn prepared(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: String,
    ) -> Result<Statement, Error> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let s = tx
            .prepare(&sql)
            .await
            .map_err(Error::pg(format!("cannot prepare {sql}"), &self.to_place))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    async fn upsert(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        table: &Table,
        rel: &Relation,
        new: &[Value],
    ) -> Result<(), Error> {
        let mut cols = Vec::new();
        let mut params: Vec<Option<&str>> = Vec::new();
        for (i, c) in rel.columns.iter().enumerate() {
            let Some(col) = table.col(&c.name) else {
                continue;
            };
            if col.generated {
                continue;
            }
            match &new[i] {
                Value::Unchanged => continue,
                Value::Null => params.push(None),
                Value::Text(s) => params.push(Some(s)),
            }
            cols.push(col);
        }
        let names: Vec<String> = cols.iter().map(|c| quote(&c.name)).collect();
        let values: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::text::{}", i + 1, c.ty))
            .collect();
        let mut set: Vec<String> = cols
            .iter()
            .filter(|c| !table.pk.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        if set.is_empty() {
            set.push(format!("{0} = EXCLUDED.{0}", quote(&table.pk[0])));
        }
        let pk: Vec<String> = table.pk.iter().map(|k| quote(k)).collect();
        let sql = format!(
            "INSERT INTO {t} AS cur ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} \
             WHERE cur.{k} IS NOT DISTINCT FROM EXCLUDED.{k}",
            names.join(", "),
            values.join(", "),
            pk.join(", "),
            set.join(", "),
            t = table.qualified,
            k = quote(&table.key),
        );
        let stmt = self.prepared(tx, sql).await?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let n = tx.execute(&stmt, &refs).await.map_err(Error::pg(
            format!("cannot apply a change to {}", table.qualified),
            &self.to_place,
        ))?;
        if n == 0 {
            let pkv = self.pk_values(table, rel, new);
            return Err(Error::Collision(format!(
                "row {pkv:?} of {} arriving on {} for team {:?} has the primary key of another team's row there: \
                 the move stopped without changing either row; give each shard its own identity range \
                 (`dbtool shard add` sets them) and resolve the duplicate by hand",
                table.qualified,
                self.to_place,
                rel.columns
                    .iter()
                    .position(|c| c.name == table.key)
                    .and_then(|i| new[i].text()),
            )));
        }
        Ok(())
    }

    /// Deletes by primary key; when the old tuple lacks the team key (the
    /// default replica identity sends only the primary key), the row's team
    /// is read on the receiving shard first and only a moving team's row goes.
    async fn delete(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        table: &Table,
        rel: &Relation,
        old: &[Value],
        team: Option<&str>,
    ) -> Result<u64, Error> {
        let pk = self.pk_values(table, rel, old);
        if pk.iter().any(Option::is_none) {
            return Ok(0);
        }
        let cond: Vec<String> = table
            .pk
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let ty = &table.col(k).expect("pk column").ty;
                format!("{} = ${}::text::{ty}", quote(k), i + 1)
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = pk
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        if team.is_none() {
            let sql = format!(
                "SELECT {}::text FROM {} WHERE {}",
                quote(&table.key),
                table.qualified,
                cond.join(" AND ")
            );
            let stmt = self.prepared(tx, sql).await?;
            let row = tx.query_opt(&stmt, &refs).await.map_err(Error::pg(
                format!("cannot look up a deleted row in {}", table.qualified),
                &self.to_place,
            ))?;
            let found: Option<String> = row.and_then(|r| r.get(0));
            if !self.in_range(found.as_deref()) {
                return Ok(0);
            }
        }
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            table.qualified,
            cond.join(" AND ")
        );
        let stmt = self.prepared(tx, sql).await?;
        tx.execute(&stmt, &refs).await.map_err(Error::pg(
            format!("cannot apply a delete to {}", table.qualified),
            &self.to_place,
        ))
    }

    /// A TRUNCATE of a moved table on the sending shard: the moving teams'
    /// rows go on the receiving shard (its other teams' rows stay).
    async fn truncate(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        ti: usize,
    ) -> Result<u64, Error> {
        let table = self.tables[ti].clone();
        let rows = tx
            .query(
                &format!(
                    "SELECT DISTINCT {k}::text FROM {t} WHERE {k} IS NOT NULL",
                    k = quote(&table.key),
                    t = table.qualified
                ),
                &[],
            )
            .await
            .map_err(Error::pg(
                "cannot list teams for a truncate",
                &self.to_place,
            ))?;
        let teams: Vec<String> = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|t| self.in_range(Some(t)))
            .collect();
        tx.execute(
            &format!(
                "DELETE FROM {t} WHERE {k} = ANY($1::text[]::{ty}[])",
                k = quote(&table.key),
                t = table.qualified,
                ty = table.key_type
            ),
            &[&teams],
        )
        .await
        .map_err(Error::pg("cannot apply a truncate", &self.to_place))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility_follows_xmin_xmax_and_in_progress() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert!(s.sees(99));
        assert!(s.sees(100));
        assert!(!s.sees(101));
        assert!(s.sees(102));
        assert!(!s.sees(103));
        assert!(!s.sees(105));
        assert!(!s.sees(200));
        // The next epoch: xmax = 2^32 + 5; xid 3 is 2^32 + 3.
        let s = Snapshot::parse("4294967298:4294967301:").unwrap();
        assert!(s.sees(1));
        assert!(!s.sees(6));
        assert!(s.sees(u32::MAX - 1), "the previous epoch, below xmin");
    }

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
    }
}
