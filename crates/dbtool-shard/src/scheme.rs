//! Routing schemes: how a team id becomes a shard.
//!
//! - [`Scheme::Buckets`] (the default): `xxh3_64(team_id as UTF-8) % 4096` is
//!   the team's bucket, and the [`ShardMap`](crate::ShardMap) says which shard
//!   owns each bucket. Growing from N to N+1 shards is a map change that moves
//!   about 1/(N+1) of the teams.
//! - [`Scheme::Hex8Modulo`]: the existing app's
//!   `parseInt(teamId.substring(0, 8), 16) % N`, bit for bit, so services that
//!   were already split that way keep routing the same.
//!
//! Ids are hashed exactly as given, so `6F1C...` and `6f1c...` are two ids
//! to [`Scheme::Buckets`]. Services whose team ids are UUIDs written in
//! more than one form opt in to [`canonical_uuid`] (or
//! [`bucket_of_uuid`]) at the edge, before routing: it is not applied by
//! default because a map that already routes mixed-case ids would move
//! them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The number of buckets of the [`Scheme::Buckets`] scheme. Fixed forever:
/// changing it would move almost every team.
pub const BUCKETS: u16 = 4096;

/// How a team id is turned into a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// `xxh3_64(team_id) % 4096` -> bucket -> shard through the map's bucket ranges.
    #[default]
    Buckets,
    /// `parseInt(teamId.substring(0, 8), 16) % N`, N = the number of shards in
    /// the map, index i = the map's i-th shard.
    Hex8Modulo,
}

impl Scheme {
    /// The scheme's name as written in `dbtool.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Buckets => "buckets",
            Scheme::Hex8Modulo => "hex8-modulo",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheme {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buckets" => Ok(Scheme::Buckets),
            "hex8-modulo" => Ok(Scheme::Hex8Modulo),
            other => Err(Error::Config(format!(
                "unknown shard scheme {other:?}: use \"buckets\" or \"hex8-modulo\""
            ))),
        }
    }
}

/// The bucket (0..4096) of a team id under [`Scheme::Buckets`]:
/// `xxh3_64(team_id.as_bytes()) % 4096`, xxh3 with seed 0.
///
/// The id is hashed exactly as given (no trimming, no case folding): pass the
/// same canonical form everywhere (for UUIDs, the lowercase hyphenated text).
/// This function never changes across versions; tests pin known values.
///
/// # Errors
/// [`Error::Unroutable`] for an empty team id.
#[inline]
pub fn bucket_of(team_id: &str) -> Result<u16, Error> {
    if team_id.is_empty() {
        return Err(Error::unroutable(team_id, Scheme::Buckets, "it is empty"));
    }
    Ok(bucket_of_bytes(team_id.as_bytes()))
}

/// The canonical text of a UUID team id: lowercase, hyphenated
/// (`6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f`), from any case, with or without
/// hyphens, braces (`{...}`) or a `urn:uuid:` prefix. Anything that is not a
/// UUID is returned unchanged. Opt-in: route `canonical_uuid(id)` instead of
/// `id` so every spelling of one UUID reaches the same shard; the canonical
/// form is what ids already routed in lowercase use, so those keep their
/// buckets.
///
/// ```
/// use dbtool_shard::canonical_uuid;
/// let a = canonical_uuid("6F1C2A4E-9D7B-4C1E-8F3A-2B5D7E9C1A0F");
/// let b = canonical_uuid("{6f1c2a4e9d7b4c1e8f3a2b5d7e9c1a0f}");
/// assert_eq!(a, "6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f");
/// assert_eq!(a, b);
/// assert_eq!(canonical_uuid("team-1"), "team-1");
/// ```
pub fn canonical_uuid(team_id: &str) -> Cow<'_, str> {
    let inner = team_id
        .strip_prefix("urn:uuid:")
        .or_else(|| team_id.strip_prefix("URN:UUID:"))
        .unwrap_or(team_id);
    let inner = inner
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(inner);
    let b = inner.as_bytes();
    let hyphenated = b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
    if !(hyphenated || b.len() == 32) {
        return Cow::Borrowed(team_id);
    }
    let mut hex = [0u8; 32];
    let mut n = 0;
    for (i, &c) in b.iter().enumerate() {
        if hyphenated && [8, 13, 18, 23].contains(&i) {
            continue;
        }
        if !c.is_ascii_hexdigit() {
            return Cow::Borrowed(team_id);
        }
        hex[n] = c.to_ascii_lowercase();
        n += 1;
    }
    let mut out = String::with_capacity(36);
    for (i, &c) in hex.iter().enumerate() {
        if [8, 12, 16, 20].contains(&i) {
            out.push('-');
        }
        out.push(char::from(c));
    }
    if out == team_id {
        Cow::Borrowed(team_id)
    } else {
        Cow::Owned(out)
    }
}

