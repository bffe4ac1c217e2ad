//! `dbtool shard route|map|add|move`: route team ids, show and publish the
//! shard map, grow by a shard and move buckets online.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use dbtool_shard::catalog::Catalog;
use dbtool_shard::{Scheme, ShardMap};
use dbtool_sync::moves;

use super::{usage, Context};

const ROUTE_EXAMPLES: &str = "\
Examples:
  dbtool shard route --shards 4 6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f
  dbtool shard route --scheme hex8-modulo --shards 8 6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f
  dbtool shard route --map dbtool.toml team-a team-b
  dbtool shard route --map postgres://dbtool@catalog/app \"$TEAM\"

Prints `TEAM_ID SHARD` per line. A team id the scheme cannot route (empty, or
not hex for hex8-modulo) is reported on stderr and the exit code is 1.";

const MAP_EXAMPLES: &str = "\
Examples:
  dbtool shard map                                   # the map of ./dbtool.toml ([shard])
  dbtool shard map --shards 4                        # an even map of 4 shards
  dbtool shard map --map postgres://dbtool@catalog/app --teams-from postgres://app@pg0/app
  dbtool shard map --map postgres://dbtool@catalog/app --add-shard shard-4 --toml > next.toml
  dbtool shard map --map postgres://dbtool@catalog/app --set next.toml

--set publishes the map in FILE as a new, immutable version in the catalog
(--map URL, else [shard] catalog); running routers pick it up without restart.";

/// Subcommands of `dbtool shard`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the shard of each team id, `TEAM_ID SHARD` per line.
    #[command(after_help = ROUTE_EXAMPLES)]
    Route(RouteArgs),
    /// Print the shard map: version and bucket ranges per shard; publish a new version.
    #[command(after_help = MAP_EXAMPLES)]
    Map(MapArgs),
    /// Grow: give shard NAME (listed in [[shard.shards]], owning no buckets)
    /// its ~1/(N+1) share of the buckets, moving them online.
    #[command(after_help = ADD_EXAMPLES)]
    Add(AddArgs),
    /// Move a bucket range to another shard online; --finish ends the moves.
    #[command(after_help = MOVE_EXAMPLES)]
    Move(MoveArgs),
    /// Give every shard of [[shard.shards]] its own identity range, so ids
    /// made on different shards never collide when teams move (run before
    /// the shards take writes; `shard add` runs it too).
    Ranges(RangesArgs),
}

/// `dbtool shard ranges`.
#[derive(Debug, clap::Args)]
pub struct RangesArgs {
    /// The application schema on the shards.
    #[arg(long, value_name = "NAME", default_value = "public")]
    schema: String,
}

const ADD_EXAMPLES: &str = "\
Examples:
  dbtool shard add shard-4
  dbtool shard add shard-4 --max-freeze 300

Plans the moves `dbtool shard map --add-shard NAME` shows and performs them one
after another while the app keeps writing, printing `freeze: N ms` at each
switch; exits 0 once the last map version is published. Killed, it resumes
when run again. The old copies stay (and refuse writes) until
`dbtool shard move --finish`. Needs [shard] catalog.";

const MOVE_EXAMPLES: &str = "\
Examples:
  dbtool shard move --buckets 100-199 --to shard-4
  dbtool shard move --buckets 100-199 --rollback     # switch back, nothing lost
  dbtool shard move --finish

A move copies the buckets' rows, catches up from the source's changes, holds
only those buckets' writes while it checks the rows and publishes the new map
version (at most --max-freeze; past it, it releases, catches up and retries).
Killed, it resumes when run again. --finish ends every switched move: drops its
change streams and deletes the old copies in batches.";

/// Tuning shared by `shard add` and `shard move`.
#[derive(Debug, clap::Args)]
pub struct MoveTuning {
    /// The longest the moving buckets' writes may be held at a switch, in ms.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    max_freeze: u64,
    /// Freezes tried per move before giving up (each after catching up again).
    #[arg(long, value_name = "N", default_value_t = 5)]
    freeze_attempts: u32,
    /// Tables copied at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    jobs: usize,
    /// Rows copied per second at most, over all tables (0: no limit). On
    /// shards short of CPU, a limit leaves the application its share while
    /// the copy runs (see docs/sharding.md, "What it costs the shards").
    #[arg(long, value_name = "ROWS", default_value_t = 0)]
    copy_rate: u64,
    /// The application schema on the shards.
    #[arg(long, value_name = "NAME", default_value = "public")]
    schema: String,
}

