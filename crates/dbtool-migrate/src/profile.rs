//! Profiling: what each column actually holds.
//!
//! SQLite stores any value in any column, so the declared type is a hint, not
//! a fact. The profiler scans every row once and classifies each value into a
//! [`Kind`] (storage class refined by content: a text that is an ISO
//! timestamp, a blob that is valid UTF-8, ...). The planner chooses casts from
//! these counts, and predicts exactly which rows a cast would reject, because
//! [`crate::plan::ColumnPlan::cast`] succeeds or fails by the same [`Kind`].

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::source::{quote, Table};

/// How many sample rowids are kept per kind.
pub const SAMPLES: usize = 5;

/// A value's class, refined by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// NULL
    Null,
    /// INTEGER storage class
    Integer,
    /// REAL, finite
    Real,
    /// REAL, +/-Infinity
    Infinite,
    /// TEXT `t`, `f`, `true`, `false` (any case)
    TextBool,
    /// TEXT holding a decimal number SQLite did not convert (`007`, `1e999`, huge)
    TextNumber,
    /// TEXT `YYYY-MM-DD`
    TextDate,
    /// TEXT ISO timestamp without a zone (`YYYY-MM-DD HH:MM[:SS[.f]]`, `T` or space)
    TextTimestamp,
    /// TEXT ISO timestamp with a zone (`Z`, `+HH:MM`, ...)
    TextTimestamptz,
    /// TEXT MediaWiki 14-digit UTC timestamp (`YYYYMMDDHHMMSS`)
    TextMediaWiki,
    /// any other valid UTF-8 text without NUL
    Text,
    /// TEXT containing NUL (0x00), which PostgreSQL text cannot hold
    TextNul,
    /// TEXT that is not valid UTF-8
    TextInvalidUtf8,
    /// BLOB that is valid UTF-8 without NUL
    BlobUtf8,
    /// any other BLOB
    Blob,
}

impl Kind {
    /// All kinds, in order.
    pub const ALL: [Kind; 15] = [
        Kind::Null,
        Kind::Integer,
        Kind::Real,
        Kind::Infinite,
        Kind::TextBool,
        Kind::TextNumber,
        Kind::TextDate,
        Kind::TextTimestamp,
        Kind::TextTimestamptz,
        Kind::TextMediaWiki,
        Kind::Text,
        Kind::TextNul,
        Kind::TextInvalidUtf8,
        Kind::BlobUtf8,
        Kind::Blob,
    ];

    /// Whether this kind is text Postgres cannot hold as text at all
    /// (governed by the policy, never a reason to widen).
    pub fn is_unholdable_text(self) -> bool {
        matches!(self, Kind::TextNul | Kind::TextInvalidUtf8)
    }

    /// The storage class (`typeof`) of this kind.
    pub fn storage_class(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Integer => "integer",
            Kind::Real | Kind::Infinite => "real",
            Kind::BlobUtf8 | Kind::Blob => "blob",
            _ => "text",
        }
    }
}

/// Classifies one SQLite value.
pub fn classify(v: ValueRef<'_>) -> Kind {
    match v {
        ValueRef::Null => Kind::Null,
        ValueRef::Integer(_) => Kind::Integer,
        ValueRef::Real(f) => {
            if f.is_finite() {
                Kind::Real
            } else {
                Kind::Infinite
            }
        }
        ValueRef::Text(b) => match std::str::from_utf8(b) {
            Err(_) => Kind::TextInvalidUtf8,
            Ok(s) if s.contains('\0') => Kind::TextNul,
            Ok(s) => classify_text(s),
        },
        ValueRef::Blob(b) => match std::str::from_utf8(b) {
            Ok(s) if !s.contains('\0') => Kind::BlobUtf8,
            _ => Kind::Blob,
        },
    }
}

fn classify_text(s: &str) -> Kind {
    if is_text_bool(s).is_some() {
        return Kind::TextBool;
    }
    if let Some(d) = parse_datetime(s) {
        return match d {
            ParsedDate::Date(_) => Kind::TextDate,
            ParsedDate::Naive(_) => Kind::TextTimestamp,
            ParsedDate::Zoned(_) => Kind::TextTimestamptz,
            ParsedDate::MediaWiki(_) => Kind::TextMediaWiki,
        };
    }
    if is_decimal(s) {
        return Kind::TextNumber;
    }
    Kind::Text
}

