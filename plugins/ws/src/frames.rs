//! The WebSocket wire (RFC 6455), server side: frames read from a client
//! and frames written to it.
//!
//! Written here rather than taken from tungstenite because a message over
//! the size limit must be answered and skipped, without being buffered,
//! while the connection stays usable: tungstenite can only fail the
//! connection once a message is too large. No extension is ever agreed
//! (the handshake offers none), so every frame is plain.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub(crate) const NORMAL: u16 = 1000;
pub(crate) const GOING_AWAY: u16 = 1001;
pub(crate) const PROTOCOL_ERROR: u16 = 1002;
/// "Try again later": the broker's memory budget has no room for the
/// message the client is sending.
pub(crate) const TRY_AGAIN_LATER: u16 = 1013;

/// A message being received is charged to the broker's memory budget once
/// its buffer grows past this (smaller ones are a connection's fixed cost).
pub(crate) const HOLD_FREE: usize = 16 * 1024;

/// What a client sent: one whole message, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A text message within the limit.
    Text(Vec<u8>),
    /// A binary message (not part of the protocol; its bytes are skipped).
    Binary,
    /// A text message over the limit, skipped; how large it was.
    TooLarge(u64),
    /// A ping, to be answered with a pong carrying `payload`.
    Ping(Vec<u8>),
    /// A pong (ignored).
    Pong,
    /// A close frame, with its status code if it had one.
    Close(Option<u16>),
}

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol; the connection is closed with 1002.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// The broker's memory budget has no room for the message arriving
    /// (this many bytes so far); the connection is closed with 1013.
    #[error("no memory left for a message of {0} bytes so far")]
    NoRoom(usize),
}

/// A message being received across frames.
enum Partial {
    Text(Vec<u8>),
    Binary,
    /// Over the limit: being skipped; bytes seen so far.
    Skipping(u64),
}

/// Where a message's buffer is charged: the session, which tells the
/// broker's memory budget.
pub(crate) trait Budget: Sync {
    /// Whether `bytes` may be held now.
    fn hold(&self, bytes: usize) -> bool;
}

impl Budget for mist_sdk::Session {
    fn hold(&self, bytes: usize) -> bool {
        mist_sdk::Session::hold(self, bytes)
    }
}

/// A reader that can show what it has read ahead.
pub(crate) trait Buffered {
    /// The bytes read ahead and not yet handed out.
    fn buffered(&self) -> &[u8];

    /// Reads ahead what is there now, without waiting; whether bytes came.
    fn read_ahead(&mut self, cx: &mut std::task::Context<'_>) -> bool;

    /// Hands out the first `n` buffered bytes (at most all of them).
    fn consume(&mut self, n: usize);
}

impl<R: AsyncRead + Unpin> Buffered for crate::lazy::LazyBufReader<R> {
    fn buffered(&self) -> &[u8] {
        crate::lazy::LazyBufReader::buffered(self)
    }

    fn read_ahead(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        crate::lazy::LazyBufReader::read_ahead(self, cx)
    }

    fn consume(&mut self, n: usize) {
        crate::lazy::LazyBufReader::consume(self, n);
    }
}

#[cfg(test)]
impl Buffered for &[u8] {
    fn buffered(&self) -> &[u8] {
        self
    }

    fn read_ahead(&mut self, _: &mut std::task::Context<'_>) -> bool {
        false
    }

    fn consume(&mut self, n: usize) {
        *self = &self[n.min(self.len())..];
    }
}

/// Reads a client's frames and puts fragmented messages together, holding
/// at most `limit` bytes of one message.
pub(crate) struct FrameReader<R> {
    io: R,
    limit: u64,
    partial: Option<Partial>,
    /// `room` said yes to a message's buffer since [`FrameReader::take_held`].
    held: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, limit: usize) -> Self {
        FrameReader {
            io,
            limit: limit as u64,
            partial: None,
            held: false,
        }
    }

