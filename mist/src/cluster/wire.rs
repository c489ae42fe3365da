//! The bytes of a backplane payload, version 3.
//!
//! ```text
//! byte 0       version (3)
//! byte 1       kind: 1 messages, 2 heartbeat, 3 token changed, 4 leaving,
//!              5 recheck every token, 6 hello, 7 interest, 8 snapshot,
//!              9 snapshot request, 10 ack
//! bytes 2-5    key id, u32 big-endian: 0 unsigned, else the key that signed
//! bytes 6-13   origin node id, u64 big-endian
//! bytes 14-21  addressee node id, u64 big-endian: 0 for every node (the
//!              control channel), else the one node whose channel it is sent on
//! bytes 22-29  sequence number, u64 big-endian: one counter per origin for
//!              payloads to every node and one for payloads to one node, so
//!              every payload can be told from a replay
//! bytes 30-37  the sender's clock, milliseconds since the UNIX epoch
//! then, by kind:
//!   messages:      count, then per message: tag count, each tag (length,
//!                  UTF-8 bytes), data (length, bytes: one JSON string token)
//!   heartbeat, hello: the sender's heartbeat interval in milliseconds
//!   token changed: the SHA-256 of the token (32 bytes), never the token
//!   interest:      the epoch of the first change, a count, then per change
//!                  one byte (1 added, 0 withdrawn) and a tag set (a tag
//!                  count, then each tag as length and UTF-8 bytes)
//!   snapshot:      epoch, part, parts, a count, then that many tag sets
//!   ack:           the epoch of the addressee's interest acknowledged
//!   leaving, recheck every token, snapshot request: nothing
//! last, when the key id is not 0: HMAC-SHA256 of every byte before it
//!   (32 bytes) under that key
//! ```
//!
//! Counts and lengths are LEB128 varints. A messages payload carries each
//! message's own tags, so one payload may batch messages of several tag
//! sets; a new kind or field comes with a new version byte, which a node
//! of another version refuses (and says so in its log).
//!
//! Reading is in two steps: [`open`] checks the frame (version, kind,
//! lengths) and splits header, body and MAC without reading the body, so
//! that the MAC can be checked before any of the body is looked at; [`body`]
//! then reads the body. Both borrow from the payload, check everything
//! before they return and cost at most one allocation bounded by the
//! payload's length: a payload from a hostile or broken backplane gets a
//! [`WireError`], never a panic.
//!
//! A message's data must be exactly one JSON string token (no whitespace
//! around it, no raw control character, no lone surrogate escape): the
//! broker copies it into the delivery line unchanged, so this is what keeps
//! every line a subscriber receives one valid JSON object.

use thiserror::Error;

use super::key::{ClusterKeys, MAC_BYTES};

/// The version this node writes and reads.
pub const VERSION: u8 = 3;
/// Bytes before the body.
pub const HEADER: usize = 38;
/// Payloads larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Messages in one payload at most.
pub const MAX_MESSAGES: u64 = 65_536;
/// Tags of one message at most (the broker's own limit is lower).
pub const MAX_TAGS: u64 = 65_536;
/// Tag sets in one interest or snapshot payload at most.
pub const MAX_SETS: u64 = 32_768;
/// Bytes of tag sets a node puts in one interest or snapshot payload at
/// most (under NATS's default 1 MiB payload limit); one set may pass it.
pub const MAX_SET_BYTES: usize = 256 << 10;
/// Parts of one snapshot at most.
pub const MAX_PARTS: u64 = 4096;

/// Why a payload was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("payload ends early")]
    Truncated,
    #[error("payload version {0}: this node reads version {VERSION} (are all nodes running the same Mist?)")]
    Version(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
    #[error("malformed length")]
    Varint,
    #[error("{0} out of range")]
    Range(&'static str),
    #[error("a tag or data is not UTF-8")]
    Utf8,
    #[error("data is not exactly one JSON string")]
    Data,
    #[error("{0} bytes after the end of the payload")]
    Trailing(usize),
}

/// What kind of payload, by its second byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Messages = 1,
    Heartbeat = 2,
    TokenChanged = 3,
    Leaving = 4,
    RecheckAll = 5,
    /// A heartbeat from a node that (re)joined: forget what you knew of its
    /// interest and ask it again.
    Hello = 6,
    /// Changes of the sender's tag sets, numbered by epoch.
    Interest = 7,
    /// All of the sender's tag sets at an epoch (to the node that asked).
    Snapshot = 8,
    /// "Send me your snapshot" (to one node).
    SnapshotRequest = 9,
    /// "I have applied your interest up to this epoch" (to one node).
    Ack = 10,
}

