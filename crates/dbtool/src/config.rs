//! `dbtool.toml`: one table per library, each library's own `Config`.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `statement_timeout = SECS`: the server-side `statement_timeout` of
    /// every Postgres connection the commands open (0: none), as
    /// `--statement-timeout`; the option and `DBTOOL_STATEMENT_TIMEOUT` win.
    pub statement_timeout: Option<u64>,
    /// `[migrate]`
    pub migrate: dbtool_migrate::Config,
    /// `[verify]`
    pub verify: dbtool_verify::Config,
    /// `[pool]`
    pub pool: dbtool_pool::Config,
    /// `[shard]`
    pub shard: dbtool_shard::Config,
    /// `[cache]`
    pub cache: dbtool_cache::Config,
}

impl Config {
    /// Reads `path`, or `./dbtool.toml` when no path is given and it exists,
    /// else the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let default_path = Path::new("dbtool.toml");
        let path = match path {
            Some(p) => p,
            None if default_path.exists() => default_path,
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))
            .map_err(crate::cmd::usage)?;
        toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))
            .map_err(crate::cmd::usage)
    }
}
