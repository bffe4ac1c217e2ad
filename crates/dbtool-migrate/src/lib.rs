//! SQLite -> PostgreSQL migrator: inspect, profile, plan, load (binary COPY), finish.
//!
//! The data path:
//!
//! ```text
//! inspect  -> profile    -> plan          -> load                 -> finish
//! schema     typeof() per   DDL + casts     N workers, rowid      PK/unique/indexes,
//! (PRAGMA)   column, date   per column,     ranges, binary COPY,  FKs after orphan check,
//!            formats, ...   policies        checkpoint per batch  sequences, ANALYZE
//! ```
//!
//! Planning a migration (what `dbtool plan` does) takes four calls:
//!
//! ```no_run
//! use std::path::Path;
//! use dbtool_migrate::{ddl, plan, source};
//!
//! # fn main() -> Result<(), dbtool_migrate::Error> {
//! let path = Path::new("forums.db");
//! let conn = source::open(path)?;                  // read-only, tolerant of odd files
//! let src = source::inspect(&conn, path)?;         // tables, keys, indexes, FKs, views...
//! let plan = plan::plan(&conn, &src, &plan::PlanConfig::default(), "public")?;
//! for stmt in ddl::create_statements(&plan) {
//!     println!("{stmt};");
//! }
//! // Every SQLite value becomes a target value through the plan:
//! let v = plan.tables[0].columns[0].cast(rusqlite::types::ValueRef::Integer(7));
//! # let _ = v;
//! # Ok(())
//! # }
//! ```
//!
//! See docs/migrate.md for the cast rules, policies, reject file and exit codes.

//! The modules follow the data path, and depend one way: the stages
//! (`source`, `profile`, `plan`, `cast`, `ddl`, the loader, the finish
//! phase) never on the orchestration ([`run`], [`sharded`]), which drives
//! them. [`progress`] and the shard routing of rows ([`shard`]) sit below
//! both. The loader, its checkpoints and the finish phase are internal: a
//! caller migrates with [`run::migrate`] (or [`sharded::migrate_sharded`]).

pub mod cast;
mod checkpoint;
pub mod ddl;
pub mod error;
mod finish;
pub mod ident;
mod load;
pub mod lock;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod report;
pub mod run;
pub mod shard;
pub mod sharded;
pub mod source;
pub mod target;
pub mod uncast;
pub mod value;

pub use error::Error;
/// Identity sequences moved past the rows in the target: the one finish step
/// a data-only load takes, and what a change stream runs after applying rows
/// whose ids the target's sequences have not seen.
pub use finish::set_sequences;
pub use finish::{FinishReport, Outcome, Step, StepKind};
pub use load::{LoadConfig, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ROWS, DEFAULT_CHUNK_ROWS};

use serde::{Deserialize, Serialize};

/// Settings for the migrator, the `[migrate]` table of `dbtool.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
// No `deny_unknown_fields`: serde does not support it together with `flatten`.
#[serde(default)]
pub struct Config {
    /// Cast policies, per-column overrides, identifier mapping (see [`plan`]).
    #[serde(flatten)]
    pub plan: plan::PlanConfig,
    /// Batching, parallelism, resume.
    #[serde(flatten)]
    pub load: LoadConfig,
    /// How rows are split over shards (`[migrate.sharding]`; see [`shard`]).
    pub sharding: shard::Sharding,
}