/// [`bucket_of`] of [`canonical_uuid`]`(team_id)`: every spelling of a UUID
/// gets the bucket of its lowercase hyphenated form.
///
/// # Errors
/// [`Error::Unroutable`] for an empty team id.
pub fn bucket_of_uuid(team_id: &str) -> Result<u16, Error> {
    bucket_of(&canonical_uuid(team_id))
}

/// [`bucket_of`] without the emptiness check, for callers that validated.
#[inline]
pub(crate) fn bucket_of_bytes(bytes: &[u8]) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(bytes) % u64::from(BUCKETS)) as u16
}

/// The shard index of a team id under [`Scheme::Hex8Modulo`] with `shards`
/// shards: exactly JavaScript's `parseInt(teamId.substring(0, 8), 16) % shards`.
///
/// Where the app got `NaN` (no hex digit after optional whitespace, sign and
/// `0x`) or a negative index (a leading `-`), it failed to route; so does this,
/// with an error naming the id. `-0` (e.g. `"-0000000"`) is index 0, as an
/// array index in JavaScript.
///
/// # Errors
/// [`Error::Unroutable`] as above, and for an empty id; [`Error::Config`]
/// when `shards` is 0.
pub fn hex8_modulo(team_id: &str, shards: u32) -> Result<u32, Error> {
    if shards == 0 {
        return Err(Error::Config(
            "hex8-modulo needs at least one shard (x % 0 is NaN in JavaScript)".into(),
        ));
    }
    if team_id.is_empty() {
        return Err(Error::unroutable(
            team_id,
            Scheme::Hex8Modulo,
            "it is empty",
        ));
    }
    match parse_int_hex8(team_id) {
        None => Err(Error::unroutable(
            team_id,
            Scheme::Hex8Modulo,
            "its first 8 characters hold no hex number (parseInt gives NaN)",
        )),
        Some(v) if v < 0 && v % i64::from(shards) != 0 => Err(Error::unroutable(
            team_id,
            Scheme::Hex8Modulo,
            "its first 8 characters parse to a negative number (the index would be negative)",
        )),
        // A negative multiple of N gives -0 in JavaScript, which indexes as 0.
        Some(v) => Ok((v.unsigned_abs() % u64::from(shards)) as u32),
    }
}

/// `parseInt(s.substring(0, 8), 16)` with `None` for NaN. At most 8 hex digits
/// fit in the prefix, so the value is exact (no float rounding to emulate).
fn parse_int_hex8(s: &str) -> Option<i64> {
    // substring(0, 8) counts UTF-16 code units. A character that straddles
    // unit 8 is cut in JavaScript into a lone surrogate, which is neither
    // whitespace nor a hex digit, so stopping before it parses the same.
    let mut units = 0usize;
    let mut chars = s.chars().take_while(|c| {
        units += c.len_utf16();
        units <= 8
    });
    let mut c = chars.next();
    while c.is_some_and(is_js_whitespace) {
        c = chars.next();
    }
    let mut negative = false;
    if let Some(sign @ ('+' | '-')) = c {
        negative = sign == '-';
        c = chars.next();
    }
    let mut digits_seen = false;
    let mut value: i64 = 0;
    if c == Some('0') {
        match chars.next() {
            Some('x' | 'X') => c = chars.next(),
            next => {
                // A lone leading zero is a digit.
                digits_seen = true;
                c = next;
            }
        }
    }
    while let Some(d) = c.and_then(|c| c.to_digit(16)) {
        // to_digit(16) accepts exactly ASCII 0-9, a-f, A-F, as JavaScript does.
        value = value * 16 + i64::from(d);
        digits_seen = true;
        c = chars.next();
    }
    digits_seen.then_some(if negative { -value } else { value })
}

