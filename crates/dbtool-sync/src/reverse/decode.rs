//! Decoding pgoutput (protocol 1, `binary 'true'`) messages as returned by
//! `pg_logical_slot_peek_binary_changes`, into whole transactions.
//!
//! Tuple data in binary mode is each type's send format, the same bytes a
//! binary COPY or a binary query result carries, so
//! `impl FromSql for dbtool_migrate::value::Value` decodes it exactly: a
//! float keeps its bits, a timestamp its microseconds, a numeric its scale.

use std::collections::HashMap;

use dbtool_migrate::value::Value;
use tokio_postgres::types::{FromSql, Type};

use crate::Error;

/// A table as described by a pgoutput Relation message.
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<RelColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone)]
pub(crate) struct RelColumn {
    pub name: String,
    pub type_oid: u32,
}

/// One column's value in a change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// Not sent: a TOASTed value an update did not change, or a non-key
    /// column of a delete's old key.
    Unchanged,
    /// A value (possibly NULL).
    Value(Value),
}

/// One row change.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Insert {
        rel: u32,
        new: Vec<Cell>,
    },
    Update {
        rel: u32,
        /// The old key ('K') or old row ('O', replica identity FULL) when
        /// sent: only when the key changed, or always for FULL.
        old: Option<Vec<Cell>>,
        new: Vec<Cell>,
    },
    Delete {
        rel: u32,
        old: Vec<Cell>,
    },
    Truncate {
        rels: Vec<u32>,
    },
}

/// A committed transaction, in commit order.
#[derive(Debug, Clone)]
pub(crate) struct Txn {
    /// The end of the commit record: the slot's position once applied.
    pub end_lsn: u64,
    pub changes: Vec<Change>,
}

/// Turns a sequence of pgoutput messages into transactions.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    relations: HashMap<u32, Relation>,
    open: Option<Vec<Change>>,
}

impl Decoder {
    /// The relation with this id, as last described.
    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }

    /// Feeds one message; returns a transaction when the message was its
    /// commit.
    pub fn feed(&mut self, msg: &[u8]) -> Result<Option<Txn>, Error> {
        let mut r = Reader { b: msg, at: 0 };
        match r.u8()? {
            b'B' => {
                self.open = Some(Vec::new());
            }
            b'C' => {
                let _flags = r.u8()?;
                let _commit_lsn = r.u64()?;
                let end_lsn = r.u64()?;
                let changes = self
                    .open
                    .take()
                    .ok_or_else(|| bad("commit without begin"))?;
                return Ok(Some(Txn { end_lsn, changes }));
            }
            b'R' => {
                let id = r.u32()?;
                let schema = r.string()?;
                let name = r.string()?;
                let _ident = r.u8()?;
                let n = r.u16()?;
                let mut columns = Vec::with_capacity(n.into());
                for _ in 0..n {
                    let _flags = r.u8()?;
                    let cname = r.string()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    columns.push(RelColumn {
                        name: cname,
                        type_oid,
                    });
                }
                let schema = if schema.is_empty() {
                    "pg_catalog".into()
                } else {
                    schema
                };
                self.relations.insert(
                    id,
                    Relation {
                        schema,
                        name,
                        columns,
                    },
                );
            }
            b'I' => {
                let rel = r.u32()?;
                r.expect(b'N')?;
                let new = self.tuple(&mut r, rel)?;
                self.push(Change::Insert { rel, new })?;
            }
            b'U' => {
                let rel = r.u32()?;
                let mut old = None;
                let mut tag = r.u8()?;
                if tag == b'K' || tag == b'O' {
                    old = Some(self.tuple(&mut r, rel)?);
                    tag = r.u8()?;
                }
                if tag != b'N' {
                    return Err(bad("update without new tuple"));
                }
                let new = self.tuple(&mut r, rel)?;
                self.push(Change::Update { rel, old, new })?;
            }
            b'D' => {
                let rel = r.u32()?;
                let tag = r.u8()?;
                if tag != b'K' && tag != b'O' {
                    return Err(bad("delete without old key"));
                }
                let old = self.tuple(&mut r, rel)?;
                self.push(Change::Delete { rel, old })?;
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.u8()?;
                let rels = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                self.push(Change::Truncate { rels })?;
            }
            // Origin, Type, logical Message: nothing to apply.
            b'O' | b'Y' | b'M' => {}
            other => {
                return Err(bad(&format!(
                    "unknown message type {:?}",
                    char::from(other)
                )))
            }
        }
        Ok(None)
    }

    fn push(&mut self, c: Change) -> Result<(), Error> {
        self.open
            .as_mut()
            .ok_or_else(|| bad("change outside a transaction"))?
            .push(c);
        Ok(())
    }

    fn tuple(&self, r: &mut Reader<'_>, rel: u32) -> Result<Vec<Cell>, Error> {
        let relation = self
            .relations
            .get(&rel)
            .ok_or_else(|| bad(&format!("change for unknown relation {rel}")))?;
        let n = usize::from(r.u16()?);
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            let col = relation.columns.get(i).ok_or_else(|| {
                bad(&format!(
                    "tuple of {}.{} has more columns than its relation",
                    relation.schema, relation.name
                ))
            })?;
            let cell = match r.u8()? {
                b'n' => Cell::Value(Value::Null),
                b'u' => Cell::Unchanged,
                kind @ (b'b' | b't') => {
                    let len = r.u32()? as usize;
                    let raw = r.take(len)?;
                    let ty = Type::from_oid(col.type_oid).unwrap_or(Type::UNKNOWN);
                    let v = if kind == b't' && ty != Type::TEXT && ty != Type::VARCHAR {
                        return Err(Error::Reverse(format!(
                            "column {}.{}.{} arrived as text, not binary (type oid {}): dbtool streams back only the column types it migrates",
                            relation.schema, relation.name, col.name, col.type_oid
                        )));
                    } else {
                        Value::from_sql(&ty, raw).map_err(|e| {
                            Error::Reverse(format!(
                                "cannot decode column {}.{}.{} (type {ty}): {e}",
                                relation.schema, relation.name, col.name
                            ))
                        })?
                    };
                    Cell::Value(v)
                }
                other => {
                    return Err(bad(&format!(
                        "unknown tuple cell kind {:?}",
                        char::from(other)
                    )))
                }
            };
            cells.push(cell);
        }
        Ok(cells)
    }
}

fn bad(what: &str) -> Error {
    Error::Reverse(format!(
        "cannot decode the reverse stream: {what} (pgoutput protocol 1 expected)"
    ))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| bad("message cut short"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn expect(&mut self, b: u8) -> Result<(), Error> {
        if self.u8()? == b {
            Ok(())
        } else {
            Err(bad(&format!("expected {:?}", char::from(b))))
        }
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, Error> {
        let rest = &self.b[self.at..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| bad("unterminated string"))?;
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.at += nul + 1;
        Ok(s)
    }
}

/// Parses `X/Y` (Postgres's LSN text) into a number.
pub(crate) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN as Postgres prints it.
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
    }
}
