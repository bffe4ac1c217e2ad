//! How values become bytes: JSON by default, pluggable.

use serde::{de::DeserializeOwned, Serialize};

/// Turns values into bytes and back. `Json` is the default; implement this
/// for another format (MessagePack, bincode, ...) and pass it to
/// [`Cache::connect_with_codec`](crate::Cache::connect_with_codec).
///
/// The codec only sees the payload; the cache's own envelope (expiry, tags)
/// is separate, so switching codecs needs a new namespace, not a migration.
pub trait Codec: Send + Sync + 'static {
    /// Encodes `value`. The error is a message for [`Error::Codec`](crate::Error::Codec).
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, String>;
    /// Decodes bytes written by `encode`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String>;
}

/// The default codec: `serde_json`, readable by `redis-cli` and other languages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        // One UTF-8 check of the whole payload, then the `&str` reader:
        // `from_slice` checks every string on its own, char by char, which
        // was a fifth of `Cache::get`'s CPU on a 1 KB value (perf, bench
        // `cache`). Same result: JSON is UTF-8 or an error either way.
        let text = std::str::from_utf8(bytes).map_err(|e| format!("payload is not UTF-8: {e}"))?;
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_a_struct() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Topic {
            id: i64,
            title: String,
        }
        let t = Topic {
            id: 7,
            title: "héllo".into(),
        };
        let bytes = Json.encode(&t).unwrap();
        assert_eq!(bytes, r#"{"id":7,"title":"héllo"}"#.as_bytes());
        assert_eq!(Json.decode::<Topic>(&bytes).unwrap(), t);
    }

    #[test]
    fn json_decode_of_the_wrong_shape_is_an_error() {
        assert!(Json.decode::<Vec<i32>>(b"{\"a\":1}").is_err());
    }

    #[test]
    fn json_decode_of_bytes_that_are_not_utf8_is_an_error() {
        let err = Json.decode::<String>(b"\"caf\xe9\"").unwrap_err();
        assert!(err.starts_with("payload is not UTF-8"), "{err}");
    }
}
