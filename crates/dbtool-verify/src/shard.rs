//! Sharded verify: the shards together hold exactly the source, and every row
//! is on the shard its key maps to.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbtool_verify::Error> {
//! use dbtool_migrate::shard::Sharding;
//! use dbtool_shard::{Scheme, ShardMap};
//! use dbtool_verify::shard::{verify_sharded, Target};
//!
//! let map = ShardMap::even_n(Scheme::Buckets, 2).unwrap();
//! let targets = vec![
//!     Target { name: "shard-0".into(), to: "postgres://app@pg0/forums".parse().unwrap() },
//!     Target { name: "shard-1".into(), to: "postgres://app@pg1/forums".parse().unwrap() },
//! ];
//! let template = dbtool_verify::Options::new("forums.db", "");
//! let report = verify_sharded(&template, &targets, &map, &Sharding::default()).await?;
//! report.write_summary(std::io::stdout()).ok();
//! std::process::exit(report.exit_code().into());
//! # }
//! ```
//!
//! Each shard is verified like a single target, against only the source rows
//! routed to it (the migrator's own [`ShardFilter`]), so a shard that equals
//! its share, for every shard, makes the union equal to the source. A row on
//! the wrong shard first shows up as `extra` there (and `missing` on its own
//! shard, if it was moved rather than copied); its key column is then read on
//! the shard it was found on and routed, and the pair becomes one difference
//! of kind `misplaced`, naming both shards.

use std::sync::Arc;
use std::time::Instant;

use dbtool_migrate::shard::{Rule, ShardFilter, Sharding};
use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::error::mask_url;
use crate::report::{DiffKind, Report, RowDiff};
use crate::{verify, Error, Options};

/// One shard to verify.
#[derive(Debug, Clone)]
pub struct Target {
    /// The shard's name in the map.
    pub name: String,
    /// Its server (a replica is fine: verify only reads).
    pub to: dbtool_pool::Target,
}

/// One shard's verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardVerify {
    /// The shard's name.
    pub shard: String,
    /// Its target, password masked.
    pub target: String,
    /// The comparison of the shard with the source rows routed to it
    /// (misplaced rows already folded in: see [`ShardedReport::misplaced`]).
    pub report: Report,
}

/// A row found on a shard its key does not map to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Misplaced {
    /// The source table.
    pub table: String,
    /// The row's primary key (target column names).
    pub pk: serde_json::Value,
    /// The row's shard key value, as found on the shard.
    pub key: Option<String>,
    /// The shard it was found on.
    pub found_on: String,
    /// The shard it belongs on.
    pub expected: String,
}

/// The result of a sharded verify.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardedReport {
    /// The shard map version checked against.
    pub map_version: u64,
    /// The routing scheme.
    pub scheme: String,
    /// Each shard, in order.
    pub shards: Vec<ShardVerify>,
    /// Every misplaced row found (also listed as a `misplaced` difference in
    /// the report of the shard it was found on).
    pub misplaced: Vec<Misplaced>,
    /// Total wall time in milliseconds.
    pub elapsed_ms: u64,
}

impl ShardedReport {
    /// Whether the shards together equal the source, each row where it belongs.
    pub fn is_equal(&self) -> bool {
        self.misplaced.is_empty() && self.shards.iter().all(|s| s.report.is_equal())
    }

    /// 0 equal, 1 differences (misplaced rows included).
    pub fn exit_code(&self) -> u8 {
        if self.is_equal() {
            0
        } else {
            1
        }
    }

    /// Each shard's summary, then the misplaced rows and the verdict.
    pub fn write_summary(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        for s in &self.shards {
            writeln!(w, "== {} ({}) ==", s.shard, s.target)?;
            s.report.write_summary(&mut w)?;
        }
        if !self.misplaced.is_empty() {
            writeln!(w, "misplaced rows:")?;
            for m in self.misplaced.iter().take(50) {
                writeln!(
                    w,
                    "  {} pk={} key={} found on {}, belongs on {}",
                    m.table,
                    m.pk,
                    m.key.as_deref().unwrap_or("-"),
                    m.found_on,
                    m.expected
                )?;
            }
            if self.misplaced.len() > 50 {
                writeln!(
                    w,
                    "  ... and {} more (see --report FILE)",
                    self.misplaced.len() - 50
                )?;
            }
        }
        writeln!(
            w,
            "{} shards: {} (map version {}, {:.2}s)",
            self.shards.len(),
            if self.is_equal() {
                "EQUAL"
            } else {
                "DIFFERENT"
            },
            self.map_version,
            self.elapsed_ms as f64 / 1000.0
        )
    }
}

