//! Bucket moves: grow from N to N+1 shards while teams keep writing.
//!
//! A move carries the rows of a bucket range from the shard that owns it
//! (the *source*) to another (the *target*), online:
//!
//! 1. **Fence and stream.** A row trigger (`dbtool.move_guard`) goes on each
//!    moved table of the source, a publication and a logical slot (pgoutput)
//!    are created there: every change committed from now on is decoded.
//! 2. **Copy** each table's rows of the moving teams with binary COPY,
//!    `--jobs` tables at once, each in one target transaction together with
//!    its record in `dbtool.move_copies` (so a killed copy resumes by table).
//!    The teams are recorded in the source's `dbtool.move_fence`.
//! 3. **Catch up** from the slot (see [`stream`]): changes of the moving
//!    buckets are applied to the target by key.
//! 4. **Switch** within `--max-freeze`: the catalog announces a freeze of the
//!    buckets (routers hold their writes: `Router::team_ready`), the mover
//!    takes the move's advisory lock on the source (the fence trigger makes
//!    writes of moving teams wait on it; other teams never touch it), drains
//!    the slot, compares counts and checksums per team and table on both
//!    shards, marks the fence `moved` (the source now refuses those teams
//!    with SQLSTATE `DBM01`), publishes the new map version and releases.
//!    Past the budget it aborts (writes released, map unchanged) and
//!    retries after catching up again.
//! 5. **Reverse stream.** A slot on the target, created before the switch,
//!    keeps every change made there after it; `--finish` ends it and deletes
//!    the old copies on the source in batches.
//!
//! The state of each move (`dbtool.shard_moves`) lives in the catalog; the
//! copy and stream positions live on the shard they describe and commit with
//! the data. A mover killed at any point is rerun with the same command and
//! resumes; the map is changed only after the target's rows were checked, so
//! it never points at a shard without the data.

pub mod error;
pub mod ids;
pub mod pgoutput;
mod stream;
mod tables;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use dbtool_pool::Target;
use dbtool_shard::catalog::Catalog;
use dbtool_shard::{bucket_of, BucketRange, ShardMap};
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::Client;

pub use error::Error;
pub use tables::Keys;

use stream::{Snapshot, Stream};
use tables::{quote, text_array_literal, Table};

/// A shard a move may use: its name and primary.
#[derive(Debug, Clone)]
pub struct Shard {
    /// The name in `[[shard.shards]]`.
    pub name: String,
    /// Its primary.
    pub primary: Target,
}

/// How moves run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The catalog holding the map and the move state.
    pub catalog: Target,
    /// Every shard, in `[[shard.shards]]` order (the order gives each its
    /// identity range: see [`ids`]).
    pub shards: Vec<Shard>,
    /// The team key column of each table.
    pub keys: Keys,
    /// The application schema on the shards.
    pub schema: String,
    /// The longest the moving buckets' writes may be held at the switch.
    pub max_freeze: Duration,
    /// Freezes tried before giving up (each after catching up again).
    pub freeze_attempts: u32,
    /// Tables copied at once.
    pub jobs: usize,
    /// Changes read from the slot per applied batch.
    pub batch_changes: i32,
}

impl Options {
    /// Options with the defaults: schema `public`, `--max-freeze` 500 ms,
    /// 5 attempts, 2 jobs, batches of 5,000 changes.
    pub fn new(catalog: Target, shards: Vec<Shard>) -> Options {
        Options {
            catalog,
            shards,
            keys: Keys::default(),
            schema: "public".into(),
            max_freeze: Duration::from_millis(500),
            freeze_attempts: 5,
            jobs: 2,
            batch_changes: 5000,
        }
    }

    fn shard(&self, name: &str) -> Result<(usize, &Shard), Error> {
        self.shards
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "shard {name:?} is not in [[shard.shards]]: list it there with its primary URL"
                ))
            })
    }
}

