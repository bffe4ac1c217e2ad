//! Type choice: the Postgres type of a column from its declared type
//! ([`class_of`]) and the values profiled in it ([`choose`]), judged by
//! which kinds of value each candidate type [`accepts`].

use crate::cast::{epoch_micros, Epoch, JULIAN_MAX, JULIAN_MIN};
use crate::profile::{ColumnProfile, Kind};
use crate::value::PgType;

/// The declared-type family of a column, from its declared type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Bool,
    DateOnly,
    DateTime,
    Int,
    Real,
    Decimal,
    Text,
    Blob,
    Any,
}

pub(super) fn class_of(decl: &str) -> Class {
    let d = decl.to_ascii_uppercase();
    if d.trim().is_empty() {
        return Class::Any;
    }
    if d.contains("BOOL") {
        Class::Bool
    } else if d.contains("DATETIME") || d.contains("TIMESTAMP") {
        Class::DateTime
    } else if d.contains("DATE") {
        Class::DateOnly
    } else if d.contains("TIME") {
        // TIME of day alone: no Postgres type in our set; texts stay text.
        Class::Text
    } else if d.contains("INT") {
        Class::Int
    } else if d.contains("CHAR")
        || d.contains("CLOB")
        || d.contains("TEXT")
        || d.contains("STRING")
        || d.contains("JSON")
        || d.contains("UUID")
    {
        Class::Text
    } else if d.contains("BLOB") || d.contains("BINARY") {
        Class::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Class::Real
    } else if d.contains("DEC")
        || d.contains("NUMERIC")
        || d.contains("MONEY")
        || d.contains("NUMBER")
    {
        Class::Decimal
    } else {
        Class::Any
    }
}

/// Whether a cast to (`ty`, `epoch`) accepts every value of `kind` in a
/// column with profile `p` (kept consistent with [`cast_value`](crate::cast::cast_value)).
pub(super) fn accepts(ty: PgType, epoch: Option<Epoch>, kind: Kind, p: &ColumnProfile) -> bool {
    use Kind::*;
    if kind == Null {
        return true;
    }
    match ty {
        PgType::Bool => match kind {
            Integer => p.int_min.unwrap_or(0) >= 0 && p.int_max.unwrap_or(0) <= 1,
            TextBool => true,
            _ => false,
        },
        PgType::Int8 => kind == Integer,
        PgType::Int4 => {
            kind == Integer
                && p.int_min.is_none_or(|v| v >= i64::from(i32::MIN))
                && p.int_max.is_none_or(|v| v <= i64::from(i32::MAX))
        }
        PgType::Float8 => match kind {
            Integer => {
                p.int_min.is_none_or(|v| v.unsigned_abs() <= 1 << 53)
                    && p.int_max.is_none_or(|v| v.unsigned_abs() <= 1 << 53)
            }
            Real | Infinite => true,
            _ => false,
        },
        PgType::Numeric => matches!(kind, Integer | Real | Infinite | TextNumber),
        PgType::Text => !matches!(kind, TextNul | TextInvalidUtf8 | Blob),
        PgType::Bytea => !matches!(kind, Integer | Real | Infinite),
        PgType::Timestamptz => match kind {
            TextTimestamptz | TextMediaWiki => true,
            Integer | Real => epoch.is_some_and(|e| epoch_fits(e, p)),
            _ => false,
        },
        PgType::Timestamp => matches!(kind, TextTimestamp | TextDate),
        PgType::Date => kind == TextDate,
    }
}

fn epoch_fits(e: Epoch, p: &ColumnProfile) -> bool {
    let mut vals: Vec<f64> = Vec::new();
    vals.extend(
        [p.int_min, p.int_max]
            .into_iter()
            .flatten()
            .map(|v| v as f64),
    );
    vals.extend([p.real_min, p.real_max].into_iter().flatten());
    vals.iter().all(|&f| epoch_micros(f, None, e).is_ok())
}

/// The epoch unit that numbers in a date column are in, judged from their
/// magnitude: Julian days when there are fractional values all within the
/// Julian range of years 1..9999; else seconds below 1e11 (year 5138),
/// milliseconds below 1e14, microseconds below 1e17.
pub(super) fn guess_epoch(p: &ColumnProfile) -> Option<Epoch> {
    if p.count(Kind::Integer) + p.count(Kind::Real) == 0 {
        return None;
    }
    let in_julian = |v: f64| (JULIAN_MIN..=JULIAN_MAX).contains(&v);
    let all_julian = [p.int_min, p.int_max]
        .into_iter()
        .flatten()
        .all(|v| in_julian(v as f64))
        && [p.real_min, p.real_max]
            .into_iter()
            .flatten()
            .all(in_julian);
    if p.count(Kind::Real) > 0 && all_julian {
        return Some(Epoch::Julian);
    }
    let m = p.max_abs();
    if m < 1e11 {
        Some(Epoch::Seconds)
    } else if m < 1e14 {
        Some(Epoch::Millis)
    } else if m < 1e17 {
        Some(Epoch::Micros)
    } else {
        None
    }
}

