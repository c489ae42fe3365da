//! Splits a byte stream into lines, enforcing the maximum message size
//! without ever buffering more than that: the bytes of an oversized line are
//! discarded as they arrive and the line is reported once it ends. The
//! unfinished line it keeps is memory held for the client: it asks before
//! growing it (the memory ledger may say no), and gives a large buffer
//! back once its line is done.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;

/// One unit of input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete line, without its `\n` (nor a `\r` before it).
    Line(&'a [u8]),
    /// A line of this many bytes was over the limit and has been discarded.
    TooLarge(usize),
    /// The unfinished line, this long so far, could not be held any longer
    /// (no room in the memory budget): it has been discarded, and the
    /// connection should end.
    NoRoom(usize),
}

/// An unfinished line's buffer up to this size is kept for the next one;
/// a larger one is given back when its line is done, so that a connection
/// returns to its idle footprint.
const KEEP_PARTIAL: usize = 4 * 1024;

/// Every session has one, so it is kept small: the limit, the same for
/// all, comes with each call.
#[derive(Default)]
pub(crate) struct LineFramer {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Inside an oversized line: its length so far (more than the limit,
    /// so never 0); its bytes are dropped.
    discarding: Option<NonZeroUsize>,
}

impl LineFramer {
    /// Calls `each` for every frame that `data` completes, in order, lines
    /// longer than `limit` as [`Frame::TooLarge`]. Before the unfinished
    /// line grows, `room` is asked whether it may hold that many bytes; if
    /// not, the line is dropped and reported as [`Frame::NoRoom`], after
    /// which the rest of `data` is ignored. If `each` breaks, returns the
    /// bytes of `data` after that frame, unread: the caller feeds them again
    /// later. Otherwise returns an empty slice.
    pub(crate) fn feed<'d>(
        &mut self,
        limit: usize,
        mut data: &'d [u8],
        room: &mut dyn FnMut(usize) -> bool,
        mut each: impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> &'d [u8] {
        // Finish the line begun in an earlier call.
        if self.discarding.is_some() || !self.partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', data) else {
                if let Err(size) = self.hold(limit, data, room) {
                    let _ = each(Frame::NoRoom(size));
                }
                return &[];
            };
            if let Err(size) = self.hold(limit, &data[..nl], room) {
                let _ = each(Frame::NoRoom(size));
                return &[];
            }
            data = &data[nl + 1..];
            let flow = match self.discarding.take() {
                Some(size) => each(Frame::TooLarge(size.get())),
                None => {
                    let line = std::mem::take(&mut self.partial);
                    let flow = each(Frame::Line(trim_cr(&line)));
                    // A small buffer is kept for the next partial line; a
                    // big one goes.
                    if line.capacity() <= KEEP_PARTIAL {
                        self.partial = line;
                        self.partial.clear();
                    }
                    flow
                }
            };
            if flow.is_break() {
                return data;
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', data) {
            let line = &data[..nl];
            data = &data[nl + 1..];
            let frame = if line.len() > limit {
                Frame::TooLarge(line.len())
            } else {
                Frame::Line(trim_cr(line))
            };
            if each(frame).is_break() {
                return data;
            }
        }
        if let Err(size) = self.hold(limit, data, room) {
            let _ = each(Frame::NoRoom(size));
        }
        &[]
    }

    /// The memory the unfinished line holds.
    pub(crate) fn held(&self) -> usize {
        self.partial.capacity()
    }

    /// Keeps the unterminated start of a line, or counts it if too large;
    /// an error (the line's size so far) if `room` refuses it.
    fn hold(
        &mut self,
        limit: usize,
        bytes: &[u8],
        room: &mut dyn FnMut(usize) -> bool,
    ) -> Result<(), usize> {
        let held = self.partial.len() + bytes.len();
        if let Some(size) = &mut self.discarding {
            *size = size.saturating_add(bytes.len());
        } else if held > limit {
            // More than the limit: not 0.
            self.discarding = NonZeroUsize::new(held);
            self.partial = Vec::new();
        } else if !bytes.is_empty() {
            let needed = self
                .partial
                .capacity()
                .max(held.next_power_of_two().min(limit));
            if needed > self.partial.capacity() && !room(needed) {
                self.partial = Vec::new();
                return Err(held);
            }
            self.partial.reserve_exact(needed - self.partial.len());
            self.partial.extend_from_slice(bytes);
        }
        Ok(())
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut LineFramer, limit: usize, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let rest = framer.feed(limit, data, &mut |_| true, |f| {
            out.push(match f {
                Frame::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Frame::TooLarge(n) => format!("<{n}>"),
                Frame::NoRoom(n) => format!("!{n}"),
            });
            ControlFlow::Continue(())
        });
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn splits_across_calls() {
        let mut f = LineFramer::default();
        assert_eq!(frames(&mut f, 100, b"ab\ncd"), ["ab"]);
        assert_eq!(frames(&mut f, 100, b"ef\r\n\ng"), ["cdef", ""]);
        assert_eq!(frames(&mut f, 100, b"\n"), ["g"]);
    }

    #[test]
    fn discards_oversized_lines_and_recovers() {
        let mut f = LineFramer::default();
        assert_eq!(frames(&mut f, 4, b"12345\nok\n"), ["<5>", "ok"]);
        assert_eq!(frames(&mut f, 4, b"123"), Vec::<String>::new());
        assert_eq!(frames(&mut f, 4, b"45"), Vec::<String>::new());
        assert_eq!(frames(&mut f, 4, b"678\nfine\n"), ["<8>", "fine"]);
        // Exactly the limit is allowed.
        assert_eq!(frames(&mut f, 4, b"1234\n"), ["1234"]);
    }

    #[test]
    fn stops_where_asked_and_returns_the_rest() {
        let mut f = LineFramer::default();
        let mut seen = Vec::new();
        let rest = f.feed(100, b"a\nb\nc", &mut |_| true, |frame| {
            seen.push(format!("{frame:?}"));
            ControlFlow::Break(())
        });
        assert_eq!(seen.len(), 1);
        assert_eq!(rest, b"b\nc");
    }

    #[test]
    fn asks_before_growing_and_gives_a_big_buffer_back() {
        let mut f = LineFramer::default();
        let asked = std::cell::RefCell::new(Vec::new());
        let mut room = |n: usize| {
            asked.borrow_mut().push(n);
            n <= 64
        };
        let mut frames = Vec::new();
        f.feed(100, b"0123456789", &mut room, |frame| {
            frames.push(format!("{frame:?}"));
            ControlFlow::Continue(())
        });
        assert_eq!(
            *asked.borrow(),
            [16],
            "room for the line so far, rounded up"
        );
        assert_eq!(f.held(), 16);
        f.feed(100, &[b'x'; 60], &mut room, |frame| {
            frames.push(format!("{frame:?}"));
            ControlFlow::Continue(())
        });
        assert_eq!(
            *asked.borrow(),
            [16, 100],
            "70 bytes need 128, at most the limit: refused"
        );
        assert_eq!(frames, ["NoRoom(70)"]);
        assert_eq!(f.held(), 0, "the refused line is dropped");
        // A long line, once done, leaves no big buffer behind.
        let mut f = LineFramer::default();
        let long = vec![b'y'; 10_000];
        f.feed(20_000, &long, &mut |_| true, |_| ControlFlow::Continue(()));
        assert!(f.held() >= 10_000);
        f.feed(20_000, b"\nz", &mut |_| true, |_| ControlFlow::Continue(()));
        assert!(f.held() <= KEEP_PARTIAL, "{}", f.held());
    }
}