/// `t`/`f`/`true`/`false` in any case.
pub fn is_text_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("t") || s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("f") || s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Strict decimal syntax: `-?digits[.digits][e[+-]digits]`.
pub fn is_decimal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let fs = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - fs;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let es = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == es || i - es > 4 {
            return false;
        }
    }
    i == b.len()
}

/// A parsed text date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedDate {
    /// `YYYY-MM-DD`: days since 1970-01-01.
    Date(i32),
    /// Timestamp without zone: wall-clock microseconds since 1970-01-01.
    Naive(i64),
    /// Timestamp with zone: UTC microseconds since 1970-01-01.
    Zoned(i64),
    /// MediaWiki `YYYYMMDDHHMMSS` (UTC): microseconds since 1970-01-01.
    MediaWiki(i64),
}

/// The display label of the format of a text date (`YYYY-MM-DD HH:MM:SS.ffffff`),
/// for plan evidence.
pub fn date_format_label(s: &str) -> Option<String> {
    parse_datetime(s)?;
    if s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some("YYYYMMDDHHMMSS (MediaWiki)".into());
    }
    let mut out = String::from("YYYY-MM-DD");
    let rest = &s[10..];
    if rest.is_empty() {
        return Some(out);
    }
    out.push(if rest.starts_with('T') { 'T' } else { ' ' });
    let t = &rest[1..];
    let tb = t.as_bytes();
    out.push_str("HH:MM");
    let mut i = 5;
    if tb.len() > 5 && tb[5] == b':' {
        out.push_str(":SS");
        i = 8;
        if tb.len() > 8 && tb[8] == b'.' {
            let n = tb[9..].iter().take_while(|b| b.is_ascii_digit()).count();
            out.push('.');
            out.push_str(&"f".repeat(n));
            i = 9 + n;
        }
    }
    let zone = t[i..].trim_start();
    if zone.is_empty() {
    } else if zone.eq_ignore_ascii_case("z") {
        out.push('Z');
    } else {
        out.push_str(if zone.contains(':') {
            "+HH:MM"
        } else {
            "+HHMM"
        });
    }
    Some(out)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    if at + n > b.len() {
        return None;
    }
    let mut v = 0u32;
    for &c in &b[at..at + n] {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Parses the date formats the planner recognises: ISO 8601 dates and
/// timestamps (`T` or space, optional seconds, fraction up to microseconds,
/// optional zone `Z`/`+HH:MM`/`+HHMM`/`+HH`) and MediaWiki 14-digit
/// timestamps. Anything that would lose information (a fraction finer than
/// microseconds, an invalid day) is not a date.
pub fn parse_datetime(s: &str) -> Option<ParsedDate> {
    let b = s.as_bytes();
    if b.len() == 14 && b.iter().all(u8::is_ascii_digit) {
        let date =
            NaiveDate::from_ymd_opt(digits(b, 0, 4)? as i32, digits(b, 4, 2)?, digits(b, 6, 2)?)?;
        let time = NaiveTime::from_hms_opt(digits(b, 8, 2)?, digits(b, 10, 2)?, digits(b, 12, 2)?)?;
        return Some(ParsedDate::MediaWiki(
            NaiveDateTime::new(date, time).and_utc().timestamp_micros(),
        ));
    }
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let date =
        NaiveDate::from_ymd_opt(digits(b, 0, 4)? as i32, digits(b, 5, 2)?, digits(b, 8, 2)?)?;
    if b.len() == 10 {
        let days = date
            .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?)
            .num_days();
        return Some(ParsedDate::Date(i32::try_from(days).ok()?));
    }
    if b[10] != b'T' && b[10] != b' ' {
        return None;
    }
    let t = 11;
    let hh = digits(b, t, 2)?;
    if b.get(t + 2) != Some(&b':') {
        return None;
    }
    let mm = digits(b, t + 3, 2)?;
    let mut i = t + 5;
    let mut ss = 0;
    let mut micros = 0u32;
    if b.get(i) == Some(&b':') {
        ss = digits(b, i + 1, 2)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let frac = &s[start..i];
            if frac.is_empty() {
                return None;
            }
            // Finer than microseconds is only a date if the extra digits are zeros.
            if frac.len() > 6 && frac[6..].bytes().any(|c| c != b'0') {
                return None;
            }
            let mut f: String = frac.chars().take(6).collect();
            while f.len() < 6 {
                f.push('0');
            }
            micros = f.parse().ok()?;
        }
    }
    let time = NaiveTime::from_hms_micro_opt(hh, mm, ss, micros)?;
    let local = NaiveDateTime::new(date, time).and_utc().timestamp_micros();
    let rest = s[i..].strip_prefix(' ').unwrap_or(&s[i..]);
    if rest.is_empty() {
        return Some(ParsedDate::Naive(local));
    }
    if rest == "Z" || rest == "z" {
        return Some(ParsedDate::Zoned(local));
    }
    let rb = rest.as_bytes();
    let sign: i64 = match rb[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let oh = digits(rb, 1, 2)?;
    let om = match rb.len() {
        3 => 0,
        5 => digits(rb, 3, 2)?,
        6 if rb[3] == b':' => digits(rb, 4, 2)?,
        _ => return None,
    };
    if oh > 15 || om > 59 {
        return None;
    }
    let offset = sign * (i64::from(oh) * 3600 + i64::from(om) * 60) * 1_000_000;
    Some(ParsedDate::Zoned(local - offset))
}

