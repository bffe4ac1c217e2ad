//! Identifier mapping: any SQLite name becomes a valid, unique Postgres name.
//!
//! Every name is always quoted in the SQL we generate, so spaces, quotes and
//! reserved words (`user`, `order`, `select`) need no mapping at all. What
//! does need mapping:
//!
//! - **Case** ([`Fold::Lower`], the default): SQLite compares identifiers
//!   ASCII-case-insensitively (`Album` and `album` are the same table), while
//!   Postgres folds unquoted names to lowercase. Folding to ASCII lowercase
//!   therefore never merges two SQLite names, and lets application SQL keep
//!   writing `SELECT * FROM Album` unquoted. [`Fold::Preserve`] keeps the case
//!   (then unquoted SQL must quote mixed-case names).
//! - **Length**: Postgres truncates names to 63 bytes. A longer name is cut at
//!   a character boundary and given a hash suffix of the full name
//!   (`<first 54 bytes>_<8 hex>`), so two long names sharing a prefix stay apart
//!   and the result is the same on every run.
//! - **Empty names** become `_` plus a hash suffix.
//! - **Collisions** left after that (vanishingly rare) get `_2`, `_3`, ...

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Postgres's identifier limit (NAMEDATALEN - 1).
pub const MAX_LEN: usize = 63;

/// How names are folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fold {
    /// ASCII lowercase (default): unquoted Postgres SQL finds the tables.
    #[default]
    Lower,
    /// Keep the SQLite spelling exactly (must be quoted in Postgres SQL if not lowercase).
    Preserve,
}

/// Postgres's system columns: no user column may have these names.
pub const SYSTEM_COLUMNS: &[&str] = &["tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"];

/// Quotes a Postgres identifier (`"a""b"`).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes `schema.name`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote(schema), quote(name))
}

/// A Postgres string literal (`'it''s'`); the text must hold no NUL.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Hands out unique names within one namespace (a schema's relations, or one
/// table's columns).
#[derive(Debug, Clone, Default)]
pub struct Namer {
    fold: Fold,
    used: BTreeSet<String>,
}

impl Namer {
    /// A namer with no names taken.
    pub fn new(fold: Fold) -> Namer {
        Namer {
            fold,
            used: BTreeSet::new(),
        }
    }

    /// A namer for one table's columns: Postgres's system column names
    /// (`ctid`, `xmin`, `tableoid`...) are taken from the start, since
    /// `CREATE TABLE` refuses a column of that name; a SQLite column `xmin`
    /// becomes `xmin_2`.
    pub fn for_columns(fold: Fold) -> Namer {
        let mut namer = Namer::new(fold);
        for system in SYSTEM_COLUMNS {
            namer.reserve(system);
        }
        namer
    }

    /// Marks `name` as taken (exactly as given).
    pub fn reserve(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// The Postgres name for `name`, unique in this namespace.
    pub fn map(&mut self, name: &str) -> String {
        let base = self.base(name);
        let mut candidate = base.clone();
        let mut n = 2;
        while self.used.contains(&candidate) {
            let suffix = format!("_{n}");
            candidate = format!("{}{suffix}", cut(&base, MAX_LEN - suffix.len()));
            n += 1;
        }
        self.used.insert(candidate.clone());
        candidate
    }

    /// The folded, length-limited form before de-duplication.
    pub fn base(&self, name: &str) -> String {
        let folded = match self.fold {
            Fold::Lower => name.to_ascii_lowercase(),
            Fold::Preserve => name.to_string(),
        };
        // Postgres identifiers cannot hold NUL.
        let folded = folded.replace('\0', "_");
        if folded.is_empty() {
            return format!("_{}", short_hash(name));
        }
        if folded.len() <= MAX_LEN {
            return folded;
        }
        let h = short_hash(name);
        format!("{}_{h}", cut(&folded, MAX_LEN - 1 - h.len()))
    }
}

/// 8 hex digits of the xxh3 hash of `name`.
pub fn short_hash(name: &str) -> String {
    format!(
        "{:08x}",
        xxhash_rust::xxh3::xxh3_64(name.as_bytes()) & 0xffff_ffff
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What kind of identifier a [`Mapping`] renames. Stored as `table`,
/// `column`, `index`, `constraint`, `view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    /// A table.
    Table,
    /// A column.
    Column,
    /// An index.
    Index,
    /// A constraint.
    Constraint,
    /// A view.
    View,
}

impl std::fmt::Display for MappingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MappingKind::Table => "table",
            MappingKind::Column => "column",
            MappingKind::Index => "index",
            MappingKind::Constraint => "constraint",
            MappingKind::View => "view",
        })
    }
}

/// One renamed identifier, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// What was renamed.
    pub kind: MappingKind,
    /// The table a column/index/constraint belongs to (its SQLite name).
    pub table: Option<String>,
    /// The SQLite name.
    pub source: String,
    /// The Postgres name.
    pub target: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_column_names_are_mapped_away() {
        let mut n = Namer::for_columns(Fold::Lower);
        assert_eq!(n.map("XMIN"), "xmin_2");
        assert_eq!(n.map("ctid"), "ctid_2");
        assert_eq!(n.map("id"), "id");
        // Tables may use the names.
        assert_eq!(Namer::new(Fold::Lower).map("xmin"), "xmin");
    }

    #[test]
    fn lower_fold_keeps_short_names_and_lowercases() {
        let mut n = Namer::new(Fold::Lower);
        assert_eq!(n.map("Order Details"), "order details");
        assert_eq!(n.map("user"), "user");
        assert_eq!(n.map("A\"b\"c"), "a\"b\"c");
    }

    #[test]
    fn long_names_that_share_63_bytes_stay_distinct_and_fit() {
        let a = "col_very_long_name_that_exceeds_postgresql_identifier_limit_aaax";
        let b = "col_very_long_name_that_exceeds_postgresql_identifier_limit_aaay";
        let mut n = Namer::new(Fold::Lower);
        let (ma, mb) = (n.map(a), n.map(b));
        assert_ne!(ma, mb);
        assert!(ma.len() <= MAX_LEN && mb.len() <= MAX_LEN);
        // Deterministic.
        let mut n2 = Namer::new(Fold::Lower);
        assert_eq!(n2.map(a), ma);
    }

    #[test]
    fn empty_and_colliding_names_get_suffixes() {
        let mut n = Namer::new(Fold::Preserve);
        let e = n.map("");
        assert!(e.starts_with('_') && e.len() == 9);
        n.reserve("x");
        assert_eq!(n.map("x"), "x_2");
        assert_eq!(n.map("x"), "x_3");
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("\"\""), "\"\"\"\"\"\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
