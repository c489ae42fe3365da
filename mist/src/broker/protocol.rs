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
    #[error("data holds a \\u escape that is no character (a lone surrogate)")]
    DataLoneSurrogate,
    #[error("missing data")]
    MissingData,
    #[error("message too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("too many tags: {count}, the limit is {limit}")]
    TooManyTags { count: usize, limit: usize },
}

/// Tags as sent, borrowed where no escape had to be decoded.
pub(crate) type Tags<'a> = SmallVec<[Cow<'a, str>; 4]>;

/// A publish's raw tags: general JSON, or the canonical form the fast path
/// recognised (`["a","b"]`: plain strings, no whitespace, no escapes).
#[derive(Clone, Copy)]
pub(crate) enum RawTags<'a> {
    Json(Option<&'a RawValue>),
    Plain(&'a str),
}

impl<'a> RawTags<'a> {
    /// The raw JSON text, when present.
    pub(crate) fn text(&self) -> Option<&'a str> {
        match self {
            RawTags::Json(raw) => raw.map(RawValue::get),
            RawTags::Plain(raw) => Some(raw),
        }
    }

    /// The tags, validated.
    pub(crate) fn parse(&self) -> Result<Tags<'a>, ProtocolError> {
        match self {
            RawTags::Json(raw) => parse_tags(*raw),
            RawTags::Plain(raw) => Ok(plain_tags(raw).map(Cow::Borrowed).collect()),
        }
    }
}

/// A tag set as matching and delivery use it: non-empty, every tag a
/// non-empty string, and no more tags than `--max-tags`. The one place
/// that limit is checked: a client's request, a plugin's publish and
/// another node's message all become a `TagSet` before they are matched.
pub(crate) struct TagSet<'a>(Tags<'a>);