/// Per-kind count and sample rowids.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindStats {
    /// Number of values of this kind.
    pub count: u64,
    /// Up to [`SAMPLES`] rowids holding such a value (empty for tables without rowid).
    pub sample_rowids: Vec<i64>,
}

/// What one column holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// Counts per kind (kinds with no values are absent).
    pub kinds: BTreeMap<Kind, KindStats>,
    /// Smallest INTEGER value.
    pub int_min: Option<i64>,
    /// Largest INTEGER value.
    pub int_max: Option<i64>,
    /// Smallest finite REAL value.
    pub real_min: Option<f64>,
    /// Largest finite REAL value.
    pub real_max: Option<f64>,
    /// Text date formats seen (label -> count).
    pub date_formats: BTreeMap<String, u64>,
    /// Texts counted as [`Kind::Text`] without being classified (see
    /// [`ColumnProfile::add_lean`]); 0 when every value was classified.
    #[serde(default)]
    pub unclassified_text: u64,
    /// Whether a text Postgres can hold has been seen (by [`ColumnProfile::add_lean`]).
    #[serde(skip)]
    holdable_text_seen: bool,
}

impl ColumnProfile {
    /// The count of values of `kind`.
    pub fn count(&self, kind: Kind) -> u64 {
        self.kinds.get(&kind).map_or(0, |k| k.count)
    }

    /// Non-NULL values.
    pub fn non_null(&self) -> u64 {
        self.kinds
            .iter()
            .filter(|(k, _)| **k != Kind::Null)
            .map(|(_, s)| s.count)
            .sum()
    }

    /// Counts by storage class (`typeof`): integer, real, text, blob, null.
    pub fn storage_classes(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (k, s) in &self.kinds {
            *out.entry(k.storage_class()).or_insert(0) += s.count;
        }
        out
    }

    fn record(&mut self, kind: Kind, rowid: Option<i64>) {
        let e = self.kinds.entry(kind).or_default();
        e.count += 1;
        if let Some(r) = rowid {
            if e.sample_rowids.len() < SAMPLES {
                e.sample_rowids.push(r);
            }
        }
    }

