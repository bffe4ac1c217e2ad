//! `--shards FILE` for `dbtool migrate` and `dbtool verify`: the shards, the
//! map and the sharding rules, read from a `dbtool.toml`.

use std::path::Path;

use anyhow::Context as _;

/// What `--shards FILE` names.
#[derive(Debug)]
pub struct Shards {
    /// The file it came from, for messages.
    pub file: String,
    /// The map: the catalog's newest version when `[shard] catalog` is set
    /// (and holds one), else `[shard.map]`.
    pub map: dbtool_shard::ShardMap,
    /// Each `[[shard.shards]]` entry: its name and primary.
    pub targets: Vec<(String, dbtool_pool::Target)>,
    /// `[migrate.sharding]`.
    pub sharding: dbtool_migrate::shard::Sharding,
}

/// Reads `--shards FILE`. Errors are usage errors (exit code 2) naming the file.
pub async fn load(path: &Path) -> anyhow::Result<Shards> {
    let file = path.display().to_string();
    let config = crate::config::Config::load(Some(path))?;
    let shard = &config.shard;
    if shard.shards.is_empty() {
        return Err(super::usage(anyhow::anyhow!(
            "--shards {file}: no shards: list each with its primary URL in [[shard.shards]] (name = \"shard-0\", primary = \"postgres://...\")"
        )));
    }
    let mut targets = Vec::with_capacity(shard.shards.len());
    for s in &shard.shards {
        let to = super::pg_config(Some(&s.primary))
            .with_context(|| format!("--shards {file}: shard {:?}", s.name))
            .map_err(super::usage)?;
        targets.push((s.name.clone(), to));
    }
    let mut map = None;
    if let Some(catalog) = shard
        .catalog_config()
        .with_context(|| format!("--shards {file}"))
        .map_err(super::usage)?
    {
        map = dbtool_shard::catalog::Catalog::connect(&catalog)
            .await
            .with_context(|| format!("--shards {file}: reading the shard map"))?
            .load(None)
            .await
            .with_context(|| format!("--shards {file}: reading the shard map"))?;
    }
    let map = match map {
        Some(m) => m,
        None => shard
            .map()
            .with_context(|| format!("--shards {file}: [shard.map]"))
            .map_err(super::usage)?,
    };
    Ok(Shards {
        file,
        map,
        targets,
        sharding: config.migrate.sharding.clone(),
    })
}

impl Shards {
    /// The targets for the migrator.
    pub fn migrate_targets(&self) -> Vec<dbtool_migrate::sharded::Target> {
        self.targets
            .iter()
            .map(|(name, to)| dbtool_migrate::sharded::Target {
                name: name.clone(),
                to: to.clone(),
            })
            .collect()
    }

    /// The targets for the verifier.
    pub fn verify_targets(&self) -> Vec<dbtool_verify::shard::Target> {
        self.targets
            .iter()
            .map(|(name, to)| dbtool_verify::shard::Target {
                name: name.clone(),
                to: to.clone(),
            })
            .collect()
    }
}