    /// Whether [`FrameReader::next`] would answer without reading the
    /// socket: the bytes already buffered hold a whole message's last frame
    /// or a whole control frame (or the start of a frame it refuses at
    /// once), after any whole fragments before it.
    pub(crate) fn message_buffered(&self) -> bool
    where
        R: Buffered,
    {
        let mut bytes = self.io.buffered();
        loop {
            let [first, second, ..] = *bytes else {
                return false;
            };
            if first & 0x70 != 0 || second & 0x80 == 0 {
                return true;
            }
            let (extended, length) = match second & 0x7f {
                126 => match bytes.get(2..4) {
                    Some(n) => (2, u64::from(u16::from_be_bytes([n[0], n[1]]))),
                    None => return false,
                },
                127 => match bytes.get(2..10) {
                    Some(n) => (8, u64::from_be_bytes(n.try_into().unwrap_or_default())),
                    None => return false,
                },
                n => (0, u64::from(n)),
            };
            let header: u64 = 2 + extended + 4;
            let Some(end) = header.checked_add(length) else {
                return true;
            };
            if (bytes.len() as u64) < end {
                return false;
            }
            if first & 0x80 != 0 || first & 0x0f >= CLOSE {
                return true;
            }
            // A fragment: `next` goes on to the frames after it.
            bytes = &bytes[end as usize..];
        }
    }

    /// Appends the next message to `into`, unmasked, and returns true, if it
    /// is one whole text frame already buffered, at most [`HOLD_FREE`]
    /// bytes and within the limit, and `accept` (shown the text) agrees;
    /// otherwise leaves everything as it was and returns false, and
    /// [`FrameReader::next`] reads it. The path most messages take: no
    /// buffer of their own, no copy but this one, nothing awaited.
    pub(crate) fn take_buffered_text(
        &mut self,
        into: &mut Vec<u8>,
        accept: impl FnOnce(&[u8]) -> bool,
    ) -> bool
    where
        R: Buffered,
    {
        if self.partial.is_some() {
            return false;
        }
        let bytes = self.io.buffered();
        // Final, text, no reserved bits; masked.
        let [0x81, second, ..] = *bytes else {
            return false;
        };
        if second & 0x80 == 0 {
            return false;
        }
        let (extended, length) = match second & 0x7f {
            126 => match bytes.get(2..4) {
                Some(n) => (2, usize::from(u16::from_be_bytes([n[0], n[1]]))),
                None => return false,
            },
            127 => return false,
            n => (0, usize::from(n)),
        };
        if length > HOLD_FREE || length as u64 > self.limit {
            return false;
        }
        let start = 2 + extended + 4;
        let Some(frame) = bytes.get(..start + length) else {
            return false;
        };
        let mask = [
            frame[start - 4],
            frame[start - 3],
            frame[start - 2],
            frame[start - 1],
        ];
        let at = into.len();
        into.extend_from_slice(&frame[start..]);
        unmask(&mut into[at..], mask);
        if !accept(&into[at..]) {
            into.truncate(at);
            return false;
        }
        self.io.consume(start + length);
        true
    }

    /// Whether a whole message is buffered, after reading ahead what the
    /// socket holds now (without waiting) if none was.
    pub(crate) async fn message_ready(&mut self) -> bool
    where
        R: Buffered,
    {
        std::future::poll_fn(|cx| {
            while !self.message_buffered() {
                if !self.io.read_ahead(cx) {
                    return std::task::Poll::Ready(false);
                }
            }
            std::task::Poll::Ready(true)
        })
        .await
    }

    /// Whether `room` was told of a buffer since the last call: the caller
    /// says it is no longer held once it has handed the message over.
    pub(crate) fn take_held(&mut self) -> bool {
        std::mem::take(&mut self.held)
    }