impl Kind {
    fn from_byte(byte: u8) -> Result<Kind, WireError> {
        Ok(match byte {
            1 => Kind::Messages,
            2 => Kind::Heartbeat,
            3 => Kind::TokenChanged,
            4 => Kind::Leaving,
            5 => Kind::RecheckAll,
            6 => Kind::Hello,
            7 => Kind::Interest,
            8 => Kind::Snapshot,
            9 => Kind::SnapshotRequest,
            10 => Kind::Ack,
            other => return Err(WireError::Kind(other)),
        })
    }
}

/// The fixed fields every payload starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// The key that signed the payload; 0: unsigned.
    pub key_id: u32,
    pub origin: u64,
    /// The node it is addressed to; 0: every node.
    pub to: u64,
    pub sequence: u64,
    /// The sender's clock when it sent the payload, ms since the UNIX epoch.
    pub time_ms: u64,
}

/// A payload split into its parts, the body not yet read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    pub header: Header,
    /// Every byte the MAC covers (the whole payload but the MAC).
    pub signed: &'a [u8],
    pub body: &'a [u8],
    /// Present when `header.key_id` is not 0.
    pub mac: Option<&'a [u8]>,
}

/// A decoded payload, borrowing from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub body: Body<'a>,
}

/// What a payload carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Messages(Vec<Incoming<'a>>),
    Heartbeat {
        interval_ms: u64,
    },
    TokenChanged([u8; 32]),
    Leaving,
    RecheckAll,
    Hello {
        interval_ms: u64,
    },
    /// Changes from `first` on: `(added, tag set)`, one epoch each.
    Interest {
        first: u64,
        changes: Vec<(bool, Tags<'a>)>,
    },
    Snapshot {
        epoch: u64,
        part: u64,
        parts: u64,
        sets: Vec<Tags<'a>>,
    },
    SnapshotRequest,
    Ack {
        epoch: u64,
    },
}

/// One message from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// The tags as the publisher sent them (order and duplicates kept).
    pub tags: Tags<'a>,
    /// The data as one JSON string token, quotes included (checked).
    pub data: &'a str,
}

/// The tags of an [`Incoming`] message, checked at decode and read lazily.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tags<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> Tags<'a> {
    /// How many tags.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Never: a message has at least one tag.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tags, in the publisher's order.
    pub fn iter(&self) -> TagIter<'a> {
        TagIter {
            reader: Reader { bytes: self.raw },
            left: self.count,
        }
    }

    /// The tags as owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

impl std::fmt::Debug for Tags<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterates over [`Tags`].
pub struct TagIter<'a> {
    reader: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for TagIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked at decode: these cannot fail; if they did, stop.
        let len = self.reader.varint().ok()?;
        let bytes = self.reader.take(usize::try_from(len).ok()?).ok()?;
        std::str::from_utf8(bytes).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.bytes.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian unsigned number of `n` (at most 8) bytes.
    fn uint(&mut self, n: usize) -> Result<u64, WireError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |value, &byte| value << 8 | u64::from(byte)))
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(WireError::Varint);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Varint)
    }

    /// A length prefix and that many bytes, as UTF-8.
    fn text(&mut self) -> Result<&'a str, WireError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        std::str::from_utf8(self.take(len)?).map_err(|_| WireError::Utf8)
    }
}

/// Appends `value` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends one message (without the count that precedes the messages).
/// `data` must be one JSON string token; tags must be non-empty.
pub fn put_message<S: AsRef<str>>(out: &mut Vec<u8>, tags: &[S], data: &str) {
    put_tag_set(out, tags);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data.as_bytes());
}

/// A whole payload: the header (with the signing key's id when `keys` are
/// given), the concatenation of `body`, then the MAC when signed.
pub fn seal(
    kind: Kind,
    origin: u64,
    sequence: u64,
    time_ms: u64,
    keys: Option<&ClusterKeys>,
    body: &[&[u8]],
) -> Vec<u8> {
    seal_to(kind, origin, 0, sequence, time_ms, keys, body)
}

