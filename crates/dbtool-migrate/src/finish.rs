//! After the data: keys, indexes, identity sequences, CHECKs, foreign keys,
//! views, ANALYZE.
//!
//! Every statement runs on its own; one that Postgres refuses (a view using
//! a SQLite-only function, a unique constraint the widened values break) is
//! recorded in the [`FinishReport`] and the rest go on, so one odd object
//! never costs the whole migration. The exception is a foreign key with
//! orphans under [`FkPolicy::Fail`].
//!
//! Tables are independent, so their keys and indexes are built on several
//! connections at once when [`FinishOptions::target`] is given.
//!
//! The phase is idempotent: a run killed in the middle of it runs it again
//! from the start, and every step first looks in the catalog for the object
//! it would create (constraint, index, identity, view by name); one that is
//! there is not created again, and the step reports what a first run would
//! have. Each statement is one transaction, so an object is either wholly
//! there or not at all. Setting the sequences, validating foreign keys and
//! ANALYZE are idempotent by nature.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::ddl;
use crate::ident;
use crate::plan::{FkPolicy, Plan, TablePlan};
use crate::Error;

/// How to run the finish phase.
#[derive(Debug, Clone, Default)]
pub struct FinishOptions {
    /// The target, to open extra connections for parallel index builds.
    /// `None`: everything runs on the given client.
    pub target: Option<dbtool_pool::Target>,
    /// Connections to use in parallel (including the given client); 0 or 1: one.
    pub jobs: usize,
}

/// The outcome of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Postgres refused it; see `error`.
    Failed,
    /// Not attempted; see `error` for why.
    Skipped,
    /// A foreign key created NOT VALID (orphans or failed validation).
    NotValid,
}

/// One step of the finish phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// `primary_key`, `unique`, `index`, `identity`, `check`, `foreign_key`, `view`, `analyze`.
    pub kind: String,
    /// The SQLite table (or view) it belongs to.
    pub table: String,
    /// The Postgres object name.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// Postgres's error or the reason it was skipped.
    pub error: Option<String>,
    /// Seconds taken.
    pub seconds: f64,
}

/// What the finish phase did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinishReport {
    /// Every step, in order of completion.
    pub steps: Vec<Step>,
}

impl FinishReport {
    /// Steps that did not fully succeed.
    pub fn problems(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.outcome != Outcome::Ok)
    }
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(": ");
                s.push_str(d);
            }
            s
        }
        None => e.to_string(),
    }
}

/// An object a finish step creates, to look for before creating it.
enum Object<'a> {
    /// A constraint `name` on table `table` (both Postgres names).
    Constraint { table: &'a str, name: &'a str },
    /// An index or view `name` in the schema.
    Relation { name: &'a str },
    /// Column `column` of table `table` is an identity column.
    Identity { table: &'a str, column: &'a str },
}

/// Whether `object` already exists in `schema` (made by an earlier, interrupted
/// attempt of this finish phase).
async fn exists(client: &Client, schema: &str, object: &Object<'_>) -> Result<bool, Error> {
    let q = |name: &str| ident::qualified(schema, name);
    let row = match object {
        Object::Constraint { table, name } => {
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2)",
                    &[&q(table), name],
                )
                .await?
        }
        Object::Relation { name } => {
            client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q(name)])
                .await?
        }
        Object::Identity { table, column } => {
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND attidentity <> '')",
                    &[&q(table), column],
                )
                .await?
        }
    };
    Ok(row.get(0))
}

