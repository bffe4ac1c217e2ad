//! Bucket moves: grow from N to N+1 shards while teams keep writing.
//!
//! A move carries the rows of a bucket range from the shard that owns it
//! (the *source*) to another (the *target*), online:
//!
//! 1. **Fence and stream.** The guard triggers go on each moved table of the
//!    source (compiled by the shard from `dbtool.move_fence`: a bit test for
//!    teams not fenced, see the `fence` module), a publication and a logical
//!    slot (pgoutput) are created there: every change committed from now on
//!    is decoded.
//! 2. **Copy** each table's rows of the moving teams with binary COPY,
//!    `--jobs` tables at once, each in one target transaction together with
//!    its record in `dbtool.move_copies` (so a killed copy resumes by table).
//!    The teams are recorded in the source's `dbtool.move_fence`.
//! 3. **Catch up** from the slot (see the `stream` module): changes of the moving
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

mod catch_up;
mod check;
mod copy;
pub mod error;
pub mod fault;
mod fence;
mod finish;
pub mod ids;
pub mod pgoutput;
mod plan;
mod rollback;
mod run;
mod stream;
mod switch;
mod tables;

use std::time::Duration;

use dbtool_pool::Target;
use dbtool_shard::catalog::Catalog;
use dbtool_shard::BucketRange;
use tokio_postgres::Client;

pub use error::Error;
pub use finish::{finish, Finished};
pub use plan::{plan_add, set_identity_ranges};
pub use rollback::rollback;
pub use run::move_buckets;
pub use tables::Keys;

use tables::Table;

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
    /// Rows copied per second at most, over all tables at once (0: as fast
    /// as the shards go). The copy competes with the application for the
    /// source's and the target's CPU; this keeps it to a share.
    pub copy_rate: u64,
    /// Changes read from the slot per applied batch.
    pub batch_changes: i32,
}

impl Options {
    /// Options with the defaults: schema `public`, `--max-freeze` 500 ms,
    /// 5 attempts, 2 jobs, no copy rate limit, batches of 5,000
    /// changes.
    pub fn new(catalog: Target, shards: Vec<Shard>) -> Options {
        Options {
            catalog,
            shards,
            keys: Keys::default(),
            schema: "public".into(),
            max_freeze: Duration::from_millis(500),
            freeze_attempts: 5,
            jobs: 2,
            copy_rate: 0,
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

impl Ctx<'_> {
    /// A [`fault`] point, prefixed `rollback-` when switching back.
    fn fault(&self, name: &str) {
        if self.rollback {
            fault::point(&format!("rollback-{name}"));
        } else {
            fault::point(name);
        }
    }

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
}
