//! The WebSocket wire, client side, as light as the TCP path: the
//! handshake written and checked by hand, the broker's frames parsed in
//! place in the connection's read buffer (a server's frames are unmasked:
//! a 2–10 byte header, then the payload), and the bench's own frames
//! masked into one buffer and written at once.
//!
//! tokio-tungstenite allocated and woke once per message; with a fan-out of
//! 100 subscribers on a 2-core machine it took twice the broker's CPU, so
//! the bench measured itself. Every frame is still checked: a frame this
//! reader does not expect from Mist (masked, reserved bits, fragmented,
//! binary, not UTF-8) fails the connection instead of being counted.

use std::hash::{BuildHasher, Hasher};
use std::ops::Range;

use memchr::memmem;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A handshake response longer than this is not one.
pub(crate) const MAX_RESPONSE: usize = 16 * 1024;

/// One frame from the broker, found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole text message: where its payload is, relative to the start.
    Text(Range<usize>),
    /// A ping or a pong. Mist sends neither unasked, and a ping is not
    /// answered: the bench's connections only live for a run.
    Control,
    /// The broker closed the WebSocket.
    Close,
}

/// The frame at the start of `buf` and its length on the wire; `None`
/// until all of it has arrived. A frame whose payload is over `max` bytes,
/// or that Mist would never send, is an error.
pub(crate) fn parse(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err("a frame with reserved bits set, but no extension was agreed".into());
    }
    if b1 & 0x80 != 0 {
        return Err("a masked frame: a server's frames are never masked".into());
    }
    let (length, head) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(n) => (u64::from(u16::from_be_bytes([n[0], n[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|n| <[u8; 8]>::try_from(n).ok()) {
            Some(n) => (u64::from_be_bytes(n), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let length = match usize::try_from(length) {
        Ok(length) if length <= max => length,
        _ => return Err(format!("a frame of {length} bytes, over {max}")),
    };
    let Some(payload) = buf.get(head..head + length) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let frame = match b0 & 0x0f {
        TEXT if fin => {
            if std::str::from_utf8(payload).is_err() {
                return Err("a text frame that is not UTF-8".into());
            }
            Frame::Text(head..head + length)
        }
        TEXT | CONTINUATION => {
            return Err("a fragmented message: Mist sends each message as one frame".into())
        }
        BINARY => return Err("a binary frame: Mist sends text frames".into()),
        CLOSE => Frame::Close,
        PING | PONG if fin && length <= 125 => Frame::Control,
        _ => return Err(format!("a frame with opcode {:#x}", b0 & 0x0f)),
    };
    Ok(Some((frame, head + length)))
}

/// The handshake request for `url` (`ws://authority/path`), and the key
/// the response must answer.
pub(crate) fn request(url: &str) -> (Vec<u8>, String) {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    (request.into_bytes(), key)
}

/// Checks a handshake response at the start of `buf`: `Ok(None)` while it
/// is incomplete, else its length (frames may follow it in `buf`). It must
/// be `101 Switching Protocols` with the accept key derived from `key`.
pub(crate) fn response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    if !buf.starts_with(&b"HTTP/"[..buf.len().min(5)]) {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        return Err(format!(
            "not a WebSocket server: it answered {}",
            String::from_utf8_lossy(line).trim_end()
        ));
    }
    let Some(end) = memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE {
            return Err("a handshake response without an end".into());
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101 ") {
        return Err(format!("the upgrade was refused: {status}"));
    }
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim())
    });
    if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err("the upgrade's Sec-WebSocket-Accept does not answer the key".into());
    }
    Ok(Some(end + 4))
}

/// Masks the bench's frames: a new key per frame, as RFC 6455 asks, from a
/// generator seeded randomly per connection.
pub(crate) struct Masker(u64);

impl Masker {
    pub(crate) fn new() -> Masker {
        let seed = std::hash::RandomState::new().build_hasher().finish();
        Masker(seed | 1)
    }

    fn key(&mut self) -> [u8; 4] {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_be_bytes()
    }

