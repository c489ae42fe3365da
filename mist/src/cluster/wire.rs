//! The bytes of a backplane payload, version 1.
//!
//! ```text
//! byte 0      version (1)
//! byte 1      kind: 1 messages, 2 heartbeat, 3 token changed, 4 leaving
//! bytes 2-9   origin node id, u64 big-endian
//! bytes 10-17 sequence number, u64 big-endian (per origin, messages only)
//! then, by kind:
//!   messages:      count, then per message: tag count, each tag (length,
//!                  UTF-8 bytes), data (length, bytes: one JSON string token)
//!   heartbeat:     the sender's heartbeat interval in milliseconds
//!   token changed: the SHA-256 of the token (32 bytes), never the token
//!   leaving:       nothing
//! ```
//!
//! Counts and lengths are LEB128 varints. Decoding borrows from the payload
//! (tags and data are not copied) and checks everything before it returns:
//! a payload from a hostile or broken backplane gets a [`WireError`], never
//! a panic, and costs at most one allocation bounded by its length.

use thiserror::Error;

/// The version this node writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER: usize = 18;
/// Payloads larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Messages in one payload at most.
pub const MAX_MESSAGES: u64 = 65_536;
/// Tags of one message at most (the broker's own limit is lower).
pub const MAX_TAGS: u64 = 65_536;

/// Why a payload was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("payload ends early")]
    Truncated,
    #[error("unknown payload version {0}")]
    Version(u8),
    #[error("unknown payload kind {0}")]
    Kind(u8),
    #[error("malformed length")]
    Varint,
    #[error("{0} out of range")]
    Range(&'static str),
    #[error("a tag or data is not UTF-8")]
    Utf8,
    #[error("data is not one JSON string")]
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
}

/// A decoded payload, borrowing from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub origin: u64,
    pub sequence: u64,
    pub body: Body<'a>,
}

/// What a payload carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Messages(Vec<Incoming<'a>>),
    Heartbeat { interval_ms: u64 },
    TokenChanged([u8; 32]),
    Leaving,
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

    fn u64(&mut self) -> Result<u64, WireError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
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

/// Appends the header of a payload.
pub fn put_header(out: &mut Vec<u8>, kind: Kind, origin: u64, sequence: u64) {
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
}

/// Appends one message (without the count that precedes the messages).
/// `data` must be one JSON string token; tags must be non-empty.
pub fn put_message<S: AsRef<str>>(out: &mut Vec<u8>, tags: &[S], data: &str) {
    put_varint(out, tags.len() as u64);
    for tag in tags {
        let tag = tag.as_ref();
        put_varint(out, tag.len() as u64);
        out.extend_from_slice(tag.as_bytes());
    }
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data.as_bytes());
}

/// A whole messages payload: header, count, then `body` as written by
/// [`put_message`] `count` times.
pub fn messages(origin: u64, sequence: u64, count: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 10 + body.len());
    put_header(&mut out, Kind::Messages, origin, sequence);
    put_varint(&mut out, count);
    out.extend_from_slice(body);
    out
}

/// A heartbeat payload.
pub fn heartbeat(origin: u64, interval_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 10);
    put_header(&mut out, Kind::Heartbeat, origin, 0);
    put_varint(&mut out, interval_ms);
    out
}

/// A token-changed payload.
pub fn token_changed(origin: u64, digest: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 32);
    put_header(&mut out, Kind::TokenChanged, origin, 0);
    out.extend_from_slice(digest);
    out
}

/// A leaving payload.
pub fn leaving(origin: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    put_header(&mut out, Kind::Leaving, origin, 0);
    out
}

/// Whether `data` is exactly one JSON string token (what the broker writes
/// into delivery lines unchanged, so nothing else may pass).
fn is_json_string(data: &str) -> bool {
    data.starts_with('"') && serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok()
}

