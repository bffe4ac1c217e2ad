//! The cast: the one place a SQLite value becomes a target [`Value`].
//!
//! [`cast_value`] takes the column's Postgres type (and, for numbers in a
//! timestamp column, the [`Epoch`] they count from) and either returns a
//! value Postgres holds exactly or a [`CastError`] saying why not. The
//! loader and `verify` both reach it through
//! [`ColumnPlan::cast`](crate::plan::ColumnPlan::cast), so a value compares
//! equal after the load exactly when the load stored it.

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::profile::{self, Kind, ParsedDate};
use crate::value::{normalize_numeric, PgType, Value};

/// How numbers in a date column are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Epoch {
    /// Unix seconds (fractions allowed).
    #[serde(rename = "s")]
    Seconds,
    /// Unix milliseconds.
    #[serde(rename = "ms")]
    Millis,
    /// Unix microseconds.
    #[serde(rename = "us")]
    Micros,
    /// Julian day number (SQLite `julianday()`).
    Julian,
}

impl Epoch {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Epoch::Seconds => "Unix seconds",
            Epoch::Millis => "Unix milliseconds",
            Epoch::Micros => "Unix microseconds",
            Epoch::Julian => "Julian days",
        }
    }
}

/// Why a value could not be cast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CastError {
    /// What is wrong with the value, for the reject file.
    pub reason: String,
}

impl std::fmt::Display for CastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for CastError {}

fn fail<T>(reason: impl Into<String>) -> Result<T, CastError> {
    Err(CastError {
        reason: reason.into(),
    })
}

/// The cast rules (see [`ColumnPlan::cast`](crate::plan::ColumnPlan::cast)).
pub fn cast_value(ty: PgType, epoch: Option<Epoch>, v: ValueRef<'_>) -> Result<Value, CastError> {
    if let ValueRef::Null = v {
        return Ok(Value::Null);
    }
    let kind = profile::classify(v);
    match ty {
        PgType::Bool => match v {
            ValueRef::Integer(0) => Ok(Value::Bool(false)),
            ValueRef::Integer(1) => Ok(Value::Bool(true)),
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::is_text_bool) {
                Some(x) => Ok(Value::Bool(x)),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
        PgType::Int8 => match v {
            ValueRef::Integer(i) => Ok(Value::Int(i)),
            _ => misfit(kind, ty),
        },
        PgType::Int4 => match v {
            ValueRef::Integer(i) if i32::try_from(i).is_ok() => Ok(Value::Int(i)),
            ValueRef::Integer(i) => fail(format!("integer {i} is out of range for integer")),
            _ => misfit(kind, ty),
        },
        PgType::Float8 => match v {
            ValueRef::Integer(i) if i.unsigned_abs() <= 1 << 53 => Ok(Value::Float(i as f64)),
            ValueRef::Integer(i) => fail(format!(
                "integer {i} is beyond 2^53 and would lose digits as double precision"
            )),
            ValueRef::Real(f) => Ok(Value::Float(f)),
            _ => misfit(kind, ty),
        },
        PgType::Numeric => match v {
            ValueRef::Integer(i) => Ok(Value::Numeric(i.to_string())),
            ValueRef::Real(f) => Ok(Value::Numeric(real_numeric(f))),
            ValueRef::Text(b) if kind == Kind::TextNumber => {
                let s = std::str::from_utf8(b).unwrap_or_default();
                match normalize_numeric(s) {
                    Some(n) => Ok(Value::Numeric(n)),
                    None => fail(format!("text {s:?} is not a number")),
                }
            }
            _ => misfit(kind, ty),
        },
        PgType::Text => match v {
            ValueRef::Integer(i) => Ok(Value::Text(i.to_string())),
            ValueRef::Real(f) => Ok(Value::Text(real_text(f))),
            ValueRef::Text(b) | ValueRef::Blob(b) => text_of(b, matches!(v, ValueRef::Blob(_))),
            ValueRef::Null => Ok(Value::Null),
        },
        PgType::Bytea => match v {
            ValueRef::Text(b) | ValueRef::Blob(b) => Ok(Value::Bytes(b.to_vec())),
            _ => misfit(kind, ty),
        },
        PgType::Timestamptz => match v {
            ValueRef::Integer(i) => match epoch {
                Some(e) => epoch_micros(i as f64, Some(i), e).map(Value::Timestamptz),
                None => misfit(kind, ty),
            },
            ValueRef::Real(f) if f.is_finite() => match epoch {
                Some(e) => epoch_micros(f, None, e).map(Value::Timestamptz),
                None => misfit(kind, ty),
            },
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::parse_datetime) {
                Some(ParsedDate::Zoned(us) | ParsedDate::MediaWiki(us)) => Ok(Value::Timestamptz(us)),
                Some(_) => fail("timestamp has no time zone; set this column's type to timestamp to keep it as wall-clock time"),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
        PgType::Timestamp => match v {
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::parse_datetime) {
                Some(ParsedDate::Naive(us)) => Ok(Value::Timestamp(us)),
                Some(ParsedDate::Date(d)) => Ok(Value::Timestamp(i64::from(d) * 86_400_000_000)),
                Some(_) => fail("timestamp has a time zone; set this column's type to timestamptz"),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
        PgType::Date => match v {
            ValueRef::Text(b) => match std::str::from_utf8(b).ok().and_then(profile::parse_datetime) {
                Some(ParsedDate::Date(d)) => Ok(Value::Date(d)),
                Some(_) => fail("value has a time of day; set this column's type to timestamp"),
                None => misfit(kind, ty),
            },
            _ => misfit(kind, ty),
        },
    }
}

fn misfit<T>(kind: Kind, ty: PgType) -> Result<T, CastError> {
    fail(match kind {
        Kind::TextNul => "text contains NUL (0x00), which PostgreSQL text cannot hold".to_string(),
        Kind::TextInvalidUtf8 => {
            "text is not valid UTF-8, which PostgreSQL text cannot hold".to_string()
        }
        Kind::Blob => format!("binary blob does not fit column type {ty}"),
        Kind::Infinite => format!("infinite real does not fit column type {ty}"),
        k => format!("{} value does not fit column type {ty}", kind_label(k)),
    })
}

/// A short human label for a kind.
pub fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::Null => "null",
        Kind::Integer => "integer",
        Kind::Real => "real",
        Kind::Infinite => "infinite real",
        Kind::TextBool => "boolean text",
        Kind::TextNumber => "numeric text",
        Kind::TextDate => "date text",
        Kind::TextTimestamp => "timestamp text",
        Kind::TextTimestamptz => "timestamp-with-zone text",
        Kind::TextMediaWiki => "MediaWiki timestamp text",
        Kind::Text => "text",
        Kind::TextNul => "text with NUL",
        Kind::TextInvalidUtf8 => "invalid UTF-8 text",
        Kind::BlobUtf8 => "UTF-8 blob",
        Kind::Blob => "binary blob",
    }
}

fn text_of(b: &[u8], blob: bool) -> Result<Value, CastError> {
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\0') => Ok(Value::Text(s.to_string())),
        Ok(_) if blob => fail("binary blob (contains NUL) does not fit column type text"),
        Ok(_) => fail("text contains NUL (0x00), which PostgreSQL text cannot hold"),
        Err(e) if blob => fail(format!("binary blob is not UTF-8 text ({e})")),
        Err(e) => fail(format!(
            "text is not valid UTF-8 ({e}), which PostgreSQL text cannot hold"
        )),
    }
}