/// Chooses the type of one column from its declared class and profile.
pub(super) fn choose(
    class: Class,
    p: &ColumnProfile,
    widen: bool,
) -> (PgType, Option<Epoch>, String) {
    use PgType::*;
    let present: Vec<(Kind, u64)> = p
        .kinds
        .iter()
        .filter(|(k, _)| **k != Kind::Null && !k.is_unholdable_text())
        .map(|(k, s)| (*k, s.count))
        .collect();
    if present.is_empty() {
        let ty = match class {
            Class::Bool => Bool,
            Class::DateOnly => Date,
            Class::DateTime => Timestamp,
            Class::Int => Int8,
            Class::Real => Float8,
            Class::Decimal => Numeric,
            Class::Blob => Bytea,
            Class::Text | Class::Any => {
                if p.non_null() > 0 {
                    Bytea // only text Postgres cannot hold: keep the bytes
                } else {
                    Text
                }
            }
        };
        let why = if p.non_null() == 0 {
            "no values; from the declared type".to_string()
        } else {
            "only values text cannot hold; kept as bytes".to_string()
        };
        return (ty, None, why);
    }
    let has_blob = p.count(Kind::Blob) + p.count(Kind::BlobUtf8) > 0;
    let epoch = guess_epoch(p);
    // (type, epoch, primary): primary candidates suit the declared type.
    let mut cands: Vec<(PgType, Option<Epoch>, bool)> = Vec::new();
    let date_cands = |c: &mut Vec<(PgType, Option<Epoch>, bool)>, epoch: Option<Epoch>| {
        c.push((Date, None, true));
        c.push((Timestamp, None, true));
        c.push((Timestamptz, epoch, true));
    };
    match class {
        Class::Bool => {
            cands.push((Bool, None, true));
            cands.extend([
                (Int8, None, false),
                (Float8, None, false),
                (Numeric, None, false),
            ]);
        }
        Class::DateOnly | Class::DateTime => {
            date_cands(&mut cands, epoch);
            cands.extend([
                (Int8, None, false),
                (Float8, None, false),
                (Numeric, None, false),
            ]);
        }
        Class::Int => {
            cands.push((Int8, None, true));
            cands.extend([(Float8, None, false), (Numeric, None, false)]);
        }
        Class::Real => {
            cands.push((Float8, None, true));
            cands.push((Numeric, None, false));
        }
        Class::Decimal => cands.push((Numeric, None, true)),
        Class::Text => cands.push((Text, None, true)),
        Class::Blob if has_blob => cands.push((Bytea, None, true)),
        Class::Blob | Class::Any => {
            cands.extend([(Int8, None, true), (Float8, None, true)]);
            if p.count(Kind::TextNumber) == 0 {
                cands.push((Numeric, None, true));
            }
            if !has_blob {
                date_cands(&mut cands, None);
            }
        }
    }
    cands.push((Text, None, matches!(class, Class::Blob | Class::Any)));
    cands.push((Bytea, None, matches!(class, Class::Blob | Class::Any)));
    let rejects = |ty: PgType, e: Option<Epoch>| -> u64 {
        present
            .iter()
            .filter(|(k, _)| !accepts(ty, e, *k, p))
            .map(|(_, n)| *n)
            .sum()
    };
    let pool: Vec<_> = cands
        .iter()
        .copied()
        .filter(|(_, _, primary)| widen || *primary)
        .collect();
    let mut best = pool[0];
    let mut best_r = rejects(best.0, best.1);
    for c in pool.iter().skip(1) {
        let r = rejects(c.0, c.1);
        if r < best_r {
            best = *c;
            best_r = r;
        }
    }
    let (ty, e, primary) = best;
    let e = if ty == Timestamptz && (p.count(Kind::Integer) + p.count(Kind::Real)) > 0 {
        e
    } else {
        None
    };
    let kinds: Vec<&str> = present
        .iter()
        .map(|(k, _)| crate::cast::kind_label(*k))
        .collect();
    let mut why = format!("values: {}", kinds.join(", "));
    if let Some(e) = e {
        why.push_str(&format!("; numbers read as {}", e.label()));
    }
    if !primary {
        why.push_str("; widened: the values do not fit the declared type");
    }
    if best_r > 0 {
        why.push_str(&format!("; {best_r} values do not fit any single type"));
    }
    (ty, e, why)
}

