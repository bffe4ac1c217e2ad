//! Redis key layout. Everything a namespace writes starts with `<ns>:`:
//!
//! | key                 | type   | holds                                         |
//! |---------------------|--------|-----------------------------------------------|
//! | `<ns>:v:<key>`      | string | an envelope (binary header) + codec payload   |
//! | `<ns>:t:<tag>`      | string | the tag's current version (random u64)        |
//! | `<ns>:l:<key>`      | string | the cross-process loader lock (`SET NX PX`)   |
//! | `<ns>:stats`        | hash   | counters summed over processes                |
//! | channel `<ns>:inv`  | pubsub | L1 invalidation messages                      |
//!
//! Keys are hashed to slots as written: a user key containing `{...}` uses
//! that hash tag, which callers may use to co-locate keys on purpose.

/// Builds the keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(ns: &str) -> Keys {
        Keys { ns: ns.to_owned() }
    }

    pub fn value(&self, key: &str) -> String {
        self.join("v", key)
    }

    pub fn tag(&self, tag: &str) -> String {
        self.join("t", tag)
    }

    pub fn lock(&self, key: &str) -> String {
        self.join("l", key)
    }

    pub fn stats(&self) -> String {
        format!("{}:stats", self.ns)
    }

    pub fn channel(&self) -> String {
        format!("{}:inv", self.ns)
    }

    fn join(&self, kind: &str, key: &str) -> String {
        let mut s = String::with_capacity(self.ns.len() + 3 + key.len());
        s.push_str(&self.ns);
        s.push(':');
        s.push_str(kind);
        s.push(':');
        s.push_str(key);
        s
    }
}

/// An L1 invalidation message: `<instance>|k|<key>`, `<instance>|t|<tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// The key was invalidated: drop it, and start new loads afresh.
    Key(&'a str),
    /// The tag was invalidated.
    Tag(&'a str),
    /// The key was filled with a newer value: drop the L1 copy only
    /// (`<instance>|f|<key>`).
    Fill(&'a str),
}

pub(crate) fn encode_message(instance: u64, msg: &Message<'_>) -> String {
    match msg {
        Message::Key(k) => format!("{instance:016x}|k|{k}"),
        Message::Tag(t) => format!("{instance:016x}|t|{t}"),
        Message::Fill(k) => format!("{instance:016x}|f|{k}"),
    }
}

/// Parses a message; returns its sender and content.
pub(crate) fn decode_message(s: &str) -> Option<(u64, Message<'_>)> {
    let (sender, rest) = s.split_once('|')?;
    let sender = u64::from_str_radix(sender, 16).ok()?;
    let (kind, body) = rest.split_once('|')?;
    match kind {
        "k" => Some((sender, Message::Key(body))),
        "t" => Some((sender, Message::Tag(body))),
        "f" => Some((sender, Message::Fill(body))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_by_namespace_and_kind() {
        let k = Keys::new("forums");
        assert_eq!(k.value("topic:1"), "forums:v:topic:1");
        assert_eq!(k.tag("team:9"), "forums:t:team:9");
        assert_eq!(k.lock("topic:1"), "forums:l:topic:1");
        assert_eq!(k.channel(), "forums:inv");
        assert_eq!(k.stats(), "forums:stats");
    }

    #[test]
    fn messages_round_trip_even_with_separators_in_the_key() {
        let m = encode_message(0xabc, &Message::Key("a|b|c"));
        assert_eq!(decode_message(&m), Some((0xabc, Message::Key("a|b|c"))));
        let m = encode_message(u64::MAX, &Message::Tag("team:1"));
        assert_eq!(decode_message(&m), Some((u64::MAX, Message::Tag("team:1"))));
        assert_eq!(decode_message("garbage"), None);
    }
}