/// Reads and checks a whole payload.
pub fn decode(payload: &[u8]) -> Result<Frame<'_>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut r = Reader { bytes: payload };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    let origin = r.u64()?;
    let sequence = r.u64()?;
    let body = match kind {
        1 => {
            let count = r.varint()?;
            if count == 0 || count > MAX_MESSAGES {
                return Err(WireError::Range("message count"));
            }
            // Each message takes at least 4 bytes: no reservation beyond
            // what the payload could hold.
            let room = r.bytes.len() / 4;
            let mut messages = Vec::with_capacity((count as usize).min(room));
            for _ in 0..count {
                let start = r.bytes;
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
                debug_assert!(start.len() > r.bytes.len());
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
        2 => Body::Heartbeat {
            interval_ms: r.varint()?,
        },
        3 => {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(r.take(32)?);
            Body::TokenChanged(digest)
        }
        4 => Body::Leaving,
        other => return Err(WireError::Kind(other)),
    };
    if !r.bytes.is_empty() {
        return Err(WireError::Trailing(r.bytes.len()));
    }
    Ok(Frame {
        origin,
        sequence,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json(data: &str) -> String {
        serde_json::to_string(data).unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let mut body = Vec::new();
        put_message(&mut body, &["a", "b", "a"], &json("hi"));
        put_message(&mut body, &["ü"], &json("line\nbreak"));
        let payload = messages(7, 42, 2, &body);
        let frame = decode(&payload).unwrap();
        assert_eq!((frame.origin, frame.sequence), (7, 42));
        let Body::Messages(m) = frame.body else {
            panic!("{:?}", frame.body)
        };
        assert_eq!(m[0].tags.to_vec(), ["a", "b", "a"]);
        assert_eq!(m[0].data, "\"hi\"");
        assert_eq!(m[1].tags.to_vec(), ["ü"]);
        assert_eq!(m[1].data, "\"line\\nbreak\"");
    }

    #[test]
    fn control_payloads_round_trip() {
        assert_eq!(
            decode(&heartbeat(1, 1000)).unwrap().body,
            Body::Heartbeat { interval_ms: 1000 }
        );
        assert_eq!(
            decode(&token_changed(1, &[9; 32])).unwrap().body,
            Body::TokenChanged([9; 32])
        );
        assert_eq!(decode(&leaving(3)).unwrap().origin, 3);
    }

    #[test]
    fn hostile_payloads_are_refused() {
        let header = |kind: u8| {
            let mut p = vec![VERSION, kind];
            p.extend_from_slice(&[0; 16]);
            p
        };
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::Truncated),
            (vec![2], WireError::Version(2)),
            (header(9), WireError::Kind(9)),
            (header(1), WireError::Truncated),
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
            (header(3), WireError::Truncated),
        ];
        for (payload, expected) in cases {
            assert_eq!(decode(&payload), Err(expected), "{payload:?}");
        }
        assert_eq!(
            decode(&vec![0; MAX_PAYLOAD + 1]),
            Err(WireError::TooLarge(MAX_PAYLOAD + 1))
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let mut with_header = vec![VERSION, 1];
            with_header.extend_from_slice(&[0; 16]);
            with_header.extend_from_slice(&bytes);
            if let Ok(Frame { body: Body::Messages(m), .. }) = decode(&with_header) {
                for message in m {
                    prop_assert_eq!(message.tags.iter().count(), message.tags.len());
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
        ) {
            let mut body = Vec::new();
            for (tags, data) in &batch {
                put_message(&mut body, tags, &json(data));
            }
            let payload = messages(origin, sequence, batch.len() as u64, &body);
            let frame = decode(&payload).unwrap();
            prop_assert_eq!((frame.origin, frame.sequence), (origin, sequence));
            let Body::Messages(m) = frame.body else { panic!() };
            prop_assert_eq!(m.len(), batch.len());
            for (got, (tags, data)) in m.iter().zip(&batch) {
                prop_assert_eq!(&got.tags.to_vec(), tags);
                prop_assert_eq!(serde_json::from_str::<String>(got.data).unwrap(), data.clone());
            }
            // Every strict prefix is refused, never accepted or panicking.
            for cut in [1, payload.len() / 2, payload.len() - 1] {
                prop_assert!(decode(&payload[..cut]).is_err());
            }
        }
    }
}
