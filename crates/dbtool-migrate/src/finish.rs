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

use std::sync::Arc;
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

/// One unit of work of the finish phase; see [`schedule`] for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// The primary key, unique constraints and identity of table `0`
    /// ([`table_keys`]); its plain indexes are queued when they are done.
    Keys(usize),
    /// Plain index `1` of table `0`.
    Index(usize, usize),
    /// The CHECK constraints of table `0`.
    Checks(usize),
    /// Foreign key `1` of table `0`: created NOT VALID, then validated.
    ForeignKey(usize, usize),
    /// ANALYZE of table `0`.
    Analyze(usize),
}

/// Where one table is in the finish phase.
#[derive(Debug, Default, Clone)]
struct TableState {
    /// All its rows are in (its load is complete).
    loaded: bool,
    /// Keys queued or done.
    keys_started: bool,
    keys_done: bool,
    /// Plain indexes not yet built (set when the keys are done).
    indexes_left: usize,
    checks_started: bool,
    checks_done: bool,
    /// Per foreign key: started.
    fk_started: Vec<bool>,
    /// Foreign keys not yet finished.
    fks_left: usize,
    /// A foreign-key task of this table is running (validations of one
    /// table conflict with each other: SHARE UPDATE EXCLUSIVE).
    fk_busy: bool,
    analyze_started: bool,
}

impl TableState {
    /// Keys, indexes and CHECKs done: nothing of this table takes a lock
    /// that conflicts with validating a foreign key that references it.
    fn settled(&self) -> bool {
        self.keys_done && self.indexes_left == 0 && self.checks_done
    }
}

/// The tables' state and the tasks that can start now, decided from it.
struct Scheduler<'a> {
    plan: &'a Plan,
    tables: Vec<TableState>,
    /// Per table, per foreign key: the referenced table's index in the plan
    /// (`None`: outside the plan, nothing to wait for).
    parents: Vec<Vec<Option<usize>>>,
    /// Tasks ready to run, biggest tables first.
    ready: std::collections::VecDeque<Task>,
}

impl<'a> Scheduler<'a> {
    fn new(plan: &'a Plan) -> Scheduler<'a> {
        let index: std::collections::HashMap<String, usize> = plan
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.source_name.to_lowercase(), i))
            .collect();
        let parents = plan
            .tables
            .iter()
            .map(|t| {
                t.foreign_keys
                    .iter()
                    .map(|fk| index.get(&fk.ref_table.to_lowercase()).copied())
                    .collect()
            })
            .collect();
        let tables = plan
            .tables
            .iter()
            .map(|t| TableState {
                fk_started: vec![false; t.foreign_keys.len()],
                fks_left: t.foreign_keys.len(),
                ..TableState::default()
            })
            .collect();
        Scheduler {
            plan,
            tables,
            parents,
            ready: Default::default(),
        }
    }

    /// Table `i`'s data is in.
    fn loaded(&mut self, i: usize) {
        self.tables[i].loaded = true;
        self.advance();
    }

    /// `task` finished.
    fn done(&mut self, task: Task) {
        match task {
            Task::Keys(i) => {
                let t = &mut self.tables[i];
                t.keys_done = true;
                let plain: Vec<usize> = self.plan.tables[i]
                    .indexes
                    .iter()
                    .enumerate()
                    .filter(|(_, ix)| is_plain_index(ix))
                    .map(|(j, _)| j)
                    .collect();
                t.indexes_left = plain.len();
                // A table's indexes ahead of other tables' waiting work: the
                // biggest table's finish is the longest chain.
                for j in plain.into_iter().rev() {
                    self.ready.push_front(Task::Index(i, j));
                }
            }
            Task::Index(i, _) => self.tables[i].indexes_left -= 1,
            Task::Checks(i) => self.tables[i].checks_done = true,
            Task::ForeignKey(i, _) => {
                let t = &mut self.tables[i];
                t.fk_busy = false;
                t.fks_left -= 1;
            }
            Task::Analyze(_) => {}
        }
        self.advance();
    }

    /// Queues every task whose prerequisites are met.
    fn advance(&mut self) {
        let mut order: Vec<usize> = (0..self.tables.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.plan.tables[i].rows));
        for i in order {
            let t = &self.tables[i];
            if !t.loaded {
                continue;
            }
            if !t.keys_started {
                self.tables[i].keys_started = true;
                self.ready.push_back(Task::Keys(i));
                continue;
            }
            if t.keys_done && t.indexes_left == 0 && !t.checks_started {
                self.tables[i].checks_started = true;
                self.ready.push_back(Task::Checks(i));
                continue;
            }
            if !t.checks_done {
                continue;
            }
            if !t.fk_busy {
                // A foreign key is validated once both tables are loaded and
                // settled: never while the referenced table still loads, and
                // never under an index build on either table.
                let next = (0..t.fk_started.len()).find(|&f| {
                    !t.fk_started[f]
                        && match self.parents[i][f] {
                            None => true,
                            Some(p) if p == i => true,
                            Some(p) => self.tables[p].loaded && self.tables[p].settled(),
                        }
                });
                if let Some(f) = next {
                    let t = &mut self.tables[i];
                    t.fk_started[f] = true;
                    t.fk_busy = true;
                    self.ready.push_back(Task::ForeignKey(i, f));
                    continue;
                }
            }
            let t = &self.tables[i];
            if t.fks_left == 0 && !t.analyze_started {
                self.tables[i].analyze_started = true;
                self.ready.push_back(Task::Analyze(i));
            }
        }
    }
}

