//! The inverse of the cast: a target [`Value`] back to the SQLite value the
//! source column would hold.
//!
//! Reverse sync (Postgres -> SQLite after a cutover) writes rows the app
//! wrote in Postgres into the SQLite file, where the app's old code path must
//! read them as it always did: an epoch integer stays an epoch integer in its
//! unit, ISO text stays ISO text in the column's format, a float keeps its
//! bits, a blob its bytes, and an untyped column keeps the storage class its
//! values had.
//!
//! The cast is many-to-one (text `"42"` and integer `42` both become text
//! `42` in a text column), so the inverse chooses among the SQLite values
//! that cast to the target value, guided by what the plan recorded about the
//! column: the counts of each kind of value ([`ColumnPlan::evidence`]) and
//! the text date formats seen ([`ColumnPlan::date_formats`]). Every candidate
//! is checked by casting it forward again: [`uncast`] only returns a value
//! for which `col.cast(result) == v`, so `dbtool verify` agrees with the
//! file by construction. See docs/rollback.md for the rules.

use std::collections::BTreeMap;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

use crate::plan::{ColumnPlan, Epoch};
use crate::profile::Kind;
use crate::value::Value;

/// A SQLite value: the five storage classes, text as raw bytes (SQLite text
/// need not be valid UTF-8, and a bytea column widened from such text goes
/// back as text).
#[derive(Debug, Clone, PartialEq)]
pub enum SqliteValue {
    /// NULL
    Null,
    /// INTEGER
    Integer(i64),
    /// REAL
    Real(f64),
    /// TEXT (bytes as stored)
    Text(Vec<u8>),
    /// BLOB
    Blob(Vec<u8>),
}

impl SqliteValue {
    /// A borrowed view, as rusqlite reads values.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            SqliteValue::Null => ValueRef::Null,
            SqliteValue::Integer(i) => ValueRef::Integer(*i),
            SqliteValue::Real(f) => ValueRef::Real(*f),
            SqliteValue::Text(b) => ValueRef::Text(b),
            SqliteValue::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// An owned copy of a value read from SQLite.
    pub fn from_ref(v: ValueRef<'_>) -> SqliteValue {
        match v {
            ValueRef::Null => SqliteValue::Null,
            ValueRef::Integer(i) => SqliteValue::Integer(i),
            ValueRef::Real(f) => SqliteValue::Real(f),
            ValueRef::Text(b) => SqliteValue::Text(b.to_vec()),
            ValueRef::Blob(b) => SqliteValue::Blob(b.to_vec()),
        }
    }

    fn text(s: impl Into<String>) -> SqliteValue {
        SqliteValue::Text(s.into().into_bytes())
    }
}

impl ToSql for SqliteValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_ref()))
    }
}

/// Why a target value has no SQLite form in its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncastError {
    /// What is wrong, naming the value and the column.
    pub reason: String,
}

impl std::fmt::Display for UncastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for UncastError {}

/// The SQLite value column `col` holds for the target value `v`: the first
/// candidate, in the order the column's evidence suggests, that casts back
/// to exactly `v`.
pub fn uncast(col: &ColumnPlan, v: &Value) -> Result<SqliteValue, UncastError> {
    for c in candidates(col, v) {
        if let Ok(back) = col.cast(c.as_ref()) {
            if same(&back, v) {
                return Ok(c);
            }
        }
    }
    Err(UncastError {
        reason: format!(
            "value {} of column {} ({}) has no SQLite form that casts back to it",
            v.display_short(60),
            col.source_name,
            col.pg_type
        ),
    })
}

fn same(a: &Value, b: &Value) -> bool {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.canonical(&mut x);
    b.canonical(&mut y);
    x == y
}

fn count(ev: &BTreeMap<Kind, u64>, kinds: &[Kind]) -> u64 {
    kinds.iter().filter_map(|k| ev.get(k)).sum()
}

const TEXT_KINDS: &[Kind] = &[
    Kind::TextBool,
    Kind::TextNumber,
    Kind::TextDate,
    Kind::TextTimestamp,
    Kind::TextTimestamptz,
    Kind::TextMediaWiki,
    Kind::Text,
    Kind::TextNul,
    Kind::TextInvalidUtf8,
];
const REAL_KINDS: &[Kind] = &[Kind::Real, Kind::Infinite];