/// The type for an override name.
pub(super) fn override_type(name: &str) -> Option<PgType> {
    let n = name.trim().to_ascii_lowercase();
    Some(match n.as_str() {
        "timestamptz" | "timestamp with time zone" => PgType::Timestamptz,
        "timestamp" | "timestamp without time zone" => PgType::Timestamp,
        "int" | "int4" | "integer" => PgType::Int4,
        "int8" | "bigint" => PgType::Int8,
        "float8" | "double precision" | "double" => PgType::Float8,
        "bool" | "boolean" => PgType::Bool,
        "bytea" => PgType::Bytea,
        other => return PgType::from_sql_name(other),
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::types::ValueRef;

    use super::*;
    use crate::cast::cast_value;
    use crate::profile;
    use crate::value::Value;

    fn prof(values: &[ValueRef<'_>]) -> ColumnProfile {
        let mut p = ColumnProfile::default();
        for (i, v) in values.iter().enumerate() {
            p.add(*v, Some(i as i64 + 1));
        }
        p
    }

    fn chosen(decl: &str, values: &[ValueRef<'_>]) -> (PgType, Option<Epoch>) {
        let (t, e, _) = choose(class_of(decl), &prof(values), true);
        (t, e)
    }

    #[test]
    fn integers_become_bigint() {
        assert_eq!(
            chosen(
                "INTEGER",
                &[ValueRef::Integer(1), ValueRef::Integer(i64::MAX)]
            )
            .0,
            PgType::Int8
        );
    }

    #[test]
    fn reals_become_double_precision_never_real() {
        assert_eq!(chosen("REAL", &[ValueRef::Real(0.1)]).0, PgType::Float8);
        assert_eq!(
            chosen("float", &[ValueRef::Real(1.5), ValueRef::Integer(3)]).0,
            PgType::Float8
        );
    }

    #[test]
    fn epoch_milliseconds_in_datetime_columns_become_timestamptz() {
        let (t, e) = chosen("DATETIME", &[ValueRef::Integer(1_414_378_823_109)]);
        assert_eq!((t, e), (PgType::Timestamptz, Some(Epoch::Millis)));
        let c = cast_value(t, e, ValueRef::Integer(1_414_378_823_109)).unwrap();
        assert_eq!(c, Value::Timestamptz(1_414_378_823_109_000));
    }

    #[test]
    fn epoch_seconds_and_julian_days_are_recognised() {
        assert_eq!(
            chosen("DATE", &[ValueRef::Integer(1_600_000_000)]),
            (PgType::Timestamptz, Some(Epoch::Seconds))
        );
        let (t, e) = chosen("TIMESTAMP", &[ValueRef::Real(2_440_588.0)]);
        assert_eq!((t, e), (PgType::Timestamptz, Some(Epoch::Julian)));
        assert_eq!(
            cast_value(t, e, ValueRef::Real(2_440_588.0)).unwrap(),
            Value::Timestamptz(43_200_000_000)
        );
    }

    #[test]
    fn iso_text_dates_choose_date_timestamp_or_timestamptz() {
        assert_eq!(
            chosen("DATE", &[ValueRef::Text(b"2020-01-02")]).0,
            PgType::Date
        );
        assert_eq!(
            chosen(
                "DATETIME",
                &[
                    ValueRef::Text(b"2020-01-02 10:00:00"),
                    ValueRef::Text(b"2020-01-02")
                ]
            )
            .0,
            PgType::Timestamp
        );
        assert_eq!(
            chosen("DATETIME", &[ValueRef::Text(b"2020-01-02T10:00:00Z")]).0,
            PgType::Timestamptz
        );
        assert_eq!(
            chosen("", &[ValueRef::Text(b"20110716014006")]).0,
            PgType::Timestamptz
        );
    }

    #[test]
    fn mixed_zone_and_naive_dates_are_widened_to_text() {
        assert_eq!(
            chosen(
                "DATETIME",
                &[
                    ValueRef::Text(b"2020-01-02T10:00:00Z"),
                    ValueRef::Text(b"2020-01-02 10:00:00")
                ]
            )
            .0,
            PgType::Text
        );
    }

    #[test]
    fn text_declared_columns_keep_their_dates_as_text() {
        assert_eq!(
            chosen("TEXT", &[ValueRef::Text(b"2020-01-02")]).0,
            PgType::Text
        );
    }

    #[test]
    fn boolean_columns_take_0_1_t_f() {
        let vals = [
            ValueRef::Integer(0),
            ValueRef::Integer(1),
            ValueRef::Text(b"t"),
        ];
        assert_eq!(chosen("BOOLEAN", &vals).0, PgType::Bool);
        assert_eq!(
            cast_value(PgType::Bool, None, ValueRef::Text(b"F")).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(chosen("BOOLEAN", &[ValueRef::Integer(2)]).0, PgType::Int8);
    }

    #[test]
    fn decimals_become_numeric_without_rounding() {
        assert_eq!(
            chosen(
                "DECIMAL(5,2)",
                &[ValueRef::Real(2.99), ValueRef::Integer(3)]
            )
            .0,
            PgType::Numeric
        );
        assert_eq!(
            cast_value(PgType::Numeric, None, ValueRef::Real(2.99)).unwrap(),
            Value::Numeric("2.99".into())
        );
        assert_eq!(
            cast_value(
                PgType::Numeric,
                None,
                ValueRef::Text(b"12345678901234567890.123456789")
            )
            .unwrap(),
            Value::Numeric("12345678901234567890.123456789".into())
        );
    }

    #[test]
    fn text_in_integer_column_widens_to_text_or_rejects_without_widen() {
        let vals = [ValueRef::Integer(1), ValueRef::Text(b"abc")];
        assert_eq!(chosen("INTEGER", &vals).0, PgType::Text);
        let (t, _, _) = choose(Class::Int, &prof(&vals), false);
        assert_eq!(t, PgType::Int8);
        assert!(cast_value(PgType::Int8, None, ValueRef::Text(b"abc")).is_err());
    }

    #[test]
    fn big_integers_mixed_with_reals_become_numeric() {
        let vals = [
            ValueRef::Integer(29_834_776_566_209_834),
            ValueRef::Real(1.5),
        ];
        assert_eq!(chosen("INTEGER", &vals).0, PgType::Numeric);
    }

    #[test]
    fn nul_and_invalid_utf8_follow_the_policy_not_widening() {
        let vals = [ValueRef::Text(b"ok"), ValueRef::Text(b"\xff\xfe")];
        assert_eq!(chosen("TEXT", &vals).0, PgType::Text);
        let e = cast_value(PgType::Text, None, ValueRef::Text(b"\xff\xfe")).unwrap_err();
        assert!(e.reason.contains("not valid UTF-8"), "{}", e.reason);
        let e = cast_value(PgType::Text, None, ValueRef::Text(b"a\0b")).unwrap_err();
        assert!(e.reason.contains("NUL"), "{}", e.reason);
    }

    #[test]
    fn blobs_become_bytea_and_utf8_blobs_in_text_columns_become_text() {
        assert_eq!(
            chosen("BLOB", &[ValueRef::Blob(b"\x00\x01")]).0,
            PgType::Bytea
        );
        assert_eq!(
            chosen("TEXT", &[ValueRef::Text(b"a"), ValueRef::Blob(b"{}")]).0,
            PgType::Text
        );
        assert_eq!(
            chosen("TEXT", &[ValueRef::Text(b"a"), ValueRef::Blob(b"\x00")]).0,
            PgType::Bytea
        );
    }

    #[test]
    fn infinity_is_kept_in_double_precision() {
        assert_eq!(
            chosen("REAL", &[ValueRef::Real(f64::INFINITY)]).0,
            PgType::Float8
        );
        assert_eq!(
            cast_value(PgType::Float8, None, ValueRef::Real(f64::NEG_INFINITY)).unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn predicted_acceptance_matches_cast() {
        let samples: Vec<ValueRef<'_>> = vec![
            ValueRef::Integer(0),
            ValueRef::Integer(1),
            ValueRef::Integer(1_600_000_000),
            ValueRef::Real(2.5),
            ValueRef::Real(f64::INFINITY),
            ValueRef::Text(b"t"),
            ValueRef::Text(b"12.5"),
            ValueRef::Text(b"2020-01-01"),
            ValueRef::Text(b"2020-01-01 10:00"),
            ValueRef::Text(b"2020-01-01T10:00Z"),
            ValueRef::Text(b"20200101100000"),
            ValueRef::Text(b"hello"),
            ValueRef::Text(b"a\0"),
            ValueRef::Text(b"\xff"),
            ValueRef::Blob(b"abc"),
            ValueRef::Blob(b"\x00\xff"),
        ];
        for v in &samples {
            let p = prof(&[*v]);
            let k = profile::classify(*v);
            for ty in PgType::ALL {
                for e in [None, Some(Epoch::Seconds)] {
                    assert_eq!(
                        accepts(ty, e, k, &p),
                        cast_value(ty, e, *v).is_ok(),
                        "{v:?} as {ty} epoch {e:?}"
                    );
                }
            }
        }
    }
}