/// Progress of a move, for the operator.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A move starts or resumes.
    Started {
        /// The move's id in `dbtool.shard_moves`.
        move_id: i64,
        /// The buckets.
        range: BucketRange,
        /// From.
        source: String,
        /// To.
        target: String,
        /// The phase it resumes in (`copying` for a new move).
        phase: String,
    },
    /// A table was copied.
    Copied {
        /// The table.
        table: String,
        /// Rows copied.
        rows: u64,
    },
    /// Caught up with the source.
    CaughtUp {
        /// Changes applied so far.
        applied: u64,
    },
    /// One freeze ended.
    Freeze {
        /// How long the moving buckets' writes were held.
        held: Duration,
        /// Whether it switched (`false`: aborted, to be retried).
        switched: bool,
        /// Why it aborted.
        reason: Option<String>,
    },
    /// The new map version is published.
    Published {
        /// The version.
        version: u64,
    },
}

/// What a finished [`move_buckets`] did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The move's id.
    pub move_id: i64,
    /// Rows copied.
    pub rows_copied: u64,
    /// Time spent copying.
    pub copy_time: Duration,
    /// Changes applied from the stream.
    pub changes_applied: u64,
    /// Time spent catching up (before the freeze).
    pub catch_up_time: Duration,
    /// The switch's freeze (the successful one).
    pub freeze: Duration,
    /// Every freeze tried, including aborted ones.
    pub freezes: Vec<Duration>,
    /// The map version published.
    pub map_version: u64,
}

type Report<'a> = &'a (dyn Fn(&Event) + Send + Sync);

fn lock_key(move_id: i64) -> i64 {
    (0x6462_6d76_i64 << 32) | move_id
}

/// The name of a move's slot and publication. Slot names are per server,
/// not per database, so the name carries a tag of the catalog (several
/// catalogs' moves may use one server's shards).
fn slot_name(tag: &str, move_id: i64, reverse: bool) -> String {
    if reverse {
        format!("dbtool_move_{tag}_{move_id}_rev")
    } else {
        format!("dbtool_move_{tag}_{move_id}")
    }
}