/// [`seal`] for a payload addressed to node `to` (0: every node).
pub fn seal_to(
    kind: Kind,
    origin: u64,
    to: u64,
    sequence: u64,
    time_ms: u64,
    keys: Option<&ClusterKeys>,
    body: &[&[u8]],
) -> Vec<u8> {
    let body_len: usize = body.iter().map(|part| part.len()).sum();
    let mut out = Vec::with_capacity(HEADER + body_len + MAC_BYTES);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&keys.map_or(0, ClusterKeys::signing_id).to_be_bytes());
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&to.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    for part in body {
        out.extend_from_slice(part);
    }
    if let Some(keys) = keys {
        let mac = keys.sign(&out);
        out.extend_from_slice(&mac);
    }
    out
}

/// The body of a messages payload: `count`, then `messages` as written by
/// [`put_message`] `count` times.
pub fn messages_count(count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    put_varint(&mut out, count);
    out
}

/// The body of a heartbeat.
pub fn heartbeat_body(interval_ms: u64) -> Vec<u8> {
    messages_count(interval_ms)
}

/// Whether `data` is exactly one JSON string token, as RFC 8259 writes one
/// and every parser reads it: a quote, then characters other than quote,
/// backslash and U+0000–U+001F, or escapes (`\" \\ \/ \b \f \n \r \t`,
/// `\uXXXX` where a surrogate escape is a high one followed by a low one),
/// then a closing quote that is the last byte. `data` is UTF-8 already.
pub fn is_json_string(data: &str) -> bool {
    let b = data.as_bytes();
    if b.len() < 2 || b[0] != b'"' || b[b.len() - 1] != b'"' {
        return false;
    }
    let end = b.len() - 1;
    let mut i = 1;
    while i < end {
        match b[i] {
            b'"' | 0..=0x1f => return false,
            b'\\' => {
                let Some(&escape) = b.get(i + 1).filter(|_| i + 1 < end) else {
                    return false;
                };
                match escape {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let Some(unit) = hex4(&b[..end], i + 2) else {
                            return false;
                        };
                        i += 6;
                        if (0xdc00..0xe000).contains(&unit) {
                            return false; // a low surrogate first
                        }
                        if (0xd800..0xdc00).contains(&unit) {
                            if b.get(i..i + 2) != Some(b"\\u") {
                                return false;
                            }
                            match hex4(&b[..end], i + 2) {
                                Some(low) if (0xdc00..0xe000).contains(&low) => i += 6,
                                _ => return false,
                            }
                        }
                    }
                    _ => return false,
                }
            }
            _ => i += 1,
        }
    }
    i == end
}

/// The four hex digits at `at`, if `b` holds them.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at.checked_add(4)?)?;
    let mut value = 0;
    for &d in digits {
        value = value * 16 + char::from(d).to_digit(16)?;
    }
    Some(value)
}

/// Checks a payload's frame and splits it into header, body and MAC,
/// without reading the body.
pub fn open(payload: &[u8]) -> Result<Sealed<'_>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut r = Reader { bytes: payload };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = Kind::from_byte(r.u8()?)?;
    let key_id = u32::try_from(r.uint(4)?).map_err(|_| WireError::Truncated)?;
    let header = Header {
        kind,
        key_id,
        origin: r.uint(8)?,
        to: r.uint(8)?,
        sequence: r.uint(8)?,
        time_ms: r.uint(8)?,
    };
    let rest = r.bytes;
    let (body, mac) = if key_id == 0 {
        (rest, None)
    } else {
        let at = rest
            .len()
            .checked_sub(MAC_BYTES)
            .ok_or(WireError::Truncated)?;
        let (body, mac) = rest.split_at(at);
        (body, Some(mac))
    };
    Ok(Sealed {
        header,
        signed: &payload[..HEADER + body.len()],
        body,
        mac,
    })
}

