//! The wire format (SPEC §2): reading request lines, writing reply and
//! delivery lines. Every line written ends with `\n` and holds no other raw
//! newline, whatever the input looked like.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use smallvec::SmallVec;

/// A request as it arrives. Fields stay borrowed from the line, and `tags`
/// and `data` stay raw JSON until a command needs them: a publish forwards
/// its data without decoding and re-encoding it.
#[derive(Deserialize)]
pub(crate) struct Request<'a> {
    #[serde(borrow, default)]
    pub(crate) command: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) tags: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) data: Option<&'a RawValue>,
}

/// Why a request could not be carried out; the text goes to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("missing command")]
    MissingCommand,
    #[error("missing tags")]
    MissingTags,
    #[error("tags must be an array of strings")]
    TagsNotStrings,
    #[error("empty tag: every tag must be a non-empty string")]
    EmptyTag,
    #[error("data must be a string")]
    DataNotString,
    #[error("missing data")]
    MissingData,
    #[error("message too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Tags as sent, borrowed where no escape had to be decoded.
pub(crate) type Tags<'a> = SmallVec<[Cow<'a, str>; 4]>;

#[derive(Deserialize)]
struct Tag<'a>(#[serde(borrow)] Cow<'a, str>);

pub(crate) fn parse_request(line: &[u8]) -> Result<Request<'_>, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| ProtocolError::Json(e.to_string()))
}

/// A `null` field counts as absent.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// The request's tags: present, non-empty, every one a non-empty string.
pub(crate) fn parse_tags(raw: Option<&RawValue>) -> Result<Tags<'_>, ProtocolError> {
    let raw = present(raw).ok_or(ProtocolError::MissingTags)?;
    let tags: SmallVec<[Tag<'_>; 4]> =
        serde_json::from_str(raw.get()).map_err(|_| ProtocolError::TagsNotStrings)?;
    if tags.is_empty() {
        return Err(ProtocolError::MissingTags);
    }
    if tags.iter().any(|t| t.0.is_empty()) {
        return Err(ProtocolError::EmptyTag);
    }
    Ok(tags.into_iter().map(|t| t.0).collect())
}

/// Tags for commands where they may be left out (`register`): absent or
/// `[]` is an empty list; otherwise every tag must be a non-empty string.
pub(crate) fn parse_optional_tags(raw: Option<&RawValue>) -> Result<Tags<'_>, ProtocolError> {
    match present(raw) {
        None => Ok(Tags::new()),
        Some(raw) if raw.get().trim() == "[]" => Ok(Tags::new()),
        Some(raw) => parse_tags(Some(raw)),
    }
}

/// The raw JSON string token of `data` (`"\"x\""`), `""` when absent.
pub(crate) fn raw_data(raw: Option<&RawValue>) -> Result<&str, ProtocolError> {
    match present(raw) {
        None => Ok("\"\""),
        Some(raw) if raw.get().starts_with('"') => Ok(raw.get()),
        Some(_) => Err(ProtocolError::DataNotString),
    }
}

/// `data` decoded; an error when absent or not a string.
pub(crate) fn data_string(raw: Option<&RawValue>) -> Result<String, ProtocolError> {
    let raw = present(raw).ok_or(ProtocolError::MissingData)?;
    serde_json::from_str(raw.get()).map_err(|_| ProtocolError::DataNotString)
}

#[derive(Serialize)]
struct Reply<'a, T: Serialize> {
    command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<T>,
    #[serde(skip_serializing_if = "str::is_empty")]
    data: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
}

fn write_line<T: Serialize>(out: &mut Vec<u8>, reply: &Reply<'_, T>) {
    // Serializing plain strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, reply);
    out.push(b'\n');
}

/// `{"command":..,"data":..}\n`
pub(crate) fn reply(out: &mut Vec<u8>, command: &str, data: &str) {
    write_line::<&[String]>(
        out,
        &Reply {
            command,
            tags: None,
            data,
            error: "",
        },
    );
}

/// `{"command":..,"tags":[..]}\n`
pub(crate) fn reply_tags<T: AsRef<str> + Serialize>(out: &mut Vec<u8>, command: &str, tags: &[T]) {
    write_line(
        out,
        &Reply {
            command,
            tags: Some(tags),
            data: "",
            error: "",
        },
    );
}