/// What the scheduled part of the finish phase produced.
#[derive(Default)]
struct Produced {
    /// Keys, identities, indexes: in order of completion.
    keys: Vec<Step>,
    /// Per table: CHECKs, then foreign keys in plan order.
    checks: Vec<Vec<Step>>,
    fks: Vec<Vec<(usize, Step)>>,
    /// ANALYZEs that failed.
    analyze: Vec<Step>,
}

/// Where the tables of a finish phase come from, and what bounds it.
pub(crate) struct Feed<'a> {
    /// Indexes (into the plan's tables) of tables whose data is in, as they
    /// complete; closed when no more will come.
    pub loaded: tokio::sync::mpsc::UnboundedReceiver<usize>,
    /// Shared with the load: each running task holds one permit, so loads
    /// and finish steps together never exceed the permits (the jobs).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Set when the load failed: start no new task.
    pub abort: Arc<std::sync::atomic::AtomicBool>,
    /// Told of each task as it starts.
    pub progress: &'a dyn crate::progress::Progress,
}

/// Runs the per-table part of the finish phase on `clients` as tables
/// arrive on `feed.loaded`. For each table: its keys as soon as its own data
/// is in (ACCESS EXCLUSIVE, one table at a time per connection), then its
/// plain indexes side by side (SHARE: they do not conflict with each other),
/// then its CHECKs; then each of its foreign keys, one at a time, once the
/// referenced table is also loaded and settled (created NOT VALID, then
/// validated: SHARE UPDATE EXCLUSIVE on the table, ROW SHARE on the
/// referenced one); then ANALYZE. Foreign keys are created one at a time
/// across tables: two tables that reference each other could deadlock.
async fn schedule(clients: &[&Client], plan: &Plan, mut feed: Feed<'_>) -> Result<Produced, Error> {
    use futures::stream::{FuturesUnordered, StreamExt};
    use std::sync::atomic::Ordering;

    let schema = plan.schema.as_str();
    let n = plan.tables.len();
    let mut out = Produced {
        checks: vec![Vec::new(); n],
        fks: vec![Vec::new(); n],
        ..Produced::default()
    };
    let mut sched = Scheduler::new(plan);
    let mut idle: Vec<usize> = (0..clients.len()).rev().collect();
    let create_fk = tokio::sync::Mutex::new(());
    let mut running = FuturesUnordered::new();
    let mut open = true;
    let mut failed: Option<Error> = None;
    let mut permit: Option<
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<tokio::sync::OwnedSemaphorePermit>> + Send>,
        >,
    > = None;
    loop {
        let stopping = failed.is_some() || feed.abort.load(Ordering::SeqCst);
        if stopping {
            permit = None;
        } else if permit.is_none() && !sched.ready.is_empty() && !idle.is_empty() {
            let slots = feed.slots.clone();
            permit = Some(Box::pin(async move { slots.acquire_owned().await.ok() }));
        }
        if !open && running.is_empty() && (stopping || sched.ready.is_empty()) {
            break;
        }
        tokio::select! {
            got = feed.loaded.recv(), if open => match got {
                Some(i) => sched.loaded(i),
                None => open = false,
            },
            Some((task, conn, result)) = running.next(), if !running.is_empty() => {
                idle.push(conn);
                match result {
                    Ok(steps) => {
                        collect(&mut out, task, steps);
                        sched.done(task);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            p = async { permit.as_mut().expect("guarded").await }, if permit.is_some() => {
                permit = None;
                let Some(p) = p else { continue };
                let (Some(task), Some(conn)) = (sched.ready.pop_front(), idle.pop()) else {
                    continue;
                };
                let client = clients[conn];
                let (kind, table, name) = describe(plan, task);
                feed.progress.finish_task(kind, &table, &name);
                let create_fk = &create_fk;
                running.push(async move {
                    let r = run_task(client, schema, plan, task, create_fk).await;
                    drop(p);
                    (task, conn, r)
                });
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A task's kind, table and object name, for [`Progress::finish_task`].
///
/// [`Progress::finish_task`]: crate::progress::Progress::finish_task
fn describe(plan: &Plan, task: Task) -> (&'static str, String, String) {
    let t = |i: usize| plan.tables[i].source_name.clone();
    match task {
        Task::Keys(i) => ("keys", t(i), plan.tables[i].target_name.clone()),
        Task::Index(i, j) => ("index", t(i), plan.tables[i].indexes[j].target_name.clone()),
        Task::Checks(i) => ("checks", t(i), plan.tables[i].target_name.clone()),
        Task::ForeignKey(i, f) => (
            "foreign_key",
            t(i),
            plan.tables[i].foreign_keys[f].target_name.clone(),
        ),
        Task::Analyze(i) => ("analyze", t(i), plan.tables[i].target_name.clone()),
    }
}

fn collect(out: &mut Produced, task: Task, steps: Vec<Step>) {
    match task {
        Task::Keys(_) | Task::Index(..) => out.keys.extend(steps),
        Task::Checks(i) => out.checks[i].extend(steps),
        Task::ForeignKey(i, f) => out.fks[i].extend(steps.into_iter().map(|s| (f, s))),
        Task::Analyze(_) => out
            .analyze
            .extend(steps.into_iter().filter(|s| s.outcome != Outcome::Ok)),
    }
}

async fn run_task(
    client: &Client,
    schema: &str,
    plan: &Plan,
    task: Task,
    create_fk: &tokio::sync::Mutex<()>,
) -> Result<Vec<Step>, Error> {
    match task {
        Task::Keys(i) => table_keys(client, schema, &plan.tables[i]).await,
        Task::Index(i, j) => {
            let t = &plan.tables[i];
            Ok(vec![build_index(client, schema, t, &t.indexes[j]).await?])
        }
        Task::Checks(i) => {
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
            Ok(steps)
        }
        Task::ForeignKey(i, f) => foreign_key(client, plan, i, f, create_fk)
            .await
            .map(|s| vec![s]),
        Task::Analyze(i) => {
            let t = &plan.tables[i];
            let sql = format!("ANALYZE {}", ident::qualified(schema, &t.target_name));
            Ok(vec![
                run_step(
                    client,
                    StepKind::Analyze,
                    &t.source_name,
                    &t.target_name,
                    &sql,
                )
                .await?,
            ])
        }
    }
}

/// Foreign key `f` of table `i`: created NOT VALID (under `create_fk`, one
/// at a time), then validated when the source had no orphans; or skipped,
/// or an error, as [`FkPolicy`] says for orphans.
async fn foreign_key(
    client: &Client,
    plan: &Plan,
    i: usize,
    f: usize,
    create_fk: &tokio::sync::Mutex<()>,
) -> Result<Step, Error> {
    let schema = plan.schema.as_str();
    let t = &plan.tables[i];
    let fk = &t.foreign_keys[f];
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
        return Ok(step);
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
                return Ok(step);
            }
            FkPolicy::NotValid => {}
        }
    }
    let object = Object::Constraint {
        table: &t.target_name,
        name: &fk.target_name,
    };
    let mut s = {
        let _one = create_fk.lock().await;
        create_step(
            client,
            schema,
            object,
            StepKind::ForeignKey,
            &t.source_name,
            &fk.target_name,
            sql,
        )
        .await?
    };
    if s.outcome != Outcome::Ok {
        if let Some(p) = &fk.problem {
            s.error = Some(format!("{}; {p}", s.error.unwrap_or_default()));
        }
        return Ok(s);
    }
    if fk.orphans > 0 {
        s.outcome = Outcome::NotValid;
        s.error = Some(format!(
            "{} orphan rows in the source (rowids {:?}); created NOT VALID: new rows are checked, old ones are not",
            fk.orphans, fk.orphan_rowids
        ));
        return Ok(s);
    }
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
    s.seconds += vs.seconds;
    if vs.outcome != Outcome::Ok {
        s.outcome = Outcome::NotValid;
        s.error = vs.error.map(|e| format!("left NOT VALID: {e}"));
    }
    Ok(s)
}

/// Views, in passes so a view over another view finds it.
async fn create_views(client: &Client, plan: &Plan) -> Result<Vec<Step>, Error> {
    let schema = plan.schema.as_str();
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
    Ok(views)
}

/// Opens the finish phase's connections: `jobs` in all, `client` first when
/// given; fewer when the server refuses more.
async fn connections(first: Option<&Client>, opts: &FinishOptions) -> Result<Vec<Client>, Error> {
    let want = opts.jobs.max(1) - usize::from(first.is_some());
    let mut extra = Vec::new();
    if let Some(target) = &opts.target {
        for _ in 0..want {
            match target.connect().await {
                Ok(c) => extra.push(c),
                Err(e) if extra.is_empty() && first.is_none() => {
                    return Err(Error::Target {
                        target: dbtool_pool::display_config(target),
                        reason: format!("cannot connect for the finish phase: {e}"),
                    })
                }
                Err(_) => break,
            }
        }
    }
    Ok(extra)
}

/// The scheduled part, then the views, assembled into the report: keys and
/// indexes in order of completion, then per table (plan order) its CHECKs
/// and foreign keys, then views, then ANALYZEs that failed.
async fn finish_on(
    clients: &[&Client],
    plan: &Plan,
    feed: Feed<'_>,
) -> Result<FinishReport, Error> {
    for c in clients {
        raise_maintenance_work_mem(c).await?;
    }
    let abort = feed.abort.clone();
    let mut p = schedule(clients, plan, feed).await?;
    let mut report = FinishReport::default();
    if abort.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(report);
    }
    report.steps.append(&mut p.keys);
    for (checks, fks) in p.checks.into_iter().zip(p.fks) {
        report.steps.extend(checks);
        let mut fks = fks;
        fks.sort_by_key(|(f, _)| *f);
        report.steps.extend(fks.into_iter().map(|(_, s)| s));
    }
    report.steps.extend(create_views(clients[0], plan).await?);
    report.steps.append(&mut p.analyze);
    Ok(report)
}

/// Runs the finish phase after the load, on up to `opts.jobs` connections,
/// every table's data being in: per table, keys, then indexes in parallel,
/// CHECKs, foreign keys (created `NOT VALID`, then validated when the
/// source had no orphans) and ANALYZE, biggest table first (see
/// [`finish_during_load`] for the order); then views.
/// `progress` is told of each task as it starts.
pub async fn finish_with(
    client: &Client,
    plan: &Plan,
    opts: &FinishOptions,
    progress: &dyn crate::progress::Progress,
) -> Result<FinishReport, Error> {
    let extra = connections(Some(client), opts).await?;
    let clients: Vec<&Client> = std::iter::once(client).chain(extra.iter()).collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..plan.tables.len() {
        let _ = tx.send(i);
    }
    drop(tx);
    let feed = Feed {
        loaded: rx,
        slots: Arc::new(tokio::sync::Semaphore::new(clients.len())),
        abort: Default::default(),
        progress,
    };
    finish_on(&clients, plan, feed).await
}

/// Runs the finish phase while the load runs: each table's steps start as
/// soon as its data is in (its index arrives on `feed.loaded`) and a permit
/// of `feed.slots` is free, on `opts.jobs` connections of its own. Returns
/// when the feed is closed and every task it allowed is done; an empty
/// report when `feed.abort` was set (the load failed: the next attempt of
/// the run finishes what is left, every step being idempotent).
pub(crate) async fn finish_during_load(
    plan: &Plan,
    opts: &FinishOptions,
    feed: Feed<'_>,
) -> Result<FinishReport, Error> {
    let own = connections(None, opts).await?;
    let clients: Vec<&Client> = own.iter().collect();
    finish_on(&clients, plan, feed).await
}

/// Whether the finish phase can run during the load: not when a foreign
/// key's orphans must stop the run ([`FkPolicy::Fail`]): that error comes
/// after all the rows are in, as it always has.
pub(crate) fn can_overlap(plan: &Plan) -> bool {
    plan.fk_policy != FkPolicy::Fail
        || plan.tables.iter().all(|t| {
            t.foreign_keys
                .iter()
                .all(|fk| fk.orphans == 0 || fk.sql.is_none())
        })
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
