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

mod schedule;

use schedule::schedule;
pub(crate) use schedule::Feed;

/// How to run the finish phase.
#[derive(Debug, Clone, Default)]
pub struct FinishOptions {
    /// The target, to open extra connections for parallel index builds.
    /// `None`: everything runs on the given client.
    pub target: Option<dbtool_pool::Target>,
    /// Connections to use in parallel (including the given client); 0 or 1: one.
    pub jobs: usize,
    /// The SQLite file the rows were read from: where the orphans of a
    /// foreign key whose count the plan deferred
    /// ([`FkPlan::orphans_deferred`](crate::plan::FkPlan::orphans_deferred))
    /// are counted when it fails validation. `None`: such a foreign key is
    /// left NOT VALID with Postgres's error.
    pub source: Option<std::path::PathBuf>,
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
    /// Orphans counted by this phase for foreign keys whose plan deferred
    /// the count: (table index, foreign key index, count, sample rowids),
    /// for the run to record in its plan ([`FinishReport::record_orphans`]).
    #[serde(skip)]
    pub(crate) orphans: Vec<(usize, usize, u64, Vec<i64>)>,
}

impl FinishReport {
    /// Writes the orphans this phase counted into `plan`'s foreign keys, so
    /// the report says what a plan that counted them up front would have.
    pub(crate) fn record_orphans(&self, plan: &mut Plan) {
        for (i, f, n, rowids) in &self.orphans {
            if let Some(fk) = plan
                .tables
                .get_mut(*i)
                .and_then(|t| t.foreign_keys.get_mut(*f))
            {
                fk.orphans = *n;
                fk.orphan_rowids = rowids.clone();
            }
        }
    }

