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
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
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
}
