//! What a value key holds: a value's envelope, a fill lease or an
//! invalidation marker.
//!
//! All three start with `kind: u8`, version `2`, `flags: u8` and a
//! generation `gen: u64` (bytes 3..11), so the fill script (see
//! `lease.rs`) compares one fixed byte range whatever the key holds.
//!
//! - Value (`b'D'`), big-endian: flags bit 0 negative, bit 1 "has a
//!   watermark", `gen`, `created_ms: u64`, `expires_ms: u64` (logical
//!   expiry, unix ms), `delta_ms: u32` (how long the loader took, for
//!   XFetch), `watermark: u64` and `primary_until_ms: u64` (what the load
//!   that wrote it had to read, so a refresh of it reads as fresh; see
//!   `coherence.rs`), `tags: u16`, then
//!   per tag `len: u16`, the tag's bytes and its `version: u64`, then the
//!   codec's payload. A binary header keeps the hot path free of a second JSON
//!   parse; the payload stays in the codec's format.
//! - Lease (`b'L'`): `gen` only. Taken on a miss of an absent key; a fill
//!   lands only while the key still holds the generation its loader started
//!   from.
//! - Marker (`b'M'`): flags bit 0 "has a watermark", `gen`, `watermark: u64`.
//!   Left by `delete`: readers miss, and a fill that starts from it must read
//!   at least the watermark (or the primary).

const MAGIC: u8 = b'D';
const LEASE: u8 = b'L';
const MARKER: u8 = b'M';
const VERSION: u8 = 2;
const FLAG_NEGATIVE: u8 = 1;
const FLAG_WATERMARK: u8 = 1;
const FLAG_VALUE_WATERMARK: u8 = 2;
const FIXED: usize = 3 + 8 + 8 + 8 + 4 + 8 + 8 + 2;
/// Where the generation sits in every record.
const GEN: std::ops::Range<usize> = 3..11;

/// A decoded envelope; `payload` borrows from the raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope<'a> {
    /// The generation this write created; a fill must find the generation
    /// its loader started from.
    pub gen: u64,
    /// A negative entry: the loader said the value does not exist.
    pub negative: bool,
    /// When it was written (unix ms).
    pub created_ms: u64,
    /// Logical expiry (unix ms); the Redis TTL may run longer for fail-safe.
    pub expires_ms: u64,
    /// Loader duration, the `delta` of XFetch.
    pub delta_ms: u32,
    /// The watermark the load that wrote it had to reach; a reload of this
    /// value must reach it too.
    pub watermark: Option<u64>,
    /// Until when (unix ms) a reload of this value must read the primary
    /// (it was loaded after an invalidation without a watermark).
    pub primary_until_ms: u64,
    /// Tags with the version each had when the value was loaded.
    pub tags: Vec<(String, u64)>,
    /// The codec's bytes (empty when negative).
    pub payload: &'a [u8],
}

impl Envelope<'_> {
    /// Encodes header and payload into one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let tag_bytes: usize = self.tags.iter().map(|(t, _)| 2 + t.len() + 8).sum();
        let mut out = Vec::with_capacity(FIXED + tag_bytes + self.payload.len());
        out.push(MAGIC);
        out.push(VERSION);
        let mut flags = if self.negative { FLAG_NEGATIVE } else { 0 };
        if self.watermark.is_some() {
            flags |= FLAG_VALUE_WATERMARK;
        }
        out.push(flags);
        out.extend_from_slice(&self.gen.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        out.extend_from_slice(&self.delta_ms.to_be_bytes());
        out.extend_from_slice(&self.watermark.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.primary_until_ms.to_be_bytes());
        out.extend_from_slice(&(self.tags.len() as u16).to_be_bytes());
        for (tag, version) in &self.tags {
            out.extend_from_slice(&(tag.len() as u16).to_be_bytes());
            out.extend_from_slice(tag.as_bytes());
            out.extend_from_slice(&version.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
        out
    }
}

/// Decodes an envelope; `None` when the bytes are not one (another writer,
/// or a future version): the caller treats that as a miss.
pub(crate) fn decode(bytes: &[u8]) -> Option<Envelope<'_>> {
    if bytes.len() < FIXED || bytes[0] != MAGIC || bytes[1] != VERSION {
        return None;
    }
    let flags = bytes[2];
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let gen = u64_at(3);
    let created_ms = u64_at(11);
    let expires_ms = u64_at(19);
    let delta_ms = u32::from_be_bytes(bytes[27..31].try_into().expect("4 bytes"));
    let watermark = (flags & FLAG_VALUE_WATERMARK != 0).then(|| u64_at(31));
    let primary_until_ms = u64_at(39);
    let ntags = u16::from_be_bytes([bytes[47], bytes[48]]) as usize;
    let mut at = FIXED;
    let mut tags = Vec::with_capacity(ntags);
    for _ in 0..ntags {
        let len = u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]) as usize;
        at += 2;
        let tag = std::str::from_utf8(bytes.get(at..at + len)?)
            .ok()?
            .to_owned();
        at += len;
        let version = u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
        at += 8;
        tags.push((tag, version));
    }
    Some(Envelope {
        gen,
        negative: flags & FLAG_NEGATIVE != 0,
        created_ms,
        expires_ms,
        delta_ms,
        watermark,
        primary_until_ms,
        tags,
        payload: &bytes[at..],
    })
}

