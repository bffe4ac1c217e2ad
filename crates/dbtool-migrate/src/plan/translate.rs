//! SQL translation from SQLite to Postgres: expressions (CHECK, index
//! predicates and expressions), views, column defaults and indexes.
//! Identifiers are mapped to their Postgres names; anything not understood
//! is left as written for Postgres to judge when the object is created.

use rusqlite::types::ValueRef;

use super::model::ColumnPlan;
use super::types::Class;
use super::Names;
use crate::cast::real_text;
use crate::ident;
use crate::profile;
use crate::source::{self, Table};
use crate::value::{PgType, Value};

pub(super) fn translate_index(
    ix: &source::Index,
    t: &Table,
    name: &str,
    qt: &str,
    names: &Names<'_>,
    bools: &[&str],
) -> Result<String, String> {
    let sql = ix.sql.as_deref().ok_or("automatic index without SQL")?;
    // CREATE [UNIQUE] INDEX [IF NOT EXISTS] name ON table (parts) [WHERE expr]
    let open = find_on_paren(sql).ok_or("cannot find the indexed columns")?;
    let close = source::matching_paren(sql, open).ok_or("unbalanced parentheses")?;
    let parts = split_top(&sql[open + 1..close]);
    let mut out_parts = Vec::new();
    for part in parts {
        let p = strip_collate(part.trim());
        out_parts.push(translate_expr(&p, Some(&t.name), names));
    }
    let rest = sql[close + 1..].trim();
    let mut where_clause = String::new();
    if !rest.is_empty() {
        let upper = rest.to_ascii_uppercase();
        if let Some(w) = upper.strip_prefix("WHERE") {
            let expr = &rest[rest.len() - w.len()..];
            let pred = translate_expr(expr.trim(), Some(&t.name), names);
            where_clause = format!(" WHERE {}", boolean_comparisons(&pred, bools));
        }
    }
    Ok(format!(
        "CREATE {}INDEX {} ON {qt} ({}){where_clause}",
        if ix.unique { "UNIQUE " } else { "" },
        ident::quote(name),
        out_parts.join(", ")
    ))
}

/// SQLite stores booleans as 0/1, so predicates compare them with integers
/// (`pinned = 1`); once the column is `boolean`, Postgres has no
/// `boolean = integer` operator. Rewrites those comparisons for the columns
/// planned as boolean.
fn boolean_comparisons(pred: &str, bools: &[&str]) -> String {
    let mut out = pred.to_string();
    for col in bools {
        let q = ident::quote(col);
        for (op, lit, truth) in [
            ("=", "1", true),
            ("==", "1", true),
            ("=", "0", false),
            ("==", "0", false),
            ("!=", "0", true),
            ("<>", "0", true),
            ("!=", "1", false),
            ("<>", "1", false),
        ] {
            for spaced in [format!("{q} {op} {lit}"), format!("{q}{op}{lit}")] {
                let with = if truth { q.clone() } else { format!("NOT {q}") };
                out = replace_whole(&out, &spaced, &with);
            }
        }
    }
    out
}