/// JavaScript's `StrWhiteSpaceChar`: WhiteSpace (TAB, VT, FF, ZWNBSP and the
/// Unicode `Zs` category) and LineTerminator (LF, CR, LS, PS). Not Rust's
/// `char::is_whitespace`, which differs (it has U+0085, lacks U+FEFF).
#[inline]
fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{D}'
            | ' '
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_of_is_pinned_to_xxh3_of_the_utf8_bytes() {
        // Pinned values: if these change, every deployed map routes differently.
        assert_eq!(
            bucket_of("a").unwrap(),
            (xxhash_rust::xxh3::xxh3_64(b"a") % 4096) as u16
        );
        let pinned = [
            ("team-1", PINNED[0]),
            ("00000000-0000-0000-0000-000000000000", PINNED[1]),
            ("6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f", PINNED[2]),
            ("équipe", PINNED[3]),
        ];
        for (id, bucket) in pinned {
            assert_eq!(bucket_of(id).unwrap(), bucket, "{id}");
        }
    }

    // From xxh3_64 (xxhash-rust 0.8.19), whose empty-input value is checked
    // against the reference implementation's below. Never edit.
    const PINNED: [u16; 4] = [3626, 3817, 2044, 178];

    #[test]
    fn xxh3_is_the_reference_xxh3_64() {
        // XXH3_64bits("") with seed 0, from the xxHash reference implementation.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn empty_team_id_is_unroutable_by_both_schemes() {
        assert!(matches!(bucket_of(""), Err(Error::Unroutable { .. })));
        assert!(matches!(hex8_modulo("", 4), Err(Error::Unroutable { .. })));
    }

    #[test]
    fn hex8_modulo_reads_the_first_eight_hex_digits_of_a_uuid() {
        assert_eq!(
            hex8_modulo("0000000a-ffff-ffff-ffff-ffffffffffff", 4).unwrap(),
            2
        );
        assert_eq!(
            hex8_modulo("ffffffff-0000-0000-0000-000000000000", 7).unwrap(),
            (0xffff_ffffu64 % 7) as u32
        );
        assert_eq!(hex8_modulo("6F1C2A4E-9D7B", 16).unwrap(), 0xE);
    }

    #[test]
    fn hex8_modulo_stops_at_the_first_non_hex_character() {
        assert_eq!(hex8_modulo("12g45678", 1000).unwrap(), 0x12);
        assert_eq!(hex8_modulo("1234-567", 1000).unwrap(), 0x1234 % 1000);
    }

    #[test]
    fn hex8_modulo_only_sees_eight_utf16_units() {
        // The 9th character is a digit, but substring(0, 8) drops it.
        assert_eq!(hex8_modulo("   1234567", 1000).unwrap(), 0x12345 % 1000);
        // An emoji is two UTF-16 units.
        assert!(hex8_modulo("\u{1F600}123456", 1000)
            .unwrap_err()
            .to_string()
            .contains("NaN"));
    }

    #[test]
    fn hex8_modulo_skips_javascript_whitespace_sign_and_0x() {
        assert_eq!(hex8_modulo("\u{FEFF}\t 0x1f", 100).unwrap(), 31);
        assert_eq!(hex8_modulo("+0XfF", 1000).unwrap(), 255);
        assert_eq!(hex8_modulo("\u{3000}a", 100).unwrap(), 10);
        // U+0085 is whitespace to Rust, not to JavaScript.
        assert!(hex8_modulo("\u{85}a", 100).is_err());
    }

    #[test]
    fn hex8_modulo_gives_an_error_naming_the_id_for_nan() {
        for id in ["team-one", "0x", "-", "+", "  ", "x1", "-0x"] {
            let err = hex8_modulo(id, 4).unwrap_err();
            assert!(err.to_string().contains(&format!("{id:?}")), "{err}");
        }
    }

    #[test]
    fn hex8_modulo_rejects_negative_indexes_but_routes_minus_zero_to_zero() {
        assert!(matches!(
            hex8_modulo("-1", 4),
            Err(Error::Unroutable { .. })
        ));
        assert_eq!(hex8_modulo("-0000000", 4).unwrap(), 0);
        // -8 % 4 is -0 in JavaScript.
        assert_eq!(hex8_modulo("-8", 4).unwrap(), 0);
        assert_eq!(hex8_modulo("0", 4).unwrap(), 0);
    }

    #[test]
    fn every_spelling_of_a_uuid_gets_the_bucket_of_its_lowercase_form() {
        let lower = "6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f";
        let spellings = [
            "6F1C2A4E-9D7B-4C1E-8F3A-2B5D7E9C1A0F",
            "6f1c2a4e9d7b4c1e8f3a2b5d7e9c1a0f",
            "{6F1C2A4E-9d7b-4c1e-8f3a-2b5d7e9c1a0f}",
            "urn:uuid:6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f",
            lower,
        ];
        // Without the opt-in, case matters (the reported problem) ...
        assert_ne!(bucket_of(spellings[0]).unwrap(), bucket_of(lower).unwrap());
        // ... with it, every spelling routes as the lowercase id always did.
        for id in spellings {
            assert_eq!(canonical_uuid(id), lower, "{id}");
            assert_eq!(bucket_of_uuid(id).unwrap(), PINNED[2], "{id}");
        }
        // Not UUIDs: unchanged, so their buckets do not move.
        for id in [
            "team-1",
            "6f1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0",
            "6f1c2a4e_9d7b_4c1e_8f3a_2b5d7e9c1a0f",
            "6g1c2a4e-9d7b-4c1e-8f3a-2b5d7e9c1a0f",
            "ÉQUIPE",
        ] {
            assert_eq!(canonical_uuid(id), id);
            assert_eq!(bucket_of_uuid(id).unwrap(), bucket_of(id).unwrap());
        }
        assert!(matches!(canonical_uuid(lower), Cow::Borrowed(_)));
        assert!(bucket_of_uuid("").is_err());
    }

    #[test]
    fn scheme_names_round_trip() {
        for s in [Scheme::Buckets, Scheme::Hex8Modulo] {
            assert_eq!(s.as_str().parse::<Scheme>().unwrap(), s);
        }
        assert!("modulo".parse::<Scheme>().is_err());
    }
}