/// Candidates ordered by how many values of each storage class the column
/// held (most first; ties keep the listed order).
fn by_evidence(mut c: Vec<(u64, SqliteValue)>) -> Vec<SqliteValue> {
    c.sort_by_key(|x| std::cmp::Reverse(x.0));
    c.into_iter().map(|(_, v)| v).collect()
}

fn candidates(col: &ColumnPlan, v: &Value) -> Vec<SqliteValue> {
    let ev = &col.evidence;
    let ints = count(ev, &[Kind::Integer]);
    let reals = count(ev, REAL_KINDS);
    let texts = count(ev, TEXT_KINDS);
    let blobs = count(ev, &[Kind::Blob, Kind::BlobUtf8]);
    match v {
        Value::Null => vec![SqliteValue::Null],
        Value::Bool(b) => {
            let word = SqliteValue::text(if *b { "true" } else { "false" });
            let int = SqliteValue::Integer(i64::from(*b));
            // Integers win ties: 0/1 is SQLite's own boolean.
            by_evidence(vec![(ints, int), (count(ev, &[Kind::TextBool]), word)])
        }
        Value::Int(i) => vec![SqliteValue::Integer(*i)],
        Value::Float(f) => {
            let mut c = vec![(reals, SqliteValue::Real(*f))];
            if f.fract() == 0.0 && f.abs() <= 9.007_199_254_740_992e15 {
                c.push((ints, SqliteValue::Integer(*f as i64)));
            }
            by_evidence(c)
        }
        Value::Numeric(s) => {
            let mut c = Vec::new();
            if let Ok(i) = s.parse::<i64>() {
                c.push((ints, SqliteValue::Integer(i)));
            }
            if let Ok(f) = s.parse::<f64>() {
                c.push((reals, SqliteValue::Real(f)));
            }
            c.push((count(ev, &[Kind::TextNumber]), SqliteValue::text(s.clone())));
            by_evidence(c)
        }
        Value::Text(s) => {
            // A text that is exactly how a number casts to text, in a column
            // that held numbers, was that number (an untyped column mixing
            // classes, like a key/value table): the round-trip check below
            // keeps `007` or `1e5` text.
            let mut c = Vec::new();
            if ints > 0 {
                if let Ok(i) = s.parse::<i64>() {
                    c.push(SqliteValue::Integer(i));
                }
            }
            if reals > 0 {
                if let Ok(f) = s.parse::<f64>() {
                    c.push(SqliteValue::Real(f));
                }
            }
            c.extend(by_evidence(vec![
                (texts, SqliteValue::text(s.clone())),
                (blobs, SqliteValue::Blob(s.as_bytes().to_vec())),
            ]));
            c
        }
        Value::Bytes(b) => by_evidence(vec![
            (blobs, SqliteValue::Blob(b.clone())),
            (texts, SqliteValue::Text(b.clone())),
        ]),
        Value::Timestamptz(us) => {
            let mut c = Vec::new();
            if let Some(e) = col.epoch {
                c.extend(epoch_candidates(*us, e, ints, reals));
            }
            for f in formats(col, true) {
                if let Some(s) = render(*us, &f) {
                    c.push((texts, SqliteValue::text(s)));
                }
            }
            by_evidence(c)
        }
        Value::Timestamp(us) => formats(col, false)
            .iter()
            .filter_map(|f| render(*us, f))
            .map(SqliteValue::text)
            .collect(),
        Value::Date(d) => chrono::DateTime::from_timestamp(i64::from(*d) * 86_400, 0)
            .map(|t| vec![SqliteValue::text(t.format("%Y-%m-%d").to_string())])
            .unwrap_or_default(),
    }
}

fn epoch_candidates(us: i64, e: Epoch, ints: u64, reals: u64) -> Vec<(u64, SqliteValue)> {
    let unit: i64 = match e {
        Epoch::Seconds => 1_000_000,
        Epoch::Millis => 1_000,
        Epoch::Micros => 1,
        Epoch::Julian => {
            let jd = us as f64 / 86_400e6 + 2_440_587.5;
            return vec![(reals.max(1), SqliteValue::Real(jd))];
        }
    };
    let mut c = Vec::new();
    if us % unit == 0 {
        c.push((ints.max(1), SqliteValue::Integer(us / unit)));
    }
    // A fraction of the unit: the app wrote a REAL (e.g. seconds.fraction).
    c.push((reals, SqliteValue::Real(us as f64 / unit as f64)));
    c
}

