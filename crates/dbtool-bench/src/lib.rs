//! dbtool's benchmarks: each scenario measures a piece of dbtool next to the tool a
//! user would otherwise pick, on the same servers in the same run, and prints one
//! [`Record`] per number. `scripts/bench` runs the scenarios, collects the records
//! and writes docs/benchmarks.md, judging each goal of [`TARGETS`].
//!
//! The crate is `publish = false` and the only one that depends on the peers
//! (deadpool, fred, pgbouncer's and redis-benchmark's harnesses): the crates being
//! measured, and the data generator, carry none of it.
//!
//! ```no_run
//! use dbtool_bench::{rotated, Args, Record};
//!
//! let args = Args::parse(); // --quick, --runs N, --seconds S
//! for run in 1..=args.runs {
//!     for who in rotated(&["dbtool", "the peer"], run) {
//!         let ms = 1.0; // measure `who` here
//!         Record::value("example", who, "wall_s", run, ms / 1e3, "s").emit();
//!     }
//! }
//! ```
//!
//! # What runs where
//!
//! - **Rust scenarios** are the bench targets of this crate (`benches/pool.rs`,
//!   `benches/shard.rs`, `benches/cache.rs`): plain programs (`harness = false`)
//!   that start what they need through `dbtool-testkit` (a Postgres primary and
//!   replica, four shard servers, a 6-node Redis Cluster, pgbouncer) and print
//!   records on stdout, progress on stderr.
//! - **Process-level sections** (`migrate`, `verify`) are shell, in
//!   `scripts/bench.d/<scenario>.sh`: they time the `dbtool` binary and its peers
//!   (pgloader, `psql \copy`) with `/usr/bin/time` on a benchmark server, and write
//!   the same nine fields.
//! - **`targets.toml`** (next to this crate's Cargo.toml, [`TARGETS`]) is the one
//!   data file the report reads: the metrics, the sections and their scenario, and
//!   the goals with the issue that set each.
//!
//! # Adding a scenario
//!
//! 1. Write `benches/<scenario>.rs`: a `main` that reads [`Args`], starts its
//!    servers through `dbtool-testkit`, runs dbtool and the peer `args.runs` times
//!    each in [`rotated`] order, and [`Record::emit`]s every number (one record
//!    per metric and run; [`Record::missing`] with the reason when a contender
//!    cannot run, e.g. a peer that is not installed). With `--quick`, keep it to
//!    seconds: CI runs it to check it works, not for its numbers. A closed loop
//!    of concurrent calls is [`closed_loop`]; its [`Loop::records`] gives the
//!    throughput and p50/p99 records.
//! 2. Add it to `Cargo.toml`: a `[[bench]]` with `name = "<scenario>"` and
//!    `harness = false`, and the crates it needs under `[dev-dependencies]`.
//! 3. Declare in `targets.toml` every section it prints (`scenario = "<scenario>"`,
//!    the metric to chart), any new metric, and its goals. `scripts/bench` then
//!    runs it with the others (`scripts/bench --only <scenario>` alone), and
//!    `cargo test -p dbtool-bench` checks the file.
//!
//! Run it alone while writing it:
//! `cargo bench -p dbtool-bench --bench <scenario> -- --quick`.
//!
//! A benchmark that a crate keeps as its own example program (it needs that
//! crate's internals, and its owners run it while they work) joins as
//! `scripts/bench.d/<scenario>.sh` instead of a bench target: a `bench_<scenario>`
//! function that runs it with `run_example` (the run's cargo profile, a
//! timeout), short with `BENCH_QUICK=1`, and turns its printed lines into
//! records with `record_lines`, recording a line it cannot find as missing
//! (`scripts/bench.d/sync.sh` is one). Step 3 is the same.
//!
//! A section name says what is measured (`sync-lag`, `shard-move`), a contender
//! name who (`dbtool ...` for dbtool's side, so the chart colours it), and a
//! metric's key ends in its unit (`_s`, `_us`, `_mib`, `_per_s`).

mod args;
mod measure;
mod record;

pub use args::Args;
pub use measure::{closed_loop, load1, rotated, Loop};
pub use record::{Outcome, Record};

/// The report's data file: metrics, sections (with the scenario that fills each)
/// and goals. `scripts/bench.d/report.py` reads the same file.
pub const TARGETS: &str = include_str!("../targets.toml");