/// Reads and checks the body of a payload of `kind`.
pub fn body(kind: Kind, body: &[u8]) -> Result<Body<'_>, WireError> {
    let mut r = Reader { bytes: body };
    let body = match kind {
        Kind::Messages => {
            let count = r.varint()?;
            if count == 0 || count > MAX_MESSAGES {
                return Err(WireError::Range("message count"));
            }
            // Each message takes at least 4 bytes: no reservation beyond
            // what the payload could hold.
            let room = r.bytes.len() / 4;
            let mut messages = Vec::with_capacity((count as usize).min(room));
            for _ in 0..count {
                let tag_count = r.varint()?;
                if tag_count == 0 || tag_count > MAX_TAGS {
                    return Err(WireError::Range("tag count"));
                }
                let tags_start = r.bytes;
                for _ in 0..tag_count {
                    if r.text()?.is_empty() {
                        return Err(WireError::Range("tag length"));
                    }
                }
                let tags_len = tags_start.len() - r.bytes.len();
                let data = r.text()?;
                if !is_json_string(data) {
                    return Err(WireError::Data);
                }
                messages.push(Incoming {
                    tags: Tags {
                        raw: &tags_start[..tags_len],
                        count: tag_count as usize,
                    },
                    data,
                });
            }
            Body::Messages(messages)
        }
        Kind::Heartbeat => Body::Heartbeat {
            interval_ms: r.varint()?,
        },
        Kind::TokenChanged => {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(r.take(32)?);
            Body::TokenChanged(digest)
        }
        Kind::Leaving => Body::Leaving,
        Kind::RecheckAll => Body::RecheckAll,
        Kind::Hello => Body::Hello {
            interval_ms: r.varint()?,
        },
        Kind::Interest => {
            let first = r.varint()?;
            let count = r.varint()?;
            if count == 0 || count > MAX_SETS {
                return Err(WireError::Range("change count"));
            }
            first.checked_add(count).ok_or(WireError::Range("epoch"))?;
            let mut changes = Vec::with_capacity((count as usize).min(r.bytes.len() / 4));
            for _ in 0..count {
                let added = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Range("change")),
                };
                changes.push((added, tag_set(&mut r)?));
            }
            Body::Interest { first, changes }
        }
        Kind::Snapshot => {
            let epoch = r.varint()?;
            let part = r.varint()?;
            let parts = r.varint()?;
            if parts == 0 || parts > MAX_PARTS || part >= parts {
                return Err(WireError::Range("snapshot part"));
            }
            let count = r.varint()?;
            if count > MAX_SETS {
                return Err(WireError::Range("set count"));
            }
            let mut sets = Vec::with_capacity((count as usize).min(r.bytes.len() / 3));
            for _ in 0..count {
                sets.push(tag_set(&mut r)?);
            }
            Body::Snapshot {
                epoch,
                part,
                parts,
                sets,
            }
        }
        Kind::SnapshotRequest => Body::SnapshotRequest,
        Kind::Ack => Body::Ack { epoch: r.varint()? },
    };
    if !r.bytes.is_empty() {
        return Err(WireError::Trailing(r.bytes.len()));
    }
    Ok(body)
}

/// A tag set: a count (at least one, at most [`MAX_TAGS`]), then each
/// tag, not empty.
fn tag_set<'a>(r: &mut Reader<'a>) -> Result<Tags<'a>, WireError> {
    let count = r.varint()?;
    if count == 0 || count > MAX_TAGS {
        return Err(WireError::Range("tag count"));
    }
    let start = r.bytes;
    for _ in 0..count {
        if r.text()?.is_empty() {
            return Err(WireError::Range("tag length"));
        }
    }
    let len = start.len() - r.bytes.len();
    Ok(Tags {
        raw: &start[..len],
        count: count as usize,
    })
}

/// Appends a tag set: a count, then each tag (length, UTF-8 bytes).
pub fn put_tag_set<S: AsRef<str>>(out: &mut Vec<u8>, tags: &[S]) {
    put_varint(out, tags.len() as u64);
    for tag in tags {
        let tag = tag.as_ref();
        put_varint(out, tag.len() as u64);
        out.extend_from_slice(tag.as_bytes());
    }
}

/// The body of an interest payload: changes numbered from `first`.
pub fn interest_body<S: AsRef<str>>(first: u64, changes: &[(bool, &[S])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + changes.len() * 16);
    put_varint(&mut out, first);
    put_varint(&mut out, changes.len() as u64);
    for (added, set) in changes {
        out.push(u8::from(*added));
        put_tag_set(&mut out, set);
    }
    out
}

/// The body of one part of a snapshot.
pub fn snapshot_body<S: AsRef<str>>(epoch: u64, part: u64, parts: u64, sets: &[&[S]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + sets.len() * 16);
    put_varint(&mut out, epoch);
    put_varint(&mut out, part);
    put_varint(&mut out, parts);
    put_varint(&mut out, sets.len() as u64);
    for set in sets {
        put_tag_set(&mut out, set);
    }
    out
}

