//! Comparing chosen rows by key: the incremental check.
//!
//! A full verify streams whole tables. A caller that knows which rows
//! changed (the cutover knows every key written since the sync started)
//! compares only those: each key is looked up on both sides and the rows are
//! hashed exactly as a full verify hashes them (the migrator's casts and the
//! canonical encoding on the source, the binary wire bytes on the target), so
//! a row the incremental check passes is a row verify passes.
//!
//! ```no_run
//! # async fn demo(plan: &dbtool_migrate::plan::TablePlan, file: &rusqlite::Connection,
//! #               target: &tokio_postgres::Client) -> Result<(), dbtool_verify::Error> {
//! use rusqlite::types::Value;
//! use dbtool_verify::keys::KeyCheck;
//!
//! let check = KeyCheck::new(plan, "public")?;
//! let source = check.source(file, &[vec![Value::Integer(7)], vec![Value::Integer(9)]])?;
//! let target = check.target(target, &source).await?;
//! for d in check.compare(&source, &target) {
//!     println!("{} {} {:?}", d.diff.table, d.diff.pk, d.diff.kind);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use dbtool_migrate::plan::TablePlan;
use dbtool_migrate::value::Value;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;
use tokio_postgres::Client;

use crate::report::{DiffKind, RowDiff};
use crate::spec::{Key, TableSpec};
use crate::sqlite::Filter;
use crate::{pg, planned, sqlite, Error};

/// Compares the rows of one table with given primary keys on both sides.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    spec: Arc<TableSpec>,
    schema: String,
}

/// One key asked for: its target-typed values and, when the source holds
/// it, the row's hash.
#[derive(Debug, Clone)]
struct Probe {
    index: usize,
    key: Vec<Value>,
    row: Option<(u64, Option<String>)>,
}

/// The source side of a check: the keys asked for and the rows found.
#[derive(Debug, Clone, Default)]
pub struct SourceRows {
    /// By the canonical encoding of the key.
    probes: HashMap<Vec<u8>, Probe>,
    /// Keys whose value does not cast to the key's planned type: the
    /// migration cannot have written such a row, so it is not looked up.
    uncastable: Vec<usize>,
}

impl SourceRows {
    /// How many keys will be compared (asked for, minus the uncastable).
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Whether no key will be compared.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// The keys (indexes into the list given to [`KeyCheck::source`]) whose
    /// values do not cast to the key's planned type; they are not compared.
    pub fn uncastable(&self) -> &[usize] {
        &self.uncastable
    }
}

/// The target side of a check: row hashes by key. With several targets
/// (shards), read each and [`merge`](TargetRows::merge) them.
#[derive(Debug, Clone, Default)]
pub struct TargetRows {
    rows: HashMap<Vec<u8>, u64>,
    /// Keys found on more than one target.
    duplicated: Vec<Vec<u8>>,
}

impl TargetRows {
    /// Adds the rows read from another target: for rows that live on one
    /// target each (shards), a key found on two is an `extra` copy. Compare
    /// targets that each hold every row one by one instead.
    pub fn merge(&mut self, other: TargetRows) {
        for (k, h) in other.rows {
            if self.rows.insert(k.clone(), h).is_some() {
                self.duplicated.push(k);
            }
        }
        self.duplicated.extend(other.duplicated);
    }

    /// How many rows were found.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was found.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A key whose rows differ.
#[derive(Debug, Clone)]
pub struct KeyDiff {
    /// The key's index in the list given to [`KeyCheck::source`].
    pub index: usize,
    /// The difference, as `verify` reports it (`missing`: in the file and
    /// not the target; `extra`: in the target and not the file; `changed`;
    /// `rejected`: in the file, absent from the target, and a value of the
    /// row does not cast, so the migration could not have written it).
    pub diff: RowDiff,
}

impl KeyCheck {
    /// A check of the table `plan` describes, in the target schema `schema`.
    /// Fails for a table without a primary key that identifies its rows.
    pub fn new(plan: &TablePlan, schema: &str) -> Result<KeyCheck, Error> {
        let spec = planned::spec(plan);
        if matches!(spec.key, Key::None) {
            return Err(Error::Usage(format!(
                "table {} has no primary key that identifies its rows; compare it with a full verify",
                plan.source_name
            )));
        }
        Ok(KeyCheck {
            spec: Arc::new(spec),
            schema: schema.to_owned(),
        })
    }

    /// The source table's name.
    pub fn table(&self) -> &str {
        &self.spec.source
    }