/// A REAL as exact decimal text: the shortest digits that read back as the
/// same double (what the application saw), `Infinity`/`-Infinity`.
pub fn real_numeric(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        let s = format!("{f}");
        normalize_numeric(&s).unwrap_or(s)
    }
}

/// A REAL as text: shortest round-trip digits (`1.0`, `0.1`, `1e300`), `Infinity`.
pub fn real_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

/// Julian day of 1970-01-01T00:00:00Z.
const JULIAN_UNIX_EPOCH: f64 = 2_440_587.5;
/// Julian day range of years 1..9999.
pub(crate) const JULIAN_MIN: f64 = 1_721_425.5;
pub(crate) const JULIAN_MAX: f64 = 5_373_484.5;
/// Largest microsecond value we produce (year 9999 and a bit; Postgres allows more).
const MAX_MICROS: f64 = 253_402_300_800_000_000.0;

pub(crate) fn epoch_micros(f: f64, exact: Option<i64>, e: Epoch) -> Result<i64, CastError> {
    let us = match (e, exact) {
        (Epoch::Micros, Some(i)) => i as f64,
        (Epoch::Millis, Some(i)) => return checked(i.checked_mul(1_000), f),
        (Epoch::Seconds, Some(i)) => return checked(i.checked_mul(1_000_000), f),
        (Epoch::Seconds, None) => f * 1e6,
        (Epoch::Millis, None) => f * 1e3,
        (Epoch::Micros, None) => f,
        (Epoch::Julian, _) => {
            if !(JULIAN_MIN..=JULIAN_MAX).contains(&f) {
                return fail(format!(
                    "{f} is outside the Julian-day range of years 1-9999"
                ));
            }
            (f - JULIAN_UNIX_EPOCH) * 86_400e6
        }
    };
    if !(-MAX_MICROS..=MAX_MICROS).contains(&us) {
        return fail(format!(
            "{f} is out of range for a timestamp as {}",
            e.label()
        ));
    }
    Ok(us.round() as i64)
}

fn checked(us: Option<i64>, f: f64) -> Result<i64, CastError> {
    match us {
        Some(us) if (us as f64).abs() <= MAX_MICROS => Ok(us),
        _ => fail(format!("{f} is out of range for a timestamp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinity_casts_to_double_precision() {
        assert_eq!(
            cast_value(PgType::Float8, None, ValueRef::Real(f64::NEG_INFINITY)).unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
    }
}