    /// The next message or control frame; `None` at the end of the stream.
    /// Before a message's buffer grows past [`HOLD_FREE`], `room` is asked
    /// whether that much may be held (the broker's memory budget); refused,
    /// the message is dropped and [`WireError::NoRoom`] returned.
    pub(crate) async fn next<B: Budget>(
        &mut self,
        room: &B,
    ) -> Result<Option<Incoming>, WireError> {
        loop {
            let mut head = [0u8; 2];
            match self.io.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            if head[0] & 0x70 != 0 {
                return Err(WireError::Protocol(
                    "reserved bits set, but no extension was agreed",
                ));
            }
            if head[1] & 0x80 == 0 {
                return Err(WireError::Protocol("a client's frames must be masked"));
            }
            let length = match head[1] & 0x7f {
                126 => u64::from(self.io.read_u16().await?),
                127 => {
                    let length = self.io.read_u64().await?;
                    if length >> 63 != 0 {
                        return Err(WireError::Protocol("a frame length over 2^63"));
                    }
                    length
                }
                n => u64::from(n),
            };
            let mut mask = [0u8; 4];
            self.io.read_exact(&mut mask).await?;

            if opcode >= CLOSE {
                if !fin || length > 125 {
                    return Err(WireError::Protocol(
                        "a control frame must be one frame of at most 125 bytes",
                    ));
                }
                let mut payload = vec![0; length as usize];
                self.io.read_exact(&mut payload).await?;
                unmask(&mut payload, mask);
                return match opcode {
                    CLOSE => Ok(Some(Incoming::Close(
                        payload
                            .get(..2)
                            .map(|code| u16::from_be_bytes([code[0], code[1]])),
                    ))),
                    PING => Ok(Some(Incoming::Ping(payload))),
                    PONG => Ok(Some(Incoming::Pong)),
                    _ => Err(WireError::Protocol("an unknown control opcode")),
                };
            }

            let mut partial = match (opcode, self.partial.take()) {
                (TEXT, None) => Partial::Text(Vec::new()),
                (BINARY, None) => Partial::Binary,
                (CONTINUATION, Some(partial)) => partial,
                (TEXT | BINARY, Some(_)) => {
                    return Err(WireError::Protocol(
                        "a new message began before the previous one ended",
                    ))
                }
                (CONTINUATION, None) => {
                    return Err(WireError::Protocol(
                        "a continuation frame without a message",
                    ))
                }
                _ => return Err(WireError::Protocol("an unknown data opcode")),
            };
            if let Partial::Text(text) = &partial {
                let size = text.len() as u64 + length;
                if size > self.limit {
                    partial = Partial::Skipping(text.len() as u64);
                }
            }
            match &mut partial {
                Partial::Text(text) => {
                    let start = text.len();
                    let end = start + length as usize;
                    // Grown as bytes arrive, never past the message's own
                    // size: a header announcing a large frame costs nothing
                    // until the frame's bytes do.
                    while text.len() < end {
                        if text.len() == text.capacity() {
                            let more = text.len().max(64 * 1024).min(end - text.len());
                            let needed = text.len() + more;
                            if needed > HOLD_FREE {
                                if !room.hold(needed) {
                                    return Err(WireError::NoRoom(text.len()));
                                }
                                self.held = true;
                            }
                            text.reserve_exact(more);
                        }
                        let room = (text.capacity() - text.len()).min(end - text.len());
                        if (&mut self.io).take(room as u64).read_buf(text).await? == 0 {
                            return Ok(None);
                        }
                    }
                    unmask(&mut text[start..], mask);
                }
                Partial::Binary => self.skip(length).await?,
                Partial::Skipping(seen) => {
                    self.skip(length).await?;
                    *seen += length;
                }
            }
            if !fin {
                self.partial = Some(partial);
                continue;
            }
            return Ok(Some(match partial {
                Partial::Text(text) => Incoming::Text(text),
                Partial::Binary => Incoming::Binary,
                Partial::Skipping(size) => Incoming::TooLarge(size),
            }));
        }
    }