/// [`run_step`], unless `object` exists already: then a step that succeeded.
#[allow(clippy::too_many_arguments)]
async fn create_step(
    client: &Client,
    schema: &str,
    object: Object<'_>,
    kind: &str,
    table: &str,
    name: &str,
    sql: &str,
) -> Result<Step, Error> {
    let t0 = Instant::now();
    if exists(client, schema, &object).await? {
        return Ok(Step {
            kind: kind.into(),
            table: table.into(),
            name: name.into(),
            outcome: Outcome::Ok,
            error: None,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    run_step(client, kind, table, name, sql).await
}

async fn run_step(
    client: &Client,
    kind: &str,
    table: &str,
    name: &str,
    sql: &str,
) -> Result<Step, Error> {
    let t0 = Instant::now();
    let r = client.batch_execute(sql).await;
    let (outcome, error) = match r {
        Ok(()) => (Outcome::Ok, None),
        Err(e) if client.is_closed() => return Err(Error::Postgres(e)),
        Err(e) => (Outcome::Failed, Some(err_text(&e))),
    };
    Ok(Step {
        kind: kind.into(),
        table: table.into(),
        name: name.into(),
        outcome,
        error,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Keys, indexes and the identity column of one table, then its sequence.
async fn table_keys(client: &Client, schema: &str, t: &TablePlan) -> Result<Vec<Step>, Error> {
    let mut steps = Vec::new();
    for ix in &t.indexes {
        match &ix.sql {
            Some(sql) => {
                // Primary keys and unique constraints are constraints; plain
                // indexes are relations of their own.
                let object = if ix.kind == "index" {
                    Object::Relation {
                        name: &ix.target_name,
                    }
                } else {
                    Object::Constraint {
                        table: &t.target_name,
                        name: &ix.target_name,
                    }
                };
                let mut s = create_step(
                    client,
                    schema,
                    object,
                    &ix.kind,
                    &t.source_name,
                    &ix.target_name,
                    sql,
                )
                .await?;
                if s.error.is_none() {
                    s.error = ix.note.clone();
                }
                steps.push(s);
            }
            None => steps.push(Step {
                kind: ix.kind.clone(),
                table: t.source_name.clone(),
                name: ix.target_name.clone(),
                outcome: Outcome::Skipped,
                error: ix.note.clone(),
                seconds: 0.0,
            }),
        }
    }
    if let Some((col, seq)) = t.identity {
        let c = &t.columns[col];
        let mut s = create_step(
            client,
            schema,
            Object::Identity {
                table: &t.target_name,
                column: &c.target_name,
            },
            "identity",
            &t.source_name,
            &c.target_name,
            &ddl::identity_sql(schema, t, col),
        )
        .await?;
        if s.outcome == Outcome::Ok {
            // Past both the largest id and SQLite's AUTOINCREMENT high-water
            // mark, so ids are never reused (AUTOINCREMENT's promise).
            let qt = ident::qualified(schema, &t.target_name);
            let qc = ident::quote(&c.target_name);
            let floor = seq.unwrap_or(0);
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence({}, {}), GREATEST(COALESCE((SELECT max({qc}) FROM {qt}), 0), {floor}) + 1, false)",
                ident::literal(&qt),
                ident::literal(&c.target_name),
            );
            let s2 = run_step(client, "sequence", &t.source_name, &c.target_name, &sql).await?;
            if s2.outcome != Outcome::Ok {
                s = s2;
            }
        }
        steps.push(s);
    }
    Ok(steps)
}

/// Runs the finish phase for `plan` on the target `client`, on that one
/// connection.
pub async fn finish(client: &Client, plan: &Plan) -> Result<FinishReport, Error> {
    finish_with(client, plan, &FinishOptions::default()).await
}

/// Runs the finish phase, building indexes on up to `opts.jobs` connections.
pub async fn finish_with(
    client: &Client,
    plan: &Plan,
    opts: &FinishOptions,
) -> Result<FinishReport, Error> {
    let mut report = FinishReport::default();
    let schema = plan.schema.as_str();
    // 1. Keys, indexes, identities: tables in parallel, biggest first.
    let mut order: Vec<usize> = (0..plan.tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plan.tables[i].rows));
    let jobs = opts.jobs.max(1).min(order.len().max(1));
    let mut extra = Vec::new();
    if jobs > 1 {
        if let Some(target) = &opts.target {
            for _ in 1..jobs {
                match target.connect().await {
                    Ok(c) => extra.push(c),
                    Err(_) => break,
                }
            }
        }
    }
    let queue = Arc::new(Mutex::new(order.into_iter()));
    {
        let clients: Vec<&Client> = std::iter::once(client).chain(extra.iter()).collect();
        let work = clients.into_iter().map(|c| {
            let queue = Arc::clone(&queue);
            async move {
                let mut steps = Vec::new();
                loop {
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some(i) = next else { break };
                    steps.extend(table_keys(c, schema, &plan.tables[i]).await?);
                }
                Ok::<_, Error>(steps)
            }
        });
        for r in futures::future::join_all(work).await {
            report.steps.extend(r?);
        }
    }
    // 2. CHECK constraints.
    for t in &plan.tables {
        for ch in &t.checks {
            let object = Object::Constraint {
                table: &t.target_name,
                name: &ch.target_name,
            };
            report.steps.push(
                create_step(
                    client,
                    schema,
                    object,
                    "check",
                    &t.source_name,
                    &ch.target_name,
                    &ch.sql,
                )
                .await?,
            );
        }
    }
    // 3. Foreign keys: NOT VALID first (instant), then validated when the
    //    source had no orphans; a failed validation leaves it NOT VALID.
    for t in &plan.tables {
        for fk in &t.foreign_keys {
            let mut step = Step {
                kind: "foreign_key".into(),
                table: t.source_name.clone(),
                name: fk.target_name.clone(),
                outcome: Outcome::Skipped,
                error: None,
                seconds: 0.0,
            };
            let Some(sql) = &fk.sql else {
                step.error = fk.problem.clone();
                report.steps.push(step);
                continue;
            };
            if fk.orphans > 0 {
                match plan.fk_policy {
                    FkPolicy::Fail => {
                        return Err(Error::Other(format!(
                            "foreign key {} of table {} has {} orphan rows in the source (rowids {:?}); fix them, or set [migrate] foreign_keys = \"not_valid\" or \"skip\"",
                            fk.target_name, t.source_name, fk.orphans, fk.orphan_rowids
                        )))
                    }
                    FkPolicy::Skip => {
                        step.error = Some(format!(
                            "{} orphan rows in the source (rowids {:?}); not created (policy skip)",
                            fk.orphans, fk.orphan_rowids
                        ));
                        report.steps.push(step);
                        continue;
                    }
                    FkPolicy::NotValid => {}
                }
            }
            let object = Object::Constraint {
                table: &t.target_name,
                name: &fk.target_name,
            };
            let mut s = create_step(
                client,
                schema,
                object,
                "foreign_key",
                &t.source_name,
                &fk.target_name,
                sql,
            )
            .await?;
            if s.outcome == Outcome::Ok {
                if fk.orphans > 0 {
                    s.outcome = Outcome::NotValid;
                    s.error = Some(format!(
                        "{} orphan rows in the source (rowids {:?}); created NOT VALID: new rows are checked, old ones are not",
                        fk.orphans, fk.orphan_rowids
                    ));
                } else {
                    let v = format!(
                        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                        ident::qualified(schema, &t.target_name),
                        ident::quote(&fk.target_name)
                    );
                    let vs = run_step(client, "foreign_key", &t.source_name, &fk.target_name, &v)
                        .await?;
                    if vs.outcome != Outcome::Ok {
                        s.outcome = Outcome::NotValid;
                        s.error = vs.error.map(|e| format!("left NOT VALID: {e}"));
                    }
                }
            } else if let Some(p) = &fk.problem {
                s.error = Some(format!("{}; {p}", s.error.unwrap_or_default()));
            }
            report.steps.push(s);
        }
    }
    // 4. Views, in passes so a view over another view finds it.
    let mut pending: Vec<&crate::plan::ViewPlan> = plan.views.iter().collect();
    let mut last_errors: Vec<(String, String)> = Vec::new();
    for _pass in 0..4 {
        let mut next = Vec::new();
        last_errors.clear();
        for v in pending {
            let Some(sql) = &v.sql else {
                report.steps.push(Step {
                    kind: "view".into(),
                    table: v.source_name.clone(),
                    name: v.target_name.clone(),
                    outcome: Outcome::Skipped,
                    error: Some("cannot parse the view definition".into()),
                    seconds: 0.0,
                });
                continue;
            };
            let object = Object::Relation {
                name: &v.target_name,
            };
            let s = create_step(
                client,
                schema,
                object,
                "view",
                &v.source_name,
                &v.target_name,
                sql,
            )
            .await?;
            if s.outcome == Outcome::Ok {
                report.steps.push(s);
            } else {
                last_errors.push((v.source_name.clone(), s.error.unwrap_or_default()));
                next.push(v);
            }
        }
        if next.is_empty() {
            pending = next;
            break;
        }
        let progressed = next.len() < plan.views.len();
        pending = next;
        if !progressed && _pass > 0 {
            break;
        }
    }
    for v in pending {
        let e = last_errors
            .iter()
            .find(|(n, _)| n == &v.source_name)
            .map(|(_, e)| e.clone());
        report.steps.push(Step {
            kind: "view".into(),
            table: v.source_name.clone(),
            name: v.target_name.clone(),
            outcome: Outcome::Failed,
            error: e.map(|e| format!("not translated: {e}; recreate it by hand")),
            seconds: 0.0,
        });
    }
    // 5. Statistics for the planner.
    for t in &plan.tables {
        let sql = format!("ANALYZE {}", ident::qualified(schema, &t.target_name));
        let s = run_step(client, "analyze", &t.source_name, &t.target_name, &sql).await?;
        if s.outcome != Outcome::Ok {
            report.steps.push(s);
        }
    }
    Ok(report)
}
