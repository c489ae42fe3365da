//! Splits a byte stream into lines, enforcing the maximum message size
//! without ever buffering more than that: the bytes of an oversized line are
//! discarded as they arrive and the line is reported once it ends.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;

/// One unit of input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete line, without its `\n` (nor a `\r` before it).
    Line(&'a [u8]),
    /// A line of this many bytes was over the limit and has been discarded.
    TooLarge(usize),
}

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
    /// longer than `limit` as [`Frame::TooLarge`]. If `each` breaks,
    /// returns the bytes of `data` after that frame, unread: the caller
    /// feeds them again later. Otherwise returns an empty slice.
    pub(crate) fn feed<'d>(
        &mut self,
        limit: usize,
        mut data: &'d [u8],
        mut each: impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> &'d [u8] {
        // Finish the line begun in an earlier call.
        if self.discarding.is_some() || !self.partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', data) else {
                self.hold(limit, data);
                return &[];
            };
            self.hold(limit, &data[..nl]);
            data = &data[nl + 1..];
            let flow = match self.discarding.take() {
                Some(size) => each(Frame::TooLarge(size.get())),
                None => {
                    let line = std::mem::take(&mut self.partial);
                    let flow = each(Frame::Line(trim_cr(&line)));
                    // Keep the allocation for the next partial line.
                    self.partial = line;
                    self.partial.clear();
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
        self.hold(limit, data);
        &[]
    }

    /// Keeps the unterminated start of a line, or counts it if too large.
    fn hold(&mut self, limit: usize, bytes: &[u8]) {
        let held = self.partial.len() + bytes.len();
        if let Some(size) = &mut self.discarding {
            *size = size.saturating_add(bytes.len());
        } else if held > limit {
            // More than the limit: not 0.
            self.discarding = NonZeroUsize::new(held);
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(bytes);
        }
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
        let rest = framer.feed(limit, data, |f| {
            out.push(match f {
                Frame::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Frame::TooLarge(n) => format!("<{n}>"),
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
        let rest = f.feed(100, b"a\nb\nc", |frame| {
            seen.push(format!("{frame:?}"));
            ControlFlow::Break(())
        });
        assert_eq!(seen.len(), 1);
        assert_eq!(rest, b"b\nc");
    }
}
