//! The versioned shard map in dbtool's own tables (`dbtool.shard_map`,
//! `dbtool.shard_map_range`): [`Catalog`] reads and publishes it.
//!
//! The `dbtool` schema itself (its migrations and their runner) belongs to
//! `dbtool-catalog`; [`Catalog::migrate`] calls that runner.

use dbtool_pool::Target;

use crate::error::Error;
use crate::map::{BucketRange, ShardMap};
use crate::scheme::Scheme;

/// The `dbtool` schema's migrations runner, kept by `dbtool-catalog` (the
/// one owner of dbtool's own tables); re-exported under the paths this
/// crate has always had.
pub use dbtool_catalog::{connect_options, migrate, MIGRATOR};

/// The LISTEN/NOTIFY channel on which [`Catalog::publish`] announces a new
/// map version (the payload is the version number).
pub const CHANNEL: &str = "dbtool_shard_map";

/// A connection to the catalog database holding the versioned shard map
/// (`dbtool.shard_map`, `dbtool.shard_map_range`).
///
/// ```no_run
/// # async fn example() -> Result<(), dbtool_shard::Error> {
/// use dbtool_shard::{catalog::Catalog, Scheme, ShardMap};
/// let catalog = Catalog::connect(&"postgres://dbtool@localhost/app".parse().unwrap()).await?;
/// let map = ShardMap::even_n(Scheme::Buckets, 4)?;
/// let version = catalog.publish(&map, "initial split").await?;
/// assert_eq!(catalog.load(None).await?.unwrap().version(), version);
/// # Ok(()) }
/// ```
pub struct Catalog {
    client: tokio_postgres::Client,
    config: Target,
    name: String,
    connection: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Catalog {
    /// Connects to the catalog database, with the target's TLS settings.
    ///
    /// # Errors
    /// [`Error::CatalogConnect`] when the connection fails.
    pub async fn connect(config: &Target) -> Result<Catalog, Error> {
        Ok(Catalog::connect_listening(config, false).await?.0)
    }

    /// Connects, and with `listen` subscribes to [`CHANNEL`]: the receiver
    /// yields each announced version, and closes when the connection ends.
    ///
    /// # Errors
    /// [`Error::Catalog`] when the connection or the LISTEN fails.
    pub async fn connect_listening(
        config: &Target,
        listen: bool,
    ) -> Result<(Catalog, tokio::sync::mpsc::UnboundedReceiver<u64>), Error> {
        let name = config.to_string();
        let fail = |action| {
            let name = name.clone();
            move |source| Error::Catalog {
                action,
                catalog: name,
                source,
            }
        };
        let (client, mut connection) = config.connect_raw().await.map_err(Error::CatalogConnect)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let connection = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if let Ok(v) = n.payload().parse::<u64>() {
                            let _ = tx.send(v);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "shard catalog connection ended");
                        break;
                    }
                }
            }
        });
        let catalog = Catalog {
            client,
            config: config.clone(),
            name: name.clone(),
            connection,
        };
        if listen {
            catalog
                .client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(fail("cannot LISTEN for map versions"))?;
        }
        Ok((catalog, rx))
    }

    /// The catalog as `postgres://user@host:port/db` (no password).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The open client, for queries of the caller's own.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    fn error(&self, action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
        move |source| Error::Catalog {
            action,
            catalog: self.name.clone(),
            source,
        }
    }

    /// Creates the catalog tables (applies `migrations/`). Idempotent.
    ///
    /// # Errors
    /// [`Error::Migrate`] when a migration fails.
    pub async fn migrate(&self) -> Result<(), Error> {
        migrate(&self.config)
            .await
            .map_err(|source| Error::Migrate {
                catalog: self.name.clone(),
                source,
            })
    }

    /// The newest published version, `None` when there is none (or the
    /// tables do not exist yet).
    ///
    /// # Errors
    /// [`Error::Catalog`] when the query fails.
    pub async fn latest_version(&self) -> Result<Option<u64>, Error> {
        match self
            .client
            .query_one("SELECT max(version) FROM dbtool.shard_map", &[])
            .await
        {
            Ok(row) => Ok(row.get::<_, Option<i64>>(0).map(|v| v as u64)),
            Err(e) if is_undefined_table(&e) => Ok(None),
            Err(e) => Err(self.error("cannot read the newest map version")(e)),
        }
    }

    /// The map of `version` (`None`: the newest), or `None` if there is no
    /// such version.
    ///
    /// # Errors
    /// [`Error::Catalog`] when a query fails; [`Error::InvalidMap`] when the
    /// stored version does not cover every bucket exactly once.
    pub async fn load(&self, version: Option<u64>) -> Result<Option<ShardMap>, Error> {
        let head = self
            .client
            .query_opt(
                "SELECT version, scheme, shards FROM dbtool.shard_map \
                 WHERE version = coalesce($1, (SELECT max(version) FROM dbtool.shard_map))",
                &[&version.map(|v| v as i64)],
            )
            .await;
        let head = match head {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            Err(e) if is_undefined_table(&e) => return Ok(None),
            Err(e) => return Err(self.error("cannot load the shard map")(e)),
        };
        let version: i64 = head.get(0);
        let scheme: Scheme = head.get::<_, String>(1).parse()?;
        let shards: Vec<String> = head.get(2);
        let map = match scheme {
            Scheme::Hex8Modulo => ShardMap::even(scheme, shards)?,
            Scheme::Buckets => {
                let rows = self
                    .client
                    .query(
                        "SELECT shard, first_bucket, last_bucket FROM dbtool.shard_map_range \
                         WHERE version = $1 ORDER BY first_bucket",
                        &[&version],
                    )
                    .await
                    .map_err(self.error("cannot load the shard map ranges"))?;
                let ranges = rows
                    .iter()
                    .map(|r| {
                        let (first, last): (i32, i32) = (r.get(1), r.get(2));
                        Ok((
                            r.get::<_, &str>(0),
                            BucketRange::new(first as u16, last as u16)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                ShardMap::from_ranges(shards, ranges).map_err(|e| {
                    Error::InvalidMap(format!("version {version} in {}: {e}", self.name))
                })?
            }
        };
        Ok(Some(map.with_version(version as u64)?))
    }

    /// Publishes `map` as a new version and announces it on [`CHANNEL`].
    /// The version is the larger of `map.version()` and the newest + 1. If
    /// the newest version already routes exactly like `map`, nothing is
    /// written and its version is returned (publishing is idempotent).
    /// Creates the catalog tables first if needed.
    ///
    /// # Errors
    /// [`Error::Migrate`], [`Error::Catalog`].
    pub async fn publish(&self, map: &ShardMap, note: &str) -> Result<u64, Error> {
        self.migrate().await?;
        let fail = |action| self.error(action);
        self.client
            .batch_execute("BEGIN; LOCK TABLE dbtool.shard_map IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(fail("cannot lock the shard map for publishing"))?;
        let result = self.publish_locked(map, note).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.client.batch_execute(end).await;
        let version = result?;
        ended.map_err(fail("cannot commit the new map version"))?;
        Ok(version)
    }

    async fn publish_locked(&self, map: &ShardMap, note: &str) -> Result<u64, Error> {
        if let Some(latest) = self.load(None).await? {
            if latest.routes_like(map) && latest.version() >= map.version() {
                return Ok(latest.version());
            }
        }
        let latest = self.latest_version().await?.unwrap_or(0);
        let version = (latest + 1).max(map.version()) as i64;
        self.client
            .execute(
                "INSERT INTO dbtool.shard_map (version, scheme, shards, note) VALUES ($1, $2, $3, $4)",
                &[&version, &map.scheme().as_str(), &map.shards(), &note],
            )
            .await
            .map_err(self.error("cannot insert the new map version"))?;
        let ranges = map.ranges();
        let firsts: Vec<i32> = ranges.iter().map(|(_, r)| i32::from(r.first)).collect();
        let lasts: Vec<i32> = ranges.iter().map(|(_, r)| i32::from(r.last)).collect();
        let shards: Vec<&str> = ranges.iter().map(|(s, _)| *s).collect();
        self.client
            .execute(
                "INSERT INTO dbtool.shard_map_range (version, first_bucket, last_bucket, shard) \
                 SELECT $1, f, l, s FROM unnest($2::int[], $3::int[], $4::text[]) AS u(f, l, s)",
                &[&version, &firsts, &lasts, &shards],
            )
            .await
            .map_err(self.error("cannot insert the new map's bucket ranges"))?;
        self.client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &version.to_string()],
            )
            .await
            .map_err(self.error("cannot announce the new map version"))?;
        Ok(version as u64)
    }
}

fn is_undefined_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}