    /// Records one value of a column declared text, classifying its texts
    /// only until the first one Postgres can hold: from then on a text is
    /// counted as [`Kind::Text`] (and in `unclassified_text`) unread.
    ///
    /// For a column declared text the type chosen is the same as with
    /// [`ColumnProfile::add`]: it weighs blobs (classified here as there)
    /// against numbers, and needs to know only whether some text is
    /// holdable, never which kind of text it is. What is not known is which
    /// later texts hold a NUL or invalid UTF-8; the load finds them, since
    /// casting to text checks every value, and applies the column's policy
    /// exactly as it does to predicted ones.
    pub fn add_lean(&mut self, v: ValueRef<'_>, rowid: Option<i64>) {
        if let ValueRef::Text(_) = v {
            if !self.holdable_text_seen {
                let kind = classify(v);
                if kind.is_unholdable_text() {
                    self.record(kind, rowid);
                    return;
                }
                self.holdable_text_seen = true;
            }
            self.record(Kind::Text, rowid);
            self.unclassified_text += 1;
            return;
        }
        self.add(v, rowid);
    }

    /// Records one value.
    pub fn add(&mut self, v: ValueRef<'_>, rowid: Option<i64>) {
        let kind = classify(v);
        self.record(kind, rowid);
        match v {
            ValueRef::Integer(i) => {
                self.int_min = Some(self.int_min.map_or(i, |m| m.min(i)));
                self.int_max = Some(self.int_max.map_or(i, |m| m.max(i)));
            }
            ValueRef::Real(f) if f.is_finite() => {
                self.real_min = Some(self.real_min.map_or(f, |m| m.min(f)));
                self.real_max = Some(self.real_max.map_or(f, |m| m.max(f)));
            }
            ValueRef::Text(b)
                if matches!(
                    kind,
                    Kind::TextDate
                        | Kind::TextTimestamp
                        | Kind::TextTimestamptz
                        | Kind::TextMediaWiki
                ) =>
            {
                if let Some(label) = std::str::from_utf8(b).ok().and_then(date_format_label) {
                    if self.date_formats.len() < 16 || self.date_formats.contains_key(&label) {
                        *self.date_formats.entry(label).or_insert(0) += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds `other`, the profile of rows that come after this one's (sample
    /// rowids keep the first ones, as one scan of both would have).
    pub fn merge(&mut self, other: ColumnProfile) {
        for (k, o) in other.kinds {
            let e = self.kinds.entry(k).or_default();
            e.count += o.count;
            let room = SAMPLES.saturating_sub(e.sample_rowids.len());
            e.sample_rowids
                .extend(o.sample_rowids.into_iter().take(room));
        }
        let min = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).min();
        let max = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).max();
        self.int_min = min(self.int_min, other.int_min);
        self.int_max = max(self.int_max, other.int_max);
        let fmin = |a: Option<f64>, b: Option<f64>| a.into_iter().chain(b).reduce(f64::min);
        let fmax = |a: Option<f64>, b: Option<f64>| a.into_iter().chain(b).reduce(f64::max);
        self.real_min = fmin(self.real_min, other.real_min);
        self.real_max = fmax(self.real_max, other.real_max);
        self.unclassified_text += other.unclassified_text;
        self.holdable_text_seen |= other.holdable_text_seen;
        for (label, n) in other.date_formats {
            if self.date_formats.len() < 16 || self.date_formats.contains_key(&label) {
                *self.date_formats.entry(label).or_insert(0) += n;
            }
        }
    }

    /// Largest absolute numeric value (integers and finite reals).
    pub fn max_abs(&self) -> f64 {
        let mut m: f64 = 0.0;
        for v in [self.int_min, self.int_max].into_iter().flatten() {
            m = m.max((v as f64).abs());
        }
        for v in [self.real_min, self.real_max].into_iter().flatten() {
            m = m.max(v.abs());
        }
        m
    }
}

/// What one table holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableProfile {
    /// Rows scanned.
    pub rows: u64,
    /// One profile per column, in column order.
    pub columns: Vec<ColumnProfile>,
}

impl TableProfile {
    /// Adds `other`, the profile of the rows after this one's.
    pub fn merge(&mut self, other: TableProfile) {
        self.rows += other.rows;
        if self.columns.is_empty() {
            self.columns = other.columns;
            return;
        }
        for (c, o) in self.columns.iter_mut().zip(other.columns) {
            c.merge(o);
        }
    }
}

/// Scans every row of `table` and profiles its columns.
///
/// `rowid_expr` is the expression that reads the rowid (`rowid`, `_rowid_`
/// or `oid`, whichever is not shadowed by a column), or `None` for tables
/// without one.
pub fn profile_table(
    conn: &Connection,
    table: &Table,
    rowid_expr: Option<&str>,
) -> rusqlite::Result<TableProfile> {
    profile_range(conn, table, rowid_expr, None, &[])
}

/// Rows per range when a big table is profiled on several threads.
const RANGE_ROWS: u64 = 50_000;

/// Profiles `tables` (each with its rowid expression, as for
/// [`profile_table`]) on up to `jobs` threads: `conn` on this one, and a
/// connection of its own to `path` on each other. Tables with a rowid are
/// split into rowid ranges of about 50,000 rows, biggest tables
/// first, so one big table uses every thread; the ranges of a table are
/// merged in rowid order, so the result is the same as one scan's. When
/// `path` cannot be opened again, the tables are profiled here, one by one.
pub fn profile_tables(
    conn: &Connection,
    path: &std::path::Path,
    tables: &[(&Table, Option<&str>)],
    jobs: usize,
) -> Vec<rusqlite::Result<TableProfile>> {
    profile_tables_lean(conn, path, tables, &[], jobs)
}

/// [`profile_tables`], recording the values of the columns marked in
/// `lean` (per table, per column; missing entries are `false`) with
/// [`ColumnProfile::add_lean`] instead of [`ColumnProfile::add`].
pub fn profile_tables_lean(
    conn: &Connection,
    path: &std::path::Path,
    tables: &[(&Table, Option<&str>)],
    lean: &[Vec<bool>],
    jobs: usize,
) -> Vec<rusqlite::Result<TableProfile>> {
    // Work: (table, range index, range), biggest tables first.
    let mut ranges: Vec<Vec<Option<(i64, i64)>>> = Vec::with_capacity(tables.len());
    for (t, rid) in tables {
        let rows = t.rows.unwrap_or(0);
        let split = match rid {
            Some(rid) if jobs > 1 && rows > RANGE_ROWS => rowid_ranges(conn, t, rid, rows),
            _ => None,
        };
        ranges.push(split.unwrap_or_else(|| vec![None]));
    }
    let mut work: Vec<(usize, usize)> = Vec::new();
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tables[i].0.rows.unwrap_or(0)));
    for i in order {
        work.extend((0..ranges[i].len()).map(|r| (i, r)));
    }
    let jobs = jobs.clamp(1, work.len().max(1));
    let results: Vec<std::sync::Mutex<Vec<Option<rusqlite::Result<TableProfile>>>>> = ranges
        .iter()
        .map(|r| std::sync::Mutex::new((0..r.len()).map(|_| None).collect()))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = |c: &Connection| loop {
        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(&(i, r)) = work.get(k) else { break };
        let (t, rid) = tables[i];
        let lean = lean.get(i).map_or(&[][..], Vec::as_slice);
        let p = profile_range(c, t, rid, ranges[i][r], lean);
        results[i].lock().unwrap_or_else(|e| e.into_inner())[r] = Some(p);
    };
    std::thread::scope(|scope| {
        for _ in 1..jobs {
            // SQLite connections are not shared between threads: each opens its own.
            let Ok(c) = crate::source::open(path) else {
                break;
            };
            let run = &run;
            scope.spawn(move || run(&c));
        }
        run(conn);
    });
    results
        .into_iter()
        .map(|m| {
            let mut merged: Option<TableProfile> = None;
            for p in m.into_inner().unwrap_or_else(|e| e.into_inner()) {
                let p = p.unwrap_or_else(|| Err(rusqlite::Error::InvalidQuery))?;
                match &mut merged {
                    Some(acc) => acc.merge(p),
                    None => merged = Some(p),
                }
            }
            Ok(merged.unwrap_or_default())
        })
        .collect()
}

