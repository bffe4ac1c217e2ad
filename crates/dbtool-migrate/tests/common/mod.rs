//! Shared helpers for the migrate integration tests: run a migration into a
//! fresh database, and check it with an independent reader of both sides.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use dbtool_migrate::plan::{Plan, Policy, ReadKey};
use dbtool_migrate::report::Report;
use dbtool_migrate::run::{self, Options};
use dbtool_migrate::value::Value;
use rusqlite::types::ValueRef;

/// The corpus directory: `DBTOOL_CORPUS`, else `<workspace>/../shared/corpus`.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("DBTOOL_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    dir.is_dir().then_some(dir)
}

/// The result of a migration in a test.
pub struct Migrated {
    /// What `run::migrate` returned.
    pub outcome: Report,
    /// The reject records (parsed JSON lines), empty when there is no file.
    pub rejects: Vec<serde_json::Value>,
}

/// Migrates `path` into the database at `url`, schema `schema`, with
/// `config`; the reject file goes to `dir`.
pub async fn migrate(
    path: &Path,
    url: &str,
    schema: &str,
    config: &dbtool_migrate::Config,
    dir: &Path,
) -> Result<Migrated, dbtool_migrate::Error> {
    let to = url.parse().expect("test url parses");
    let mut opts = Options::new(path, to);
    opts.schema = schema.to_string();
    let rejects_path = dir.join("rejects.jsonl");
    let _ = std::fs::remove_file(&rejects_path);
    opts.rejects = Some(rejects_path.clone());
    opts.jobs = Some(2);
    let outcome = run::migrate(opts, config, &run::Quiet).await?;
    let mut rejects = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&rejects_path) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            rejects.push(serde_json::from_str(line).expect("reject line is JSON"));
        }
    }
    Ok(Migrated { outcome, rejects })
}

fn quote_sqlite(n: &str) -> String {
    format!("\"{}\"", n.replace('"', "\"\""))
}

fn quote_pg(n: &str) -> String {
    format!("\"{}\"", n.replace('"', "\"\""))
}

