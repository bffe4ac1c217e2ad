//! The sync state in each target's `dbtool` schema (`dbtool.syncs`).

use crate::Error;

/// One target database of a sync: a shard, or the plain target (`shard` = "").
#[derive(Debug, Clone)]
pub struct Target {
    /// The shard's name in the map (`""` for a plain target).
    pub shard: String,
    /// Its primary.
    pub to: dbtool_pool::Target,
}

impl Target {
    /// The target for messages, password masked.
    pub fn shown(&self) -> String {
        let t = dbtool_pool::display_config(&self.to);
        if self.shard.is_empty() {
            t
        } else {
            format!("shard {} ({t})", self.shard)
        }
    }
}

/// A `dbtool.syncs` row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncRow {
    /// Canonical source path.
    pub source_path: String,
    /// Shard name (`""`: plain target).
    pub shard: String,
    /// The file's sync id.
    pub source_id: String,
    /// Target schema.
    pub target_schema: String,
    /// `copying`, `streaming`, `cut_over`, `rolled_back`.
    pub phase: String,
    /// The initial copy's file while copying.
    pub copy_path: Option<String>,
    /// Seam: highest log sequence inside the copy.
    pub seam: i64,
    /// Highest sequence applied here.
    pub position: i64,
    /// Changes applied here.
    pub applied: i64,
    /// Values rejected here.
    pub rejected: i64,
    /// Measured apply capacity, changes/s.
    pub rate: f64,
    /// Backlog at the last report.
    pub backlog: i64,
    /// Log head at the last report.
    pub head: i64,
    /// Cutover position.
    pub cutover_position: Option<i64>,
    /// Reverse stream start LSN.
    pub cutover_lsn: Option<String>,
    /// Reverse stream slot.
    pub reverse_slot: Option<String>,
    /// Seconds since the last update.
    pub updated_ago: f64,
    /// Run id of the initial copy.
    pub run_id: Option<i64>,
}

const COLUMNS: &str = "source_path, shard, source_id, target_schema, phase, copy_path, seam, position, applied, rejected, rate, backlog, head, cutover_position, cutover_lsn, reverse_slot, extract(epoch from now() - updated_at)::float8, run_id";

fn row(r: &tokio_postgres::Row) -> SyncRow {
    SyncRow {
        source_path: r.get(0),
        shard: r.get(1),
        source_id: r.get(2),
        target_schema: r.get(3),
        phase: r.get(4),
        copy_path: r.get(5),
        seam: r.get(6),
        position: r.get(7),
        applied: r.get(8),
        rejected: r.get(9),
        rate: r.get(10),
        backlog: r.get(11),
        head: r.get(12),
        cutover_position: r.get(13),
        cutover_lsn: r.get(14),
        reverse_slot: r.get(15),
        updated_ago: r.get(16),
        run_id: r.get(17),
    }
}

/// The row of `source` and `shard`, if any.
pub async fn load(
    client: &tokio_postgres::Client,
    source: &str,
    shard: &str,
) -> Result<Option<SyncRow>, Error> {
    Ok(client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM dbtool.syncs WHERE source_path = $1 AND shard = $2"),
            &[&source, &shard],
        )
        .await?
        .as_ref()
        .map(row))
}

/// Every sync row of the target (all sources).
pub async fn all(client: &tokio_postgres::Client) -> Result<Vec<SyncRow>, Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('dbtool.syncs') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            &format!("SELECT {COLUMNS} FROM dbtool.syncs ORDER BY source_path, shard"),
            &[],
        )
        .await?
        .iter()
        .map(row)
        .collect())
}

/// The stored plan of a sync.
pub async fn plan(
    client: &tokio_postgres::Client,
    source: &str,
    shard: &str,
) -> Result<Option<dbtool_migrate::plan::Plan>, Error> {
    let v: Option<serde_json::Value> = client
        .query_opt(
            "SELECT plan FROM dbtool.syncs WHERE source_path = $1 AND shard = $2",
            &[&source, &shard],
        )
        .await?
        .and_then(|r| r.get(0));
    match v {
        None => Ok(None),
        Some(v) => serde_json::from_value(v).map(Some).map_err(|e| {
            Error::Other(format!(
                "cannot read the stored plan of the sync of {source} ({e}); it was made by another dbtool version"
            ))
        }),
    }
}

/// Connects to a target, masking the password in errors.
pub async fn connect(t: &Target) -> Result<tokio_postgres::Client, Error> {
    let client = t.to.connect().await.map_err(|e| Error::Target {
        target: t.shown(),
        reason: format!(
            "cannot connect: {e} (check --to, DATABASE_URL or the PG* variables, and that the server is running)"
        ),
    })?;
    client
        .batch_execute("SET application_name = 'dbtool sync'")
        .await?;
    Ok(client)
}

/// Applies dbtool's catalog migrations (including the sync tables).
pub async fn prepare(t: &Target) -> Result<(), Error> {
    dbtool_shard::catalog::migrate(&t.to)
        .await
        .map_err(|e| Error::Target {
            target: t.shown(),
            reason: format!("cannot create dbtool's bookkeeping tables in schema dbtool: {e}"),
        })
}
