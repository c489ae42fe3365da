//! The invariants of what the broker writes to a client
//! (`docs/protocol.md`, Framing): whole `\n`-terminated lines, each one
//! JSON object of the protocol's fields.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// What a client may be sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// Replies and deliveries of any kind.
    Any,
    /// A client that only subscribed to these tag sets (and published,
    /// which has no reply): deliveries those subscriptions match, nothing else.
    Deliveries(&'static [&'static [&'static str]]),
}

/// Checks one drain's worth of output; returns how many lines it holds
/// and the last of them (without its newline).
pub(crate) fn output(bytes: &[u8], expect: Expect) -> (usize, Option<&[u8]>) {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        assert!(
            bytes.is_empty(),
            "output that does not end with a newline: {:?}",
            String::from_utf8_lossy(bytes)
        );
        return (0, None);
    };
    let mut lines = 0;
    let mut last = None;
    for line in body.split(|&b| b == b'\n') {
        self::line(line, expect);
        lines += 1;
        last = Some(line);
    }
    (lines, last)
}

/// A line as the protocol allows it: these fields and no other, each a
/// string (no `null`), `tags` an array of strings. Strings are borrowed
/// from the line unless they hold escapes: checking a line allocates
/// little, where a [`Value`] allocated every key and string.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    command: Text<'a>,
    #[serde(borrow, default, deserialize_with = "present")]
    tags: Option<Vec<Text<'a>>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<Text<'a>>,
}

/// A field that is there holds a value (`null` is refused, not taken as
/// absent).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A JSON string, borrowed when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strings;
        impl<'de> Visitor<'de> for Strings {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Strings)
    }
}

/// Checks one output line (without its newline).
pub(crate) fn line(line: &[u8], expect: Expect) {
    let Ok(parsed) = serde_json::from_slice::<Line<'_>>(line) else {
        // Not a line of the fast path's shape: the full check decides
        // (and says what is wrong). It also accepts what the fast path
        // does not: a field given twice, of which JSON keeps the last.
        by_value(line, expect);
        return;
    };
    let shown = || String::from_utf8_lossy(line).into_owned();
    let tags = parsed.tags.as_deref().unwrap_or_default();
    assert!(
        tags.iter().all(|t| !t.0.is_empty()),
        "tags that are not all non-empty strings: {:?}",
        shown()
    );
    if let Expect::Deliveries(subscriptions) = expect {
        assert!(
            parsed.command.0 == "publish" && parsed.error.is_none() && parsed.data.is_some(),
            "a subscriber that sent nothing to answer was sent {:?}",
            shown()
        );
        assert!(
            subscriptions
                .iter()
                .any(|set| set.iter().all(|tag| tags.iter().any(|t| t.0 == *tag))),
            "a delivery no subscription of {subscriptions:?} matches: {:?}",
            shown()
        );
    }
}

/// Parses a line that [`line`] accepted.
pub(crate) fn object(line: &[u8]) -> Map<String, Value> {
    by_value(line, Expect::Any)
}

/// The same checks as [`line`] on a [`Value`]: slower, and with a message
/// that says what is wrong.
fn by_value(line: &[u8], expect: Expect) -> Map<String, Value> {
    let shown = || String::from_utf8_lossy(line).into_owned();
    let value: Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("an output line is not JSON ({e}): {:?}", shown()));
    let Value::Object(object) = value else {
        panic!("an output line is not a JSON object: {:?}", shown());
    };
    for (key, field) in &object {
        match (key.as_str(), field) {
            ("command" | "data" | "error", Value::String(_)) => {}
            ("tags", Value::Array(tags)) => assert!(
                tags.iter()
                    .all(|t| t.as_str().is_some_and(|t| !t.is_empty())),
                "tags that are not all non-empty strings: {:?}",
                shown()
            ),
            _ => panic!("an output line with field {key:?} = {field}: {:?}", shown()),
        }
    }
    assert!(
        object.contains_key("command"),
        "an output line without a command: {:?}",
        shown()
    );
    if let Expect::Deliveries(subscriptions) = expect {
        let tags: Vec<&str> = object
            .get("tags")
            .and_then(Value::as_array)
            .map(|tags| tags.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            object.get("command").and_then(Value::as_str) == Some("publish")
                && !object.contains_key("error")
                && object.contains_key("data"),
            "a subscriber that sent nothing to answer was sent {:?}",
            shown()
        );
        assert!(
            subscriptions
                .iter()
                .any(|set| set.iter().all(|tag| tags.contains(tag))),
            "a delivery no subscription of {subscriptions:?} matches: {:?}",
            shown()
        );
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_replies_and_matching_deliveries() {
        let bytes =
            b"{\"command\":\"ping\",\"data\":\"pong\"}\n{\"command\":\"\",\"error\":\"x\"}\n";
        assert_eq!(output(bytes, Expect::Any).0, 2);
        let delivery = br#"{"command":"publish","tags":["b","a"],"data":"x"}"#;
        line(delivery, Expect::Deliveries(&[&["a"]]));
    }

    #[test]
    #[should_panic(expected = "does not end with a newline")]
    fn refuses_a_partial_line() {
        output(b"{\"command\":\"ping\"}", Expect::Any);
    }

    #[test]
    #[should_panic(expected = "not JSON")]
    fn refuses_an_empty_line() {
        output(b"{\"command\":\"ping\"}\n\n", Expect::Any);
    }

    #[test]
    #[should_panic(expected = "no subscription")]
    fn refuses_a_delivery_nobody_subscribed_to() {
        line(
            br#"{"command":"publish","tags":["b"],"data":"x"}"#,
            Expect::Deliveries(&[&["a"], &["b", "c"]]),
        );
    }

    #[test]
    #[should_panic(expected = "sent nothing to answer")]
    fn refuses_a_reply_to_a_watcher() {
        line(
            br#"{"command":"ping","data":"pong"}"#,
            Expect::Deliveries(&[&["a"]]),
        );
    }

    #[test]
    fn a_delivery_with_escaped_tags_matches() {
        let delivery = br#"{"command":"publish","tags":["\u0061"],"data":"\n"}"#;
        line(delivery, Expect::Deliveries(&[&["a"]]));
    }

    #[test]
    #[should_panic(expected = "with field \"data\" = null")]
    fn refuses_null_data() {
        line(br#"{"command":"ping","data":null}"#, Expect::Any);
    }

    #[test]
    #[should_panic(expected = "with field \"extra\"")]
    fn refuses_an_unknown_field() {
        line(br#"{"command":"ping","extra":"x"}"#, Expect::Any);
    }

    #[test]
    #[should_panic(expected = "without a command")]
    fn refuses_a_line_without_a_command() {
        line(br#"{"data":"x"}"#, Expect::Any);
    }

    #[test]
    #[should_panic(expected = "not all non-empty strings")]
    fn refuses_an_empty_tag() {
        line(
            br#"{"command":"publish","tags":["a",""],"data":"x"}"#,
            Expect::Any,
        );
    }
}
