//! A decoder for the messages of Postgres's `pgoutput` logical decoding
//! plugin (protocol version 1, text tuples), as returned by
//! `pg_logical_slot_peek_binary_changes(slot, upto_lsn, upto_n,
//! 'proto_version', '1', 'publication_names', PUB)`: one message per row.
//!
//! Only what a bucket move applies is decoded: Begin, Commit, Relation,
//! Insert, Update, Delete and Truncate; Origin, Type and logical messages
//! are recognized and skipped. Values stay in Postgres's text form (the
//! applier casts them back with the column's type), so every type
//! round-trips without a per-type binary decoder.
//!
//! The reverse sync of `dbtool sync` needs the same decoder; both should end
//! up as one module of this crate (see docs/sharding.md).

use super::error::Error;

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value: the row keeps what it has.
    Unchanged,
    /// The value in Postgres's text output form.
    Text(String),
}

impl Value {
    /// The text, `None` for NULL or unchanged.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the primary key by default).
    pub key: bool,
    /// The column's name.
    pub name: String,
    /// The type's oid.
    pub type_oid: u32,
}

/// A table as announced by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid.
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<Column>,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// The LSN of its commit record.
        final_lsn: u64,
        /// Its transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// The LSN of the commit record.
        commit_lsn: u64,
        /// The LSN just past it: where a stream resumes.
        end_lsn: u64,
    },
    /// A relation's description (before its first change in a decoding call).
    Relation(Relation),
    /// A row inserted.
    Insert {
        /// The relation's oid.
        oid: u32,
        /// The new row.
        new: Vec<Value>,
    },
    /// A row updated.
    Update {
        /// The relation's oid.
        oid: u32,
        /// The old key (`K`) or whole old row (`O`, replica identity full),
        /// when the key changed or the identity is full.
        old: Option<Vec<Value>>,
        /// The new row.
        new: Vec<Value>,
    },
    /// A row deleted.
    Delete {
        /// The relation's oid.
        oid: u32,
        /// The old key, or whole old row with replica identity full.
        old: Vec<Value>,
    },
    /// Tables truncated.
    Truncate {
        /// The relations' oids.
        oids: Vec<u32>,
    },
    /// Anything else (origin, type, logical message): skipped.
    Other(u8),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(Error::Decode(format!(
                "pgoutput message ends at byte {} while {n} more were expected",
                self.buf.len()
            )));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn cstr(&mut self) -> Result<String, Error> {
        let rest = &self.buf[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Error::Decode("pgoutput string without its NUL".into()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, Error> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => {
                    return Err(Error::Decode(format!(
                        "pgoutput tuple value kind {:?} is not n, u or t (binary tuples are not requested)",
                        other as char
                    )))
                }
            });
        }
        Ok(out)
    }
}

/// Decodes one pgoutput message.
///
/// # Errors
/// [`Error::Decode`] for a truncated or unknown message layout.
pub fn decode(data: &[u8]) -> Result<Message, Error> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => {
            let final_lsn = r.u64()?;
            let _commit_ts = r.u64()?;
            let xid = r.u32()?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8()?;
            let commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            Message::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                columns,
            })
        }
        b'I' => {
            let oid = r.u32()?;
            expect(&mut r, b'N')?;
            Message::Insert {
                oid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let oid = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(Error::Decode(format!(
                    "pgoutput update of relation {oid} without its new tuple"
                )));
            }
            Message::Update {
                oid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let oid = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(Error::Decode(format!(
                    "pgoutput delete of relation {oid} without its old key"
                )));
            }
            Message::Delete {
                oid,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let oids = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { oids }
        }
        other => Message::Other(other),
    })
}

fn expect(r: &mut Reader<'_>, want: u8) -> Result<(), Error> {
    let got = r.u8()?;
    if got != want {
        return Err(Error::Decode(format!(
            "pgoutput message has {:?} where {:?} was expected",
            got as char, want as char
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_insert_with_null_unchanged_and_text() {
        let mut m = vec![b'I', 0, 0, 0, 42, b'N', 0, 3, b'n', b'u', b't', 0, 0, 0, 2];
        m.extend_from_slice(b"hi");
        assert_eq!(
            decode(&m).unwrap(),
            Message::Insert {
                oid: 42,
                new: vec![Value::Null, Value::Unchanged, Value::Text("hi".into())]
            }
        );
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic() {
        let err = decode(&[b'I', 0, 0]).unwrap_err().to_string();
        assert!(err.contains("pgoutput message ends at byte 3"), "{err}");
    }
}
