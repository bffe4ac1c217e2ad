//! The migrator's side of its run records and exactly-once checkpoints.
//!
//! The tables (`dbtool.runs`, `dbtool.checkpoints`, `dbtool.run_tables`,
//! `dbtool.rejects`) and the SQL on them belong to `dbtool-catalog`; this
//! module re-exports what the loader and the orchestration use, and adds the
//! SQLite half of a checkpoint key: reading a key value from a source row
//! ([`key_value`]) and binding it back in a resumed read ([`SqliteKey`]).

use base64::Engine as _;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

pub(crate) use dbtool_catalog::checkpoints::{
    advance, chunks, insert_table, set_watermark, Advance, ChunkSpec, ChunkState, Key, KeyKind,
    KeyValue,
};
pub(crate) use dbtool_catalog::rejects::{
    insert_rejects, rejects, PendingReject, Reject, RejectAction,
};
pub(crate) use dbtool_catalog::runs::{
    abandon, create_run, find_unfinished, note_resume, set_status, store_plan, store_report,
    Fingerprint, Status,
};

/// The key value of a SQLite value, kept with its storage class so a resume
/// binds exactly the value it read (an integer 1 and a text '1' order
/// differently in SQLite).
pub(crate) fn key_value(v: ValueRef<'_>) -> KeyValue {
    match v {
        ValueRef::Null => KeyValue::Null,
        ValueRef::Integer(i) => KeyValue::Int(i),
        ValueRef::Real(f) => KeyValue::Real(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) if !s.contains('\0') => KeyValue::Text(s.to_owned()),
            _ => KeyValue::TextBytes(base64::engine::general_purpose::STANDARD.encode(t)),
        },
        ValueRef::Blob(b) => KeyValue::Blob(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// A checkpoint key value bound as a SQLite parameter, with the storage
/// class it was read with.
pub(crate) struct SqliteKey(pub(crate) KeyValue);

impl rusqlite::ToSql for SqliteKey {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match &self.0 {
            KeyValue::Null => ToSqlOutput::Owned(Value::Null),
            KeyValue::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            KeyValue::Real(f) => ToSqlOutput::Owned(Value::Real(*f)),
            KeyValue::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            KeyValue::Blob(b) => ToSqlOutput::Owned(Value::Blob(decode64(b)?)),
            KeyValue::TextBytes(b) => {
                // Bind the exact bytes as TEXT (rusqlite's Value::Text needs UTF-8).
                let bytes = decode64(b)?;
                match String::from_utf8(bytes) {
                    Ok(s) => ToSqlOutput::Owned(Value::Text(s)),
                    Err(e) => ToSqlOutput::Owned(Value::Blob(e.into_bytes())),
                }
            }
        })
    }
}

fn decode64(b: &str) -> rusqlite::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(b)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ToSql as _;

    #[test]
    fn key_values_bind_back_with_their_storage_class() {
        let read = [
            ValueRef::Integer(1),
            ValueRef::Real(0.5),
            ValueRef::Text(b"1"),
            ValueRef::Text(b"a\0b"),
            ValueRef::Blob(b"\x00\xff"),
        ];
        for v in read {
            let bound = SqliteKey(key_value(v));
            let out = bound.to_sql().unwrap();
            let back = match &out {
                ToSqlOutput::Borrowed(r) => *r,
                ToSqlOutput::Owned(o) => ValueRef::from(o),
                _ => unreachable!(),
            };
            assert_eq!(back, v);
        }
    }
}