/// The bytes of a fill lease record.
pub(crate) fn lease(gen: u64) -> Vec<u8> {
    let mut out = vec![LEASE, VERSION, 0];
    out.extend_from_slice(&gen.to_be_bytes());
    out
}

/// The bytes of an invalidation marker.
pub(crate) fn marker(gen: u64, watermark: Option<u64>) -> Vec<u8> {
    let flags = if watermark.is_some() {
        FLAG_WATERMARK
    } else {
        0
    };
    let mut out = vec![MARKER, VERSION, flags];
    out.extend_from_slice(&gen.to_be_bytes());
    out.extend_from_slice(&watermark.unwrap_or(0).to_be_bytes());
    out
}

/// True for a lease or a marker: a key holding one has no value.
pub(crate) fn is_placeholder(bytes: &[u8]) -> bool {
    bytes.len() >= GEN.end && bytes[1] == VERSION && matches!(bytes[0], LEASE | MARKER)
}

/// What a value key holds, as far as a fill cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A value (or a lease): a fill may replace it while it is unchanged.
    Plain,
    /// An invalidation marker: a fill may replace it, with a load that has
    /// seen the watermark (`None`: no watermark was given, read the primary).
    Marker { watermark: Option<u64> },
}

/// Classifies the raw bytes of a value key and returns the token a fill
/// must find to land: the generation bytes for this crate's records, the
/// whole value for anything else (written by another client or version),
/// the same function the fill script computes.
pub(crate) fn token(bytes: &[u8]) -> (Record, Vec<u8>) {
    let ours =
        bytes.len() >= GEN.end && bytes[1] == VERSION && matches!(bytes[0], MAGIC | LEASE | MARKER);
    if !ours {
        return (Record::Plain, bytes.to_vec());
    }
    let tok = bytes[GEN].to_vec();
    if bytes[0] == MARKER {
        let watermark = (bytes[2] & FLAG_WATERMARK != 0)
            .then(|| bytes.get(11..19))
            .flatten()
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
        return (Record::Marker { watermark }, tok);
    }
    (Record::Plain, tok)
}