/// A text date format, as recorded in the plan's evidence
/// (`YYYY-MM-DDTHH:MM:SS.fffZ`, `YYYY-MM-DD HH:MM:SS`, `YYYY-MM-DD`, ...).
#[derive(Debug, Clone, PartialEq)]
struct Format {
    media_wiki: bool,
    date_only: bool,
    sep: char,
    seconds: bool,
    frac: usize,
    zone: Option<&'static str>,
}

fn parse_label(label: &str) -> Option<Format> {
    if label.starts_with("YYYYMMDDHHMMSS") {
        return Some(Format {
            media_wiki: true,
            date_only: false,
            sep: 'T',
            seconds: true,
            frac: 0,
            zone: Some("Z"),
        });
    }
    let rest = label.strip_prefix("YYYY-MM-DD")?;
    if rest.is_empty() {
        return Some(Format {
            media_wiki: false,
            date_only: true,
            sep: ' ',
            seconds: false,
            frac: 0,
            zone: None,
        });
    }
    let sep = rest.chars().next()?;
    let rest = rest[1..].strip_prefix("HH:MM")?;
    let (seconds, rest) = match rest.strip_prefix(":SS") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(|b| *b == b'f').count();
            (n, &r[n..])
        }
        None => (0, rest),
    };
    let zone = match rest {
        "" => None,
        "Z" => Some("Z"),
        "+HH:MM" => Some("+00:00"),
        "+HHMM" => Some("+0000"),
        _ => return None,
    };
    Some(Format {
        media_wiki: false,
        date_only: false,
        sep,
        seconds,
        frac,
        zone,
    })
}

/// The column's text formats with (`zoned`) or without a time zone, most
/// used first, then a full-precision ISO fallback.
fn formats(col: &ColumnPlan, zoned: bool) -> Vec<Format> {
    let mut seen: Vec<(u64, Format)> = col
        .date_formats
        .iter()
        .filter_map(|(label, n)| parse_label(label).map(|f| (*n, f)))
        .filter(|(_, f)| f.zone.is_some() == zoned)
        .collect();
    seen.sort_by_key(|x| std::cmp::Reverse(x.0));
    let mut out: Vec<Format> = seen.into_iter().map(|(_, f)| f).collect();
    out.push(Format {
        media_wiki: false,
        date_only: false,
        sep: if zoned { 'T' } else { ' ' },
        seconds: true,
        frac: 0,
        zone: zoned.then_some("Z"),
    });
    out
}