impl<'a> TagSet<'a> {
    /// A request's tags.
    pub(crate) fn parse(raw: RawTags<'a>, max: usize) -> Result<TagSet<'a>, ProtocolError> {
        TagSet::checked(raw.parse()?, max)
    }

    /// Tags given as a list (by a plugin, or by another node).
    pub(crate) fn from_list(
        tags: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Result<TagSet<'a>, ProtocolError> {
        let tags: Tags<'a> = tags.into_iter().map(Cow::Borrowed).collect();
        if tags.is_empty() {
            return Err(ProtocolError::MissingTags);
        }
        if tags.iter().any(|t| t.is_empty()) {
            return Err(ProtocolError::EmptyTag);
        }
        TagSet::checked(tags, max)
    }

    fn checked(tags: Tags<'a>, max: usize) -> Result<TagSet<'a>, ProtocolError> {
        if tags.len() > max {
            return Err(ProtocolError::TooManyTags {
                count: tags.len(),
                limit: max,
            });
        }
        Ok(TagSet(tags))
    }

    /// The same set, owned (to wait on the token store with).
    pub(crate) fn into_owned(self) -> TagSet<'static> {
        TagSet(
            self.0
                .into_iter()
                .map(|t| Cow::Owned(t.into_owned()))
                .collect(),
        )
    }
}

impl<'a> std::ops::Deref for TagSet<'a> {
    type Target = [Cow<'a, str>];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The shape every client library writes for a publish:
/// `{"command":"publish","tags":["a",..],"data":"..."}` with no whitespace,
/// no escapes, no other fields, non-empty tags. Returns the raw tags array
/// and the raw data token, both valid JSON, or `None` for anything else,
/// which then goes through `serde_json` as usual.
///
/// Why by hand: serde_json spends about 2,400 instructions on such a
/// 177-byte line and this about 400 (callgrind); sonic-rs and simd-json were
/// no better for lines this short. Parsing is most of a publish's cost, and
/// this shape is nearly all publishes. A proptest checks that whatever this
/// accepts, serde_json reads the same way.
pub(crate) fn canonical_publish(line: &[u8]) -> Option<(&str, &str)> {
    const HEAD: &[u8] = br#"{"command":"publish","tags":["#;
    const MID: &[u8] = br#","data":""#;
    let rest = line.strip_prefix(HEAD)?;
    // `at` indexes `rest`, at the opening quote of each tag.
    let mut at = 0;
    loop {
        if rest.get(at) != Some(&b'"') {
            return None;
        }
        let body = rest.get(at + 1..)?;
        let end = memchr::memchr2(b'"', b'\\', body)?;
        if body[end] != b'"' || end == 0 {
            return None;
        }
        at += end + 2;
        match rest.get(at)? {
            b',' => at += 1,
            b']' => {
                at += 1;
                break;
            }
            _ => return None,
        }
    }
    let tags_end = HEAD.len() + at;
    let data = rest.get(at..)?.strip_prefix(MID)?;
    let end = memchr::memchr2(b'"', b'\\', data)?;
    if data[end] != b'"' || &data[end + 1..] != b"}" {
        return None;
    }
    // One pass over the line: outside strings the canonical form holds only
    // structural bytes, so a byte below 0x20 is a raw control character in
    // a string (invalid JSON), and a byte with the high bit set means
    // non-ASCII text, which must then be valid UTF-8.
    let (min, any) = line
        .iter()
        .fold((u8::MAX, 0u8), |(m, o), &b| (m.min(b), o | b));
    if min < 0x20 {
        return None;
    }
    let text = if any & 0x80 == 0 {
        // SAFETY: every byte is below 0x80 (checked just above), and ASCII
        // is valid UTF-8. Skipping the validation saves a third of the path.
        unsafe { std::str::from_utf8_unchecked(line) }
    } else {
        std::str::from_utf8(line).ok()?
    };
    let data_start = line.len() - data.len() - 1;
    Some((
        &text[HEAD.len() - 1..tags_end],
        &text[data_start..line.len() - 1],
    ))
}

/// The tags of a canonical array `["a","b"]`.
fn plain_tags(raw: &str) -> impl Iterator<Item = &str> {
    raw.get(2..raw.len().saturating_sub(2))
        .unwrap_or_default()
        .split("\",\"")
}

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
///
/// The token is forwarded to subscribers as it is, so it must be one every
/// JSON parser reads: serde_json takes any `\uXXXX` into a raw value, a lone
/// surrogate included, which decodes to no character and which a
/// subscriber's parser (serde_json's among them) refuses. A token with a
/// `\u` escape is therefore decoded once, to check it.
pub(crate) fn raw_data(raw: Option<&RawValue>) -> Result<&str, ProtocolError> {
    match present(raw) {
        None => Ok("\"\""),
        Some(raw) if raw.get().starts_with('"') => {
            let token = raw.get();
            if token.contains("\\u") && serde_json::from_str::<String>(token).is_err() {
                return Err(ProtocolError::DataLoneSurrogate);
            }
            Ok(token)
        }
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

/// `{"command":..,"tags":[..],"error":..}\n`: a line the broker sends
/// on its own, such as a revocation notice.
pub(crate) fn notice<T: AsRef<str> + Serialize>(
    out: &mut Vec<u8>,
    command: &str,
    tags: &[T],
    error: &str,
) {
    write_line(
        out,
        &Reply {
            command,
            tags: Some(tags),
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
/// with the same tags. Canonical tags are copied as they are; others are
/// written anew, which also drops any whitespace (a raw newline must never
/// reach a line-framed subscriber).
pub(crate) fn delivery_prefix<T: AsRef<str> + Serialize>(
    out: &mut Vec<u8>,
    raw: RawTags<'_>,
    tags: &[T],
) {
    out.extend_from_slice(br#"{"command":"publish","tags":"#);
    match raw {
        RawTags::Plain(raw) => out.extend_from_slice(raw.as_bytes()),
        RawTags::Json(_) => {
            let _ = serde_json::to_writer(&mut *out, tags);
        }
    }
    out.extend_from_slice(br#","data":"#);
}

/// Completes a delivery line after its prefix; `raw_data` is a JSON string token.
pub(crate) fn delivery_rest(out: &mut Vec<u8>, raw_data: &str) {
    out.extend_from_slice(raw_data.as_bytes());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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
    fn data_with_a_lone_surrogate_is_refused() {
        // Found by the line_protocol fuzz target: forwarded raw, this data
        // made a delivery no subscriber could parse.
        for data in [r#""\ude00""#, r#""x\ud83d""#, r#""\ud41d\ude00 y""#] {
            let line = format!(r#"{{"command":"publish","tags":["a"],"data":{data}}}"#);
            let r = parse_request(line.as_bytes()).expect("serde_json reads it raw");
            assert_eq!(
                raw_data(r.data),
                Err(ProtocolError::DataLoneSurrogate),
                "{data}"
            );
        }
        for data in [r#""\ud83d\ude00""#, r#""\u0041\\u""#, r#""\\ude00""#] {
            let line = format!(r#"{{"command":"publish","tags":["a"],"data":{data}}}"#);
            let r = parse_request(line.as_bytes()).expect("parse");
            assert_eq!(raw_data(r.data), Ok(data), "{data}");
        }
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
        delivery_prefix(&mut out, RawTags::Json(None), &["b", "a", "b"]);
        delivery_rest(&mut out, r#""x\ny""#);
        assert_eq!(
            text(out),
            "{\"command\":\"publish\",\"tags\":[\"b\",\"a\",\"b\"],\"data\":\"x\\ny\"}\n"
        );
    }

    /// What serde_json makes of a line, in the terms the fast path returns.
    fn general(line: &[u8]) -> Option<(Vec<String>, String)> {
        let r = parse_request(line).ok()?;
        if r.command.as_deref() != Some("publish") {
            return None;
        }
        let tags = parse_tags(r.tags)
            .ok()?
            .iter()
            .map(|t| t.to_string())
            .collect();
        let data = data_string(r.data).ok()?;
        Some((tags, data))
    }

    fn fast(line: &[u8]) -> Option<(Vec<String>, String)> {
        let (tags, data) = canonical_publish(line)?;
        let tags = RawTags::Plain(tags)
            .parse()
            .ok()?
            .iter()
            .map(|t| t.to_string())
            .collect();
        Some((tags, serde_json::from_str(data).ok()?))
    }

    #[test]
    fn the_fast_path_takes_the_canonical_form_only() {
        let line = br#"{"command":"publish","tags":["a","b c","\u00e9"],"data":"x"}"#;
        assert_eq!(fast(line), None, "escapes go the general way");
        let line = r#"{"command":"publish","tags":["a","b c","é"],"data":"x ~ y"}"#;
        assert_eq!(fast(line.as_bytes()), general(line.as_bytes()));
        assert!(fast(line.as_bytes()).is_some());
        for other in [
            r#"{"command":"publish","tags":["a"],"data":""}"#,
            r#"{"command":"publish","tags":["a","a"],"data":"d"}"#,
        ] {
            assert!(fast(other.as_bytes()).is_some(), "{other}");
            assert_eq!(fast(other.as_bytes()), general(other.as_bytes()), "{other}");
        }
        for not in [
            r#"{"command":"publish","tags":[],"data":"x"}"#,
            r#"{"command":"publish","tags":[""],"data":"x"}"#,
            r#"{"command":"publish","tags":["a"], "data":"x"}"#,
            r#"{"command":"publish","tags":["a"],"data":"x","x":1}"#,
            r#"{"command":"publish","tags":["a"],"data":"x"}}"#,
            r#"{"command":"publish","tags":["a"],"data":5}"#,
            r#"{"command":"publish","tags":["a"]}"#,
            r#"{"command":"publish","tags":["a"],"data":"x"#,
            "{\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"tab\there\"}",
        ] {
            assert_eq!(canonical_publish(not.as_bytes()), None, "{not}");
        }
        // Invalid UTF-8 is refused by both.
        let bad = b"{\"command\":\"publish\",\"tags\":[\"a\"],\"data\":\"\xff\"}";
        assert_eq!(canonical_publish(bad), None);
        assert_eq!(general(bad), None);
    }

    fn json_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                8 => prop::char::range('a', 'z'),
                1 => Just('"'),
                1 => Just('\\'),
                1 => Just('\n'),
                1 => Just('\u{1}'),
                1 => Just(' '),
                1 => Just('é'),
                1 => Just('😀'),
                1 => Just(','),
                1 => Just(']'),
            ],
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the fast path accepts, serde_json reads the same way;
        /// and it accepts every canonical line that needs no escapes.
        #[test]
        fn the_fast_path_agrees_with_serde_json(
            tags in prop::collection::vec(json_text(), 0..4),
            data in json_text(),
            cut in 0usize..200,
            noise in prop::option::of((0usize..200, prop::sample::select(vec![b' ', b'"', b'\\', b',', b'}', 0xff, b'\n']))),
        ) {
            let mut line = format!(
                r#"{{"command":"publish","tags":{},"data":{}}}"#,
                serde_json::to_string(&tags).unwrap(),
                serde_json::to_string(&data).unwrap()
            ).into_bytes();
            let plain = |s: &str| !s.is_empty() && !s.contains(['"', '\\', '\n', '\u{1}']);
            if !tags.is_empty() && tags.iter().all(|t| plain(t)) && (data.is_empty() || plain(&data)) {
                prop_assert_eq!(fast(&line), Some((tags.clone(), data.clone())));
            }
            if let Some((at, byte)) = noise {
                let at = at.min(line.len());
                line.insert(at, byte);
            }
            let cut = cut.min(line.len());
            for candidate in [&line[..], &line[..cut]] {
                if let Some(got) = fast(candidate) {
                    prop_assert_eq!(Some(got), general(candidate));
                }
            }
        }
    }
}
