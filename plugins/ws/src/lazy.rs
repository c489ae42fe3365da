//! A read buffer that exists only while bytes are arriving.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Like `tokio::io::BufReader`, except that its buffer is released
/// whenever it is empty and the socket has nothing more: an idle
/// connection holds no read buffer at all, a busy one reads `capacity`
/// bytes a time.
pub(crate) struct LazyBufReader<R> {
    inner: R,
    buffer: Vec<u8>,
    /// How far `buffer` has been handed out.
    taken: usize,
    capacity: usize,
}

impl<R> LazyBufReader<R> {
    pub(crate) fn with_capacity(capacity: usize, inner: R) -> Self {
        LazyBufReader {
            inner,
            buffer: Vec::new(),
            taken: 0,
            capacity,
        }
    }

    /// The bytes already read from the socket and not yet handed out.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buffer[self.taken..]
    }

    /// Hands out the first `n` buffered bytes (at most all of them).
    pub(crate) fn consume(&mut self, n: usize) {
        self.taken = (self.taken + n).min(self.buffer.len());
    }

    /// Reads what the socket holds now, without waiting, behind what is
    /// buffered (up to `capacity` in all). Whether bytes came; an error or
    /// the end of the stream is left for the next read to meet.
    pub(crate) fn read_ahead(&mut self, cx: &mut Context<'_>) -> bool
    where
        R: AsyncRead + Unpin,
    {
        if self.taken > 0 {
            // What is not handed out (the start of a frame) to the front.
            self.buffer.drain(..self.taken);
            self.taken = 0;
        }
        if self.buffer.len() >= self.capacity {
            return false;
        }
        self.buffer.reserve_exact(self.capacity - self.buffer.len());
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buffer) {
            Poll::Ready(Ok(n)) => n > 0,
            Poll::Ready(Err(_)) | Poll::Pending => {
                if self.buffer.is_empty() {
                    self.buffer = Vec::new();
                }
                false
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LazyBufReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken == this.buffer.len() {
            this.buffer.clear();
            this.taken = 0;
            if out.remaining() >= this.capacity {
                // A large read needs no buffer of ours.
                this.buffer = Vec::new();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            this.buffer.reserve_exact(this.capacity);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buffer) {
                Poll::Pending => {
                    // Waiting: give the memory back until bytes come.
                    this.buffer = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = out.remaining().min(this.buffer.len() - this.taken);
        out.put_slice(&this.buffer[this.taken..this.taken + n]);
        this.taken += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_through_and_holds_nothing_once_drained() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LazyBufReader::with_capacity(16, server);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"hello, world, and more")
            .await
            .unwrap();
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"he");
        let mut rest = vec![0u8; 20];
        reader.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"llo, world, and more");
        drop(client);
        let mut end = Vec::new();
        reader.read_to_end(&mut end).await.unwrap();
        assert!(end.is_empty());
        assert_eq!(reader.buffer.capacity(), 0);
    }

    /// Reading ahead keeps what was not handed out and adds what the
    /// socket holds now, up to the capacity, without waiting; with nothing
    /// there it holds no buffer once nothing is buffered.
    #[tokio::test]
    async fn reads_ahead_behind_what_is_buffered_without_waiting() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LazyBufReader::with_capacity(16, server);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"0123456789abcdefghij")
            .await
            .unwrap();
        let mut four = [0u8; 4];
        reader.read_exact(&mut four).await.unwrap();
        assert_eq!(reader.buffered(), b"456789abcdef");
        let ahead = std::future::poll_fn(|cx| Poll::Ready(reader.read_ahead(cx))).await;
        assert!(ahead);
        assert_eq!(reader.buffered(), b"456789abcdefghij");
        // Nothing more on the socket: no waiting, the bytes stay.
        let ahead = std::future::poll_fn(|cx| Poll::Ready(reader.read_ahead(cx))).await;
        assert!(!ahead);
        assert_eq!(reader.buffered(), b"456789abcdefghij");
        let mut rest = [0u8; 16];
        reader.read_exact(&mut rest).await.unwrap();
        let ahead = std::future::poll_fn(|cx| Poll::Ready(reader.read_ahead(cx))).await;
        assert!(!ahead);
        assert_eq!(reader.buffer.capacity(), 0);
    }
}
