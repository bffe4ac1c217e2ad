//! Times the planning phases of a migration on a SQLite file, writing
//! nothing: `cargo run --release -p dbtool-migrate --example plan_phases -- forums.db`.
//! With `--load` after the file it profiles as `dbtool migrate` does
//! (`Profiling::Load`), else as `dbtool plan` does.
//! Used for the planning numbers in scripts/bench.d/notes.md.

use std::path::Path;
use std::time::Instant;

use dbtool_migrate::{plan, source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(file) = std::env::args().nth(1) else {
        eprintln!("usage: plan_phases FILE.db");
        std::process::exit(2);
    };
    let path = Path::new(&file);
    let t0 = Instant::now();
    let conn = source::open(path)?;
    let src = source::inspect(&conn, path)?;
    let inspect = t0.elapsed();
    let profiling = match std::env::args().nth(2).as_deref() {
        Some("--load") => plan::Profiling::Load,
        _ => plan::Profiling::Full,
    };
    let (p, t) = plan::plan_timed_with(
        &conn,
        &src,
        &plan::PlanConfig::default(),
        "public",
        profiling,
    )?;
    let rows: u64 = p.tables.iter().map(|t| t.rows).sum();
    println!(
        "{profiling:?}: {rows} rows in {} tables: inspect {:.3} s, profile {:.3} s, orphan check {:.3} s, rest of plan {:.3} s",
        p.tables.len(),
        inspect.as_secs_f64(),
        t.profile.as_secs_f64(),
        t.orphans.as_secs_f64(),
        (t.total - t.profile - t.orphans).as_secs_f64()
    );
    Ok(())
}