/// Replaces `from` where it is not followed by another digit (`= 1` must not
/// match inside `= 10`).
fn replace_whole(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The `(` that opens the indexed columns of `CREATE INDEX name ON table (...)`:
/// the first one after the keyword `ON`, both outside quoted names and
/// strings. Names are hostile input: a table named `t (x); DROP ...` must not
/// be taken for the column list.
fn find_on_paren(sql: &str) -> Option<usize> {
    let b = sql.as_bytes();
    let mut quote: Option<u8> = None;
    let mut seen_on = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == q || (q == b'[' && c == b']') {
                quote = None;
            }
        } else {
            match c {
                b'\'' | b'"' | b'`' | b'[' => quote = Some(c),
                b'(' if seen_on => return Some(i),
                b'O' | b'o'
                    if !seen_on
                        && b.get(i + 1).is_some_and(|n| n.eq_ignore_ascii_case(&b'N'))
                        && (i == 0
                            || matches!(
                                b[i - 1],
                                b' ' | b'\t' | b'\n' | b'\r' | b'"' | b']' | b'`'
                            ))
                        && b.get(i + 2).is_none_or(|n| {
                            matches!(n, b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'[' | b'`')
                        }) =>
                {
                    seen_on = true;
                    i += 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn find_word(upper: &str, w: &str) -> Option<usize> {
    let b = upper.as_bytes();
    let mut start = 0;
    while let Some(i) = upper[start..].find(w) {
        let at = start + i;
        let ok_b = at == 0
            || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'"');
        let end = at + w.len();
        let ok_a =
            end >= b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'"');
        if ok_b && ok_a {
            return Some(at);
        }
        start = end;
    }
    None
}

fn strip_collate(p: &str) -> String {
    let upper = p.to_ascii_uppercase();
    match find_word(&upper, "COLLATE") {
        Some(i) => {
            let after = p[i + 7..].trim_start();
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            format!("{} {}", p[..i].trim_end(), after[end..].trim())
                .trim()
                .to_string()
        }
        None => p.to_string(),
    }
}

/// Splits on commas outside parentheses and quotes.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    let mut q: Option<char> = None;
    for ch in s.chars() {
        if let Some(qc) = q {
            cur.push(ch);
            if ch == qc || (qc == '[' && ch == ']') {
                q = None;
            }
            continue;
        }
        match ch {
            '\'' | '"' | '`' | '[' => {
                q = Some(ch);
                cur.push(ch);
            }
            '(' => {
                depth += 1;
                cur.push(ch);
            }
            ')' => {
                depth -= 1;
                cur.push(ch);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Translates a SQLite expression or query to Postgres: identifiers are
/// mapped to their Postgres names (quoted), `==` becomes `=`, `IFNULL`
/// becomes `COALESCE`. Anything else is left as written; Postgres judges it
/// when the object is created, and failures are reported.
pub(super) fn translate_expr(sql: &str, table: Option<&str>, names: &Names<'_>) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 16);
    let mut i = 0;
    let mut prev_word = String::new();
    let map_ident = |raw: &str, quoted: bool, next_is_paren: bool, prev: &str| -> String {
        if !quoted && next_is_paren {
            return match raw.to_ascii_lowercase().as_str() {
                "ifnull" => "coalesce".into(),
                _ => raw.to_string(),
            };
        }
        if let Some(t) = table {
            if let Some(c) = names.column(t, raw) {
                return ident::quote(c);
            }
        }
        if let Some(t) = names.table(raw) {
            return ident::quote(t);
        }
        if let Some(c) = names.any_column(raw) {
            return ident::quote(c);
        }
        if quoted {
            let _ = prev;
            ident::quote(&names.fold(raw))
        } else {
            raw.to_string()
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let mut name = String::new();
                i += 1;
                let start = i;
                let mut seg = start;
                while i < b.len() {
                    if b[i] == close {
                        if close != b']' && i + 1 < b.len() && b[i + 1] == close {
                            name.push_str(&sql[seg..=i]);
                            i += 2;
                            seg = i;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                name.push_str(&sql[seg..i.min(b.len())]);
                i = (i + 1).min(b.len());
                let next_paren = sql[i..].trim_start().starts_with('(');
                out.push_str(&map_ident(&name, true, next_paren, &prev_word));
                prev_word.clear();
            }
            b'=' if i + 1 < b.len() && b[i + 1] == b'=' => {
                out.push('=');
                i += 2;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &sql[start..i];
                let next_paren = sql[i..].trim_start().starts_with('(');
                if is_keyword(word) {
                    out.push_str(word);
                } else {
                    out.push_str(&map_ident(word, false, next_paren, &prev_word));
                }
                prev_word = word.to_ascii_uppercase();
            }
            _ if c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn is_keyword(w: &str) -> bool {
    const KW: &[&str] = &[
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "NULL",
        "IS",
        "IN",
        "AS",
        "ON",
        "JOIN",
        "LEFT",
        "RIGHT",
        "INNER",
        "OUTER",
        "CROSS",
        "FULL",
        "GROUP",
        "BY",
        "ORDER",
        "HAVING",
        "LIMIT",
        "OFFSET",
        "UNION",
        "ALL",
        "DISTINCT",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "LIKE",
        "BETWEEN",
        "EXISTS",
        "ASC",
        "DESC",
        "TRUE",
        "FALSE",
        "CAST",
        "INTERSECT",
        "EXCEPT",
        "USING",
        "NATURAL",
        "WITH",
        "RECURSIVE",
        "ESCAPE",
        "COLLATE",
        "GLOB",
        "REGEXP",
        "ISNULL",
        "NOTNULL",
        "VALUES",
        "CURRENT_TIMESTAMP",
        "CURRENT_DATE",
        "CURRENT_TIME",
        "INTEGER",
        "TEXT",
        "REAL",
        "NUMERIC",
        "BLOB",
        "FILTER",
        "OVER",
        "PARTITION",
    ];
    KW.iter().any(|k| k.eq_ignore_ascii_case(w))
}

/// The `SELECT ...` body of a `CREATE VIEW`, translated, or `None` when the
/// statement cannot be parsed.
pub(super) fn translate_view(sql: &str, names: &Names<'_>) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    // The first top-level AS after the view name (and its optional column list).
    let mut depth = 0;
    let b = upper.as_bytes();
    let mut q: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(qc) = q {
            if c == qc || (qc == b'[' && c == b']') {
                q = None;
            }
        } else {
            match c {
                b'\'' | b'"' | b'`' | b'[' => q = Some(c),
                b'(' => depth += 1,
                b')' => depth -= 1,
                b'A' if depth == 0
                    && upper[i..].starts_with("AS")
                    && i > 0
                    && !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
                    && b.get(i + 2)
                        .is_some_and(|n| !(n.is_ascii_alphanumeric() || *n == b'_')) =>
                {
                    let body = sql[i + 2..].trim().trim_end_matches(';');
                    return Some(translate_expr(body, None, names));
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Translates a column default: `CURRENT_TIMESTAMP` and `datetime('now')`
/// and friends become `now()`-based expressions of the column's type; a
/// literal is cast with the column's own rule and written as a Postgres
/// literal. `Ok(None)` means no default (NULL).
pub(super) fn translate_default(
    d: &str,
    col: &ColumnPlan,
    class: Class,
) -> Result<Option<String>, String> {
    let mut s = d.trim();
    while s.starts_with('(') && source::matching_paren(s, 0) == Some(s.len() - 1) {
        s = s[1..s.len() - 1].trim();
    }
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
        .replace('"', "'");
    if compact == "null" {
        return Ok(None);
    }
    enum Now {
        Stamp,
        Millis,
        Date,
        Time,
        Epoch,
        Local,
    }
    let now = match compact.as_str() {
        "current_timestamp" | "datetime('now')" | "datetime('now','utc')" => Some(Now::Stamp),
        "strftime('%y-%m-%d%h:%m:%f','now')" | "strftime('%y-%m-%dt%h:%m:%f','now')" => {
            Some(Now::Millis)
        }
        "current_date" | "date('now')" => Some(Now::Date),
        "current_time" | "time('now')" => Some(Now::Time),
        "strftime('%s','now')" | "unixepoch()" | "unixepoch('now')" => Some(Now::Epoch),
        "datetime('now','localtime')" => Some(Now::Local),
        _ => None,
    };
    if let Some(n) = now {
        let utc = "(now() AT TIME ZONE 'UTC')";
        return match (col.pg_type, n) {
            (PgType::Timestamptz, _) => Ok(Some("now()".into())),
            (PgType::Timestamp, Now::Local) => Ok(Some("LOCALTIMESTAMP".into())),
            (PgType::Timestamp, Now::Stamp | Now::Millis) => Ok(Some(utc.into())),
            (PgType::Date, Now::Date | Now::Stamp) => Ok(Some(format!("({utc})::date"))),
            (PgType::Text, Now::Stamp) => {
                Ok(Some(format!("to_char({utc}, 'YYYY-MM-DD HH24:MI:SS')")))
            }
            (PgType::Text, Now::Millis) => {
                Ok(Some(format!("to_char({utc}, 'YYYY-MM-DD HH24:MI:SS.MS')")))
            }
            (PgType::Text, Now::Date) => Ok(Some(format!("to_char({utc}, 'YYYY-MM-DD')"))),
            (PgType::Text, Now::Time) => Ok(Some(format!("to_char({utc}, 'HH24:MI:SS')"))),
            (PgType::Text, Now::Local) => Ok(Some(
                "to_char(LOCALTIMESTAMP, 'YYYY-MM-DD HH24:MI:SS')".into(),
            )),
            (PgType::Int8 | PgType::Numeric | PgType::Float8, Now::Epoch) => {
                Ok(Some("(extract(epoch from now())::bigint)".into()))
            }
            (ty, _) => Err(format!("the current time does not fit column type {ty}")),
        };
    }
    // A literal: read it as SQLite would store it in this column.
    let lit = parse_literal(s).ok_or("not a constant")?;
    let stored = apply_affinity(lit, class);
    let v = col.cast(stored.as_ref()).map_err(|e| e.reason)?;
    Ok(Some(sql_literal(&v, col.pg_type)))
}

enum Lit {
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Lit {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Lit::Int(i) => ValueRef::Integer(*i),
            Lit::Real(f) => ValueRef::Real(*f),
            Lit::Text(s) => ValueRef::Text(s.as_bytes()),
            Lit::Blob(b) => ValueRef::Blob(b),
        }
    }
}

fn parse_literal(s: &str) -> Option<Lit> {
    if s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')))
    {
        let q = &s[..1];
        return Some(Lit::Text(s[1..s.len() - 1].replace(&format!("{q}{q}"), q)));
    }
    if (s.starts_with("x'") || s.starts_with("X'")) && s.ends_with('\'') {
        let hex = &s[2..s.len() - 1];
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        return bytes.map(Lit::Blob);
    }
    if s.eq_ignore_ascii_case("true") {
        return Some(Lit::Int(1));
    }
    if s.eq_ignore_ascii_case("false") {
        return Some(Lit::Int(0));
    }
    let t = s.strip_prefix('+').unwrap_or(s);
    if let Ok(i) = t.parse::<i64>() {
        return Some(Lit::Int(i));
    }
    if profile::is_decimal(t) {
        return t.parse::<f64>().ok().map(Lit::Real);
    }
    None
}

/// SQLite's type affinity applied to a literal (numeric text in a numeric
/// column is stored as a number).
fn apply_affinity(l: Lit, class: Class) -> Lit {
    let numeric = matches!(
        class,
        Class::Int | Class::Real | Class::Decimal | Class::Bool | Class::DateOnly | Class::DateTime
    );
    match l {
        Lit::Text(s) if numeric && profile::is_decimal(s.trim()) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Lit::Int(i)
            } else if let Ok(f) = t.parse::<f64>() {
                if class != Class::Real && f.fract() == 0.0 && f.abs() < 9.2e18 {
                    Lit::Int(f as i64)
                } else {
                    Lit::Real(f)
                }
            } else {
                Lit::Text(s)
            }
        }
        Lit::Int(i) if class == Class::Real => Lit::Real(i as f64),
        Lit::Text(s) if class == Class::Text => Lit::Text(s),
        Lit::Int(i) if class == Class::Text => Lit::Text(i.to_string()),
        other => other,
    }
}

/// A Postgres literal for `v` in a column of type `ty`.
pub fn sql_literal(v: &Value, ty: PgType) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!(
            "'{}'::double precision",
            real_text(*f).replace("inf", "Infinity")
        ),
        Value::Numeric(s) => format!("'{s}'::numeric"),
        Value::Text(s) => ident::literal(s),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("'\\x{hex}'::bytea")
        }
        // Years 1..9999 read naturally as text; others (year 0 is 1 BC in
        // Postgres's calendar) are written as an offset from the epoch.
        Value::Timestamptz(us) | Value::Timestamp(us)
            if (-62_135_596_800_000_000..253_402_300_800_000_000).contains(us) =>
        {
            format!("'{}'::{}", v.display_short(64), ty.sql_name())
        }
        Value::Timestamptz(us) => {
            format!("(TIMESTAMPTZ 'epoch' + {us} * INTERVAL '1 microsecond')")
        }
        Value::Timestamp(us) => format!("(TIMESTAMP 'epoch' + {us} * INTERVAL '1 microsecond')"),
        Value::Date(d) if (-719_162..2_932_897).contains(d) => {
            format!("'{}'::date", v.display_short(64))
        }
        Value::Date(d) => format!("(DATE 'epoch' + {d})"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cast::Epoch;
    use crate::plan::Policy;

    #[test]
    fn the_column_list_of_an_index_is_found_outside_quoted_names() {
        let sql = r#"CREATE INDEX "on (a)" ON "t (x int); DROP TABLE users; --" ("c(1)", d)"#;
        let open = find_on_paren(sql).unwrap();
        assert!(
            sql[open..].starts_with(r#"("c(1)", d)"#),
            "{}",
            &sql[open..]
        );
        let sql = "create index ix on t(a)";
        assert_eq!(&sql[find_on_paren(sql).unwrap()..], "(a)");
    }

    #[test]
    fn boolean_predicates_compare_as_booleans() {
        assert_eq!(
            boolean_comparisons("\"pinned\" = 1", &["pinned"]),
            "\"pinned\""
        );
        assert_eq!(
            boolean_comparisons("\"pinned\" = 0 AND \"n\" = 1", &["pinned"]),
            "NOT \"pinned\" AND \"n\" = 1"
        );
        assert_eq!(
            boolean_comparisons("\"pinned\" = 10", &["pinned"]),
            "\"pinned\" = 10"
        );
    }

    #[test]
    fn defaults_translate_now_and_literals() {
        let mut col = ColumnPlan {
            source_name: "c".into(),
            target_name: "c".into(),
            decl_type: "DATETIME".into(),
            pg_type: PgType::Timestamp,
            epoch: None,
            policy: Policy::Reject,
            not_null: false,
            default: None,
            reason: String::new(),
            evidence: BTreeMap::new(),
            date_formats: BTreeMap::new(),
            predicted: Vec::new(),
            unclassified_text: 0,
        };
        assert_eq!(
            translate_default("CURRENT_TIMESTAMP", &col, Class::DateTime)
                .unwrap()
                .unwrap(),
            "(now() AT TIME ZONE 'UTC')"
        );
        assert_eq!(
            translate_default("(datetime('now', 'localtime'))", &col, Class::DateTime)
                .unwrap()
                .unwrap(),
            "LOCALTIMESTAMP"
        );
        col.pg_type = PgType::Int8;
        assert_eq!(
            translate_default("'0'", &col, Class::Int).unwrap().unwrap(),
            "0"
        );
        assert!(translate_default("'\"0\"'", &col, Class::Int).is_err());
        col.pg_type = PgType::Text;
        assert_eq!(
            translate_default("\"\"", &col, Class::Text)
                .unwrap()
                .unwrap(),
            "''"
        );
        col.pg_type = PgType::Timestamptz;
        col.epoch = Some(Epoch::Seconds);
        assert_eq!(
            translate_default("0", &col, Class::DateTime)
                .unwrap()
                .unwrap(),
            "'1970-01-01 00:00:00.000000+00'::timestamp with time zone"
        );
    }
}
