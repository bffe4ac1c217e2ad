//! When each finish step may start: the scheduler that runs a table's keys,
//! indexes and CHECKs as soon as its own data is in, and a foreign key once
//! the referenced table is loaded and keyed too, on a bounded set of
//! connections shared with the load. The steps themselves are in the parent
//! module; this file holds only their order.

use super::*;

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
pub(super) struct Produced {
    /// Keys, identities, indexes: in order of completion.
    pub(super) keys: Vec<Step>,
    /// Per table: CHECKs, then foreign keys in plan order.
    pub(super) checks: Vec<Vec<Step>>,
    /// Per table: (foreign key index, its step, the orphans it counted).
    pub(super) fks: Vec<Vec<(usize, Step, Option<Orphans>)>>,
    /// ANALYZEs that failed.
    pub(super) analyze: Vec<Step>,
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
pub(super) async fn schedule(
    clients: &[&Client],
    plan: &Plan,
    source: Option<&std::path::Path>,
    mut feed: Feed<'_>,
) -> Result<Produced, Error> {
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
                    let r = run_task(client, schema, plan, task, create_fk, source).await;
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

fn collect(out: &mut Produced, task: Task, (steps, found): (Vec<Step>, Option<Orphans>)) {
    match task {
        Task::Keys(_) | Task::Index(..) => out.keys.extend(steps),
        Task::Checks(i) => out.checks[i].extend(steps),
        Task::ForeignKey(i, f) => {
            let mut found = found;
            out.fks[i].extend(steps.into_iter().map(|s| (f, s, found.take())));
        }
        Task::Analyze(_) => out
            .analyze
            .extend(steps.into_iter().filter(|s| s.outcome != Outcome::Ok)),
    }
}

/// Runs `task`: its steps, and for a foreign key the orphans it counted.
async fn run_task(
    client: &Client,
    schema: &str,
    plan: &Plan,
    task: Task,
    create_fk: &tokio::sync::Mutex<()>,
    source: Option<&std::path::Path>,
) -> Result<(Vec<Step>, Option<Orphans>), Error> {
    let steps = match task {
        Task::ForeignKey(i, f) => {
            let (step, found) = foreign_key(client, plan, i, f, create_fk, source).await?;
            return Ok((vec![step], found));
        }
        Task::Keys(i) => table_keys(client, schema, &plan.tables[i]).await?,
        Task::Index(i, j) => {
            let t = &plan.tables[i];
            vec![build_index(client, schema, t, &t.indexes[j]).await?]
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
            steps
        }
        Task::Analyze(i) => {
            let t = &plan.tables[i];
            let sql = format!("ANALYZE {}", ident::qualified(schema, &t.target_name));
            vec![
                run_step(
                    client,
                    StepKind::Analyze,
                    &t.source_name,
                    &t.target_name,
                    &sql,
                )
                .await?,
            ]
        }
    };
    Ok((steps, None))
}