    /// Looks up `keys` in the source (each the key columns' values as SQLite
    /// holds them, in key order: what `_dbtool_touched` and the change log
    /// hold) and hashes the rows found.
    pub fn source(&self, conn: &Connection, keys: &[Vec<SqlValue>]) -> Result<SourceRows, Error> {
        let spec = &self.spec;
        let key_cols = spec.key_columns();
        let mut out = SourceRows::default();
        let mut order: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
        let mut wanted: Vec<Vec<SqlValue>> = Vec::with_capacity(keys.len());
        'keys: for (index, key) in keys.iter().enumerate() {
            if key.len() != key_cols.len() {
                return Err(Error::Usage(format!(
                    "a key of table {} has {} values; its primary key has {} columns",
                    spec.source,
                    key.len(),
                    key_cols.len()
                )));
            }
            let mut bytes = Vec::new();
            let mut values = Vec::with_capacity(key.len());
            for (v, &i) in key.iter().zip(&key_cols) {
                match (spec.cast)(i, ValueRef::from(v)) {
                    Ok(Value::Null) | Err(_) => {
                        out.uncastable.push(index);
                        continue 'keys;
                    }
                    Ok(v) => {
                        v.canonical(&mut bytes);
                        values.push(v);
                    }
                }
            }
            if out.probes.contains_key(&bytes) {
                continue; // asked twice
            }
            out.probes.insert(
                bytes.clone(),
                Probe {
                    index,
                    key: values,
                    row: None,
                },
            );
            order.push(bytes);
            wanted.push(key.clone());
        }
        let probes = &mut out.probes;
        sqlite::lookup(conn, spec, &wanted, &mut |n, r| {
            if let Some(p) = probes.get_mut(&order[n]) {
                p.row = Some((r.hash, r.cast_error.map(str::to_owned)));
            }
        })?;
        Ok(out)
    }

    /// Reads the rows of the keys `source` asked for from one target and
    /// hashes them.
    pub async fn target(&self, client: &Client, source: &SourceRows) -> Result<TargetRows, Error> {
        let mut out = TargetRows::default();
        if source.probes.is_empty() {
            return Ok(out);
        }
        let filter = match self.spec.key {
            Key::Rowid(_) => Filter::Keys(
                source
                    .probes
                    .values()
                    .filter_map(|p| match p.key.first() {
                        Some(Value::Int(i)) => Some(*i),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => Filter::Tuples(source.probes.values().map(|p| p.key.clone()).collect()),
        };
        let rowid_key = matches!(self.spec.key, Key::Rowid(_));
        let mut dups = Vec::new();
        pg::scan(client, &self.schema, &self.spec, &filter, &mut |r| {
            let key = if rowid_key {
                match r.ikey {
                    Some(k) => {
                        let mut b = Vec::with_capacity(9);
                        Value::Int(k).canonical(&mut b);
                        b
                    }
                    None => return,
                }
            } else {
                r.key_bytes.to_vec()
            };
            if out.rows.insert(key.clone(), r.hash).is_some() {
                dups.push(key);
            }
        })
        .await?;
        out.duplicated = dups;
        Ok(out)
    }

    /// The keys whose rows differ between `source` and `target`, in the
    /// order they were asked for.
    pub fn compare(&self, source: &SourceRows, target: &TargetRows) -> Vec<KeyDiff> {
        let mut out = Vec::new();
        for (bytes, p) in &source.probes {
            let kind = match (&p.row, target.rows.get(bytes)) {
                (Some((s, _)), Some(t)) if s == t => {
                    if target.duplicated.contains(bytes) {
                        DiffKind::Extra
                    } else {
                        continue;
                    }
                }
                (Some(_), Some(_)) => DiffKind::Changed,
                (Some((_, Some(_))), None) => DiffKind::Rejected,
                (Some(_), None) => DiffKind::Missing,
                (None, Some(_)) => DiffKind::Extra,
                (None, None) => continue,
            };
            out.push(KeyDiff {
                index: p.index,
                diff: RowDiff {
                    table: self.spec.source.clone(),
                    pk: self.pk_json(&p.key),
                    rowid: match (&self.spec.key, p.key.first()) {
                        (Key::Rowid(_), Some(Value::Int(i))) => Some(*i),
                        _ => None,
                    },
                    kind,
                    columns: Vec::new(),
                    row: None,
                    reason: p.row.as_ref().and_then(|(_, e)| e.clone()),
                    copies: None,
                },
            });
        }
        out.sort_by_key(|d| d.index);
        out
    }

    fn pk_json(&self, key: &[Value]) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (v, i) in key.iter().zip(self.spec.key_columns()) {
            m.insert(
                self.spec.columns[i].target.clone(),
                crate::compare::json_of(v),
            );
        }
        serde_json::Value::Object(m)
    }
}
