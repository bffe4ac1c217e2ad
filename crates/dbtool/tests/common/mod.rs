//! Running the real `dbtool` binary from the tests: one place that builds
//! the command with a clean environment (no DATABASE_URL, DBTOOL_CONFIG,
//! PG* variables from the machine running the tests), so every test file
//! calls it the same way.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The libpq variables a test must not inherit: the target is always given
/// explicitly.
pub const PG_VARS: [&str; 7] = [
    "DATABASE_URL",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "DBTOOL_CONFIG",
];

/// `dbtool` run in `dir` with the machine's target variables removed.
pub fn dbtool(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dbtool"));
    c.current_dir(dir);
    for v in PG_VARS {
        c.env_remove(v);
    }
    c
}

/// Runs `dbtool ARGS` in `dir` to the end.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    dbtool(dir).args(args).output().expect("run dbtool")
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
