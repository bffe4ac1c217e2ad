//! Writes a sample forums.db without building the whole `dbtool` binary.
//!
//! ```text
//! cargo run --release -p dbtool-sample --example sample -- <scale> <out> [seed] [--force]
//! ```
//! `dbtool sample` is the user-facing command; this exists so benchmarks and
//! other crates' tests can make a file while the binary is being rebuilt.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let force = args.iter().any(|a| a == "--force");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(scale), Some(out)) = (pos.first(), pos.get(1)) else {
        eprintln!("usage: sample <scale> <out> [seed] [--force]");
        return ExitCode::from(2);
    };
    let Ok(scale) = scale.parse::<f64>() else {
        eprintln!("error: scale must be a number, got {scale:?}");
        return ExitCode::from(2);
    };
    let seed = match pos.get(2).map(|s| s.parse::<u64>()) {
        None => dbtool_sample::DEFAULT_SEED,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            eprintln!("error: seed must be an unsigned integer");
            return ExitCode::from(2);
        }
    };
    let options = dbtool_sample::Options {
        scale,
        seed,
        out: out.into(),
        overwrite: force,
    };
    match dbtool_sample::generate(&options) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