/// `dbtool shard add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new shard's name in [[shard.shards]].
    #[arg(value_name = "NAME")]
    name: String,
    #[command(flatten)]
    tuning: MoveTuning,
}

/// `dbtool shard move`.
#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// The buckets to move, `A-B` (inclusive) or `N`.
    #[arg(long, value_name = "A-B", required_unless_present = "finish")]
    buckets: Option<String>,
    /// The shard that takes them.
    #[arg(long, value_name = "NAME")]
    to: Option<String>,
    /// End every switched move: drop its change streams, delete the old copies.
    #[arg(long, conflicts_with_all = ["buckets", "to", "rollback"])]
    finish: bool,
    /// Switch the switched move of --buckets back to the shard it came from,
    /// with every write made since (before --finish).
    #[arg(long, requires = "buckets", conflicts_with = "to")]
    rollback: bool,
    /// Rows deleted per transaction by --finish.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    delete_batch: i64,
    #[command(flatten)]
    tuning: MoveTuning,
}

/// Where the map comes from.
#[derive(Debug, clap::Args)]
pub struct MapSource {
    /// Routing scheme for --shards (default: [shard] scheme, else buckets).
    #[arg(long, value_name = "SCHEME", value_parser = ["buckets", "hex8-modulo"])]
    scheme: Option<String>,
    /// An even map of N shards named shard-0 .. shard-{N-1}.
    #[arg(long, value_name = "N", conflicts_with = "map")]
    shards: Option<usize>,
    /// The map: a TOML file (a dbtool.toml, or a [shard] table's contents) or
    /// a catalog postgres:// URL (its newest version). Default: the config's
    /// [shard] (its catalog when set).
    #[arg(long, value_name = "FILE|URL")]
    map: Option<String>,
}

/// `dbtool shard route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    #[command(flatten)]
    source: MapSource,
    /// Team ids to route.
    #[arg(required = true, value_name = "TEAM_ID")]
    team_ids: Vec<String>,
}

/// `dbtool shard map`.
#[derive(Debug, clap::Args)]
pub struct MapArgs {
    #[command(flatten)]
    source: MapSource,
    /// Count teams per shard from this Postgres database.
    #[arg(long, value_name = "URL")]
    teams_from: Option<String>,
    /// The query listing team ids for --teams-from (first column, as text).
    #[arg(long, value_name = "SQL", default_value = "SELECT id::text FROM teams")]
    teams_query: String,
    /// Show the next version with shard NAME added: it takes 1/(N+1) of the
    /// buckets from the others (the moves are listed). Publish it with --set.
    #[arg(long, value_name = "NAME")]
    add_shard: Option<String>,
    /// Print the map as a [shard] TOML table (to edit, then --set).
    #[arg(long)]
    toml: bool,
    /// Publish the map in FILE (TOML, as for --map) to the catalog as a new version.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["shards", "add_shard"])]
    set: Option<PathBuf>,
    /// A note stored with the version published by --set.
    #[arg(long, value_name = "TEXT", default_value = "", requires = "set")]
    note: String,
}

/// Runs `dbtool shard`.
pub async fn run(command: Command, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::Route(args) => route(args, ctx).await,
        Command::Map(args) => map(args, ctx).await,
        Command::Add(args) => add(args, ctx).await,
        Command::Move(args) => move_(args, ctx).await,
        Command::Ranges(args) => ranges(args, ctx).await,
    }
}

