//! Consistency tokens: a WAL position on the primary after a commit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// A position in the primary's WAL taken after a commit. A replica whose replay
/// position has reached it sees that commit, so [`RwPool::read_after`] can read
/// your own writes from a replica.
///
/// It prints and parses as PostgreSQL writes an LSN (`0/16B3748`), so a service
/// can carry it across requests in a cookie or a header, or in a job payload:
///
/// ```
/// let t: dbtool_pool::Token = "0/16B3748".parse().unwrap();
/// assert_eq!(t.to_string(), "0/16B3748");
/// assert_eq!(t.lsn(), 0x16B3748);
/// ```
///
/// [`RwPool::read_after`]: crate::RwPool::read_after
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(u64);

impl Token {
    /// The token for a raw 64-bit LSN.
    pub fn from_lsn(lsn: u64) -> Token {
        Token(lsn)
    }

    /// The raw 64-bit LSN.
    pub fn lsn(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Token {
    type Err = Error;

    fn from_str(s: &str) -> Result<Token, Error> {
        let bad = || Error::Token {
            input: s.chars().take(64).collect(),
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let valid = |p: &str| !p.is_empty() && p.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(bad());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Token((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Token, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_through_its_string_form() {
        for lsn in [0, 1, 0x16B3748, 0x1_0000_0000, u64::MAX] {
            let t = Token::from_lsn(lsn);
            assert_eq!(t.to_string().parse::<Token>().unwrap(), t);
        }
        assert_eq!(Token::from_lsn(0x3_0000_00A0).to_string(), "3/A0");
    }

    #[test]
    fn token_parses_lowercase_and_rejects_garbage() {
        assert_eq!("a/ff".parse::<Token>().unwrap().lsn(), 0xA_0000_00FF);
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "x/1",
            "1/1/1",
            "123456789/0",
            "-1/0",
            "1",
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn token_orders_by_wal_position() {
        assert!("0/FFFFFFFF".parse::<Token>().unwrap() < "1/0".parse::<Token>().unwrap());
    }
}