/// The fill: `SET` the new envelope only if the key still holds the token
/// its loader started from (see [`token`]). A `delete` in between replaced
/// it with a marker of a new generation, so a load that began before the
/// delete can never store its older value after it. Returns 1 when stored,
/// -1 when the key holds another generation (invalidated or replaced), 0
/// when it holds nothing (the lease expired).
pub(crate) const FILL_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local k = string.sub(cur, 1, 2)
local tok = cur
if #cur >= 11 and (k == 'D\2' or k == 'L\2' or k == 'M\2') then tok = string.sub(cur, 4, 11) end
if tok ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// XFetch (Vattani, Chierichetti, Lowenstein 2015): refresh early with a
/// probability that grows as expiry nears and with the cost of recomputing.
/// `rand` is uniform in (0, 1].
pub(crate) fn xfetch_due(
    now_ms: u64,
    expires_ms: u64,
    delta_ms: u32,
    beta: f64,
    rand: f64,
) -> bool {
    if beta <= 0.0 || delta_ms == 0 {
        return now_ms >= expires_ms;
    }
    let early = -(delta_ms as f64) * beta * rand.max(f64::MIN_POSITIVE).ln();
    now_ms as f64 + early >= expires_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_tags_and_payload() {
        let e = Envelope {
            gen: 9,
            negative: false,
            created_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_360_000,
            delta_ms: 42,
            watermark: Some(77),
            primary_until_ms: 5,
            tags: vec![("team:1".into(), 7), ("topic:99".into(), u64::MAX)],
            payload: br#"{"a":1}"#,
        };
        let bytes = e.encode();
        assert_eq!(decode(&bytes).unwrap(), e);
    }

    #[test]
    fn negative_envelope_has_an_empty_payload() {
        let e = Envelope {
            gen: 1,
            negative: true,
            created_ms: 1,
            expires_ms: 2,
            delta_ms: 0,
            watermark: None,
            primary_until_ms: 0,
            tags: vec![],
            payload: b"",
        };
        let bytes = e.encode();
        assert_eq!(bytes.len(), FIXED);
        assert!(decode(&bytes).unwrap().negative);
    }

    #[test]
    fn foreign_or_truncated_bytes_are_not_an_envelope() {
        assert!(decode(br#"{"plain":"json"}"#).is_none());
        let e = Envelope {
            gen: 1,
            negative: false,
            created_ms: 1,
            expires_ms: 2,
            delta_ms: 0,
            watermark: None,
            primary_until_ms: 0,
            tags: vec![("t".into(), 1)],
            payload: b"x",
        };
        let bytes = e.encode();
        assert!(decode(&bytes[..FIXED + 3]).is_none());
    }

    #[test]
    fn every_record_carries_its_generation_at_the_same_bytes() {
        let e = Envelope {
            gen: 0x0102_0304_0506_0708,
            negative: false,
            created_ms: 1,
            expires_ms: 2,
            delta_ms: 0,
            watermark: None,
            primary_until_ms: 0,
            tags: vec![],
            payload: b"x",
        };
        let want = 0x0102_0304_0506_0708u64.to_be_bytes().to_vec();
        assert_eq!(token(&e.encode()), (Record::Plain, want.clone()));
        assert_eq!(
            token(&lease(0x0102_0304_0506_0708)),
            (Record::Plain, want.clone())
        );
        assert_eq!(
            token(&marker(0x0102_0304_0506_0708, Some(77))),
            (
                Record::Marker {
                    watermark: Some(77)
                },
                want.clone()
            )
        );
        assert_eq!(
            token(&marker(0x0102_0304_0506_0708, None)).0,
            Record::Marker { watermark: None }
        );
        // Not ours: the whole value is the token.
        assert_eq!(token(b"plain"), (Record::Plain, b"plain".to_vec()));
        // Leases and markers are not values.
        assert!(decode(&lease(1)).is_none());
        assert!(decode(&marker(1, None)).is_none());
    }

    #[test]
    fn xfetch_never_refreshes_far_from_expiry_and_always_after() {
        // delta 10 ms, beta 1: even the unluckiest draw (rand tiny) moves
        // expiry by at most ~7 s; one hour out is never refreshed.
        assert!(!xfetch_due(0, 3_600_000, 10, 1.0, 1e-300));
        assert!(xfetch_due(3_600_000, 3_600_000, 10, 1.0, 1.0));
        // with beta 0 only the real expiry counts
        assert!(!xfetch_due(3_599_999, 3_600_000, 1_000_000, 0.0, 1e-9));
    }

    #[test]
    fn xfetch_refreshes_some_but_not_all_near_expiry() {
        // 100 ms before expiry with a 100 ms loader: p = P(-ln r >= 1) = e^-1.
        let n = 10_000;
        let due = (1..=n)
            .filter(|i| xfetch_due(900, 1000, 100, 1.0, *i as f64 / n as f64))
            .count();
        let p = due as f64 / n as f64;
        assert!((p - (-1.0f64).exp()).abs() < 0.01, "p = {p}");
    }
}
