//! Deterministic forums.db generator for demos, tests and benchmarks.
//!
//! It writes a SQLite file shaped like a real forums web app that grew for a few
//! years: teams with UUID text ids, users, forums, topics, posts, wiki pages and a
//! global `settings` table, with the hazards such files carry (ISO text and epoch
//! integers in `DATETIME` columns, `BOOLEAN` 0/1, nullable columns, blobs, unicode and
//! emoji, `AUTOINCREMENT` with gaps and `sqlite_sequence` above `max(id)`, a partial
//! and a unique index, foreign keys). Every table but `settings` has a `team_id`, the
//! sharding key.
//!
//! The same `seed` and `scale` always produce the same file, byte for byte, with the
//! same bundled SQLite. Scale 1 is about 100k rows (about 56 MB); [`BENCH_SCALE`] is
//! the benchmark size, about 1.1M rows and 600 MB.
//!
//! ```no_run
//! let summary = dbtool_sample::generate(&dbtool_sample::Options {
//!     scale: 1.0,
//!     seed: 42,
//!     out: "forums.db".into(),
//!     overwrite: false,
//! })?;
//! println!("{summary}");
//! # Ok::<(), dbtool_sample::Error>(())
//! ```

mod error;
mod generate;
mod schema;
mod text;
pub mod workload;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use error::Error;
pub use generate::generate;
pub use schema::TABLE_NAMES;

/// The scale of the benchmark file: about 1.1M rows and 600 MB.
pub const BENCH_SCALE: f64 = 11.0;

/// The seed used when none is given.
pub const DEFAULT_SEED: u64 = 42;

/// What to generate and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Size multiplier: 1.0 is about 100k rows. Fractions are allowed (0.01 is about
    /// 1k rows, handy in tests). Every table keeps at least one row.
    pub scale: f64,
    /// Seed of the random generator; the same seed gives the same file.
    pub seed: u64,
    /// The SQLite file to write.
    pub out: PathBuf,
    /// Replace `out` if it exists (otherwise [`Error::Exists`]).
    pub overwrite: bool,
}

impl Options {
    /// Scale 1, the default seed, no overwrite.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            scale: 1.0,
            seed: DEFAULT_SEED,
            out: out.into(),
            overwrite: false,
        }
    }
}

/// Rows written to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRows {
    /// The table name.
    pub table: &'static str,
    /// Rows in it.
    pub rows: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The file written.
    pub path: PathBuf,
    /// Rows per table, in [`TABLE_NAMES`] order.
    pub tables: Vec<TableRows>,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl Summary {
    /// Rows across all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

impl fmt::Display for Summary {
    /// One line: `wrote forums.db: 99,760 rows (teams 20, ...), 55.8 MB in 3.0 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {}: {} rows (",
            self.path.display(),
            thousands(self.total_rows())
        )?;
        for (i, t) in self.tables.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", t.table, thousands(t.rows))?;
        }
        write!(
            f,
            "), {:.1} MB in {:.1} s",
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The rows [`generate`] writes per table at `scale`, in [`TABLE_NAMES`] order.
///
/// Known before generating, so callers (benchmarks, tests) can check counts.
pub fn planned_rows(scale: f64) -> Result<Vec<TableRows>, Error> {
    let c = generate::Counts::new(scale)?;
    Ok(c.tables())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_097_360), "1,097,360");
    }

    #[test]
    fn scale_one_plans_about_100k_rows() {
        let total: u64 = planned_rows(1.0).unwrap().iter().map(|t| t.rows).sum();
        assert!((95_000..=105_000).contains(&total), "{total}");
    }

    #[test]
    fn bench_scale_plans_about_1_1m_rows() {
        let total: u64 = planned_rows(BENCH_SCALE)
            .unwrap()
            .iter()
            .map(|t| t.rows)
            .sum();
        assert!((1_050_000..=1_150_000).contains(&total), "{total}");
    }

    #[test]
    fn nonpositive_scale_is_rejected() {
        assert!(matches!(planned_rows(0.0), Err(Error::Scale { .. })));
        assert!(matches!(planned_rows(-1.0), Err(Error::Scale { .. })));
        assert!(matches!(planned_rows(f64::NAN), Err(Error::Scale { .. })));
    }
}
