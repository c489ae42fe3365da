//! A connection's first request head, read before hyper sees it.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for as long
//! as a connection lives, which is most of what an idle event stream would
//! cost. So the listener reads the first head itself, into a buffer that
//! lives only while it reads: a `GET /subscribe` it can serve alone
//! (HTTP/1.1, no body) becomes an event stream written straight to the
//! socket ([`crate::events::stream`]). Any other request, and anything
//! that is not a complete head, goes to hyper with the bytes read so far
//! replayed in front of the socket ([`Replay`]), so that hyper answers it
//! exactly as it would have: `400` for a malformed head, `431` for one
//! over its limit, the end of the connection for a client that left.
//!
//! Reading is bounded by the caller's header timeout and by [`MAX_HEAD`];
//! each byte is looked at a fixed number of times however the client
//! splits its head, so a head sent a byte at a time costs no more to read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::header::HeaderValue;
use hyper::Uri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// hyper's own limit on a request head (its default read buffer limit): a
/// head still incomplete at this size goes to hyper, which answers `431`.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// hyper's limit on the number of headers; more is its `431` too.
const MAX_HEADERS: usize = 100;
/// How much more room the head buffer gets before each read.
const READ_CHUNK: usize = 1024;

/// A connection's first request, as far as the listener needs to know it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// `GET /subscribe`, HTTP/1.1, without a body: the listener's own.
    Subscribe(Subscribe),
    /// Anything else, for hyper: the bytes read so far.
    Other(Vec<u8>),
}

/// What a `GET /subscribe` asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Subscribe {
    /// The request target's query, where the tags are.
    pub(crate) query: Option<String>,
    /// The first `X-AUTH-TOKEN` header, if it is text (as hyper's
    /// `HeaderValue::to_str` would take it).
    pub(crate) token: Option<String>,
}

/// Reads the first request head from `stream`. A read error is returned;
/// the end of the stream is [`Head::Other`] with what came before it.
pub(crate) async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buffer = Vec::new();
    // Bytes before this have been looked at for the end of the head.
    let mut scanned = 0;
    loop {
        if buffer.len() >= MAX_HEAD {
            return Ok(Head::Other(buffer));
        }
        buffer.reserve(READ_CHUNK);
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(Head::Other(buffer));
        }
        // Empty lines before a request line are ignored (by hyper too);
        // dropping them keeps the scan below from seeing them as the end.
        let blank = leading_empty_lines(&buffer);
        if blank > 0 {
            buffer.drain(..blank);
            scanned = 0;
        }
        if let Some(end) = end_of_head(&buffer, scanned) {
            // Bytes after a subscription's head are dropped, like all that
            // its client sends later: its answer closes the connection.
            return Ok(match parse(&buffer[..end]) {
                Parsed::Subscribe(subscribe) => Head::Subscribe(subscribe),
                Parsed::Other => Head::Other(buffer),
            });
        }
        scanned = buffer.len();
    }
}

/// How many bytes of whole empty lines (`\r\n` or `\n`) `bytes` begins with.
fn leading_empty_lines(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match bytes.get(at..) {
            Some([b'\n', ..]) => at += 1,
            Some([b'\r', b'\n', ..]) => at += 2,
            _ => return at,
        }
    }
}

/// Where the head in `bytes` ends (after its empty line), looking only at
/// line ends from `from` on (less the two bytes an end can straddle).
fn end_of_head(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let mut at = start;
    while let Some(offset) = bytes.get(at..)?.iter().position(|&b| b == b'\n') {
        let newline = at + offset;
        let before = &bytes[..newline];
        if newline > 0 && (before.ends_with(b"\n") || before.ends_with(b"\n\r")) {
            return Some(newline + 1);
        }
        at = newline + 1;
    }
    None
}

enum Parsed {
    Subscribe(Subscribe),
    Other,
}

/// Sorts a complete head. Anything httparse refuses, or that would need
/// more of HTTP than an event stream (a body, HTTP/1.0), is hyper's.
fn parse(head: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return Parsed::Other;
    }
    if request.method != Some("GET") || request.version != Some(1) {
        return Parsed::Other;
    }
    let Some(uri) = request.path.and_then(|path| Uri::try_from(path).ok()) else {
        return Parsed::Other;
    };
    if uri.path() != "/subscribe" {
        return Parsed::Other;
    }
    let has_body = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    });
    if has_body {
        return Parsed::Other;
    }
    let token = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(mist_plugin_ws::TOKEN_HEADER))
        .and_then(|h| HeaderValue::from_bytes(h.value).ok())
        .and_then(|v| v.to_str().ok().map(str::to_owned));
    Parsed::Subscribe(Subscribe {
        query: uri.query().map(str::to_owned),
        token,
    })
}

