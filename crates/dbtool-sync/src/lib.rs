//! Change streams between a live SQLite file and PostgreSQL.
//!
//! `dbtool sync` copies a SQLite file that the app keeps writing and then
//! follows its changes; `dbtool cutover` switches the app to Postgres within a
//! bounded freeze; after the switch the same `dbtool sync` streams Postgres
//! changes back into the file so that `dbtool rollback` loses nothing.
//! See docs/sync.md.

pub mod apply;
pub mod capture;
pub mod cutover;
pub mod error;
pub mod moves;
pub mod reverse;
pub mod schema;
pub mod state;
pub mod sync;
mod txn;

pub use capture::{lift_moved, mark_moved};
pub use error::Error;
