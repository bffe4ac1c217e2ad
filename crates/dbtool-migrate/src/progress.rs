//! Progress events of a migration: the library prints nothing itself; the
//! binary implements [`Progress`] with progress bars or plain lines. The
//! loader and the orchestration both report through it, so it sits below
//! both.

/// Where a migration is; see [`Progress::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the source's schema and profiling its values.
    Plan,
    /// Creating the target tables.
    Schema,
    /// Copying rows.
    Load,
    /// Constraints, indexes, foreign keys, sequences, ANALYZE.
    Finish,
}

/// A table about to be loaded, for progress displays.
#[derive(Debug, Clone)]
pub struct TableStart {
    /// Source table name.
    pub table: String,
    /// Rows in the source table (from the plan's profile).
    pub rows: u64,
    /// Rows already loaded by an earlier attempt of this run.
    pub rows_done: u64,
    /// Chunks still to load.
    pub chunks_left: usize,
}

/// Receives progress events. The library prints nothing itself; the binary
/// implements this with progress bars or plain lines. Called from several
/// tasks at once, hence `Sync`; every method defaults to doing nothing.
pub trait Progress: Send + Sync {
    /// A line worth showing the user (e.g. "resuming run 4 ...").
    fn message(&self, _text: &str) {}
    /// A phase begins.
    fn phase(&self, _phase: Phase) {}
    /// The load begins: every table with chunks left.
    fn load_start(&self, _tables: &[TableStart]) {}
    /// A batch of `table` committed: `rows` rows read, of which `rejected` rejected.
    fn rows(&self, _table: &str, _rows: u64, _rejected: u64) {}
    /// A chunk of `table` is complete (a table is complete when all its chunks are).
    fn chunk_done(&self, _table: &str) {}
    /// The load ended (successfully or not).
    fn load_end(&self) {}
    /// A task of the finish phase starts: `kind` is `keys` (primary key,
    /// unique constraints, identity), `index`, `checks`, `foreign_key`
    /// (create NOT VALID, then validate) or `analyze`; `name` is the index
    /// or foreign key (the table for the others). Finish tasks of a table
    /// start once all its chunks are done, possibly while others still load.
    fn finish_task(&self, _kind: &str, _table: &str, _name: &str) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {}
