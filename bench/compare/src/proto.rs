//! How each target is spoken to: the subscribe handshake that ends when the
//! subscription is live, and one publish on the wire. Nothing else differs
//! between targets, so each is measured by the same client code.

use std::fmt::Write as _;

use clap::ValueEnum;

/// The wire protocols the driver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Mist's JSON lines.
    Mist,
    /// NATS's text protocol.
    Nats,
    /// Redis's RESP pub/sub.
    Redis,
    /// The raw relay (`mist-compare relay`): lines in, lines out.
    Raw,
}

/// The one topic of the fanout and pair scenarios; a routing topic is
/// `r<i>`.
pub const TOPIC: &str = "bench";

/// The routing topic of subscriber `i`.
pub fn routing_topic(i: usize) -> String {
    format!("r{i}")
}

impl Proto {
    /// The name `mist-compare load --proto` takes.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Mist => "mist",
            Proto::Nats => "nats",
            Proto::Redis => "redis",
            Proto::Raw => "raw",
        }
    }

    /// Whether the target reads a greeting line before anything is sent.
    pub fn greets(self) -> bool {
        self == Proto::Nats
    }

    /// What a subscriber sends to hold `topic`, followed by what makes the
    /// target answer once the subscription is live.
    pub fn subscribe_request(self, topic: &str) -> String {
        match self {
            Proto::Mist => format!(
                "{{\"command\":\"subscribe\",\"tags\":[{}]}}\n{{\"command\":\"ping\"}}\n",
                mist_subscription(topic)
            ),
            Proto::Nats => format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {topic} 1\r\nPING\r\n"
            ),
            Proto::Redis => format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{topic}\r\n", topic.len()),
            Proto::Raw => "SUB\n".to_owned(),
        }
    }

    /// Whether `line` is the answer that says the subscription is live.
    pub fn subscribed(self, line: &[u8]) -> bool {
        match self {
            Proto::Mist => line.windows(4).any(|w| w == b"pong"),
            Proto::Nats => line.starts_with(b"PONG"),
            // The subscription count, the last line of the reply.
            Proto::Redis => line.starts_with(b":"),
            Proto::Raw => line.starts_with(b"OK"),
        }
    }

    /// What a publisher sends once, before publishing.
    pub fn publisher_hello(self) -> &'static [u8] {
        match self {
            Proto::Nats => b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n",
            Proto::Mist | Proto::Redis | Proto::Raw => b"",
        }
    }

    /// Appends one publish of `payload` on `topic`.
    pub fn encode_publish(self, topic: &str, payload: &str, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self {
            Proto::Mist => writeln!(
                out,
                "{{\"command\":\"publish\",\"tags\":[{}],\"data\":\"{payload}\"}}",
                mist_message(topic)
            ),
            Proto::Nats => write!(out, "PUB {topic} {}\r\n{payload}\r\n", payload.len()),
            Proto::Redis => write!(
                out,
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{topic}\r\n${}\r\n{payload}\r\n",
                topic.len(),
                payload.len()
            ),
            Proto::Raw => writeln!(out, "{payload}"),
        };
    }
}

/// Mist's tags for a topic: `"bench"`, or for routing topic `r<i>` the
/// set `"r<i>","app"`.
fn mist_subscription(topic: &str) -> String {
    if topic == TOPIC {
        format!("\"{TOPIC}\"")
    } else {
        format!("\"{topic}\",\"app\"")
    }
}

/// A message on a routing topic carries one tag more than its subscription
/// (`["r<i>","app","extra"]`), so matching is a subset test, not equality.
fn mist_message(topic: &str) -> String {
    if topic == TOPIC {
        mist_subscription(topic)
    } else {
        format!("{},\"extra\"", mist_subscription(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mist_routing_messages_carry_one_tag_more_than_the_subscription() {
        assert_eq!(
            Proto::Mist.subscribe_request("r7"),
            "{\"command\":\"subscribe\",\"tags\":[\"r7\",\"app\"]}\n{\"command\":\"ping\"}\n"
        );
        let mut out = String::new();
        Proto::Mist.encode_publish("r7", "~x~", &mut out);
        assert_eq!(
            out,
            "{\"command\":\"publish\",\"tags\":[\"r7\",\"app\",\"extra\"],\"data\":\"~x~\"}\n"
        );
        out.clear();
        Proto::Mist.encode_publish(TOPIC, "p", &mut out);
        assert_eq!(
            out,
            "{\"command\":\"publish\",\"tags\":[\"bench\"],\"data\":\"p\"}\n"
        );
    }

    #[test]
    fn nats_and_redis_frames_count_their_bytes() {
        let mut out = String::new();
        Proto::Nats.encode_publish("r12", "hello", &mut out);
        assert_eq!(out, "PUB r12 5\r\nhello\r\n");
        out.clear();
        Proto::Redis.encode_publish("r12", "hello", &mut out);
        assert_eq!(out, "*3\r\n$7\r\nPUBLISH\r\n$3\r\nr12\r\n$5\r\nhello\r\n");
        assert_eq!(
            Proto::Redis.subscribe_request("bench"),
            "*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nbench\r\n"
        );
    }
}