/// A stream that reads `prefix` first, then from `inner`: the socket
/// handed to hyper after the listener has read from it. The prefix is
/// released once it has been read.
pub(crate) struct Replay<S> {
    prefix: Vec<u8>,
    taken: usize,
    inner: S,
}

impl<S> Replay<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Replay {
            prefix,
            taken: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.prefix.len() {
            let n = out.remaining().min(this.prefix.len() - this.taken);
            out.put_slice(&this.prefix[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.prefix.len() {
                this.prefix = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Reads a head sent in pieces of `size` bytes.
    async fn read_in_pieces(bytes: &[u8], size: usize) -> Head {
        let (mut client, mut server) = tokio::io::duplex(64);
        let bytes = bytes.to_vec();
        let writing = tokio::spawn(async move {
            for piece in bytes.chunks(size) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Held open: the head must be found without an end of stream.
            std::future::pending::<()>().await;
        });
        let head = read(&mut server).await.unwrap();
        writing.abort();
        head
    }

    fn subscribe(query: &str, token: Option<&str>) -> Head {
        Head::Subscribe(Subscribe {
            query: Some(query.to_owned()),
            token: token.map(str::to_owned),
        })
    }

    #[tokio::test]
    async fn a_subscribe_head_is_found_however_it_is_split() {
        let head =
            b"\r\n\r\nGET /subscribe?tags=a,b HTTP/1.1\r\nHost: x\r\nX-Auth-Token: t1\r\n\r\n";
        for size in [1, 2, 3, 7, head.len()] {
            assert_eq!(
                read_in_pieces(head, size).await,
                subscribe("tags=a,b", Some("t1")),
                "pieces of {size}"
            );
        }
        let bare = b"GET http://x/subscribe?tags=a HTTP/1.1\nHost: x\n\n";
        assert_eq!(read_in_pieces(bare, 1).await, subscribe("tags=a", None));
        // What comes after it (a pipelined request, garbage) is not read
        // as part of it.
        let pipelined = b"GET /subscribe?tags=a HTTP/1.1\r\n\r\nGET /ping HTTP/1.1\r\n\r\n\0\xff";
        assert_eq!(
            read_in_pieces(pipelined, 5).await,
            subscribe("tags=a", None)
        );
    }

    #[tokio::test]
    async fn everything_else_goes_to_hyper_as_it_came() {
        let others: [&[u8]; 7] = [
            b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /subscribe/websocket HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /subscribe?tags=a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /subscribe?tags=a HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /subscribe?tags=a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /subscribe?tags=a HTTP/1.1\r\nBad Header\r\n\r\n",
            b"\x16\x03\x01 not http at all\r\n\r\n",
        ];
        for other in others {
            assert_eq!(
                read_in_pieces(other, other.len()).await,
                Head::Other(other.to_vec()),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[tokio::test]
    async fn too_many_headers_or_too_large_a_head_go_to_hyper() {
        let mut many = b"GET /subscribe?tags=a HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(read_in_pieces(&many, 4096).await, Head::Other(many.clone()));

        let mut large = b"GET /subscribe?tags=a HTTP/1.1\r\nX-Big: ".to_vec();
        large.resize(MAX_HEAD + 10_000, b'x');
        let Head::Other(read) = read_in_pieces(&large, 4096).await else {
            panic!("a head over the limit is not the listener's");
        };
        assert!(read.len() >= MAX_HEAD && read.len() < MAX_HEAD + READ_CHUNK + 4096);
        assert!(large.starts_with(&read));
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_head_leaves_hyper_what_it_sent() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /subscribe?ta").await.unwrap();
        drop(client);
        assert_eq!(
            read(&mut server).await.unwrap(),
            Head::Other(b"GET /subscribe?ta".to_vec())
        );
    }

    #[test]
    fn the_end_of_a_head_is_its_empty_line() {
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        // Found from where the last look stopped, across the split.
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\n\r\n", 16), Some(18));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\n\r\n", 17), Some(18));
        assert_eq!(leading_empty_lines(b"\r\n\n\r\nGET"), 5);
        assert_eq!(leading_empty_lines(b"\r"), 0);
    }

    #[tokio::test]
    async fn the_replay_comes_before_the_stream_and_is_then_released() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut replay = Replay::new(b"first ".to_vec(), server);
        client.write_all(b"then the rest").await.unwrap();
        drop(client);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "first then the rest");
        assert_eq!(replay.prefix.capacity(), 0);
    }
}
