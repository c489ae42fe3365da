//! A TLS connection (`tls://`): rustls keeps buffers of its own, so there
//! is no parking to gain; the reader and the writer are plain tasks, the
//! way any listener's would be.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use mist_sdk::net::{stopping, Refusal, Serve, Stream};
use mist_sdk::{Broker, Listener, SdkError, Session, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::read_buffer;
use crate::writer::{write_output, Idle};

/// Starts a TLS listener (certificate parameters in [`mist_sdk::tls`]).
pub(crate) fn start(uri: &str, broker: Broker) -> Result<Box<dyn Listener>, SdkError> {
    Serve::new(uri, &broker)
        .refusal(Refusal::Line)
        .tls(&[])
        .start(move |stream, peer, stop| serve(stream, peer, &broker, stop))
}

/// Opens the client's session and returns the connection's future.
fn serve(
    stream: Stream,
    peer: SocketAddr,
    broker: &Broker,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let session = broker.open_session(SessionInfo::new("tls", peer));
    // A byte stream: output may end in the middle of a line, so what the
    // broker hands the writer stays within its drain's bound.
    session.write_in_pieces();
    async move {
        match stream {
            Stream::Tls(tls) => Box::pin(serve_tls(tls, peer, session, stop)).await,
            Stream::Plain(plain) => serve_tls(plain, peer, session, stop).await,
        }
    }
}

/// A TLS connection (or a plain one served the same way): rustls keeps
/// its own buffers; the writer is a task of its own.
async fn serve_tls<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    session: Session,
    mut stop: watch::Receiver<bool>,
) {
    let (reader, writer) = tokio::io::split(stream);
    let writing = tokio::spawn({
        let (session, stop) = (session.clone(), stop.clone());
        async move { write_output(&session, writer, stop, &Idle::default()).await }
    });
    let stopped = tokio::select! {
        result = read_stream(&session, reader) => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection read failed: {e}");
            }
            false
        }
        _ = stopping(&mut stop) => true,
        // The broker ended the session (a slow consumer): close at once,
        // even if a write to the client is stuck.
        () = session.closed() => {
            writing.abort();
            return;
        }
    };
    if !stopped {
        session.close();
    }
    let _ = writing.await;
    session.close();
}

/// Feeds the session what the client sends, until it is done. Each feed is
/// everything rustls has decrypted or can decrypt from what the socket
/// holds at that moment (up to the per-thread buffer), not one TLS record
/// (16 KiB) at a time: one feed is one batch of publishes, and each
/// subscriber is woken and written to (one record, one syscall) once per
/// batch, so small batches spread over many topics would cost every
/// subscriber a record per message.
pub(crate) async fn read_stream<R: AsyncRead + Unpin>(
    session: &Session,
    mut reader: R,
) -> io::Result<()> {
    loop {
        let (fed, end) = poll_fn(|cx| {
            read_buffer::with(|buffer| {
                let mut filled = 0;
                let mut end = None;
                while filled < buffer.len() {
                    let mut read = ReadBuf::new(&mut buffer[filled..]);
                    match Pin::new(&mut reader).poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) if read.filled().is_empty() => {
                            end = Some(Ok(()));
                            break;
                        }
                        Poll::Ready(Ok(())) => filled += read.filled().len(),
                        Poll::Ready(Err(e)) => {
                            end = Some(Err(e));
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if filled == 0 && end.is_none() {
                    return Poll::Pending;
                }
                // What came before the end is the client's too.
                let fed = (filled > 0).then(|| session.feed(&buffer[..filled]));
                Poll::Ready((fed, end))
            })
        })
        .await;
        if let Some(fed) = fed {
            fed.await;
        }
        if let Some(end) = end {
            return end;
        }
        // As a plain connection does: let the subscribers' writers, woken
        // onto this worker, run before the next burst.
        tokio::task::yield_now().await;
    }
}
