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
use crate::plan::{FkPolicy, IndexKind, IndexPlan, Plan, TablePlan};
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

/// What a finish [`Step`] builds. Stored (in the run's report) as
/// `primary_key`, `unique`, `index`, `identity`, `sequence`, `check`,
/// `foreign_key`, `view`, `analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A primary key (or the UNIQUE constraint that replaces one over NULLs).
    PrimaryKey,
    /// A UNIQUE constraint.
    Unique,
    /// An index.
    Index,
    /// An identity column.
    Identity,
    /// An identity sequence moved past the rows.
    Sequence,
    /// A CHECK constraint.
    Check,
    /// A foreign key (created NOT VALID, then validated).
    ForeignKey,
    /// A view.
    View,
    /// ANALYZE of a table.
    Analyze,
}

impl StepKind {
    /// Its stored name (`foreign_key`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::PrimaryKey => "primary_key",
            StepKind::Unique => "unique",
            StepKind::Index => "index",
            StepKind::Identity => "identity",
            StepKind::Sequence => "sequence",
            StepKind::Check => "check",
            StepKind::ForeignKey => "foreign_key",
            StepKind::View => "view",
            StepKind::Analyze => "analyze",
        }
    }

    /// Words for reports (`foreign key`).
    pub fn label(self) -> &'static str {
        match self {
            StepKind::PrimaryKey => "primary key",
            StepKind::ForeignKey => "foreign key",
            other => other.as_str(),
        }
    }

    /// The step of building an index or key of `kind`.
    fn of_index(kind: IndexKind) -> StepKind {
        match kind {
            IndexKind::PrimaryKey => StepKind::PrimaryKey,
            IndexKind::Unique => StepKind::Unique,
            IndexKind::Index => StepKind::Index,
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of the finish phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// What it builds.
    pub kind: StepKind,
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
    kind: StepKind,
    table: &str,
    name: &str,
    sql: &str,
) -> Result<Step, Error> {
    let t0 = Instant::now();
    if exists(client, schema, &object).await? {
        return Ok(Step {
            kind,
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
    kind: StepKind,
    table: &str,
    name: &str,
    sql: &str,
) -> Result<Step, Error> {
    let t0 = Instant::now();
    // Steps built from the source's own SQL text (view bodies, CHECK, index and
    // default expressions) go through the extended protocol, which takes
    // exactly one statement: whatever the translation of a crafted expression
    // yields, it cannot smuggle a second statement in. The others are ours.
    let r = if matches!(kind, StepKind::View | StepKind::Check | StepKind::Index) {
        client.execute(sql, &[]).await.map(|_| ())
    } else {
        client.batch_execute(sql).await
    };
    let (outcome, error) = match r {
        Ok(()) => (Outcome::Ok, None),
        Err(e) if client.is_closed() => return Err(Error::Postgres(e)),
        Err(e) => (Outcome::Failed, Some(err_text(&e))),
    };
    Ok(Step {
        kind,
        table: table.into(),
        name: name.into(),
        outcome,
        error,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Whether `ix` is a plain index built on its own (after the table's keys,
/// in parallel with the table's other plain indexes: `CREATE INDEX` takes a
/// SHARE lock, which does not conflict with itself).
fn is_plain_index(ix: &IndexPlan) -> bool {
    ix.kind == IndexKind::Index && ix.sql.is_some()
}

/// Builds index `ix` of table `t`.
async fn build_index(
    client: &Client,
    schema: &str,
    t: &TablePlan,
    ix: &IndexPlan,
) -> Result<Step, Error> {
    let mut s = create_step(
        client,
        schema,
        Object::Relation {
            name: &ix.target_name,
        },
        StepKind::of_index(ix.kind),
        &t.source_name,
        &ix.target_name,
        ix.sql.as_deref().unwrap_or_default(),
    )
    .await?;
    if s.error.is_none() {
        s.error = ix.note.clone();
    }
    Ok(s)
}

/// The primary key and unique constraints of one table (each takes an
/// ACCESS EXCLUSIVE lock, so one at a time), its untranslatable indexes (as
/// skipped steps), and its identity column and sequence. Plain indexes are
/// built by [`build_index`].
async fn table_keys(client: &Client, schema: &str, t: &TablePlan) -> Result<Vec<Step>, Error> {
    let mut steps = Vec::new();
    for ix in t.indexes.iter().filter(|ix| !is_plain_index(ix)) {
        match &ix.sql {
            Some(sql) => {
                // Primary keys and unique constraints are constraints; plain
                // indexes are relations of their own.
                let object = if ix.kind == IndexKind::Index {
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
                    StepKind::of_index(ix.kind),
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
                kind: StepKind::of_index(ix.kind),
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
            StepKind::Identity,
            &t.source_name,
            &c.target_name,
            &ddl::identity_sql(schema, t, col),
        )
        .await?;
        if s.outcome == Outcome::Ok {
            let s2 = sequence_step(client, schema, t, col, seq).await?;
            if s2.outcome != Outcome::Ok {
                s = s2;
            }
        }
        steps.push(s);
    }
    Ok(steps)
}

/// Moves the identity sequence of `t` past both the largest id and SQLite's
/// AUTOINCREMENT high-water mark `seq`, so ids are never reused
/// (AUTOINCREMENT's promise).
async fn sequence_step(
    client: &Client,
    schema: &str,
    t: &TablePlan,
    col: usize,
    seq: Option<i64>,
) -> Result<Step, Error> {
    let c = &t.columns[col];
    let qt = ident::qualified(schema, &t.target_name);
    let qc = ident::quote(&c.target_name);
    let floor = seq.unwrap_or(0);
    let sql = format!(
        "SELECT setval(pg_get_serial_sequence({}, {}), GREATEST(COALESCE((SELECT max({qc}) FROM {qt}), 0), {floor}) + 1, false)",
        ident::literal(&qt),
        ident::literal(&c.target_name),
    );
    run_step(
        client,
        StepKind::Sequence,
        &t.source_name,
        &c.target_name,
        &sql,
    )
    .await
}

/// The one finish step a `--data-only` run takes: every identity sequence of
/// the plan moved past the rows just loaded (and past `sqlite_sequence`).
/// Tables whose identity column does not exist in the target are left alone
/// (`pg_get_serial_sequence` is NULL there, and `setval(NULL, ..)` does
/// nothing). Returns the steps that failed.
pub async fn set_sequences(client: &Client, plan: &Plan) -> Result<Vec<Step>, Error> {
    let mut failed = Vec::new();
    for t in &plan.tables {
        if let Some((col, seq)) = t.identity {
            let s = sequence_step(client, plan.schema.as_str(), t, col, seq).await?;
            if s.outcome != Outcome::Ok {
                failed.push(s);
            }
        }
    }
    Ok(failed)
}

/// `maintenance_work_mem` for the finish phase's sessions: index builds
/// sort in memory up to it, and spill to disk beyond. Postgres's default
/// (64 MB) spills for a table of a few million rows; the setting is raised
/// for these sessions only, never lowered.
const MAINTENANCE_WORK_MEM_KB: i64 = 256 * 1024;

async fn raise_maintenance_work_mem(client: &Client) -> Result<(), Error> {
    let kb: i64 = client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'",
            &[],
        )
        .await?
        .get(0);
    if kb < MAINTENANCE_WORK_MEM_KB {
        client
            .batch_execute(&format!(
                "SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM_KB}kB'"
            ))
            .await?;
    }
    Ok(())
}

/// One unit of work of the parallel parts of the finish phase.
#[derive(Debug, Clone, Copy)]
enum Task {
    /// The keys and identity of table `0` ([`table_keys`]); its plain
    /// indexes are queued when they are done.
    Keys(usize),
    /// Plain index `1` of table `0`.
    Index(usize, usize),
    /// CHECK constraints, foreign-key validation and ANALYZE of table `0`.
    Table(usize),
}

/// A queue of [`Task`]s shared by the connections of the finish phase.
#[derive(Default)]
struct Queue {
    tasks: std::collections::VecDeque<Task>,
    /// Tasks running that may queue more.
    producing: usize,
}

/// A foreign key created NOT VALID, to validate in the per-table pass.
struct PendingFk {
    table: usize,
    fk: usize,
    step: Step,
}

/// Runs `tasks` on `clients`, each connection taking the next task when it is
/// free; returns the steps of each task, in the order they completed.
async fn run_tasks(
    clients: &[&Client],
    plan: &Plan,
    tasks: Vec<Task>,
    pending_fks: &Mutex<Vec<PendingFk>>,
) -> Result<Vec<(Task, Vec<Step>)>, Error> {
    let schema = plan.schema.as_str();
    let queue = Arc::new(Mutex::new(Queue {
        tasks: tasks.into(),
        producing: 0,
    }));
    let work = clients.iter().map(|&c| {
        let queue = Arc::clone(&queue);
        async move {
            let mut done = Vec::new();
            loop {
                let next = {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    let next = q.tasks.pop_front();
                    if let Some(Task::Keys(_)) = next {
                        q.producing += 1;
                    }
                    (next, q.producing)
                };
                let task = match next {
                    (Some(task), _) => task,
                    (None, 0) => break,
                    // Another connection is building keys whose indexes come next.
                    (None, _) => {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let steps = match task {
                    Task::Keys(i) => {
                        let t = &plan.tables[i];
                        let r = table_keys(c, schema, t).await;
                        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                        q.producing -= 1;
                        // The biggest table's indexes first, ahead of smaller tables' keys.
                        for (j, _) in t
                            .indexes
                            .iter()
                            .enumerate()
                            .rev()
                            .filter(|(_, ix)| is_plain_index(ix))
                        {
                            q.tasks.push_front(Task::Index(i, j));
                        }
                        r?
                    }
                    Task::Index(i, j) => {
                        let t = &plan.tables[i];
                        vec![build_index(c, schema, t, &t.indexes[j]).await?]
                    }
                    Task::Table(i) => table_checks(c, plan, i, pending_fks).await?,
                };
                done.push((task, steps));
            }
            Ok::<_, Error>(done)
        }
    });
    let mut out = Vec::new();
    for r in futures::future::join_all(work).await {
        out.extend(r?);
    }
    Ok(out)
}

/// The per-table pass after the keys: CHECK constraints, validation of the
/// table's foreign keys created NOT VALID, ANALYZE. Validating takes a SHARE
/// UPDATE EXCLUSIVE lock on the table and ROW SHARE on the parent, which
/// other tables' validations and ANALYZEs do not conflict with.
async fn table_checks(
    client: &Client,
    plan: &Plan,
    i: usize,
    pending_fks: &Mutex<Vec<PendingFk>>,
) -> Result<Vec<Step>, Error> {
    let schema = plan.schema.as_str();
    let t = &plan.tables[i];
    let mut steps = Vec::new();
    for ch in &t.checks {
        let object = Object::Constraint {
            table: &t.target_name,
            name: &ch.target_name,
        };
        steps.push(
            create_step(
                client,
                schema,
                object,
                StepKind::Check,
                &t.source_name,
                &ch.target_name,
                &ch.sql,
            )
            .await?,
        );
    }
    let mine: Vec<PendingFk> = {
        let mut all = pending_fks.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|p| p.table == i);
        *all = rest;
        mine
    };
    for PendingFk { fk, mut step, .. } in mine {
        let fk = &t.foreign_keys[fk];
        let v = format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            ident::qualified(schema, &t.target_name),
            ident::quote(&fk.target_name)
        );
        let vs = run_step(
            client,
            StepKind::ForeignKey,
            &t.source_name,
            &fk.target_name,
            &v,
        )
        .await?;
        step.seconds += vs.seconds;
        if vs.outcome != Outcome::Ok {
            step.outcome = Outcome::NotValid;
            step.error = vs.error.map(|e| format!("left NOT VALID: {e}"));
        }
        steps.push(step);
    }
    // Statistics for the planner; reported only when it fails.
    let sql = format!("ANALYZE {}", ident::qualified(schema, &t.target_name));
    let s = run_step(
        client,
        StepKind::Analyze,
        &t.source_name,
        &t.target_name,
        &sql,
    )
    .await?;
    if s.outcome != Outcome::Ok {
        steps.push(s);
    }
    Ok(steps)
}

/// Runs the finish phase, on up to `opts.jobs` connections:
///
/// 1. keys, identities and indexes, biggest table first: a table's primary
///    key and unique constraints one after the other, then its plain
///    indexes in parallel;
/// 2. foreign keys, created `NOT VALID` one after the other (instant; two
///    at once could deadlock on tables that reference each other), then views;
/// 3. per table, in parallel: CHECKs, validation of its foreign keys (when
///    the source had no orphans), ANALYZE.
pub async fn finish_with(
    client: &Client,
    plan: &Plan,
    opts: &FinishOptions,
) -> Result<FinishReport, Error> {
    let mut report = FinishReport::default();
    let schema = plan.schema.as_str();
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
    let clients: Vec<&Client> = std::iter::once(client).chain(extra.iter()).collect();
    for c in &clients {
        raise_maintenance_work_mem(c).await?;
    }
    let pending_fks = Mutex::new(Vec::new());

    // 1. Keys, identities, indexes.
    let tasks = order.iter().map(|&i| Task::Keys(i)).collect();
    for (_, steps) in run_tasks(&clients, plan, tasks, &pending_fks).await? {
        report.steps.extend(steps);
    }

    // 2. Foreign keys, NOT VALID; validated in 3 when the source had no orphans.
    let mut fk_steps: Vec<(usize, Step)> = Vec::new();
    for (ti, t) in plan.tables.iter().enumerate() {
        for (fi, fk) in t.foreign_keys.iter().enumerate() {
            let mut step = Step {
                kind: StepKind::ForeignKey,
                table: t.source_name.clone(),
                name: fk.target_name.clone(),
                outcome: Outcome::Skipped,
                error: None,
                seconds: 0.0,
            };
            let Some(sql) = &fk.sql else {
                step.error = fk.problem.clone();
                fk_steps.push((ti, step));
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
                        fk_steps.push((ti, step));
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
                StepKind::ForeignKey,
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
                    pending_fks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(PendingFk {
                            table: ti,
                            fk: fi,
                            step: s,
                        });
                    continue;
                }
            } else if let Some(p) = &fk.problem {
                s.error = Some(format!("{}; {p}", s.error.unwrap_or_default()));
            }
            fk_steps.push((ti, s));
        }
    }
    // Views, in passes so a view over another view finds it.
    let mut views = Vec::new();
    let mut pending: Vec<&crate::plan::ViewPlan> = plan.views.iter().collect();
    let mut last_errors: Vec<(String, String)> = Vec::new();
    for _pass in 0..4 {
        let mut next = Vec::new();
        last_errors.clear();
        for v in pending {
            let Some(sql) = &v.sql else {
                views.push(Step {
                    kind: StepKind::View,
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
                StepKind::View,
                &v.source_name,
                &v.target_name,
                sql,
            )
            .await?;
            if s.outcome == Outcome::Ok {
                views.push(s);
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
        views.push(Step {
            kind: StepKind::View,
            table: v.source_name.clone(),
            name: v.target_name.clone(),
            outcome: Outcome::Failed,
            error: e.map(|e| format!("not translated: {e}; recreate it by hand")),
            seconds: 0.0,
        });
    }
    // 3. Per table: CHECKs, foreign-key validation, ANALYZE.
    let tasks = order.iter().map(|&i| Task::Table(i)).collect();
    let mut per_table: Vec<Vec<Step>> = vec![Vec::new(); plan.tables.len()];
    for (task, steps) in run_tasks(&clients, plan, tasks, &pending_fks).await? {
        if let Task::Table(i) = task {
            per_table[i] = steps;
        }
    }
    // In plan order: CHECKs and foreign keys of each table, then views and
    // failed ANALYZEs.
    let mut tail = Vec::new();
    for (i, steps) in per_table.into_iter().enumerate() {
        for s in steps {
            if s.kind == StepKind::Analyze {
                tail.push(s);
            } else {
                report.steps.push(s);
            }
        }
        report.steps.extend(
            fk_steps
                .iter()
                .filter(|(t, _)| *t == i)
                .map(|(_, s)| s.clone()),
        );
    }
    report.steps.append(&mut views);
    report.steps.append(&mut tail);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's report is stored as JSON and read back by a newer binary
    /// (a sharded resume, `dbtool runs`): the step kinds keep their spellings.
    #[test]
    fn step_kinds_keep_their_stored_spellings() {
        let kinds = [
            StepKind::PrimaryKey,
            StepKind::Unique,
            StepKind::Index,
            StepKind::Identity,
            StepKind::Sequence,
            StepKind::Check,
            StepKind::ForeignKey,
            StepKind::View,
            StepKind::Analyze,
        ];
        assert_eq!(
            kinds.map(StepKind::as_str),
            [
                "primary_key",
                "unique",
                "index",
                "identity",
                "sequence",
                "check",
                "foreign_key",
                "view",
                "analyze"
            ]
        );
        for k in kinds {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(
                serde_json::from_value::<StepKind>(k.as_str().into()).unwrap(),
                k
            );
        }
        assert_eq!(StepKind::ForeignKey.label(), "foreign key");
    }

    /// A step built from the source's SQL text runs as exactly one statement:
    /// a translation that ended up holding two is refused whole, and the
    /// second statement never runs.
    #[tokio::test]
    async fn a_source_sql_step_cannot_carry_a_second_statement() {
        let db = dbtool_testkit::pg().await;
        let client = db.client().await;
        client
            .batch_execute("CREATE TABLE victim (x int)")
            .await
            .unwrap();
        for kind in [StepKind::View, StepKind::Check, StepKind::Index] {
            let s = run_step(
                &client,
                kind,
                "v",
                "v",
                "CREATE VIEW v AS SELECT 1 AS one; DROP TABLE victim",
            )
            .await
            .unwrap();
            assert_eq!(s.outcome, Outcome::Failed, "{kind}");
            assert!(
                s.error
                    .as_deref()
                    .unwrap_or("")
                    .contains("multiple commands"),
                "{kind}: {:?}",
                s.error
            );
        }
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname IN ('victim', 'v') AND relnamespace = 'public'::regnamespace",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 1, "victim is still there and no view was made");
    }
}