/// A stable tag of the catalog database: FNV-1a of its name and oid.
async fn catalog_tag(catalog: &Catalog) -> Result<String, Error> {
    let id: String = catalog
        .client()
        .query_one(
            "SELECT current_database() || '/' || oid::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(Error::pg("cannot read the catalog's identity", catalog.name()))?
        .get(0);
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    Ok(format!("{h:08x}"))
}

async fn connect(t: &Target) -> Result<Client, Error> {
    Ok(t.connect().await?)
}

/// Applies `migrations/` to a database (the catalog or a shard).
async fn migrate(t: &Target) -> Result<(), Error> {
    Catalog::connect(t).await?.migrate().await?;
    Ok(())
}

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

struct Ctx<'a> {
    opts: &'a Options,
    catalog: Catalog,
    move_id: i64,
    range: BucketRange,
    source: String,
    target: String,
    src_t: Target,
    dst_t: Target,
    tables: Vec<Table>,
    report: Report<'a>,
    /// See [`slot_name`].
    tag: String,
    /// Switching a switched move back: `source` is the move's target,
    /// `target` its source, the stream the reverse one.
    rollback: bool,
}

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
        Some((id, s, phase)) if phase == "switched" => {
            report(&Event::Started {
                move_id: id,
                range,
                source: s,
                target: to.into(),
                phase,
            });
            let v: Option<i64> = c
                .query_one(
                    "SELECT map_version FROM dbtool.shard_moves WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(Error::pg("cannot read the move", &place))?
                .get(0);
            return Ok(Outcome {
                move_id: id,
                map_version: v.unwrap_or(0) as u64,
                ..Outcome::default()
            });
        }
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
    fn cat(&self) -> &Client {
        self.catalog.client()
    }

    async fn set_phase(&self, phase: &str) -> Result<(), Error> {
        self.cat()
            .execute(
                "UPDATE dbtool.shard_moves SET phase = $2, updated_at = now() WHERE id = $1",
                &[&self.move_id, &phase],
            )
            .await
            .map_err(Error::pg(
                "cannot record the move's phase",
                self.catalog.name(),
            ))?;
        Ok(())
    }

    async fn run(&self, phase: &str, src: Client, mut dst: Client) -> Result<Outcome, Error> {
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
        self.switch_loop(&src, &mut dst, &mut fwd, &mut out).await?;
        Ok(out)
    }

    /// Freezes until one switch fits in the budget (catching up between
    /// attempts), then finishes the switch.
    async fn switch_loop(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
        out: &mut Outcome,
    ) -> Result<(), Error> {
        let mut last_reason = String::new();
        for attempt in 1..=self.opts.freeze_attempts {
            match self.freeze_and_switch(src, dst, fwd).await? {
                Ok((held, version)) => {
                    out.freeze = held;
                    out.freezes.push(held);
                    out.map_version = version;
                    (self.report)(&Event::Freeze {
                        held,
                        switched: true,
                        reason: None,
                    });
                    (self.report)(&Event::Published { version });
                    self.after_switch(src, dst, fwd).await?;
                    return Ok(());
                }
                Err((held, reason)) => {
                    out.freezes.push(held);
                    (self.report)(&Event::Freeze {
                        held,
                        switched: false,
                        reason: Some(reason.clone()),
                    });
                    last_reason = reason;
                    if attempt < self.opts.freeze_attempts {
                        out.changes_applied += self.catch_up(src, dst, fwd).await?;
                    }
                }
            }
        }
        Err(Error::FreezeBudget {
            buckets: self.range.to_string(),
            max_ms: self.opts.max_freeze.as_millis() as u64,
            attempts: self.opts.freeze_attempts,
            reason: last_reason,
        })
    }

    async fn install_guard(&self, c: &Client, place: &str) -> Result<(), Error> {
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

    async fn forget_copies(&self, src: &Client, dst: &Client) -> Result<(), Error> {
        let copied: Vec<String> = dst
            .query(
                "SELECT table_name FROM dbtool.move_copies WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's copies", &self.target))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if copied.is_empty() {
            return Ok(());
        }
        let teams = self.fenced_teams(src).await?;
        for t in self.tables.iter().filter(|t| copied.contains(&t.name)) {
            dst.execute(
                &format!(
                    "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
                    t.qualified,
                    quote(&t.key),
                    t.key_type
                ),
                &[&teams],
            )
            .await
            .map_err(Error::pg("cannot delete a stale copy", &self.target))?;
        }
        dst.execute(
            "DELETE FROM dbtool.move_copies WHERE move_id = $1",
            &[&self.move_id],
        )
        .await
        .map_err(Error::pg("cannot reset the move's copies", &self.target))?;
        dst.execute(
            "DELETE FROM dbtool.move_progress WHERE move_id = $1",
            &[&self.move_id],
        )
        .await
        .map_err(Error::pg(
            "cannot reset the move's stream position",
            &self.target,
        ))?;
        Ok(())
    }

    async fn fenced_teams(&self, src: &Client) -> Result<Vec<String>, Error> {
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

    async fn fence(&self, src: &Client, teams: &[String]) -> Result<(), Error> {
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

    async fn copy_all(&self, src: &Client) -> Result<u64, Error> {
        let done: HashSet<String> = {
            let dst = connect(&self.dst_t).await?;
            dst.query(
                "SELECT table_name FROM dbtool.move_copies WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(Error::pg("cannot read the move's copies", &self.target))?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        let todo: Vec<&Table> = self
            .tables
            .iter()
            .filter(|t| !done.contains(&t.name))
            .collect();
        let results: Vec<Result<Copied, Error>> = futures::stream::iter(todo)
            .map(|t| self.copy_table(t))
            .buffer_unordered(self.opts.jobs.max(1))
            .collect()
            .await;
        let mut rows = 0;
        for r in results {
            let (table, n, teams) = r?;
            self.fence(src, &teams).await?;
            (self.report)(&Event::Copied { table, rows: n });
            rows += n;
        }
        Ok(rows)
    }

    /// Copies one table's rows of the moving teams, in one target transaction
    /// with its `move_copies` record.
    async fn copy_table(&self, t: &Table) -> Result<Copied, Error> {
        let mut src = connect(&self.src_t).await?;
        let mut dst = connect(&self.dst_t).await?;
        let s = src
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(Error::pg("cannot start the copy's snapshot", &self.source))?;
        let snapshot: String = s
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(Error::pg("cannot read the copy's snapshot", &self.source))?
            .get(0);
        let teams: Vec<String> = s
            .query(
                &format!(
                    "SELECT DISTINCT {k}::text FROM {t} WHERE {k} IS NOT NULL",
                    k = quote(&t.key),
                    t = t.qualified
                ),
                &[],
            )
            .await
            .map_err(Error::pg(
                format!("cannot list the teams of {}", t.qualified),
                &self.source,
            ))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|team| bucket_of(team).is_ok_and(|b| self.range.contains(b)))
            .collect();
        let cols = t.column_list();
        let out_sql = format!(
            "COPY (SELECT {cols} FROM {} WHERE {} = ANY({}::text[]::{}[])) TO STDOUT (FORMAT binary)",
            t.qualified,
            quote(&t.key),
            text_array_literal(&teams),
            t.key_type
        );
        let d = dst
            .transaction()
            .await
            .map_err(Error::pg("cannot start the copy", &self.target))?;
        d.batch_execute(
            "SET LOCAL session_replication_role = replica; SET LOCAL dbtool.move_apply = 'on'",
        )
        .await
        .map_err(Error::pg(
            "cannot set session_replication_role = replica for the copy (the mover's role must be allowed to)",
            &self.target,
        ))?;
        d.execute(
            &format!(
                "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
                t.qualified,
                quote(&t.key),
                t.key_type
            ),
            &[&teams],
        )
        .await
        .map_err(Error::pg(
            format!("cannot clear {} before the copy", t.qualified),
            &self.target,
        ))?;
        let reader = s.copy_out(&out_sql).await.map_err(Error::pg(
            format!("cannot copy {} out", t.qualified),
            &self.source,
        ))?;
        let sink = d
            .copy_in(&format!(
                "COPY {} ({cols}) FROM STDIN (FORMAT binary)",
                t.qualified
            ))
            .await
            .map_err(Error::pg(
                format!("cannot copy {} in", t.qualified),
                &self.target,
            ))?;
        futures::pin_mut!(sink);
        futures::pin_mut!(reader);
        while let Some(chunk) = reader.try_next().await.map_err(Error::pg(
            format!("cannot read {}", t.qualified),
            &self.source,
        ))? {
            sink.send(chunk).await.map_err(Error::pg(
                format!("cannot write {} (a duplicate primary key is another team's row: see docs/sharding.md, identity ranges)", t.qualified),
                &self.target,
            ))?;
        }
        let rows = sink.as_mut().finish().await.map_err(Error::pg(
            format!("cannot write {} (a duplicate primary key is another team's row: see docs/sharding.md, identity ranges)", t.qualified),
            &self.target,
        ))?;
        d.execute(
            "INSERT INTO dbtool.move_copies (move_id, table_name, snapshot, rows) VALUES ($1, $2, $3, $4)",
            &[&self.move_id, &t.name, &snapshot, &(rows as i64)],
        )
        .await
        .map_err(Error::pg("cannot record the copy", &self.target))?;
        d.commit().await.map_err(Error::pg(
            format!("cannot commit the copy of {}", t.qualified),
            &self.target,
        ))?;
        s.commit().await.ok();
        Ok((t.name.clone(), rows, teams))
    }

    /// Applies the slot's backlog until a batch reads little (the lag is small).
    async fn catch_up(
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

    async fn fence_seen(&self, src: &Client, fwd: &mut Stream) -> Result<usize, Error> {
        let teams: Vec<String> = fwd.teams_seen.drain().collect();
        self.fence(src, &teams).await?;
        Ok(teams.len())
    }

    /// One freeze: `Ok(Ok((held, version)))` switched, `Ok(Err((held,
    /// reason)))` aborted within the budget (writes released, map unchanged).
    async fn freeze_and_switch(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
    ) -> Result<Result<(Duration, u64), (Duration, String)>, Error> {
        let budget = self.opts.max_freeze;
        // Connected before the freeze starts: a new connection can take
        // longer than the whole budget on a busy server.
        let lock = connect(&self.src_t).await?;
        let started = Instant::now();
        let place = self.catalog.name().to_string();
        self.cat()
            .execute(
                "INSERT INTO dbtool.shard_freeze (move_id, first_bucket, last_bucket, until) \
                 VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
                 ON CONFLICT (move_id) DO UPDATE SET until = EXCLUDED.until",
                &[
                    &self.move_id,
                    &i32::from(self.range.first),
                    &i32::from(self.range.last),
                    &(budget.as_millis() as f64),
                ],
            )
            .await
            .map_err(Error::pg("cannot announce the freeze", &place))?;
        self.notify_freeze().await?;
        let result = self.frozen(&lock, src, dst, fwd, started, budget).await;
        // Whatever happened: release the holds and the lock.
        let _ = self
            .cat()
            .execute(
                "DELETE FROM dbtool.shard_freeze WHERE move_id = $1",
                &[&self.move_id],
            )
            .await;
        let _ = self.notify_freeze().await;
        let _ = lock.execute("SELECT pg_advisory_unlock_all()", &[]).await;
        drop(lock);
        let held = started.elapsed();
        match result {
            Ok(Some(version)) => Ok(Ok((held, version))),
            Ok(None) => Ok(Err((held, "ran past --max-freeze".into()))),
            Err(Abort::Budget(reason)) => Ok(Err((held, reason))),
            Err(Abort::Fatal(e)) => Err(e),
        }
    }

    async fn notify_freeze(&self) -> Result<(), Error> {
        self.cat()
            .execute(
                "SELECT pg_notify('dbtool_shard_freeze', $1)",
                &[&self.move_id.to_string()],
            )
            .await
            .map_err(Error::pg("cannot announce the freeze", self.catalog.name()))?;
        Ok(())
    }

    async fn frozen(
        &self,
        lock: &Client,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
        started: Instant,
        budget: Duration,
    ) -> Result<Option<u64>, Abort> {
        let left = |what: &str| -> Result<Duration, Abort> {
            budget
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| Abort::Budget(format!("ran past --max-freeze while {what}")))
        };
        let ms = left("announcing")?.as_millis().max(1);
        lock.batch_execute(&format!("SET lock_timeout = {ms}"))
            .await
            .map_err(fatal("cannot set lock_timeout", &self.source))?;
        if let Err(e) = lock
            .execute("SELECT pg_advisory_lock($1)", &[&lock_key(self.move_id)])
            .await
        {
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Err(Abort::Budget(
                    "writes of moving teams still in flight when --max-freeze ran out".into(),
                ));
            }
            return Err(Abort::Fatal(Error::pg(
                "cannot take the move lock",
                &self.source,
            )(e)));
        }
        // Drain: everything committed up to now.
        loop {
            left("draining")?;
            let upto = flushed_lsn(src)
                .await
                .map_err(fatal("cannot flush the WAL", &self.source))?;
            let mut new_teams = 0;
            loop {
                left("draining")?;
                let step = fwd
                    .step(src, dst, Some(&upto), self.opts.batch_changes)
                    .await
                    .map_err(Abort::Fatal)?;
                new_teams += self.fence_seen(src, fwd).await.map_err(Abort::Fatal)?;
                if step.txns == 0 {
                    break;
                }
            }
            // A team first seen while draining was not fenced when the lock
            // was taken: drain once more so its last writes are in too.
            if new_teams == 0 {
                break;
            }
        }
        left("checking")?;
        self.check(src, dst).await.map_err(Abort::Fatal)?;
        left("switching")?;
        let switch_lsn: String = dst
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(fatal("cannot read the WAL position", &self.target))?
            .get(0);
        let next = self
            .catalog
            .latest_version()
            .await
            .map_err(|e| Abort::Fatal(e.into()))?
            .unwrap_or(0)
            + 1;
        let record = if self.rollback {
            "UPDATE dbtool.shard_moves SET phase = 'switching_back', updated_at = now() \
             WHERE id = $1 AND $2::text IS NOT NULL"
        } else {
            "UPDATE dbtool.shard_moves SET phase = 'switching', switch_lsn = $2::text::pg_lsn, \
             updated_at = now() WHERE id = $1"
        };
        self.cat()
            .execute(record, &[&self.move_id, &switch_lsn])
            .await
            .map_err(fatal("cannot record the switch", self.catalog.name()))?;
        src.execute(
            "UPDATE dbtool.move_fence SET state = 'moved', map_version = $2 WHERE move_id = $1",
            &[&self.move_id, &(next as i64)],
        )
        .await
        .map_err(fatal("cannot mark the moving teams moved", &self.source))?;
        if self.rollback {
            // The shard the teams return to takes their writes again.
            dst.execute(
                "DELETE FROM dbtool.move_fence WHERE move_id = $1",
                &[&self.move_id],
            )
            .await
            .map_err(fatal("cannot lift the fence", &self.target))?;
        }
        let version = self.publish(src).await.map_err(Abort::Fatal)?;
        Ok(Some(version))
    }

    async fn fence_moved(&self, src: &Client) -> Result<bool, Error> {
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

    /// Publishes the map with the range on the target (idempotent) and
    /// records it.
    async fn publish(&self, _src: &Client) -> Result<u64, Error> {
        let map = self.catalog.load(None).await?.ok_or_else(|| {
            Error::Shard(dbtool_shard::Error::NoMap {
                catalog: self.catalog.name().to_string(),
            })
        })?;
        let next = reassign(&map, self.range, &self.target)?;
        let note = format!(
            "{} {}: buckets {} {} -> {}",
            if self.rollback {
                "rollback of move"
            } else {
                "move"
            },
            self.move_id,
            self.range,
            self.source,
            self.target
        );
        let version = self.catalog.publish(&next, &note).await?;
        self.cat()
            .execute(
                "UPDATE dbtool.shard_moves SET phase = $3, map_version = $2, updated_at = now() WHERE id = $1",
                &[
                    &self.move_id,
                    &(version as i64),
                    &if self.rollback { "rolled_back" } else { "switched" },
                ],
            )
            .await
            .map_err(Error::pg("cannot record the switch", self.catalog.name()))?;
        Ok(version)
    }

    /// After the switch: changes that reached the source after the drain (a
    /// team first written there during the switch) are applied too, then
    /// the forward slot and publication go.
    async fn after_switch(
        &self,
        src: &Client,
        dst: &mut Client,
        fwd: &mut Stream,
    ) -> Result<(), Error> {
        let upto = flushed_lsn(src)
            .await
            .map_err(Error::pg("cannot flush the WAL", &self.source))?;
        loop {
            let step = fwd
                .step(src, dst, Some(&upto), self.opts.batch_changes)
                .await?;
            let teams: Vec<String> = fwd.teams_seen.drain().collect();
            if !teams.is_empty() {
                self.fence(src, &teams).await?;
                src.execute(
                    "UPDATE dbtool.move_fence SET state = 'moved' WHERE move_id = $1",
                    &[&self.move_id],
                )
                .await
                .map_err(Error::pg("cannot fence late teams", &self.source))?;
            }
            if step.txns == 0 {
                break;
            }
        }
        drop_stream(src, &self.source, &fwd.slot).await
    }

    /// The primary keys of one team's rows that differ between the shards.
    async fn differing_rows(
        &self,
        src: &Client,
        dst: &Client,
        t: &Table,
        team: &str,
    ) -> Result<String, Error> {
        let pk: Vec<String> = t.pk.iter().map(|k| format!("{}::text", quote(k))).collect();
        let sql = format!(
            "SELECT concat_ws(',', {}), hashtextextended(x::text, 0) FROM {} AS x WHERE {}::text = $1",
            pk.join(", "),
            t.qualified,
            quote(&t.key)
        );
        let mut sides = Vec::new();
        for (c, place) in [(src, &self.source), (dst, &self.target)] {
            let rows = c
                .query(&sql, &[&team])
                .await
                .map_err(Error::pg("cannot list differing rows", place))?;
            sides.push(
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<BTreeMap<String, i64>>(),
            );
        }
        let (a, b) = (&sides[0], &sides[1]);
        let only_a: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
        let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
        let changed: Vec<&String> = a
            .iter()
            .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        Ok(format!(
            " (team {team}: keys only on {}: {only_a:?}; only on {}: {only_b:?}; different: {changed:?})",
            self.source, self.target
        ))
    }

    /// Counts and checksums per team and table on both shards.
    async fn check(&self, src: &Client, dst: &Client) -> Result<(), Error> {
        let mut teams = self.fenced_teams(src).await?;
        teams.dedup();
        for t in &self.tables {
            let sql = format!(
                "SELECT {k}::text, count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text \
                 FROM {t} AS x WHERE {k} = ANY($1::text[]::{ty}[]) GROUP BY 1",
                k = quote(&t.key),
                t = t.qualified,
                ty = t.key_type
            );
            let (a, b) = futures::try_join!(
                async {
                    src.query(&sql, &[&teams]).await.map_err(Error::pg(
                        format!("cannot check {}", t.qualified),
                        &self.source,
                    ))
                },
                async {
                    dst.query(&sql, &[&teams]).await.map_err(Error::pg(
                        format!("cannot check {}", t.qualified),
                        &self.target,
                    ))
                }
            )?;
            let sums = |rows: Vec<tokio_postgres::Row>| -> BTreeMap<String, (i64, String)> {
                rows.iter()
                    .map(|r| (r.get(0), (r.get(1), r.get(2))))
                    .collect()
            };
            let (a, b) = (sums(a), sums(b));
            if a != b {
                let differ: Vec<String> = a
                    .keys()
                    .chain(b.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(|k| {
                        format!(
                            "team {k} (bucket {}): {} rows on {}, {} on {}",
                            bucket_of(k).unwrap_or(0),
                            a.get(k).map_or(0, |x| x.0),
                            self.source,
                            b.get(k).map_or(0, |x| x.0),
                            self.target
                        )
                    })
                    .take(3)
                    .collect();
                let mut detail = format!("{}: {}", t.qualified, differ.join("; "));
                if let Some(team) = a.keys().chain(b.keys()).find(|k| a.get(*k) != b.get(*k)) {
                    detail.push_str(&self.differing_rows(src, dst, t, team).await?);
                }
                return Err(Error::Mismatch {
                    source_shard: self.source.clone(),
                    target: self.target.clone(),
                    detail,
                });
            }
        }
        Ok(())
    }
}

/// A copied table: its name, rows, and the moving teams it holds.
type Copied = (String, u64, Vec<String>);

enum Abort {
    Budget(String),
    Fatal(Error),
}

fn fatal(action: &'static str, place: &str) -> impl FnOnce(tokio_postgres::Error) -> Abort {
    let place = place.to_string();
    move |e| Abort::Fatal(Error::pg(action, place)(e))
}

/// Flushes the WAL and returns the position reached: every transaction
/// committed so far is decodable up to it. Sessions running with
/// `synchronous_commit = off` make commits visible before their WAL is
/// flushed, and logical decoding reads only flushed WAL; a commit with
/// `synchronous_commit = on` of a transaction that wrote WAL flushes
/// everything before it (`dbtool.move_flush` is that write).
async fn flushed_lsn(c: &Client) -> Result<String, tokio_postgres::Error> {
    c.batch_execute(
        "BEGIN; SET LOCAL synchronous_commit = on; \
         INSERT INTO dbtool.move_flush (id, at) VALUES (1, clock_timestamp()) \
         ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at; COMMIT",
    )
    .await?;
    Ok(c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

/// `map` with `range` given to `to`, as a new version.
fn reassign(map: &ShardMap, range: BucketRange, to: &str) -> Result<ShardMap, Error> {
    let ranges: Vec<(String, BucketRange)> = (0..dbtool_shard::BUCKETS)
        .map(|b| {
            let owner = if range.contains(b) {
                to.to_string()
            } else {
                map.owner_of_bucket(b).unwrap_or_default().to_string()
            };
            (owner, BucketRange { first: b, last: b })
        })
        .collect();
    let next = ShardMap::from_ranges(
        map.shards().to_vec(),
        ranges.iter().map(|(s, r)| (s.as_str(), *r)),
    )?;
    Ok(next.with_version(map.version() + 1)?)
}

/// Creates the publication and slot of a stream if missing; true when the
/// slot was created now.
async fn ensure_stream(
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
    let has_slot: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())",
            &[&name],
        )
        .await
        .map_err(Error::pg("cannot read replication slots", place))?
        .get(0);
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

async fn drop_stream(c: &Client, place: &str, name: &str) -> Result<(), Error> {
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
        let deleted = delete_copies(&src, &source, &tables, range, batch).await?;
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
async fn delete_copies(
    c: &Client,
    place: &str,
    tables: &[Table],
    range: BucketRange,
    batch: i64,
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
            if n < batch as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Switches a switched (not yet finished) move back: the buckets return to
/// the shard they came from, with every change made on the new shard since
/// the switch, read from the reverse stream (a slot created before the
/// switch). The same freeze, check and fence as the move itself; then the
/// new shard's copies are deleted in batches. Nothing written after the
/// switch is lost.
///
/// # Errors
/// [`Error::Usage`] when no switched move has exactly this range or its
/// reverse stream is gone (finished); as [`move_buckets`] otherwise.
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
             WHERE first_bucket = $1 AND last_bucket = $2 AND phase IN ('switched', 'switching_back')",
            &[&i32::from(range.first), &i32::from(range.last)],
        )
        .await
        .map_err(Error::pg("cannot read the moves", &place))?
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
    if phase == "switching_back" && ctx.fence_moved(&new_c).await? {
        out.map_version = ctx.publish(&new_c).await?;
    } else {
        if !has_slot {
            return Err(Error::Usage(format!(
                "the reverse stream of move {move_id} (buckets {range}) is gone: move the buckets \
                 back with `dbtool shard move --buckets {range} --to {source}`"
            )));
        }
        rev.applied_lsn = switch_lsn
            .as_deref()
            .and_then(stream::parse_lsn)
            .unwrap_or(0);
        rev.load_position(&back_c).await?;
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
        ctx.switch_loop(&new_c, &mut back_c, &mut rev, &mut out)
            .await?;
    }
    if has_slot {
        drop_stream(&new_c, &target, &slot_name(&tag, move_id, true)).await?;
    }
    delete_copies(&new_c, &target, &tables, range, 5000).await?;
    Ok(out)
}