/// `us` (microseconds since 1970, UTC or wall clock) in format `f`, adding
/// seconds or fraction digits when the format has too few to hold the value
/// exactly (a format never loses a microsecond).
fn render(us: i64, f: &Format) -> Option<String> {
    let t = chrono::DateTime::from_timestamp_micros(us)?.naive_utc();
    let micros = us.rem_euclid(1_000_000);
    let secs_of_day = us.div_euclid(1_000_000).rem_euclid(86_400);
    if f.date_only {
        return (micros == 0 && secs_of_day == 0).then(|| t.format("%Y-%m-%d").to_string());
    }
    if f.media_wiki {
        return (micros == 0).then(|| t.format("%Y%m%d%H%M%S").to_string());
    }
    let mut s = t.format("%Y-%m-%d").to_string();
    s.push(f.sep);
    s.push_str(&t.format("%H:%M").to_string());
    let mut frac = f.frac.min(6);
    while frac < 6 && micros % 10i64.pow(6 - frac as u32) != 0 {
        frac = 6;
    }
    if f.seconds || secs_of_day % 60 != 0 || frac > 0 || micros != 0 {
        s.push_str(&t.format(":%S").to_string());
        if frac > 0 {
            let digits = format!("{micros:06}");
            s.push('.');
            s.push_str(&digits[..frac]);
        }
    }
    if let Some(z) = f.zone {
        s.push_str(z);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Policy;
    use crate::value::PgType;

    fn col(ty: PgType, epoch: Option<Epoch>, ev: &[(Kind, u64)], formats: &[&str]) -> ColumnPlan {
        ColumnPlan {
            source_name: "c".into(),
            target_name: "c".into(),
            decl_type: String::new(),
            pg_type: ty,
            epoch,
            policy: Policy::Reject,
            not_null: false,
            default: None,
            reason: String::new(),
            evidence: ev.iter().cloned().collect(),
            date_formats: formats.iter().map(|f| (f.to_string(), 1)).collect(),
            predicted: Vec::new(),
            unclassified_text: 0,
        }
    }

    fn round_trip(c: &ColumnPlan, src: SqliteValue) {
        let v = c.cast(src.as_ref()).expect("casts");
        assert_eq!(uncast(c, &v).unwrap(), src, "{v:?}");
    }

    #[test]
    fn epoch_integers_stay_integers_in_their_unit() {
        let s = col(
            PgType::Timestamptz,
            Some(Epoch::Seconds),
            &[(Kind::Integer, 9)],
            &[],
        );
        round_trip(&s, SqliteValue::Integer(1_600_000_000));
        let ms = col(
            PgType::Timestamptz,
            Some(Epoch::Millis),
            &[(Kind::Integer, 9)],
            &[],
        );
        round_trip(&ms, SqliteValue::Integer(1_600_000_000_123));
        // A new value with a fraction of the unit keeps it, as a REAL.
        let v = Value::Timestamptz(1_600_000_000_500_000);
        assert_eq!(uncast(&s, &v).unwrap(), SqliteValue::Real(1_600_000_000.5));
    }

    #[test]
    fn iso_text_keeps_its_format() {
        let z = col(
            PgType::Timestamptz,
            None,
            &[(Kind::TextTimestamptz, 9)],
            &["YYYY-MM-DDTHH:MM:SSZ"],
        );
        round_trip(&z, SqliteValue::text("2021-03-04T05:06:07Z"));
        let ms = col(
            PgType::Timestamptz,
            None,
            &[(Kind::TextTimestamptz, 9)],
            &["YYYY-MM-DDTHH:MM:SS.fffZ"],
        );
        round_trip(&ms, SqliteValue::text("2021-03-04T05:06:07.120Z"));
        // A value finer than the format gets the digits it needs.
        let v = Value::Timestamptz(1_000_001);
        assert_eq!(
            uncast(&ms, &v).unwrap(),
            SqliteValue::text("1970-01-01T00:00:01.000001Z")
        );
        let naive = col(
            PgType::Timestamp,
            None,
            &[(Kind::TextTimestamp, 9)],
            &["YYYY-MM-DD HH:MM:SS"],
        );
        round_trip(&naive, SqliteValue::text("2024-02-29 23:59:59"));
        let date = col(PgType::Date, None, &[(Kind::TextDate, 9)], &["YYYY-MM-DD"]);
        round_trip(&date, SqliteValue::text("2024-02-29"));
        let offset = col(
            PgType::Timestamptz,
            None,
            &[(Kind::TextTimestamptz, 9)],
            &["YYYY-MM-DD HH:MM:SS+HH:MM"],
        );
        assert_eq!(
            uncast(&offset, &Value::Timestamptz(0)).unwrap(),
            SqliteValue::text("1970-01-01 00:00:00+00:00")
        );
    }

    #[test]
    fn untyped_columns_keep_each_values_storage_class() {
        let mixed = col(
            PgType::Text,
            None,
            &[(Kind::Integer, 5), (Kind::Real, 3), (Kind::Text, 4)],
            &[],
        );
        round_trip(&mixed, SqliteValue::Integer(1_048_576));
        round_trip(&mixed, SqliteValue::Real(0.125));
        round_trip(&mixed, SqliteValue::text("forever"));
        // "007" is not what integer 7 casts to: it stays text.
        round_trip(&mixed, SqliteValue::text("007"));
        round_trip(&mixed, SqliteValue::Null);
    }

    #[test]
    fn floats_keep_their_bits_and_blobs_their_bytes() {
        let f = col(PgType::Float8, None, &[(Kind::Real, 3)], &[]);
        round_trip(&f, SqliteValue::Real(0.1 + 0.2));
        round_trip(&f, SqliteValue::Real(-0.0));
        let b = col(PgType::Bytea, None, &[(Kind::Blob, 3)], &[]);
        round_trip(&b, SqliteValue::Blob(vec![0, 255, 1]));
        // Text with NUL widened to bytea goes back as text.
        let t = col(PgType::Bytea, None, &[(Kind::TextNul, 3)], &[]);
        round_trip(&t, SqliteValue::Text(b"a\0b".to_vec()));
        let bools = col(PgType::Bool, None, &[(Kind::Integer, 3)], &[]);
        round_trip(&bools, SqliteValue::Integer(1));
        let n = col(PgType::Numeric, None, &[(Kind::TextNumber, 3)], &[]);
        round_trip(&n, SqliteValue::text("12.50"));
    }
}