/// Rowid ranges of about [`RANGE_ROWS`] rows covering `table` (the first
/// and last open-ended), or `None` when it has no rows.
fn rowid_ranges(
    conn: &Connection,
    table: &Table,
    rid: &str,
    rows: u64,
) -> Option<Vec<Option<(i64, i64)>>> {
    let (lo, hi): (Option<i64>, Option<i64>) = conn
        .query_row(
            &format!("SELECT min({rid}), max({rid}) FROM {}", quote(&table.name)),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()?;
    let (lo, hi) = (lo?, hi?);
    let span = hi as i128 - lo as i128 + 1;
    let n = i128::from(rows.div_ceil(RANGE_ROWS).min(256))
        .min(span)
        .max(1);
    let mut out = Vec::new();
    let mut start = i64::MIN;
    for i in 0..n {
        let end = if i == n - 1 {
            i64::MAX
        } else {
            (lo as i128 + span * (i + 1) / n - 1) as i64
        };
        out.push(Some((start, end)));
        start = end.saturating_add(1);
    }
    Some(out)
}

/// [`profile_table`] over the rows whose rowid is in `range` (all rows when `None`).
fn profile_range(
    conn: &Connection,
    table: &Table,
    rowid_expr: Option<&str>,
    range: Option<(i64, i64)>,
    lean: &[bool],
) -> rusqlite::Result<TableProfile> {
    let cols: Vec<String> = table.columns.iter().map(|c| quote(&c.name)).collect();
    let mut select = String::from("SELECT ");
    if let Some(r) = rowid_expr {
        select.push_str(r);
        if !cols.is_empty() {
            select.push_str(", ");
        }
    }
    if cols.is_empty() && rowid_expr.is_none() {
        select.push('1');
    }
    select.push_str(&cols.join(", "));
    select.push_str(" FROM ");
    select.push_str(&quote(&table.name));
    let mut params: Vec<i64> = Vec::new();
    if let (Some(r), Some((lo, hi))) = (rowid_expr, range) {
        select.push_str(&format!(" WHERE {r} >= ?1 AND {r} <= ?2"));
        params.extend([lo, hi]);
    }
    let mut stmt = conn.prepare(&select)?;
    let n = table.columns.len();
    let off = usize::from(rowid_expr.is_some());
    let mut prof = TableProfile {
        rows: 0,
        columns: vec![ColumnProfile::default(); n],
    };
    let lean: Vec<bool> = (0..n)
        .map(|i| lean.get(i).copied().unwrap_or(false))
        .collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = rows.next()? {
        prof.rows += 1;
        let rowid = if off == 1 {
            match row.get_ref(0)? {
                ValueRef::Integer(i) => Some(i),
                _ => None,
            }
        } else {
            None
        };
        for (i, c) in prof.columns.iter_mut().enumerate() {
            if lean[i] {
                c.add_lean(row.get_ref(i + off)?, rowid);
            } else {
                c.add(row.get_ref(i + off)?, rowid);
            }
        }
    }
    Ok(prof)
}

/// How many sample rowids of orphan rows are kept per foreign key.
pub const ORPHAN_SAMPLES: usize = 10;

/// Rows of `child` whose foreign key (`from` columns) finds no row of
/// `parent` with equal `to` columns: the count, and up to
/// [`ORPHAN_SAMPLES`] of their rowids (none for tables without a rowid).
/// A row with a NULL in any of its key columns references nothing (SQLite's
/// and Postgres's MATCH SIMPLE), so it is never an orphan.
///
/// One anti-join per foreign key, `child LEFT JOIN parent ON parent.key =
/// child.key WHERE parent.key IS NULL`, which SQLite answers with one scan
/// of the child and a lookup in the parent's key index per row; the parent
/// column is on the left of `=` so its collation (the one its index uses) is
/// the one compared with. `PRAGMA foreign_key_check` finds the same rows but
/// was several times slower on big tables, and one foreign key it cannot check
/// made it fail for the whole table.
pub fn orphans(
    conn: &Connection,
    child: &Table,
    from: &[String],
    parent: &Table,
    to: &[String],
) -> rusqlite::Result<(u64, Vec<i64>)> {
    let rowid = if child.has_rowid() {
        ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !child.columns.iter().any(|c| c.name.eq_ignore_ascii_case(a)))
    } else {
        None
    };
    let on: Vec<String> = from
        .iter()
        .zip(to)
        .map(|(f, t)| format!("p.{} = c.{}", quote(t), quote(f)))
        .collect();
    let mut filter: Vec<String> = from
        .iter()
        .map(|f| format!("c.{} IS NOT NULL", quote(f)))
        .collect();
    filter.push(format!("p.{} IS NULL", quote(&to[0])));
    let sql = format!(
        "SELECT {} FROM {} AS c LEFT JOIN {} AS p ON {} WHERE {}",
        rowid.map_or_else(|| "NULL".to_string(), |r| format!("c.{r}")),
        quote(&child.name),
        quote(&parent.name),
        on.join(" AND "),
        filter.join(" AND ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let (mut n, mut sample) = (0u64, Vec::new());
    while let Some(r) = rows.next()? {
        n += 1;
        if sample.len() < ORPHAN_SAMPLES {
            if let ValueRef::Integer(id) = r.get_ref(0)? {
                sample.push(id);
            }
        }
    }
    Ok((n, sample))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_parse_with_and_without_t_zone_and_fraction() {
        assert_eq!(parse_datetime("1970-01-02"), Some(ParsedDate::Date(1)));
        assert_eq!(
            parse_datetime("1970-01-01 00:00:01"),
            Some(ParsedDate::Naive(1_000_000))
        );
        assert_eq!(
            parse_datetime("1970-01-01T00:00:01.5"),
            Some(ParsedDate::Naive(1_500_000))
        );
        assert_eq!(
            parse_datetime("1970-01-01T01:00:00+01:00"),
            Some(ParsedDate::Zoned(0))
        );
        assert_eq!(
            parse_datetime("1970-01-01T00:00:00Z"),
            Some(ParsedDate::Zoned(0))
        );
        assert_eq!(
            parse_datetime("1970-01-01 00:00:00.000000+0000"),
            Some(ParsedDate::Zoned(0))
        );
        assert_eq!(
            parse_datetime("1970-01-01 00:01"),
            Some(ParsedDate::Naive(60_000_000))
        );
        assert_eq!(
            parse_datetime("19700101000001"),
            Some(ParsedDate::MediaWiki(1_000_000))
        );
    }

    #[test]
    fn lossy_or_invalid_dates_are_not_dates() {
        assert_eq!(parse_datetime("2020-02-30"), None);
        assert_eq!(parse_datetime("0000-00-00 00:00:00"), None);
        assert_eq!(parse_datetime("2020-01-01 00:00:00.1234567"), None);
        assert!(parse_datetime("2020-01-01 00:00:00.1234560").is_some());
        assert_eq!(parse_datetime("2020-01-01x"), None);
        assert_eq!(parse_datetime("12345678901234x"), None);
    }

    #[test]
    fn text_kinds_are_classified() {
        assert_eq!(classify(ValueRef::Text(b"t")), Kind::TextBool);
        assert_eq!(classify(ValueRef::Text(b"007")), Kind::TextNumber);
        assert_eq!(classify(ValueRef::Text(b"a\0b")), Kind::TextNul);
        assert_eq!(classify(ValueRef::Text(b"\xff")), Kind::TextInvalidUtf8);
        assert_eq!(classify(ValueRef::Blob(b"{}")), Kind::BlobUtf8);
        assert_eq!(classify(ValueRef::Blob(b"\x00\x01")), Kind::Blob);
        assert_eq!(classify(ValueRef::Real(f64::INFINITY)), Kind::Infinite);
    }

    #[test]
    fn date_labels_describe_the_format() {
        assert_eq!(
            date_format_label("2020-01-01T10:00:00.123Z").as_deref(),
            Some("YYYY-MM-DDTHH:MM:SS.fffZ")
        );
        assert_eq!(
            date_format_label("2020-01-01 10:00:00").as_deref(),
            Some("YYYY-MM-DD HH:MM:SS")
        );
    }
}