/// Checks, table by table, that every source row is in the target with
/// values equal to its cast (as multisets of canonical encodings), or in
/// the reject records; and that the exit code matches. Reads both sides
/// itself: the source with its own SQL through rusqlite, the target with
/// plain SELECTs.
pub async fn check_against_source(
    path: &Path,
    client: &tokio_postgres::Client,
    plan: &Plan,
    migrated: &Migrated,
) -> anyhow::Result<()> {
    let conn = dbtool_migrate::source::open(path)?;
    for t in &plan.tables {
        // Reject records of this table.
        let mut rejected_rowids: BTreeSet<i64> = BTreeSet::new();
        let mut rejected_count = 0u64;
        let mut nulled: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        let mut nulled_count = 0u64;
        for r in &migrated.rejects {
            if r["table"].as_str() != Some(t.source_name.as_str()) {
                continue;
            }
            let action = r["action"].as_str().unwrap_or("");
            let rowid = r["rowid"].as_i64();
            if action == "nulled" {
                nulled_count += 1;
                if let Some(id) = rowid {
                    nulled
                        .entry(id)
                        .or_default()
                        .insert(r["column"].as_str().unwrap_or("").to_string());
                }
            } else {
                rejected_count += 1;
                if let Some(id) = rowid {
                    rejected_rowids.insert(id);
                }
            }
        }
        // Source side.
        let by_rowid = t.key == ReadKey::Rowid;
        let rid = t.rowid_expr().unwrap_or("rowid");
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| quote_sqlite(&c.source_name))
            .collect();
        let sql = format!(
            "SELECT {}{}{} FROM {}",
            if by_rowid { rid } else { "" },
            if by_rowid && !cols.is_empty() {
                ", "
            } else {
                ""
            },
            if cols.is_empty() && !by_rowid {
                "1".to_string()
            } else {
                cols.join(", ")
            },
            quote_sqlite(&t.source_name)
        );
        let mut stmt = conn
            .prepare(&sql)
            .with_context(|| format!("source query {sql}"))?;
        let off = usize::from(by_rowid);
        let mut rows = stmt.query([])?;
        let mut expected: Vec<Vec<u8>> = Vec::new();
        let mut expected_rejects = 0u64;
        let mut expected_nulls = 0u64;
        while let Some(row) = rows.next()? {
            let rowid = if by_rowid {
                row.get::<_, Option<i64>>(0)?
            } else {
                None
            };
            let mut enc = Vec::new();
            let mut rejected = false;
            for (j, c) in t.columns.iter().enumerate() {
                let v: ValueRef<'_> = row.get_ref(off + j)?;
                match c.cast(v) {
                    Ok(val) => val.canonical(&mut enc),
                    Err(e) => match c.policy {
                        Policy::Null => {
                            expected_nulls += 1;
                            if let Some(id) = rowid {
                                if !nulled.get(&id).is_some_and(|s| s.contains(&c.source_name)) {
                                    bail!(
                                        "table {} rowid {id} column {}: value nulled ({}) but not in the reject records",
                                        t.source_name, c.source_name, e.reason
                                    );
                                }
                            }
                            Value::Null.canonical(&mut enc);
                        }
                        _ => {
                            rejected = true;
                            if let Some(id) = rowid {
                                if !rejected_rowids.contains(&id) {
                                    bail!(
                                        "table {} rowid {id} column {}: does not cast ({}) but is not in the reject records",
                                        t.source_name, c.source_name, e.reason
                                    );
                                }
                            }
                            break;
                        }
                    },
                }
            }
            if rejected {
                expected_rejects += 1;
            } else {
                expected.push(enc);
            }
        }
        if expected_rejects != rejected_count {
            bail!(
                "table {}: {expected_rejects} rows do not cast but the reject records list {rejected_count}",
                t.source_name
            );
        }
        if expected_nulls != nulled_count {
            bail!(
                "table {}: {expected_nulls} values do not cast under policy null but {nulled_count} are recorded",
                t.source_name
            );
        }
        // Target side.
        let tcols: Vec<String> = t.columns.iter().map(|c| quote_pg(&c.target_name)).collect();
        let tsql = format!(
            "SELECT {} FROM {}.{}",
            if tcols.is_empty() {
                "1".to_string()
            } else {
                tcols.join(", ")
            },
            quote_pg(&plan.schema),
            quote_pg(&t.target_name)
        );
        let trows = client
            .query(tsql.as_str(), &[])
            .await
            .with_context(|| format!("target query {tsql}"))?;
        let mut actual: Vec<Vec<u8>> = Vec::with_capacity(trows.len());
        for r in &trows {
            let mut enc = Vec::new();
            for j in 0..t.columns.len() {
                let v: Value = r.try_get(j).with_context(|| {
                    format!("reading {}.{}", t.target_name, t.columns[j].target_name)
                })?;
                v.canonical(&mut enc);
            }
            actual.push(enc);
        }
        expected.sort();
        actual.sort();
        if expected != actual {
            let missing = expected
                .iter()
                .filter(|e| actual.binary_search(e).is_err())
                .count();
            let extra = actual
                .iter()
                .filter(|a| expected.binary_search(a).is_err())
                .count();
            bail!(
                "table {}: target differs from the source: {} expected rows, {} target rows, {missing} expected rows missing, {extra} unexpected rows",
                t.source_name,
                expected.len(),
                actual.len()
            );
        }
    }
    let any_rejects = !migrated.rejects.is_empty();
    let want = if any_rejects { 3 } else { 0 };
    if migrated.outcome.exit_code != want {
        bail!(
            "exit code {} but expected {want} ({} reject records)",
            migrated.outcome.exit_code,
            migrated.rejects.len()
        );
    }
    Ok(())
}

/// Creates a SQLite file at `dir/name` by running `sql`.
pub fn sqlite_file(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    let c = rusqlite::Connection::open(&p).expect("create sqlite file");
    c.execute_batch(sql).expect("build sqlite file");
    drop(c);
    p
}
