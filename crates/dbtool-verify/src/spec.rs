//! What verify compares for one table: the planned columns with their target
//! types, the key, and the migrator's own cast for each column.

use std::sync::Arc;

use dbtool_migrate::value::{PgType, Value};
use rusqlite::types::ValueRef;

/// The migrator's cast of one source cell (column index, SQLite value) into
/// its target-typed [`Value`]; `Err` carries the cast error's message.
pub(crate) type CastFn =
    Arc<dyn Fn(usize, ValueRef<'_>) -> Result<Value, String> + Send + Sync + 'static>;

/// One planned column.
#[derive(Debug, Clone)]
pub(crate) struct ColSpec {
    /// The SQLite column name.
    pub(crate) source: String,
    /// The Postgres column name.
    pub(crate) target: String,
    /// The planned Postgres type.
    pub(crate) pg_type: PgType,
    /// NOT NULL as planned.
    pub(crate) not_null: bool,
}

/// How rows of a table are identified on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// The rowid, aliased by an `INTEGER PRIMARY KEY` column (the index of
    /// that column): compared by key ranges pushed down to both sides.
    Rowid(usize),
    /// Any other primary key (the column indexes): compared by key hash buckets.
    Columns(Vec<usize>),
    /// No primary key: compared as multisets.
    None,
}

/// One table to compare.
#[derive(Clone)]
pub(crate) struct TableSpec {
    /// The SQLite table name.
    pub(crate) source: String,
    /// The Postgres table name (unqualified).
    pub(crate) target: String,
    /// The planned columns, in plan order.
    pub(crate) columns: Vec<ColSpec>,
    /// The key.
    pub(crate) key: Key,
    /// How SQLite reads the rowid (`rowid`, or `_rowid_`/`oid` when a column
    /// shadows it); `None` when the table is not read by rowid.
    pub(crate) rowid_expr: Option<&'static str>,
    /// The migrator's plan for this table (indexes, FKs, identity).
    pub(crate) plan: Arc<dbtool_migrate::plan::TablePlan>,
    /// The migrator's casts.
    pub(crate) cast: CastFn,
    /// Sharded verify: only the source rows this shard should hold.
    pub(crate) route: Option<Route>,
}

/// One shard's share of a table's source rows.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) filter: Arc<dbtool_migrate::shard::ShardFilter>,
    pub(crate) rule: dbtool_migrate::shard::Rule,
}

impl std::fmt::Debug for TableSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSpec")
            .field("source", &self.source)
            .field("target", &self.target)
            .field("columns", &self.columns)
            .field("key", &self.key)
            .field("rowid_expr", &self.rowid_expr)
            .finish_non_exhaustive()
    }
}

impl TableSpec {
    /// Whether rows are identified by a rowid on the source side.
    pub(crate) fn has_rowid(&self) -> bool {
        self.rowid_expr.is_some()
    }

    /// The indexes of the key columns (empty for a table without one).
    pub(crate) fn key_columns(&self) -> Vec<usize> {
        match &self.key {
            Key::Rowid(i) => vec![*i],
            Key::Columns(c) => c.clone(),
            Key::None => Vec::new(),
        }
    }
}

/// Quotes a SQLite or Postgres identifier (both use `"` doubled inside).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
