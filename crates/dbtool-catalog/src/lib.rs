//! dbtool's own tables in a target database: the `dbtool` schema.
//!
//! One owner for them: the SQL files in the workspace's `migrations/`
//! directory define the schema, [`migrate`] applies them (sqlx's migrator,
//! under its advisory lock, with the history in `dbtool._sqlx_migrations`),
//! and [`runs`], [`checkpoints`] and [`rejects`] are the typed access the
//! migrator and the verifier use instead of writing SQL on these tables
//! themselves. The crate sits low in the dependency graph (only
//! `dbtool-pool` below it), so every crate that keeps state in the target
//! (migrate, verify, the shard map, live sync) can use it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbtool_catalog::Error> {
//! let target: dbtool_pool::Target = "postgres://app@localhost/forums".parse().unwrap();
//! dbtool_catalog::migrate(&target).await.unwrap(); // idempotent; concurrent callers wait
//! let (client, connection) = target.connect_raw().await.unwrap();
//! tokio::spawn(connection);
//! if let Some(run) = dbtool_catalog::runs::latest_done(&client, None, "/data/forums.db").await? {
//!     println!("run {} into schema {}", run.id, run.schema);
//! }
//! # Ok(()) }
//! ```

pub mod checkpoints;
pub mod error;
pub mod rejects;
pub mod runs;
mod schema;

pub use error::Error;
pub use schema::{connect_options, exists, migrate, MIGRATOR};
