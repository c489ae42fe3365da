//! A TLS connection (`tls://`): rustls keeps buffers of its own, so there
//! is no parking to gain; the reader and the writer are plain tasks, the
//! way any listener's would be.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use mist_sdk::net::{stopping, Refusal, Serve, Stream};
use mist_sdk::{Broker, Listener, SdkError, Session, SessionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use crate::writer::{write_output, Idle};

/// The read buffer of a TLS connection, which cannot use the per-thread
/// one of plain connections (rustls decrypts into it across an await).
const TLS_READ_CHUNK: usize = 16 * 1024;

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

async fn read_stream<R: AsyncRead + Unpin>(session: &Session, mut reader: R) -> io::Result<()> {
    let mut buffer = vec![0; TLS_READ_CHUNK];
    loop {
        match reader.read(&mut buffer).await? {
            0 => return Ok(()),
            n => session.feed(&buffer[..n]).await,
        }
        tokio::task::yield_now().await;
    }
}