/// Verifies every shard against its share of `template.source` (the
/// template's `target`, `target_config` and `shard` are replaced per shard),
/// then folds rows on the wrong shard into `misplaced` differences.
///
/// # Errors
/// Any shard that cannot be compared (exit code 2), named.
pub async fn verify_sharded(
    template: &Options,
    targets: &[Target],
    map: &dbtool_shard::ShardMap,
    sharding: &Sharding,
) -> Result<ShardedReport, Error> {
    let started = Instant::now();
    if targets.is_empty() {
        return Err(Error::Usage(
            "no shards to verify: list them in [[shard.shards]]".into(),
        ));
    }
    let map = Arc::new(map.clone());
    let mut shards = Vec::with_capacity(targets.len());
    let mut filters = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let filter = ShardFilter::new(map.clone(), sharding.clone(), &t.name, i == 0)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let filter = Arc::new(filter);
        let mut opts = template.clone();
        opts.target = shown(&t.to);
        opts.target_config = Some(t.to.clone());
        opts.shard = Some(filter.clone());
        let report = verify(&opts).await?;
        shards.push(ShardVerify {
            shard: t.name.clone(),
            target: opts.target,
            report,
        });
        filters.push(filter);
    }

    // Rows extra on a shard: read their key there and route it.
    let mut misplaced = Vec::new();
    for (x, t) in targets.iter().enumerate() {
        let extras: Vec<RowDiff> = shards[x]
            .report
            .diffs
            .iter()
            .filter(|d| d.kind == DiffKind::Extra && d.pk.is_object())
            .cloned()
            .collect();
        if extras.is_empty() {
            continue;
        }
        let client = connect(&t.to).await?;
        let plan = run_plan(&client, shards[x].report.run.as_deref()).await?;
        for d in extras {
            let Some(found) = locate(&client, &shards[x].report, &plan, &filters[x], &d).await?
            else {
                continue;
            };
            let (key, expected) = found;
            if expected == t.name {
                continue;
            }
            misplaced.push(Misplaced {
                table: d.table.clone(),
                pk: d.pk.clone(),
                key,
                found_on: t.name.clone(),
                expected,
            });
        }
    }
    for m in &misplaced {
        fold(&mut shards, m);
    }
    Ok(ShardedReport {
        map_version: map.version(),
        scheme: map.scheme().to_string(),
        shards,
        misplaced,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Turns the `extra` on the shard a row was found on into `misplaced`, and
/// drops the matching `missing` on the shard it belongs on.
fn fold(shards: &mut [ShardVerify], m: &Misplaced) {
    let same = |d: &RowDiff| d.table == m.table && d.pk == m.pk;
    if let Some(s) = shards.iter_mut().find(|s| s.shard == m.found_on) {
        if let Some(d) = s
            .report
            .diffs
            .iter_mut()
            .find(|d| d.kind == DiffKind::Extra && same(d))
        {
            d.kind = DiffKind::Misplaced;
            d.reason = Some(format!(
                "found on {}, belongs on {}{}",
                m.found_on,
                m.expected,
                m.key
                    .as_deref()
                    .map(|k| format!(" (key {k})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(t) = s.report.tables.iter_mut().find(|t| t.table == m.table) {
            t.extra = t.extra.saturating_sub(1);
            t.misplaced += 1;
        }
    }
    if let Some(s) = shards.iter_mut().find(|s| s.shard == m.expected) {
        if let Some(i) = s
            .report
            .diffs
            .iter()
            .position(|d| d.kind == DiffKind::Missing && same(d))
        {
            s.report.diffs.remove(i);
            if let Some(t) = s.report.tables.iter_mut().find(|t| t.table == m.table) {
                t.missing = t.missing.saturating_sub(1);
            }
        }
    }
}

/// The run's plan as loose JSON (source -> target names), if recorded.
async fn run_plan(
    client: &tokio_postgres::Client,
    run: Option<&str>,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(id) = run.and_then(|r| r.parse::<i64>().ok()) else {
        return Ok(None);
    };
    dbtool_catalog::runs::plan(client, id)
        .await
        .map_err(Error::catalog("reading the migration run's plan"))
}

/// The shard a row found on a shard belongs on, with its key value; `None`
/// when its table goes to every shard or the row cannot be found again.
async fn locate(
    client: &tokio_postgres::Client,
    report: &Report,
    plan: &Option<serde_json::Value>,
    filter: &ShardFilter,
    d: &RowDiff,
) -> Result<Option<(Option<String>, String)>, Error> {
    let Some(table) = report.tables.iter().find(|t| t.table == d.table) else {
        return Ok(None);
    };
    // Source column names, and the target name of each.
    let columns: Vec<(String, String)> = plan
        .as_ref()
        .and_then(|p| p.get("tables")?.as_array())
        .and_then(|ts| {
            ts.iter()
                .find(|t| t.get("source_name").and_then(|n| n.as_str()) == Some(&d.table))
        })
        .and_then(|t| t.get("columns")?.as_array())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| {
                    Some((
                        c.get("source_name")?.as_str()?.to_owned(),
                        c.get("target_name")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = columns.iter().map(|(s, _)| s.as_str()).collect();
    let rule = filter
        .rule(&d.table, &names)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let key_target = match &rule {
        Rule::Every => return Ok(None),
        Rule::Home(h) => return Ok(Some((None, h.clone()))),
        Rule::Key(i, _) => columns[*i].1.clone(),
    };
    let Some(pk) = d.pk.as_object() else {
        return Ok(None);
    };
    let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let mut conds = Vec::new();
    let mut params: Vec<String> = Vec::new();
    for (col, v) in pk {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => return Ok(None),
            v => v.to_string(),
        };
        params.push(v);
        conds.push(format!("{}::text = ${}", q(col), params.len()));
    }
    let sql = format!(
        "SELECT {}::text FROM {}.{} WHERE {} LIMIT 1",
        q(&key_target),
        q(&report.schema),
        q(&table.target),
        conds.join(" AND ")
    );
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let row = client
        .query_opt(&sql, &refs)
        .await
        .map_err(Error::target(format!(
            "reading the shard key of an extra row of {}",
            d.table
        )))?;
    let Some(row) = row else { return Ok(None) };
    let key: Option<String> = row.get(0);
    let value = match &key {
        Some(k) => ValueRef::Text(k.as_bytes()),
        None => ValueRef::Null,
    };
    Ok(match filter.shard_of(&rule, value) {
        Ok(Some(s)) => Some((key.clone(), s.to_owned())),
        // A key that cannot be routed has no shard to be on.
        Ok(None) | Err(_) => None,
    })
}

/// Through [`dbtool_pool::Target::connect`], like every connection of
/// dbtool: the shard's `sslmode`/`sslrootcert` hold and the whole attempt is
/// bounded by `connect_timeout`.
async fn connect(to: &dbtool_pool::Target) -> Result<tokio_postgres::Client, Error> {
    let client = to.connect().await.map_err(|e| match e {
        dbtool_pool::ConnectError::Postgres { source, .. } => Error::Connect {
            url: shown(to),
            source,
        },
dbtool_pool::ConnectError::Io { source, .. } => Error::Unreachable {
            url: shown(to),
            reason: format!("{source} (is the server up and the URL right?)"),
        },
        dbtool_pool::ConnectError::Timeout { after, .. } => Error::Unreachable {
            url: shown(to),
            reason: format!(
                "no answer within {}s (connect_timeout); is the server up and is this its address and port?",
                after.as_secs()
            ),
        },
other => Error::Usage(other.to_string()),
    })?;
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .map_err(Error::target("opening a read-only session"))?;
    Ok(client)
}

/// `postgres://user@host:port/db`, never with the password.
fn shown(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    mask_url(&format!(
        "postgres://{user}{host}:{port}/{}",
        c.get_dbname().unwrap_or("")
    ))
}
