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
}
