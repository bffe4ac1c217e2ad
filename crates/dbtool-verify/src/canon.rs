//! The canonical encoding on the Postgres side, straight from the binary wire
//! format, without building a [`Value`] per cell.
//!
//! It must produce exactly the bytes of [`Value::canonical`] applied to
//! `Value::from_sql(ty, raw)`: the unit tests below hold the two together.
//! Doing it from the raw bytes saves one allocation per text or bytea cell on
//! the hot path (the whole target table streams through here).

use dbtool_migrate::value::{decode_numeric, Value};
use tokio_postgres::types::{FromSql, Type};

/// Seconds between the Unix epoch and Postgres's epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800 * 1_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

/// A cell exactly as it came off the wire (binary format), borrowed from the row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCell<'a>(pub(crate) Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawCell(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawCell(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Whether [`append`] (and [`Value`]'s `FromSql`) can read a column of this type.
pub(crate) fn supported(ty: &Type) -> bool {
    <Value as FromSql<'_>>::accepts(ty)
}

fn be_i64(raw: &[u8]) -> Result<i64, String> {
    raw.try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| format!("expected 8 bytes, got {}", raw.len()))
}

fn be_i32(raw: &[u8]) -> Result<i32, String> {
    raw.try_into()
        .map(i32::from_be_bytes)
        .map_err(|_| format!("expected 4 bytes, got {}", raw.len()))
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends the canonical encoding of one binary cell of type `ty` to `out`.
pub(crate) fn append(ty: &Type, cell: RawCell<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    let Some(raw) = cell.0 else {
        out.push(0);
        return Ok(());
    };
    match *ty {
        Type::BOOL => {
            out.push(1);
            out.push(u8::from(raw.first().copied().unwrap_or(0) != 0));
        }
        Type::INT2 | Type::INT4 | Type::INT8 => {
            let i: i64 = match raw.len() {
                2 => i64::from(i16::from_be_bytes([raw[0], raw[1]])),
                4 => i64::from(be_i32(raw)?),
                _ => be_i64(raw)?,
            };
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Type::FLOAT4 | Type::FLOAT8 => {
            let f = if *ty == Type::FLOAT4 {
                f64::from(f32::from_bits(be_i32(raw)? as u32))
            } else {
                f64::from_bits(be_i64(raw)? as u64)
            };
            let bits = if f.is_nan() {
                f64::NAN.to_bits()
            } else {
                f.to_bits()
            };
            out.push(3);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Type::NUMERIC => {
            let s = decode_numeric(raw).map_err(|e| e.to_string())?;
            put_bytes(out, 4, s.as_bytes());
        }
        Type::BYTEA => put_bytes(out, 6, raw),
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            let us = be_i64(raw)?;
            let us = if us == i64::MAX || us == i64::MIN {
                us
            } else {
                us + PG_EPOCH_OFFSET_MICROS
            };
            out.push(if *ty == Type::TIMESTAMPTZ { 7 } else { 8 });
            out.extend_from_slice(&us.to_le_bytes());
        }
        Type::DATE => {
            let d = be_i32(raw)?;
            let d = if d == i32::MAX || d == i32::MIN {
                d
            } else {
                d + PG_EPOCH_OFFSET_DAYS
            };
            out.push(9);
            out.extend_from_slice(&d.to_le_bytes());
        }
        _ if supported(ty) => put_bytes(out, 5, raw),
        ref t => return Err(format!("unsupported column type {t}")),
    }
    Ok(())
}

/// Decodes one raw cell into a [`Value`] (for listing a differing row).
pub(crate) fn decode(ty: &Type, cell: RawCell<'_>) -> Value {
    match cell.0 {
        None => Value::Null,
        Some(raw) => Value::from_sql(ty, raw)
            .unwrap_or_else(|e| Value::Text(format!("<cannot decode {ty}: {e}>"))),
    }
}

/// The integer of a raw `int2`/`int4`/`int8` key cell.
pub(crate) fn int_key(cell: RawCell<'_>) -> Option<i64> {
    let raw = cell.0?;
    match raw.len() {
        2 => Some(i64::from(i16::from_be_bytes([raw[0], raw[1]]))),
        4 => be_i32(raw).ok().map(i64::from),
        8 => be_i64(raw).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes_shim::encode;

    /// Minimal binary encoders for the test (through `Value`'s own `ToSql`).
    mod bytes_shim {
        use dbtool_migrate::value::Value;
        use tokio_postgres::types::{ToSql, Type};

        pub(super) fn encode(v: &Value, ty: &Type) -> Option<Vec<u8>> {
            let mut buf = tokio_postgres::types::private::BytesMut::new();
            match v.to_sql(ty, &mut buf).expect("encode") {
                tokio_postgres::types::IsNull::Yes => None,
                tokio_postgres::types::IsNull::No => Some(buf.to_vec()),
            }
        }
    }

    #[test]
    fn raw_canonical_matches_value_canonical_for_every_type() {
        let cases: Vec<(Value, Type)> = vec![
            (Value::Null, Type::TEXT),
            (Value::Bool(true), Type::BOOL),
            (Value::Bool(false), Type::BOOL),
            (Value::Int(-5), Type::INT8),
            (Value::Int(123_456), Type::INT4),
            (Value::Int(-7), Type::INT2),
            (Value::Float(1.0 + 1e-12), Type::FLOAT8),
            (Value::Float(f64::NAN), Type::FLOAT8),
            (Value::Float(-0.0), Type::FLOAT8),
            (Value::Numeric("-12.3400".into()), Type::NUMERIC),
            (Value::Numeric("NaN".into()), Type::NUMERIC),
            (Value::Text("héllo".into()), Type::TEXT),
            (Value::Text("v".into()), Type::VARCHAR),
            (Value::Bytes(vec![0, 1, 255]), Type::BYTEA),
            (Value::Timestamptz(1_700_000_000_123_456), Type::TIMESTAMPTZ),
            (Value::Timestamptz(i64::MAX), Type::TIMESTAMPTZ),
            (Value::Timestamp(-86_400_000_000), Type::TIMESTAMP),
            (Value::Date(19_000), Type::DATE),
            (Value::Date(i32::MIN), Type::DATE),
        ];
        for (v, ty) in cases {
            let raw = encode(&v, &ty);
            let back = match raw.as_deref() {
                None => Value::Null,
                Some(r) => Value::from_sql(&ty, r).expect("decode"),
            };
            let mut want = Vec::new();
            back.canonical(&mut want);
            let mut got = Vec::new();
            append(&ty, RawCell(raw.as_deref()), &mut got).expect("append");
            assert_eq!(got, want, "{v:?} as {ty}");
        }
    }

    #[test]
    fn float4_widens_like_value_from_sql() {
        let raw = 1.1f32.to_bits().to_be_bytes();
        let mut want = Vec::new();
        Value::from_sql(&Type::FLOAT4, &raw)
            .expect("decode")
            .canonical(&mut want);
        let mut got = Vec::new();
        append(&Type::FLOAT4, RawCell(Some(&raw)), &mut got).expect("append");
        assert_eq!(got, want);
    }
}
