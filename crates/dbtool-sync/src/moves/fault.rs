//! Fault points for crash tests: with `DBTOOL_FAULT=move:<point>` in its
//! environment, the mover aborts the process (no destructor, no cleanup,
//! like `kill -9`) when it reaches `<point>`. Unset, a point does nothing
//! but compare a cached value. Test-only: nothing else sets the variable.
//!
//! The points, in the order a move reaches them: `mid-copy` (a table's
//! rows partly sent, its target transaction open), `copied-table` (the
//! first table's copy committed), `caught-up`, `fence-taken` (the freeze's
//! lock held), `drained`, `checked`, `published` (the new map version
//! published, the forward slot not yet dropped), `finish-deleting` (the
//! first batch of old copies deleted by `--finish`); a rollback reaches
//! the same switch points prefixed `rollback-`, and `rollback-deleting`.

use std::sync::OnceLock;

/// The variable naming the point to abort at.
pub const VAR: &str = "DBTOOL_FAULT";

/// Aborts the process if `DBTOOL_FAULT` is `move:<name>`.
pub(crate) fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var(VAR)
            .ok()
            .and_then(|v| v.strip_prefix("move:").map(str::to_string))
    });
    if at.as_deref() == Some(name) {
        eprintln!("{VAR}=move:{name}: aborting the process here");
        std::process::abort();
    }
}