    /// Whether this phase counted orphans the plan had left to it.
    pub(crate) fn has_orphans(&self) -> bool {
        !self.orphans.is_empty()
    }

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

/// Orphans a foreign key was found to have: the count and sample rowids.
pub(super) type Orphans = (u64, Vec<i64>);

/// The run stops: foreign key `fk` of `t` has orphans under [`FkPolicy::Fail`].
fn orphans_fail(t: &TablePlan, fk: &crate::plan::FkPlan, (n, rowids): &Orphans) -> Error {
    Error::Other(format!(
        "foreign key {} of table {} has {n} orphan rows in the source (rowids {rowids:?}); fix them, or set [migrate] foreign_keys = \"not_valid\" or \"skip\"",
        fk.target_name, t.source_name
    ))
}

fn orphans_skipped((n, rowids): &Orphans) -> String {
    format!("{n} orphan rows in the source (rowids {rowids:?}); not created (policy skip)")
}

fn orphans_not_valid((n, rowids): &Orphans) -> String {
    format!(
        "{n} orphan rows in the source (rowids {rowids:?}); created NOT VALID: new rows are checked, old ones are not"
    )
}

/// Foreign key `f` of table `i`: created NOT VALID (under `create_fk`, one
/// at a time), then validated when the source had no orphans; or skipped,
/// or an error, as [`FkPolicy`] says for orphans. When the plan deferred
/// the orphan count ([`FkPlan::orphans_deferred`](crate::plan::FkPlan::orphans_deferred)),
/// the validation is what finds them: if it fails on a foreign-key
/// violation, the orphans are counted in `source` and the policy applied
/// then (under `skip` and `fail` the constraint is dropped again, so the
/// target is as if it had been decided up front); the count is returned
/// for the report.
async fn foreign_key(
    client: &Client,
    plan: &Plan,
    i: usize,
    f: usize,
    create_fk: &tokio::sync::Mutex<()>,
    source: Option<&std::path::Path>,
) -> Result<(Step, Option<Orphans>), Error> {
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
        return Ok((step, None));
    };
    let planned = (fk.orphans, fk.orphan_rowids.clone());
    if fk.orphans > 0 {
        match plan.fk_policy {
            FkPolicy::Fail => return Err(orphans_fail(t, fk, &planned)),
            FkPolicy::Skip => {
                step.error = Some(orphans_skipped(&planned));
                return Ok((step, None));
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
        return Ok((s, None));
    }
    if fk.orphans > 0 {
        s.outcome = Outcome::NotValid;
        s.error = Some(orphans_not_valid(&planned));
        return Ok((s, None));
    }
    let qt = ident::qualified(schema, &t.target_name);
    let qn = ident::quote(&fk.target_name);
    let t0 = Instant::now();
    let validated = client
        .batch_execute(&format!("ALTER TABLE {qt} VALIDATE CONSTRAINT {qn}"))
        .await;
    s.seconds += t0.elapsed().as_secs_f64();
    let e = match validated {
        Ok(()) => return Ok((s, None)),
        Err(e) if client.is_closed() => return Err(Error::Postgres(e)),
        Err(e) => e,
    };
    s.outcome = Outcome::NotValid;
    s.error = Some(format!("left NOT VALID: {}", err_text(&e)));
    let violation = e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION);
    let (true, true, Some(source)) = (fk.orphans_deferred, violation, source) else {
        return Ok((s, None));
    };
    let found = match count_orphans(source, t, fk).await {
        Ok(found) => found,
        Err(why) => {
            s.error = Some(format!(
                "{}; cannot count its orphan rows in the source: {why}",
                s.error.unwrap_or_default()
            ));
            return Ok((s, None));
        }
    };
    if found.0 == 0 {
        // The source has none: the target's come from rows the load
        // rejected or changed; Postgres's error says which.
        return Ok((s, Some(found)));
    }
    if plan.fk_policy != FkPolicy::NotValid {
        let _one = create_fk.lock().await;
        client
            .batch_execute(&format!("ALTER TABLE {qt} DROP CONSTRAINT IF EXISTS {qn}"))
            .await?;
    }
    match plan.fk_policy {
        FkPolicy::Fail => Err(orphans_fail(t, fk, &found)),
        FkPolicy::Skip => {
            s.outcome = Outcome::Skipped;
            s.error = Some(orphans_skipped(&found));
            Ok((s, Some(found)))
        }
        FkPolicy::NotValid => {
            s.error = Some(orphans_not_valid(&found));
            Ok((s, Some(found)))
        }
    }
}

/// Counts the orphans of `fk` (of table `t`) in the SQLite file `path`, as
/// planning does with [`Profiling::Full`](crate::plan::Profiling::Full)
/// ([`crate::profile::orphans`]), on a blocking thread.
async fn count_orphans(
    path: &std::path::Path,
    t: &TablePlan,
    fk: &crate::plan::FkPlan,
) -> Result<Orphans, String> {
    let path = path.to_path_buf();
    let (child, parent) = (t.source_name.clone(), fk.ref_table.clone());
    let (from, to) = (fk.columns.clone(), fk.ref_columns.clone());
    tokio::task::spawn_blocking(move || {
        let conn = crate::source::open(&path).map_err(|e| e.to_string())?;
        let source = crate::source::inspect(&conn, &path).map_err(|e| e.to_string())?;
        let table = |name: &str| {
            source
                .table(name)
                .ok_or_else(|| format!("table {name} is not in the source"))
        };
        let (c, p) = (table(&child)?, table(&parent)?);
        let to = if to.is_empty() {
            p.primary_key.clone()
        } else {
            to
        };
        crate::profile::orphans(&conn, c, &from, p, &to).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
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
    opts: &FinishOptions,
    feed: Feed<'_>,
) -> Result<FinishReport, Error> {
    for c in clients {
        raise_maintenance_work_mem(c).await?;
    }
    let abort = feed.abort.clone();
    let mut p = schedule(clients, plan, opts.source.as_deref(), feed).await?;
    let mut report = FinishReport::default();
    if abort.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(report);
    }
    report.steps.append(&mut p.keys);
    for (i, (checks, fks)) in p.checks.into_iter().zip(p.fks).enumerate() {
        report.steps.extend(checks);
        let mut fks = fks;
        fks.sort_by_key(|(f, _, _)| *f);
        for (f, s, found) in fks {
            if let Some((n, rowids)) = found {
                report.orphans.push((i, f, n, rowids));
            }
            report.steps.push(s);
        }
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
    finish_on(&clients, plan, opts, feed).await
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
    finish_on(&clients, plan, opts, feed).await
}

/// Whether the finish phase can run during the load: not when a foreign
/// key's orphans counted at planning must stop the run ([`FkPolicy::Fail`]):
/// that error comes after all the rows are in, as it always has. Orphans a
/// migration's plan left to the finish phase stop it when that foreign key
/// fails validation, which may be while other tables still load: no further
/// finish step starts, the load completes and the run stops with the error
/// (see docs/migrate.md).
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
