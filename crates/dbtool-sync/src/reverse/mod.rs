//! Reverse sync: after a cutover, Postgres changes stream back into the
//! SQLite file so that a rollback loses nothing.
//!
//! - [`start_at_cutover`]: the cutover creates a logical replication slot
//!   (pgoutput) and a publication for exactly the migrated tables while the
//!   app's writes are frozen, so the stream starts at the switch: nothing the
//!   forward stream wrote before it comes back, everything after it does.
//! - [`run()`]: `dbtool sync` after a cutover reads the slot through the SQL
//!   functions (`pg_logical_slot_peek_binary_changes`, binary tuples), casts
//!   every value back to what the SQLite column held
//!   ([`dbtool_migrate::uncast`]) and applies whole transactions in commit
//!   order, with the position in the same SQLite transaction; then advances
//!   the slot.
//! - [`rollback()`]: freeze Postgres writes, drain, check, lift the moved mark.
//! - [`slots`] / [`drop_all`]: slot hygiene for `dbtool sync status` / `stop`.
//!
//! See docs/rollback.md.

pub mod mark;
pub mod slot;

pub use mark::{lift_moved_back, mark_moved_back};
pub use slot::{drop_all, slot_name, slots, start_at_cutover, SlotInfo};

mod apply;
mod check;
mod decode;
pub mod rollback;
pub(crate) mod run;
mod stream;

pub use rollback::{rollback, Report as RollbackReport, RollbackOptions};
pub use run::{run, Options, Progress};
