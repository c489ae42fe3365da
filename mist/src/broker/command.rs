//! A request line turned into a command value (SPEC §2–3), and the typed
//! refusal every failure becomes.
//!
//! Parsing checks what can be checked without knowing who sent the line
//! (JSON shape, tags, sizes); what depends on the session (permissions,
//! admin mode) is checked when the command is applied (`commands`). Fields
//! stay borrowed from the line, and a publish's tags and data stay raw JSON:
//! a delivery forwards them without decoding and re-encoding.

use std::borrow::Cow;
use std::fmt::Display;

use mist_sdk::{ErrorKind, SdkError};
use serde_json::value::RawValue;

use super::protocol::{self, ProtocolError, RawTags, Request, TagSet};

/// One request, parsed.
pub(crate) enum Command<'a> {
    Ping,
    Publish {
        tags: RawTags<'a>,
        /// The raw JSON string token of `data`, or why it is unusable.
        data: Result<&'a str, ProtocolError>,
    },
    Subscribe(TagSet<'a>),
    Unsubscribe(TagSet<'a>),
    List,
    Auth {
        data: Option<&'a RawValue>,
    },
    Who,
    Admin {
        op: AdminOp,
        request: Request<'a>,
    },
    Custom {
        name: Cow<'a, str>,
        request: Request<'a>,
    },
}

/// The admin commands (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminOp {
    Register,
    Unregister,
    Set,
    Unset,
    Tags,
}

impl AdminOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AdminOp::Register => "register",
            AdminOp::Unregister => "unregister",
            AdminOp::Set => "set",
            AdminOp::Unset => "unset",
            AdminOp::Tags => "tags",
        }
    }
}

/// Why a request was not carried out: the command it was (or `""`), a
/// kind for transports that answer with a status of their own, and words
/// for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) command: String,
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(command: &str, kind: ErrorKind, message: impl Display) -> Refusal {
        Refusal {
            command: command.to_owned(),
            kind,
            message: message.to_string(),
        }
    }

    /// A malformed request.
    pub(crate) fn invalid(command: &str, message: impl Display) -> Refusal {
        Refusal::new(command, ErrorKind::INVALID_INPUT, message)
    }

    pub(crate) fn protocol(command: &str, error: ProtocolError) -> Refusal {
        let kind = match error {
            ProtocolError::TooLarge { .. } => ErrorKind::TOO_LARGE,
            _ => ErrorKind::INVALID_INPUT,
        };
        Refusal::new(command, kind, error)
    }

    pub(crate) fn to_sdk(&self) -> SdkError {
        SdkError::new(self.kind, self.message.clone())
    }
}

impl<'a> Command<'a> {
    /// Parses one line (without its newline).
    pub(crate) fn parse(line: &'a [u8], max_tags: usize) -> Result<Command<'a>, Refusal> {
        if let Some((tags, data)) = protocol::canonical_publish(line) {
            // Nearly every publish: the same as the general path below,
            // without a general JSON parse.
            return Ok(Command::Publish {
                tags: RawTags::Plain(tags),
                data: Ok(data),
            });
        }
        let request = protocol::parse_request(line).map_err(|e| Refusal::protocol("", e))?;
        let Some(command) = request.command.clone() else {
            return Err(Refusal::protocol("", ProtocolError::MissingCommand));
        };
        let tag_set = |name: &str| {
            TagSet::parse(RawTags::Json(request.tags), max_tags)
                .map_err(|e| Refusal::protocol(name, e))
        };
        Ok(match &*command {
            "" => return Err(Refusal::protocol("", ProtocolError::MissingCommand)),
            "ping" => Command::Ping,
            "publish" => Command::Publish {
                tags: RawTags::Json(request.tags),
                data: protocol::raw_data(request.data),
            },
            "subscribe" => Command::Subscribe(tag_set("subscribe")?),
            "unsubscribe" => Command::Unsubscribe(tag_set("unsubscribe")?),
            "list" => Command::List,
            "auth" => Command::Auth { data: request.data },
            "who" => Command::Who,
            "register" => Command::admin(AdminOp::Register, request),
            "unregister" => Command::admin(AdminOp::Unregister, request),
            "set" => Command::admin(AdminOp::Set, request),
            "unset" => Command::admin(AdminOp::Unset, request),
            "tags" => Command::admin(AdminOp::Tags, request),
            _ => Command::Custom {
                name: command,
                request,
            },
        })
    }

    fn admin(op: AdminOp, request: Request<'a>) -> Command<'a> {
        Command::Admin { op, request }
    }

    /// The command's name, as error replies carry it.
    #[cfg(test)]
    fn name(&self) -> &str {
        match self {
            Command::Ping => "ping",
            Command::Publish { .. } => "publish",
            Command::Subscribe(_) => "subscribe",
            Command::Unsubscribe(_) => "unsubscribe",
            Command::List => "list",
            Command::Auth { .. } => "auth",
            Command::Who => "who",
            Command::Admin { op, .. } => op.name(),
            Command::Custom { name, .. } => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<String, Refusal> {
        Command::parse(line.as_bytes(), 3).map(|c| c.name().to_owned())
    }

    #[test]
    fn names_every_command() {
        for (line, name) in [
            (r#"{"command":"ping"}"#, "ping"),
            (
                r#"{"command":"publish","tags":["a"],"data":"x"}"#,
                "publish",
            ),
            (
                r#"{"command":"publish","tags":["a"], "data":"x"}"#,
                "publish",
            ),
            (r#"{"command":"subscribe","tags":["a"]}"#, "subscribe"),
            (r#"{"command":"unsubscribe","tags":["a"]}"#, "unsubscribe"),
            (r#"{"command":"list"}"#, "list"),
            (r#"{"command":"auth","data":"t"}"#, "auth"),
            (r#"{"command":"who"}"#, "who"),
            (r#"{"command":"unset","data":"t","tags":["a"]}"#, "unset"),
            (r#"{"command":"dance"}"#, "dance"),
        ] {
            assert_eq!(parse(line).as_deref(), Ok(name), "{line}");
        }
    }

    #[test]
    fn refuses_what_no_session_could_use() {
        let refusal = parse("nope").expect_err("not JSON");
        assert_eq!(
            (refusal.command.as_str(), refusal.kind),
            ("", ErrorKind::INVALID_INPUT)
        );
        assert!(refusal.message.starts_with("invalid JSON"));
        assert_eq!(
            parse(r#"{"tags":["a"]}"#).expect_err("no command").message,
            "missing command"
        );
        let refusal = parse(r#"{"command":"subscribe","tags":[]}"#).expect_err("empty");
        assert_eq!(
            (refusal.command.as_str(), refusal.message.as_str()),
            ("subscribe", "missing tags")
        );
        let refusal =
            parse(r#"{"command":"subscribe","tags":["a","b","c","d"]}"#).expect_err("over the cap");
        assert_eq!(refusal.message, "too many tags: 4, the limit is 3");
    }

    #[test]
    fn a_publish_keeps_its_fields_raw() {
        let Ok(Command::Publish { tags, data }) = Command::parse(
            br#"{"command":"publish","tags":["a", "b"],"data":"x\ny"}"#,
            3,
        ) else {
            panic!("a publish");
        };
        assert_eq!(tags.text(), Some(r#"["a", "b"]"#));
        assert_eq!(data, Ok(r#""x\ny""#));
    }
}