    /// Appends `text` to `out` as one masked text frame.
    pub(crate) fn text_frame(&mut self, out: &mut Vec<u8>, text: &[u8]) {
        out.push(0x80 | TEXT);
        match text.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = self.key();
        out.extend_from_slice(&key);
        out.extend(text.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_only_when_whole() {
        let mut wire = vec![0x81, 5];
        wire.extend_from_slice(b"hello");
        wire.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        wire.extend_from_slice(&[b'x'; 256]);
        wire.extend_from_slice(&[0x89, 0, 0x88, 2, 0x03, 0xe8]);
        assert_eq!(parse(&wire[..6], 1000), Ok(None));
        assert_eq!(parse(&wire, 1000), Ok(Some((Frame::Text(2..7), 7))));
        let rest = &wire[7..];
        assert_eq!(parse(&rest[..3], 1000), Ok(None));
        assert_eq!(parse(&rest[..200], 1000), Ok(None));
        assert_eq!(parse(rest, 1000), Ok(Some((Frame::Text(4..260), 260))));
        assert_eq!(parse(&rest[260..], 1000), Ok(Some((Frame::Control, 2))));
        assert_eq!(parse(&rest[262..], 1000), Ok(Some((Frame::Close, 4))));
        let mut long = vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(parse(&long[..9], 1 << 20), Ok(None));
        long.resize(10 + 65_536, b'y');
        assert_eq!(
            parse(&long, 1 << 20),
            Ok(Some((Frame::Text(10..65_546), 65_546)))
        );
        assert!(parse(&long, 1000).unwrap_err().contains("over 1000"));
    }

    #[test]
    fn refuses_frames_mist_never_sends() {
        for (wire, why) in [
            (&[0x81, 0x81, 1, 2, 3, 4, b'x'][..], "masked"),
            (&[0xc1, 1, b'x'], "reserved"),
            (&[0x01, 1, b'x'], "fragmented"),
            (&[0x80, 1, b'x'], "fragmented"),
            (&[0x82, 1, 0], "binary"),
            (&[0x81, 1, 0xff], "UTF-8"),
            (&[0x83, 0], "opcode"),
        ] {
            let err = parse(wire, 1000).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
    }

    #[test]
    fn a_handshake_is_checked_against_its_key() {
        let (request, key) = request("ws://127.0.0.1:8888/subscribe/websocket");
        let request = String::from_utf8(request).unwrap();
        assert!(
            request.starts_with("GET /subscribe/websocket HTTP/1.1\r\nHost: 127.0.0.1:8888\r\n")
        );
        assert!(request.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));
        let accept = derive_accept_key(key.as_bytes());
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
        );
        let mut wire = good.clone().into_bytes();
        wire.extend_from_slice(&[0x81, 0]);
        assert_eq!(response(&wire[..20], &key), Ok(None));
        assert_eq!(response(&wire, &key), Ok(Some(good.len())));
        let wrong = good.replace(&accept, "nope");
        assert!(response(wrong.as_bytes(), &key).is_err());
        let lines = "{\"command\":\"\",\"error\":\"not JSON\"}\n";
        assert!(response(lines.as_bytes(), &key)
            .unwrap_err()
            .contains("not a WebSocket server"));
        let full = "HTTP/1.1 503 Service Unavailable\r\n\r\n{}";
        assert!(response(full.as_bytes(), &key).unwrap_err().contains("503"));
    }

    #[test]
    fn frames_are_masked_with_a_new_key_each() {
        let mut masker = Masker::new();
        let mut out = Vec::new();
        masker.text_frame(&mut out, b"hi");
        masker.text_frame(&mut out, b"hi");
        assert_eq!(out.len(), 16);
        assert_eq!(&out[..2], &[0x81, 0x82]);
        let (key, payload) = (&out[2..6], &out[6..8]);
        assert_eq!([payload[0] ^ key[0], payload[1] ^ key[1]], *b"hi");
        assert_ne!(&out[2..6], &out[10..14]);
        let mut long = Vec::new();
        masker.text_frame(&mut long, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 0x01, 0x2c]);
    }
}
