//! Arguments shared by the commands that read a SQLite source and talk to a
//! Postgres target (`migrate`, `verify`, `plan`): one definition, flattened
//! into each command's `Args` with `#[command(flatten)]`, so the same thing
//! has the same name, help text and behaviour everywhere.
//!
//! A new command that reads a source and a target (a sync or rollback
//! command, say) flattens [`Endpoints`] and, when it works on a subset of the
//! tables, [`TableFilter`]; [`Endpoints::target`] resolves the target the one
//! documented way (see [`super::pg_config`]).

use std::path::PathBuf;

/// `--from`, `--to`, `--shards`, `--schema`.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// The SQLite source file (opened read-only).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Target PostgreSQL URL or libpq string [default: DATABASE_URL, then
    /// [pool] primary in dbtool.toml, then the PG* variables; one of them is
    /// required].
    #[arg(long, value_name = "URL", conflicts_with = "shards")]
    pub to: Option<String>,
    /// Use the shards listed in this dbtool.toml ([[shard.shards]],
    /// [shard.map], [migrate.sharding]), each row on its team's shard,
    /// instead of one target.
    #[arg(long, value_name = "FILE")]
    pub shards: Option<PathBuf>,
    /// Target schema [default: public; verify: the migration run's, else public].
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
}

impl Endpoints {
    /// The target schema, `public` when none was given.
    pub fn schema_or_public(&self) -> String {
        self.schema.clone().unwrap_or_else(|| "public".to_owned())
    }
}

/// Which source tables: `--include` (alias `--tables`) and `--exclude`.
///
/// `migrate` and `plan` called it `--include`, `verify` `--tables`: both
/// names are accepted everywhere so existing scripts keep working; the help
/// shows `--include`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TableFilter {
    /// Only this source table (repeatable, or several names after one flag;
    /// `--tables` is the same option).
    #[arg(long, visible_alias = "tables", value_name = "TABLE", num_args = 1..)]
    pub include: Vec<String>,
    /// Skip this source table (repeatable, or several names after one flag).
    #[arg(long, value_name = "TABLE", num_args = 1..)]
    pub exclude: Vec<String>,
}