async fn ranges(args: RangesArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let tuning = MoveTuning {
        max_freeze: 500,
        freeze_attempts: 1,
        jobs: 1,
        copy_rate: 0,
        schema: args.schema,
    };
    let opts = move_options(ctx, &tuning)?;
    let changed = moves::set_identity_ranges(&opts)
        .await
        .map_err(move_error)?;
    if !ctx.quiet {
        for c in &changed {
            println!("identity range: {c}");
        }
        println!("{} sequences given their shard's range", changed.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// The mover's options from `dbtool.toml`: the catalog, every shard's
/// primary, the key columns of `[migrate.sharding]`.
fn move_options(ctx: &Context, tuning: &MoveTuning) -> anyhow::Result<moves::Options> {
    let shard = &ctx.config.shard;
    let catalog = shard
        .catalog_config()
        .map_err(|e| usage(e.into()))?
        .ok_or_else(|| {
            usage(anyhow::anyhow!(
                "moving buckets needs the map's catalog: set [shard] catalog in dbtool.toml"
            ))
        })?;
    let mut shards = Vec::with_capacity(shard.shards.len());
    for s in &shard.shards {
        let primary = super::pg_config(Some(&s.primary))
            .with_context(|| format!("[[shard.shards]] {:?}", s.name))
            .map_err(usage)?;
        shards.push(moves::Shard {
            name: s.name.clone(),
            primary,
        });
    }
    let sharding = &ctx.config.migrate.sharding;
    let mut opts = moves::Options::new(catalog, shards);
    opts.keys = moves::Keys {
        default: sharding.key.clone(),
        per_table: sharding.keys.clone(),
        unkeyed_tables: sharding.unkeyed_tables.clone().unwrap_or_default(),
    };
    opts.schema = tuning.schema.clone();
    opts.max_freeze = std::time::Duration::from_millis(tuning.max_freeze.max(1));
    opts.freeze_attempts = tuning.freeze_attempts.max(1);
    opts.jobs = tuning.jobs.max(1);
    opts.copy_rate = tuning.copy_rate;
    Ok(opts)
}

fn move_error(e: moves::Error) -> anyhow::Error {
    match e {
        moves::Error::Usage(_) => usage(e.into()),
        e => e.into(),
    }
}

fn printer(quiet: bool) -> impl Fn(&moves::Event) + Send + Sync {
    move |e: &moves::Event| match e {
        moves::Event::Freeze {
            held,
            switched,
            reason,
        } => {
            // The freeze is the operator's number: printed even with --quiet.
            let ms = held.as_millis();
            match (switched, reason) {
                (true, _) => println!("freeze: {ms} ms"),
                (false, r) => println!(
                    "freeze: {ms} ms (aborted: {}; writes released, catching up to retry)",
                    r.as_deref().unwrap_or("over budget")
                ),
            }
        }
        _ if quiet => {}
        moves::Event::Started {
            move_id,
            range,
            source,
            target,
            phase,
        } => println!("move {move_id}: buckets {range} {source} -> {target} ({phase})"),
        moves::Event::Copied { table, rows } => println!("  copied {table}: {rows} rows"),
        moves::Event::CaughtUp { applied } => {
            println!("  caught up ({applied} changes applied)")
        }
        moves::Event::Published { version } => {
            println!("  published shard map version {version}")
        }
        _ => {}
    }
}

async fn add(args: AddArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let opts = move_options(ctx, &args.tuning)?;
    if !opts.shards.iter().any(|s| s.name == args.name) {
        return Err(usage(anyhow::anyhow!(
            "shard {:?} is not in [[shard.shards]]: list it there with its primary URL first",
            args.name
        )));
    }
    let catalog = Catalog::connect(&opts.catalog).await?;
    let current = catalog.load(None).await?.ok_or_else(|| {
        usage(anyhow::anyhow!(
            "no shard map in the catalog {}: publish one first (`dbtool shard map --set FILE`)",
            catalog.name()
        ))
    })?;
    // The version before this shard got its first bucket: a rerun after a
    // kill finishes the same plan.
    let mut base = current.clone();
    while base.bucket_count(&args.name) > 0 && base.version() > 1 {
        match catalog.load(Some(base.version() - 1)).await? {
            Some(m) => base = m,
            None => break,
        }
    }
    let (_, goal) = moves::plan_add(&base, &args.name).map_err(move_error)?;
    if !current.shards().contains(&args.name) {
        return Err(usage(anyhow::anyhow!(
            "the map (version {}) does not name shard {:?}: publish a version listing it with no buckets once every service has it in [[shard.shards]] (`dbtool shard map --set FILE`)",
            current.version(),
            args.name
        )));
    }
    let ranged = moves::set_identity_ranges(&opts)
        .await
        .map_err(move_error)?;
    if !ctx.quiet {
        for r in &ranged {
            println!("identity range: {r}");
        }
    }
    let todo: Vec<(dbtool_shard::BucketRange, String)> = current
        .moves_to(&goal)
        .into_iter()
        .filter(|(_, _, to)| *to == args.name)
        .map(|(r, from, _)| (r, from.to_string()))
        .collect();
    if todo.is_empty() && !ctx.quiet {
        println!(
            "shard {} already owns its {} buckets (map version {})",
            args.name,
            current.bucket_count(&args.name),
            current.version()
        );
    }
    let report = printer(ctx.quiet);
    let mut version = current.version();
    for (range, _) in todo {
        let out = moves::move_buckets(&opts, range, &args.name, &report)
            .await
            .map_err(move_error)?;
        version = out.map_version;
    }
    if !ctx.quiet {
        println!(
            "shard {} added: map version {version}; finish with `dbtool shard move --finish` to delete the old copies",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn move_(args: MoveArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let opts = move_options(ctx, &args.tuning)?;
    if args.finish {
        let done = moves::finish(&opts, args.delete_batch.max(1))
            .await
            .map_err(move_error)?;
        if !ctx.quiet {
            for f in &done {
                println!(
                    "move {}: buckets {} finished, {} old rows deleted on {}",
                    f.move_id, f.range, f.rows_deleted, f.source
                );
            }
            if done.is_empty() {
                println!("no switched move to finish");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(buckets) = &args.buckets else {
        return Err(usage(anyhow::anyhow!(
            "--buckets A-B and --to NAME, --buckets A-B --rollback, or --finish"
        )));
    };
    let range: dbtool_shard::BucketRange = buckets
        .parse()
        .map_err(|e: dbtool_shard::Error| usage(anyhow::anyhow!("--buckets {buckets}: {e}")))?;
    let report = printer(ctx.quiet);
    if args.rollback {
        moves::rollback(&opts, range, &report)
            .await
            .map_err(move_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(to) = &args.to else {
        return Err(usage(anyhow::anyhow!(
            "--buckets {buckets} needs --to NAME (the shard that takes them) or --rollback"
        )));
    };
    moves::move_buckets(&opts, range, to, &report)
        .await
        .map_err(move_error)?;
    Ok(ExitCode::SUCCESS)
}

async fn route(args: RouteArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let map = load(&args.source, ctx).await?;
    let mut failed = false;
    for team in &args.team_ids {
        match map.shard_of(team) {
            Ok(shard) => println!("{team} {shard}"),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn map(args: MapArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    if let Some(file) = &args.set {
        let map = map_from_file(file)?;
        let catalog = catalog_of(&args.source, ctx)?.ok_or_else(|| {
            usage(anyhow::anyhow!(
                "--set needs a catalog: pass --map postgres://... or set [shard] catalog in dbtool.toml"
            ))
        })?;
        let catalog = Catalog::connect(&catalog).await?;
        let version = catalog.publish(&map, &args.note).await?;
        if !ctx.quiet {
            println!(
                "published shard map version {version} to {}",
                catalog.name()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut map = load(&args.source, ctx).await?;
    let current = map.clone();
    if let Some(name) = &args.add_shard {
        map = map.with_shard_added(name).map_err(|e| usage(e.into()))?;
    }
    if args.toml {
        let mut file = toml::Table::new();
        file.insert(
            "shard".into(),
            toml::Value::try_from(dbtool_shard::Config::for_map(&map))?,
        );
        print!("{}", toml::to_string(&file)?);
        return Ok(ExitCode::SUCCESS);
    }
    let teams = match &args.teams_from {
        Some(url) => Some(count_teams(&map, url, &args.teams_query).await?),
        None => None,
    };
    print_map(&map, teams.as_ref());
    if args.add_shard.is_some() {
        println!(
            "\nmoves from version {} (publish with --toml > FILE, then --set FILE):",
            current.version()
        );
        for (range, from, to) in current.moves_to(&map) {
            println!("  buckets {range:<10} {from} -> {to}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct TeamCounts {
    per_shard: BTreeMap<String, u64>,
    unroutable: Vec<String>,
}

async fn count_teams(map: &ShardMap, url: &str, query: &str) -> anyhow::Result<TeamCounts> {
    let config: dbtool_pool::Target = url.parse().map_err(|e| {
        usage(anyhow::anyhow!(
            "--teams-from {} is not a Postgres URL: {e}",
            dbtool_pool::mask_password(url)
        ))
    })?;
    let (client, conn) = config.connect_raw().await?;
    let conn = tokio::spawn(conn);
    let rows = client
        .query(query, &[])
        .await
        .with_context(|| format!("cannot list teams with {query:?} (set --teams-query)"))?;
    conn.abort();
    let mut counts = TeamCounts {
        per_shard: BTreeMap::new(),
        unroutable: Vec::new(),
    };
    for row in rows {
        let team: Option<String> = row
            .try_get(0)
            .context("the teams query's first column must be text")?;
        let team = team.unwrap_or_default();
        match map.shard_of(&team) {
            Ok(shard) => *counts.per_shard.entry(shard.to_string()).or_default() += 1,
            Err(_) => counts.unroutable.push(team),
        }
    }
    Ok(counts)
}

fn print_map(map: &ShardMap, teams: Option<&TeamCounts>) {
    let n = map.shards().len();
    match map.scheme() {
        Scheme::Buckets => println!(
            "shard map version {} (buckets: xxh3_64(team_id) % 4096, {n} shards)",
            map.version()
        ),
        Scheme::Hex8Modulo => println!(
            "shard map version {} (hex8-modulo: parseInt(teamId.substring(0, 8), 16) % {n})",
            map.version()
        ),
    }
    let width = map
        .shards()
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .max(5);
    let teams_col = |shard: &str| match teams {
        Some(t) => format!("  {:>8}", t.per_shard.get(shard).copied().unwrap_or(0)),
        None => String::new(),
    };
    let teams_head = if teams.is_some() { "     TEAMS" } else { "" };
    match map.scheme() {
        Scheme::Buckets => {
            println!(
                "{:<width$}  {:>7}  {:>6}{teams_head}  RANGES",
                "SHARD", "BUCKETS", "SHARE"
            );
            for shard in map.shards() {
                let count = map.bucket_count(shard);
                let ranges: Vec<String> = map
                    .ranges_of(shard)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                println!(
                    "{shard:<width$}  {count:>7}  {:>5.1}%{}  {}",
                    count as f64 * 100.0 / 4096.0,
                    teams_col(shard),
                    if ranges.is_empty() {
                        "-".to_string()
                    } else {
                        ranges.join(",")
                    }
                );
            }
        }
        Scheme::Hex8Modulo => {
            println!("{:<width$}  {:>5}{teams_head}", "SHARD", "INDEX");
            for (i, shard) in map.shards().iter().enumerate() {
                println!("{shard:<width$}  {i:>5}{}", teams_col(shard));
            }
        }
    }
    if let Some(t) = teams {
        if !t.unroutable.is_empty() {
            let sample: Vec<&str> = t.unroutable.iter().take(5).map(String::as_str).collect();
            println!(
                "{} unroutable team ids, e.g. {sample:?}",
                t.unroutable.len()
            );
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The catalog: `--map URL`, else `[shard] catalog` (unless --map FILE or --shards).
fn catalog_of(source: &MapSource, ctx: &Context) -> anyhow::Result<Option<dbtool_pool::Target>> {
    match &source.map {
        Some(m) if is_url(m) => Ok(Some(m.parse().map_err(|e| {
            usage(anyhow::anyhow!(
                "--map {} is not a Postgres URL: {e}",
                dbtool_pool::mask_password(m)
            ))
        })?)),
        Some(_) => Ok(None),
        None if source.shards.is_some() => Ok(None),
        None => ctx
            .config
            .shard
            .catalog_config()
            .map_err(|e| usage(e.into())),
    }
}

fn scheme_of(source: &MapSource, ctx: &Context) -> anyhow::Result<Scheme> {
    match &source.scheme {
        Some(s) => s.parse().map_err(|e: dbtool_shard::Error| usage(e.into())),
        None => Ok(ctx.config.shard.scheme),
    }
}

async fn load(source: &MapSource, ctx: &Context) -> anyhow::Result<ShardMap> {
    let scheme = scheme_of(source, ctx)?;
    if let Some(n) = source.shards {
        return ShardMap::even_n(scheme, n).map_err(|e| usage(e.into()));
    }
    let map = if let Some(catalog) = catalog_of(source, ctx)? {
        let catalog = Catalog::connect(&catalog).await?;
        match catalog.load(None).await? {
            Some(map) => map,
            None if source.map.is_none() => ctx.config.shard.map().map_err(|e| usage(e.into()))?,
            None => {
                return Err(dbtool_shard::Error::NoMap {
                    catalog: catalog.name().to_string(),
                }
                .into())
            }
        }
    } else if let Some(file) = &source.map {
        map_from_file(&PathBuf::from(file))?
    } else {
        ctx.config.shard.map().map_err(|e| usage(e.into()))?
    };
    if source.scheme.is_some() && map.scheme() != scheme {
        return Err(usage(anyhow::anyhow!(
            "--scheme {scheme} differs from the map's scheme {}: drop --scheme, or use --shards N",
            map.scheme()
        )));
    }
    Ok(map)
}

/// A map from a TOML file: a whole dbtool.toml (its `[shard]` table) or the
/// contents of a `[shard]` table.
fn map_from_file(path: &PathBuf) -> anyhow::Result<ShardMap> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read shard map file {}", path.display()))
        .map_err(usage)?;
    let value: toml::Table = toml::from_str(&text)
        .with_context(|| format!("invalid TOML in {}", path.display()))
        .map_err(usage)?;
    let table = match value.get("shard") {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => value,
    };
    let config: dbtool_shard::Config = table
        .try_into()
        .with_context(|| format!("invalid [shard] table in {}", path.display()))
        .map_err(usage)?;
    config
        .map()
        .with_context(|| format!("invalid shard map in {}", path.display()))
        .map_err(usage)
}