/// [`open`] then [`body`], the MAC left unchecked (for tests and tools;
/// a node checks the MAC between the two).
pub fn decode(payload: &[u8]) -> Result<Frame<'_>, WireError> {
    let sealed = open(payload)?;
    Ok(Frame {
        header: sealed.header,
        body: body(sealed.header.kind, sealed.body)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json(data: &str) -> String {
        serde_json::to_string(data).unwrap()
    }

    fn keys() -> ClusterKeys {
        ClusterKeys::parse(
            "0123456789abcdef0123456789abcdef",
            std::path::Path::new("k"),
        )
        .unwrap()
    }

    fn messages(origin: u64, sequence: u64, keys: Option<&ClusterKeys>, body: &[u8]) -> Vec<u8> {
        let count = messages_count(1);
        seal(Kind::Messages, origin, sequence, 99, keys, &[&count, body])
    }

    #[test]
    fn messages_round_trip_signed_or_not() {
        let mut body = Vec::new();
        put_message(&mut body, &["a", "b", "a"], &json("hi"));
        put_message(&mut body, &["ü"], &json("line\nbreak"));
        let keys = keys();
        for keys in [None, Some(&keys)] {
            let count = messages_count(2);
            let payload = seal(Kind::Messages, 7, 42, 1234, keys, &[&count, &body]);
            let sealed = open(&payload).unwrap();
            assert_eq!(
                sealed.header,
                Header {
                    kind: Kind::Messages,
                    key_id: keys.map_or(0, ClusterKeys::signing_id),
                    origin: 7,
                    to: 0,
                    sequence: 42,
                    time_ms: 1234
                }
            );
            assert_eq!(sealed.mac.is_some(), keys.is_some());
            if let (Some(keys), Some(mac)) = (keys, sealed.mac) {
                assert_eq!(
                    keys.verify(sealed.header.key_id, sealed.signed, mac),
                    Some(true)
                );
            }
            let Body::Messages(m) = body_of(&payload) else {
                panic!()
            };
            assert_eq!(m[0].tags.to_vec(), ["a", "b", "a"]);
            assert_eq!(m[0].data, "\"hi\"");
            assert_eq!(m[1].tags.to_vec(), ["ü"]);
            assert_eq!(m[1].data, "\"line\\nbreak\"");
        }
    }

    fn body_of(payload: &[u8]) -> Body<'_> {
        decode(payload).unwrap().body
    }

    #[test]
    fn control_payloads_round_trip() {
        let hb = heartbeat_body(1000);
        assert_eq!(
            body_of(&seal(Kind::Heartbeat, 1, 1, 0, None, &[&hb])),
            Body::Heartbeat { interval_ms: 1000 }
        );
        assert_eq!(
            body_of(&seal(Kind::TokenChanged, 1, 2, 0, None, &[&[9; 32]])),
            Body::TokenChanged([9; 32])
        );
        assert_eq!(
            body_of(&seal(Kind::Leaving, 3, 3, 0, None, &[])),
            Body::Leaving
        );
        assert_eq!(
            body_of(&seal(Kind::RecheckAll, 3, 4, 0, Some(&keys()), &[])),
            Body::RecheckAll
        );
    }

    #[test]
    fn interest_payloads_round_trip_and_bad_ones_are_refused() {
        let ab: &[&str] = &["a", "b"];
        let c: &[&str] = &["c"];
        let body = interest_body(7, &[(true, ab), (false, c)]);
        let payload = seal_to(Kind::Interest, 1, 0, 5, 0, Some(&keys()), &[&body]);
        let Body::Interest { first, changes } = body_of(&payload) else {
            panic!()
        };
        assert_eq!(first, 7);
        let changes: Vec<(bool, Vec<String>)> =
            changes.iter().map(|(a, t)| (*a, t.to_vec())).collect();
        assert_eq!(
            changes,
            [
                (true, vec!["a".into(), "b".into()]),
                (false, vec!["c".into()])
            ]
        );
        let snapshot = snapshot_body(9, 1, 2, &[ab]);
        let payload = seal_to(Kind::Snapshot, 1, 42, 6, 0, None, &[&snapshot]);
        assert_eq!(open(&payload).unwrap().header.to, 42);
        let Body::Snapshot {
            epoch,
            part,
            parts,
            sets,
        } = body_of(&payload)
        else {
            panic!()
        };
        assert_eq!((epoch, part, parts), (9, 1, 2));
        assert_eq!(sets[0].to_vec(), ["a", "b"]);
        let mut ack = Vec::new();
        put_varint(&mut ack, 12);
        assert_eq!(
            body_of(&seal_to(Kind::Ack, 1, 2, 7, 0, None, &[&ack])),
            Body::Ack { epoch: 12 }
        );
        assert_eq!(
            body_of(&seal_to(Kind::SnapshotRequest, 1, 2, 8, 0, None, &[])),
            Body::SnapshotRequest
        );
        let hello = heartbeat_body(1000);
        assert_eq!(
            body_of(&seal(Kind::Hello, 1, 9, 0, None, &[&hello])),
            Body::Hello { interval_ms: 1000 }
        );
        // A change that is neither added nor withdrawn, an empty change
        // list, an empty set, an empty tag, an epoch that overflows, a part
        // past the count, too many parts, a set cut short.
        let mut bad_change = interest_body(1, &[(true, c)]);
        bad_change[2] = 2;
        let mut overflow = Vec::new();
        put_varint(&mut overflow, u64::MAX);
        put_varint(&mut overflow, 1);
        overflow.push(1);
        put_tag_set(&mut overflow, c);
        let no_changes: &[(bool, &[&str])] = &[];
        let empty_set: &[&str] = &[];
        let empty_tag: &[&str] = &[""];
        let no_sets: &[&[&str]] = &[];
        let short = &snapshot_body(1, 0, 1, &[ab])[..8];
        for (kind, bad) in [
            (Kind::Interest, bad_change),
            (Kind::Interest, interest_body(1, no_changes)),
            (Kind::Interest, interest_body(1, &[(true, empty_set)])),
            (Kind::Interest, interest_body(1, &[(true, empty_tag)])),
            (Kind::Interest, overflow),
            (Kind::Snapshot, snapshot_body(1, 2, 2, no_sets)),
            (Kind::Snapshot, snapshot_body(1, 0, MAX_PARTS + 1, no_sets)),
            (Kind::Snapshot, short.to_vec()),
        ] {
            assert!(
                decode(&seal(kind, 1, 1, 0, None, &[&bad])).is_err(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn data_is_exactly_one_json_string() {
        for good in [
            r#""""#,
            r#""x""#,
            r#""a \"quoted\" \\ \/ \b\f\n\r\t""#,
            r#""\u00e9\uD83D\ude00""#,
            "\"ünïcødé \u{7f} \u{2028}\"",
        ] {
            assert!(is_json_string(good), "{good}");
            assert!(serde_json::from_str::<String>(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "\"",
            "x",
            "\"x\"\n\n  \r\n",
            " \"x\"",
            "\"x\" ",
            "\"a\"}\n{\"b\"",
            "\"a\"\"",
            "\"\\\"",
            "\"raw\nnewline\"",
            "\"tab\there\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ud83d\\u0041\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\ude0\"",
            "{}",
            "1",
            "null",
        ] {
            assert!(!is_json_string(bad), "{bad:?}");
        }
    }

    #[test]
    fn hostile_payloads_are_refused() {
        let header = |kind: u8| {
            let mut p = vec![VERSION, kind];
            p.extend_from_slice(&[0; HEADER - 2]);
            p
        };
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::Truncated),
            (vec![1], WireError::Version(1)),
            (header(11), WireError::Kind(11)),
            (header(0), WireError::Kind(0)),
            (header(1), WireError::Truncated),
            (header(1)[..HEADER - 1].to_vec(), WireError::Truncated),
            // A count of 2^62 messages: refused before any allocation.
            (
                [
                    header(1),
                    vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40],
                ]
                .concat(),
                WireError::Range("message count"),
            ),
            // An eleven-byte varint.
            ([header(1), vec![0xff; 11]].concat(), WireError::Varint),
            // One message, one tag of length 2^40: truncated, not allocated.
            (
                [header(1), vec![1, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]].concat(),
                WireError::Truncated,
            ),
            // An empty tag.
            (
                [header(1), vec![1, 1, 0, 2, b'"', b'"']].concat(),
                WireError::Range("tag length"),
            ),
            // Data that would inject a line into a subscriber's stream.
            (
                [
                    header(1),
                    vec![1, 1, 1, b'a', 5, b'"', b'}', b'\n', b'{', b'"'],
                ]
                .concat(),
                WireError::Data,
            ),
            // The issue's: serde_json takes trailing whitespace.
            (
                [
                    header(1),
                    vec![1, 1, 1, b'a', 9],
                    b"\"x\"\n\n  \r\n".to_vec(),
                ]
                .concat(),
                WireError::Data,
            ),
            // Data that is JSON but not a string.
            (
                [header(1), vec![1, 1, 1, b'a', 2, b'{', b'}']].concat(),
                WireError::Data,
            ),
            // Invalid UTF-8 in a tag.
            (
                [header(1), vec![1, 1, 1, 0xff, 2, b'"', b'"']].concat(),
                WireError::Utf8,
            ),
            ([header(4), vec![0]].concat(), WireError::Trailing(1)),
            ([header(5), vec![0]].concat(), WireError::Trailing(1)),
            (header(3), WireError::Truncated),
        ];
        for (payload, expected) in cases {
            assert_eq!(decode(&payload), Err(expected), "{payload:?}");
        }
        // A key id with no room for a MAC.
        let mut signed = header(4);
        signed[5] = 1;
        signed.extend_from_slice(&[0; MAC_BYTES - 1]);
        assert_eq!(open(&signed), Err(WireError::Truncated));
        signed.push(0);
        assert_eq!(open(&signed).unwrap().body, b"");
        assert_eq!(
            decode(&vec![0; MAX_PAYLOAD + 1]),
            Err(WireError::TooLarge(MAX_PAYLOAD + 1))
        );
    }

    proptest! {
        #[test]
        fn the_data_check_agrees_with_serde_json(data in "\\PC{0,8}|\"([a-z\\\\\"/ \n\t]|\\\\u[0-9a-fA-FdD]{4}){0,6}\"[ \n]?") {
            let serde = serde_json::from_str::<String>(&data).is_ok()
                && data.starts_with('"')
                && data.ends_with('"');
            prop_assert_eq!(is_json_string(&data), serde, "{:?}", data);
        }

        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let mut with_header = vec![VERSION, 1];
            with_header.extend_from_slice(&[0; HEADER - 2]);
            with_header.extend_from_slice(&bytes);
            if let Ok(Frame { body: Body::Messages(m), .. }) = decode(&with_header) {
                for message in m {
                    prop_assert_eq!(message.tags.iter().count(), message.tags.len());
                    prop_assert!(serde_json::from_str::<String>(message.data).is_ok());
                }
            }
        }

        #[test]
        fn encoded_messages_decode_to_themselves(
            batch in proptest::collection::vec(
                (proptest::collection::vec("[^\u{0}]{1,12}", 1..5), ".{0,40}"),
                1..20,
            ),
            origin: u64,
            sequence: u64,
            signed: bool,
        ) {
            let mut body = Vec::new();
            for (tags, data) in &batch {
                put_message(&mut body, tags, &json(data));
            }
            let keys = keys();
            let keys = signed.then_some(&keys);
            let count = messages_count(batch.len() as u64);
            let payload = seal(Kind::Messages, origin, sequence, 5, keys, &[&count, &body]);
            let frame = decode(&payload).unwrap();
            prop_assert_eq!((frame.header.origin, frame.header.sequence), (origin, sequence));
            let Body::Messages(m) = frame.body else { panic!() };
            prop_assert_eq!(m.len(), batch.len());
            for (got, (tags, data)) in m.iter().zip(&batch) {
                prop_assert_eq!(&got.tags.to_vec(), tags);
                prop_assert_eq!(serde_json::from_str::<String>(got.data).unwrap(), data.clone());
            }
            // Every strict prefix is refused or, signed, fails its MAC.
            for cut in [1, payload.len() / 2, payload.len() - 1] {
                let prefix = &payload[..cut];
                let refused = match (keys, open(prefix)) {
                    (_, Err(_)) => true,
                    (Some(keys), Ok(s)) => keys.verify(s.header.key_id, s.signed, s.mac.unwrap()) != Some(true),
                    (None, Ok(s)) => super::body(s.header.kind, s.body).is_err(),
                };
                prop_assert!(refused);
            }
        }
    }

    #[test]
    fn a_test_payload_helper_builds_what_decode_reads() {
        let mut body = Vec::new();
        put_message(&mut body, &["x"], "\"y\"");
        let payload = messages(1, 2, None, &body);
        assert!(matches!(body_of(&payload), Body::Messages(m) if m.len() == 1));
    }
}
