//! The invariants of what the broker writes to a client
//! (`docs/protocol.md`, Framing): whole `\n`-terminated lines, each one
//! JSON object of the protocol's fields.

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

/// Checks one drain's worth of output; returns the objects it holds.
pub(crate) fn output(bytes: &[u8], expect: Expect) -> Vec<Map<String, Value>> {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        assert!(
            bytes.is_empty(),
            "output that does not end with a newline: {:?}",
            String::from_utf8_lossy(bytes)
        );
        return Vec::new();
    };
    body.split(|&b| b == b'\n')
        .map(|line| self::line(line, expect))
        .collect()
}

/// Checks one output line (without its newline).
pub(crate) fn line(line: &[u8], expect: Expect) -> Map<String, Value> {
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
        assert_eq!(output(bytes, Expect::Any).len(), 2);
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
}