/// `{"command":..,"error":..}\n`
pub(crate) fn error_reply(out: &mut Vec<u8>, command: &str, error: &str) {
    write_line::<&[String]>(
        out,
        &Reply {
            command,
            tags: None,
            data: "",
            error,
        },
    );
}

/// A custom command's reply, written as any other message.
pub(crate) fn message(out: &mut Vec<u8>, m: &mist_sdk::Message) {
    write_line(
        out,
        &Reply {
            command: m.command.as_str(),
            tags: (!m.tags.is_empty())
                .then(|| m.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
            data: m.data.as_str(),
            error: m.error.as_str(),
        },
    );
}

/// The start of a delivery line for `tags`, up to the data:
/// `{"command":"publish","tags":[..],"data":`. Shared by a run of publishes
/// with the same tags.
pub(crate) fn delivery_prefix<T: AsRef<str> + Serialize>(out: &mut Vec<u8>, tags: &[T]) {
    out.extend_from_slice(br#"{"command":"publish","tags":"#);
    let _ = serde_json::to_writer(&mut *out, tags);
    out.extend_from_slice(br#","data":"#);
}

/// Completes a delivery line after its prefix; `raw_data` is a JSON string token.
pub(crate) fn delivery_rest(out: &mut Vec<u8>, raw_data: &str) {
    out.extend_from_slice(raw_data.as_bytes());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn parses_tags_and_keeps_data_raw() {
        let r = parse_request(br#"{"command":"publish","tags":["a","b\u0021","a"],"data":"x\ny"}"#)
            .expect("parse");
        assert_eq!(r.command.as_deref(), Some("publish"));
        let tags = parse_tags(r.tags).expect("tags");
        assert_eq!(tags.as_slice(), ["a", "b!", "a"]);
        assert_eq!(raw_data(r.data), Ok(r#""x\ny""#));
    }

    #[test]
    fn rejects_bad_tags() {
        let tags = |line: &str| {
            let r = parse_request(line.as_bytes()).expect("parse");
            parse_tags(r.tags).map(|t| t.len())
        };
        assert_eq!(tags(r#"{"command":"x"}"#), Err(ProtocolError::MissingTags));
        assert_eq!(tags(r#"{"tags":null}"#), Err(ProtocolError::MissingTags));
        assert_eq!(tags(r#"{"tags":[]}"#), Err(ProtocolError::MissingTags));
        assert_eq!(tags(r#"{"tags":[""]}"#), Err(ProtocolError::EmptyTag));
        assert_eq!(tags(r#"{"tags":"a"}"#), Err(ProtocolError::TagsNotStrings));
        assert_eq!(
            tags(r#"{"tags":["a",1]}"#),
            Err(ProtocolError::TagsNotStrings)
        );
    }

    #[test]
    fn data_must_be_a_string() {
        let r = parse_request(br#"{"data":5}"#).expect("parse");
        assert_eq!(raw_data(r.data), Err(ProtocolError::DataNotString));
        let r = parse_request(br#"{}"#).expect("parse");
        assert_eq!(raw_data(r.data), Ok("\"\""));
        assert_eq!(data_string(r.data), Err(ProtocolError::MissingData));
    }

    #[test]
    fn writes_replies_without_raw_newlines() {
        let mut out = Vec::new();
        reply(&mut out, "ping", "pong");
        error_reply(&mut out, "", "bad\nthing");
        reply_tags(&mut out, "tags", &["a", "b"]);
        assert_eq!(
            text(out),
            "{\"command\":\"ping\",\"data\":\"pong\"}\n{\"command\":\"\",\"error\":\"bad\\nthing\"}\n{\"command\":\"tags\",\"tags\":[\"a\",\"b\"]}\n"
        );
    }

    #[test]
    fn writes_deliveries() {
        let mut out = Vec::new();
        delivery_prefix(&mut out, &["b", "a", "b"]);
        delivery_rest(&mut out, r#""x\ny""#);
        assert_eq!(
            text(out),
            "{\"command\":\"publish\",\"tags\":[\"b\",\"a\",\"b\"],\"data\":\"x\\ny\"}\n"
        );
    }
}