    /// Reads and drops `length` bytes, a chunk at a time.
    async fn skip(&mut self, length: u64) -> io::Result<()> {
        let skipped =
            tokio::io::copy(&mut (&mut self.io).take(length), &mut tokio::io::sink()).await?;
        if skipped < length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// XORs `payload` with the client's `mask` (RFC 6455 §5.3). Eight bytes
/// at a time: byte by byte it was a tenth of the broker's time in a
/// WebSocket pair flood.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // What is left starts at a multiple of 8, so at the mask's first byte.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends one unfragmented, unmasked server frame to `out`.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    fragment(out, opcode, true, payload);
}

/// Appends one unmasked server frame to `out`: `fin` unset for a message
/// whose rest follows in continuation frames.
fn fragment(out: &mut Vec<u8>, opcode: u8, fin: bool, payload: &[u8]) {
    out.push(if fin { 0x80 | opcode } else { opcode });
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A text frame holding `text`.
#[cfg(test)]
pub(crate) fn text_frame(out: &mut Vec<u8>, text: &[u8]) {
    frame(out, TEXT, text);
}

/// A piece of a text message: its first (`first`) or a later one, the
/// last (`last`) or not. A whole message is both.
pub(crate) fn text_piece(out: &mut Vec<u8>, first: bool, last: bool, text: &[u8]) {
    fragment(out, if first { TEXT } else { CONTINUATION }, last, text);
}

/// A pong answering a ping with `payload`.
pub(crate) fn pong_frame(out: &mut Vec<u8>, payload: &[u8]) {
    frame(out, PONG, payload);
}

/// A close frame with status `code`.
pub(crate) fn close_frame(out: &mut Vec<u8>, code: u16) {
    frame(out, CLOSE, &code.to_be_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A frame as a client writes it: masked.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
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
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// A budget that holds anything.
    struct Unlimited;

    impl Budget for Unlimited {
        fn hold(&self, _bytes: usize) -> bool {
            true
        }
    }

    /// A budget that holds nothing, and notes what it was asked.
    #[derive(Default)]
    struct Spent(std::sync::Mutex<Vec<usize>>);

    impl Budget for Spent {
        fn hold(&self, bytes: usize) -> bool {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(bytes);
            false
        }
    }

    async fn read_all(wire: Vec<u8>, limit: usize) -> Vec<Result<Incoming, String>> {
        let mut reader = FrameReader::new(&wire[..], limit);
        let mut out = Vec::new();
        loop {
            match reader.next(&Unlimited).await {
                Ok(Some(incoming)) => out.push(Ok(incoming)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    /// `message_buffered` says yes exactly when `next` answers a message
    /// from what is buffered, at every cut of a wire that has fragments,
    /// control frames between them and each length encoding.
    #[tokio::test]
    async fn message_buffered_is_whether_next_answers_without_reading() {
        let mut wire = client_frame(true, TEXT, b"hello");
        wire.extend(client_frame(false, TEXT, b"hel"));
        wire.extend(client_frame(true, PING, b"p"));
        wire.extend(client_frame(false, CONTINUATION, b"l"));
        wire.extend(client_frame(true, CONTINUATION, b"o"));
        wire.extend(client_frame(true, TEXT, &[b'm'; 300]));
        wire.extend(client_frame(true, TEXT, &[b'b'; 70_000]));
        wire.extend(client_frame(true, TEXT, b"last"));
        let mut cuts: Vec<usize> = (0..400).collect();
        cuts.extend([70_300, 70_320, 70_330, 70_335, 70_336, 70_337, 70_340]);
        cuts.extend(wire.len() - 10..=wire.len());
        let mut both = [0, 0];
        for cut in cuts {
            // Message after message, as the listener reads them.
            let mut reader = FrameReader::new(&wire[..cut], 100_000);
            loop {
                let buffered = reader.message_buffered();
                let left = reader.io.len();
                let answered = matches!(reader.next(&Unlimited).await, Ok(Some(_)));
                assert_eq!(buffered, answered, "cut {cut}, {left} bytes left");
                both[usize::from(answered)] += 1;
                if !answered {
                    break;
                }
            }
        }
        assert!(both[0] > 0 && both[1] > 0, "{both:?}");
        // A frame the reader refuses is an answer too.
        let unmasked = [0x81, 0x05, b'h', b'e'];
        assert!(FrameReader::new(&unmasked[..], 100).message_buffered());
    }

    #[tokio::test]
    async fn reads_messages_fragments_and_controls() {
        let big = vec![b'x'; 70_000];
        let mut wire = client_frame(true, TEXT, b"hello");
        wire.extend(client_frame(false, TEXT, b"hel"));
        wire.extend(client_frame(true, PING, b"p"));
        wire.extend(client_frame(true, CONTINUATION, b"lo"));
        wire.extend(client_frame(true, TEXT, &big));
        wire.extend(client_frame(true, BINARY, b"\x00\x01"));
        wire.extend(client_frame(true, CLOSE, &1000u16.to_be_bytes()));
        let got = read_all(wire, 100_000).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::Text(b"hello".to_vec())),
                Ok(Incoming::Ping(b"p".to_vec())),
                Ok(Incoming::Text(b"hello".to_vec())),
                Ok(Incoming::Text(big)),
                Ok(Incoming::Binary),
                Ok(Incoming::Close(Some(1000))),
            ]
        );
    }

    #[tokio::test]
    async fn skips_a_message_over_the_limit_and_goes_on() {
        let mut wire = client_frame(true, TEXT, &[b'a'; 200]);
        wire.extend(client_frame(false, TEXT, &[b'b'; 60]));
        wire.extend(client_frame(true, CONTINUATION, &[b'c'; 60]));
        wire.extend(client_frame(true, TEXT, b"{}"));
        let got = read_all(wire, 100).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::TooLarge(200)),
                Ok(Incoming::TooLarge(120)),
                Ok(Incoming::Text(b"{}".to_vec())),
            ]
        );
    }

    #[tokio::test]
    async fn refuses_broken_frames() {
        let mut unmasked = client_frame(true, TEXT, b"x");
        unmasked[1] &= 0x7f;
        let cases = [
            (unmasked, "masked"),
            (client_frame(false, PING, b""), "control"),
            (client_frame(true, CONTINUATION, b"x"), "continuation"),
            (
                [
                    client_frame(false, TEXT, b"a"),
                    client_frame(true, TEXT, b"b"),
                ]
                .concat(),
                "new message",
            ),
            (client_frame(true, 0x3, b""), "unknown"),
            (
                {
                    let mut f = client_frame(true, TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                "reserved",
            ),
        ];
        for (wire, expected) in cases {
            let got = read_all(wire, 100).await;
            let last = got.last().unwrap().as_ref().unwrap_err();
            assert!(last.contains(expected), "{last} lacks {expected}");
        }
    }

    #[tokio::test]
    async fn takes_whole_buffered_text_frames_and_leaves_the_rest_to_next() {
        let no_newline = |text: &[u8]| !text.contains(&b'\n');
        let wire = [
            client_frame(true, TEXT, b"one"),
            client_frame(true, TEXT, b"two\nlines"),
            client_frame(true, TEXT, &[b'x'; 300]),
            client_frame(false, TEXT, b"frag"),
            client_frame(true, CONTINUATION, b"ment"),
            client_frame(true, PING, b"p"),
            client_frame(true, TEXT, b"cut short"),
        ]
        .concat();
        let cut = &wire[..wire.len() - 2];
        let mut frames = FrameReader::new(cut, 1024);
        let mut into = b"before\n".to_vec();
        assert!(frames.take_buffered_text(&mut into, no_newline));
        assert_eq!(into, b"before\none");
        // Refused by `accept`: nothing taken, `next` reads it.
        assert!(!frames.take_buffered_text(&mut into, no_newline));
        assert_eq!(into, b"before\none");
        let next = frames.next(&Unlimited).await.unwrap();
        assert_eq!(next, Some(Incoming::Text(b"two\nlines".to_vec())));
        // The 16-bit length form.
        assert!(frames.take_buffered_text(&mut into, |_| true));
        assert_eq!(into.len(), b"before\none".len() + 300);
        // Fragments and control frames are `next`'s.
        assert!(!frames.take_buffered_text(&mut into, |_| true));
        let next = frames.next(&Unlimited).await.unwrap();
        assert_eq!(next, Some(Incoming::Text(b"fragment".to_vec())));
        assert!(!frames.take_buffered_text(&mut into, |_| true));
        assert_eq!(
            frames.next(&Unlimited).await.unwrap(),
            Some(Incoming::Ping(b"p".to_vec()))
        );
        // Not all here yet.
        assert!(!frames.take_buffered_text(&mut into, |_| true));
        assert_eq!(into.len(), b"before\none".len() + 300);
    }

    #[tokio::test]
    async fn leaves_big_and_unmasked_frames_to_next() {
        let big = client_frame(true, TEXT, &[b'x'; 200]);
        let mut frames = FrameReader::new(&big[..], 100);
        assert!(!frames.take_buffered_text(&mut Vec::new(), |_| true));
        assert_eq!(
            frames.next(&Unlimited).await.unwrap(),
            Some(Incoming::TooLarge(200))
        );
        let mut unmasked = client_frame(true, TEXT, b"x");
        unmasked[1] &= 0x7f;
        let mut frames = FrameReader::new(&unmasked[..], 100);
        assert!(!frames.take_buffered_text(&mut Vec::new(), |_| true));
        assert!(frames.next(&Unlimited).await.is_err());
    }

    #[test]
    fn unmasks_every_length_as_byte_by_byte_would() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut masked = plain.clone();
            for (i, byte) in masked.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
            unmask(&mut masked, mask);
            assert_eq!(masked, plain, "length {len}");
        }
    }

    #[test]
    fn writes_frames_with_each_length_form() {
        let mut out = Vec::new();
        text_frame(&mut out, b"hi");
        assert_eq!(out, b"\x81\x02hi");
        out.clear();
        text_frame(&mut out, &[b'x'; 300]);
        assert_eq!(&out[..4], b"\x81\x7e\x01\x2c");
        out.clear();
        text_frame(&mut out, &vec![b'x'; 70_000]);
        assert_eq!(&out[..10], b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70");
        out.clear();
        close_frame(&mut out, NORMAL);
        assert_eq!(out, b"\x88\x02\x03\xe8");
    }

    #[test]
    fn writes_a_message_in_pieces() {
        let mut out = Vec::new();
        text_piece(&mut out, true, false, b"he");
        text_piece(&mut out, false, false, b"ll");
        text_piece(&mut out, false, true, b"o");
        assert_eq!(out, b"\x01\x02he\x00\x02ll\x80\x01o");
    }

    #[tokio::test]
    async fn a_message_the_budget_cannot_hold_is_refused() {
        let wire = client_frame(true, TEXT, &[b'x'; 100_000]);
        let mut reader = FrameReader::new(&wire[..], 1 << 20);
        let spent = Spent::default();
        let got = reader.next(&spent).await;
        assert!(matches!(got, Err(WireError::NoRoom(0))), "{got:?}");
        assert_eq!(
            *spent
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            [65_536],
            "asked before the buffer grew past 16 KiB"
        );
        // A small message asks nothing.
        let wire = client_frame(true, TEXT, b"{}");
        let mut reader = FrameReader::new(&wire[..], 1 << 20);
        let spent = Spent::default();
        let got = reader.next(&spent).await;
        assert!(matches!(got, Ok(Some(Incoming::Text(_)))));
        assert!(spent
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty());
    }
}
