//! `[migrate.columns."table.column"]` keys checked against the source: an
//! override that names no table or column of the file is a typo, and a typo
//! silently ignored means the column is migrated the way the user tried to
//! prevent. It is a usage error (exit 2) naming the key and the closest
//! existing `table.column`.

use std::path::Path;

use anyhow::Context as _;
use dbtool_migrate::plan::PlanConfig;
use dbtool_migrate::source::Source;

/// Opens and inspects `from` (only when there are overrides) and checks them.
pub async fn check_file(config: &PlanConfig, from: &Path) -> anyhow::Result<()> {
    if config.columns.is_empty() {
        return Ok(());
    }
    let path = from.to_path_buf();
    let source = tokio::task::spawn_blocking(move || -> Result<Source, dbtool_migrate::Error> {
        let conn = dbtool_migrate::source::open(&path)?;
        dbtool_migrate::source::inspect(&conn, &path)
    })
    .await
    .context("the inspecting thread panicked")??;
    check(config, &source)
}

/// Every key of `config.columns` must be `table.column` of `source`
/// (case-insensitive, as the planner matches them).
pub fn check(config: &PlanConfig, source: &Source) -> anyhow::Result<()> {
    let known: Vec<String> = source
        .tables
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .map(move |c| format!("{}.{}", t.name, c.name))
        })
        .collect();
    for key in config.columns.keys() {
        if known.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        let closest = known
            .iter()
            .min_by_key(|k| distance(&k.to_lowercase(), &key.to_lowercase()))
            .map(|k| format!("; did you mean \"{k}\"?"))
            .unwrap_or_default();
        return Err(super::usage(anyhow::anyhow!(
            "[migrate.columns.\"{key}\"] in the config names no column of {}: keys are \"table.column\" with the source's names{closest}",
            source.path
        )));
    }
    Ok(())
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::distance;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("posts.body", "posts.body"), 0);
        assert_eq!(distance("posts.nosuchcol", "posts.score"), 7);
        assert_eq!(distance("post.body", "posts.body"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
