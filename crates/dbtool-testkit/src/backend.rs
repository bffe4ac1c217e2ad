//! Which servers the tests run against, chosen at run time.

use crate::error::{Error, Result};

/// Where test servers come from (`DBTOOL_TEST_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// `local` (default): servers started from the system's PostgreSQL and Redis binaries.
    Local,
    /// `docker`: the same servers in containers through testcontainers (needs a Docker engine).
    Docker,
    /// `external`: servers you already run, named by `DBTOOL_TEST_PG_URL`,
    /// `DBTOOL_TEST_PG_REPLICA_URLS`, `DBTOOL_TEST_PG_SHARD_URLS` and `DBTOOL_TEST_REDIS_NODES`.
    External,
}

impl Backend {
    /// Reads `DBTOOL_TEST_BACKEND` (`local`, `docker` or `external`; empty means `local`).
    pub fn from_env() -> Result<Backend> {
        match std::env::var("DBTOOL_TEST_BACKEND")
            .unwrap_or_default()
            .trim()
        {
            "" | "local" => Ok(Backend::Local),
            "docker" => Ok(Backend::Docker),
            "external" => Ok(Backend::External),
            other => Err(Error::Config(format!(
                "DBTOOL_TEST_BACKEND={other:?} is not a backend; use local, docker or external"
            ))),
        }
    }

    /// The name used in `DBTOOL_TEST_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
            Backend::External => "external",
        }
    }

    pub(crate) fn unsupported(self, op: &'static str) -> Error {
        Error::Unsupported {
            op,
            backend: self.name(),
            hint: "tests that stop, kill, pause or promote servers need DBTOOL_TEST_BACKEND=local \
                   (the default); skip them or run them locally"
                .into(),
        }
    }
}

/// A comma-separated env var as a list (empty entries dropped).
pub(crate) fn env_list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
