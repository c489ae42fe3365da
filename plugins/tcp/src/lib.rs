//! Mist's TCP listener: `tcp://host:port` serves the line protocol of the
//! spec (one JSON object per `\n`-terminated line, both ways), and
//! `tls://host:port` the same over TLS (certificate parameters in
//! [`mist_sdk::tls`]).
//!
//! It is written against [`mist_sdk`] exactly as a third-party listener
//! would be: it moves bytes between sockets and broker sessions and knows
//! nothing of the protocol. Linked into `mist` it is built in; the
//! `mist-tcp` crate exports it as `libmist_tcp.so` for `plugins.toml`.
//!
//! ```no_run
//! // What `mist` does with it, in short:
//! let module = mist_plugin_tcp::module();
//! let info = (module.describe())();
//! assert_eq!(info.listeners[0].as_str(), "tcp");
//! ```
//!
//! Memory per idle connection is kept small: a plain connection holds no
//! read buffer while it waits (reads go into a per-thread buffer once the
//! socket is readable), no write buffer (it is released once nothing is waiting),
//! and its task stores each part of its state once. A
//! TLS connection reads through rustls, which keeps buffers of its own.
//!
//! When the listener stops, a connection stops reading, writes out what is
//! queued for it, and only then closes its session: the host waits for the
//! sessions to close, up to its shutdown timeout.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;

use mist_sdk::abi::ModuleRef;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::{drive_connection, stopping, Refusal, Serve, Stream};
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError, Session, SessionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::sync::watch;

/// Reads are this large at most. One read is one batch of publishes, and
/// a subscriber is woken (and written to) once per batch: with publishes
/// spread over many topics, a larger batch gives each subscriber more
/// than one message a write. The buffer is per thread, not per connection.
const READ_CHUNK: usize = 256 * 1024;
/// A write buffer grown past this is released after use; a smaller one is
/// kept while output keeps coming and released once there is none.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;
/// The read buffer of a TLS connection, which cannot use the per-thread one
/// (rustls decrypts into it across an await).
const TLS_READ_CHUNK: usize = 16 * 1024;

/// The plugin.
pub struct Tcp {
    broker: Broker,
}

/// The root module, for linking the plugin into a host.
pub fn module() -> ModuleRef {
    mist_sdk::module::<Tcp>()
}

#[async_trait]
impl Plugin for Tcp {
    const NAME: &'static str = "tcp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const LISTENERS: &'static [&'static str] = &["tcp", "tls"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Tcp {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        let tls = uri.starts_with("tls://");
        let scheme = if tls { "tls" } else { "tcp" };
        let mut listener = Serve::new(uri, &self.broker).refusal(Refusal::Line);
        if tls {
            listener = listener.tls(&[]);
        }
        listener.start(move |stream, peer, stop| serve(stream, peer, scheme, &broker, stop))
    }
}

/// Opens the client's session and returns the connection's future.
///
/// One future, not one `async fn` calling the next: each `async fn` keeps
/// its arguments in its state for as long as it runs, so every layer would
/// store the stream, the session and the stop signal again in every idle
/// connection's task.
fn serve(
    stream: Stream,
    peer: SocketAddr,
    scheme: &'static str,
    broker: &Broker,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let session = broker.open_session(SessionInfo::new(scheme, peer));
    async move {
        let mut stream = stream;
        let Stream::Plain(plain) = &mut stream else {
            if let Stream::Tls(tls) = stream {
                Box::pin(serve_tls(tls, peer, session, stop)).await;
            }
            return;
        };
        // A plain connection: its reading and its writing in one task (an
        // idle connection is one small task, not two). Borrowed halves:
        // `into_split` would allocate an `Arc` per connection.
        let (reader, writer) = plain.split();
        // Pinned here and lent to `drive_connection`: passed by value, each
        // future would be stored again in its state.
        let writing = pin!(write_output(session.clone(), writer, stop.clone()));
        let reading = pin!(async {
            if let Err(e) = read_plain(&session, reader).await {
                tracing::debug!(%peer, "connection read failed: {e}");
            }
        });
        drive_connection(&session, reading, writing, stop).await;
    }
}

/// A TLS connection: rustls keeps its own buffers; the writer is a task of
/// its own.
async fn serve_tls<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    session: Session,
    mut stop: watch::Receiver<bool>,
) {
    let (reader, writer) = tokio::io::split(stream);
    let writing = tokio::spawn(write_output(session.clone(), writer, stop.clone()));
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

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

async fn read_plain(session: &Session, reader: ReadHalf<'_>) -> io::Result<()> {
    loop {
        reader.readable().await?;
        let fed = READ_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            match reader.try_read(&mut buffer) {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(session.feed(&buffer[..n]))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(Some(mist_sdk::Feed::ready()))
                }
                Err(e) => Err(e),
            }
        })?;
        match fed {
            Some(wait) => wait.await,
            None => return Ok(()),
        }
        // A flooding client always has more to read; without a yield its
        // subscribers' writers, woken onto this worker, wait until tokio's
        // budget runs out (128 reads, megabytes of backlog) to run.
        tokio::task::yield_now().await;
    }
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

async fn write_output<W: AsyncWrite + Unpin>(
    session: Session,
    mut writer: W,
    mut stop: watch::Receiver<bool>,
) {
    let mut buffer = RVec::new();
    let mut stopped = false;
    loop {
        if stopped {
            // Only what is queued now; then the session closes.
            session.try_output(&mut buffer);
            if buffer.is_empty() {
                break;
            }
        } else {
            let open = session.try_output(&mut buffer);
            if buffer.is_empty() {
                if !open {
                    break;
                }
                // Nothing waiting: an idle connection holds no buffer.
                buffer = RVec::new();
                tokio::select! {
                    open = session.output(&mut buffer) => if !open && buffer.is_empty() {
                        break;
                    },
                    _ = stopping(&mut stop) => {
                        stopped = true;
                        continue;
                    }
                }
            }
        }
        let written = tokio::select! {
            written = writer.write_all(&buffer) => written.is_ok(),
            () = session.closed() => false,
        };
        if !written {
            // The client is gone (its input side will notice too), or the
            // broker ended the session while the write was stuck.
            session.close();
            return;
        }
        if buffer.capacity() > KEEP_WRITE_BUFFER {
            buffer = RVec::new();
        } else {
            buffer.clear();
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection's task is this future (inside the sdk's): a
    /// future stored twice, or a buffer held across an await, shows here.
    #[test]
    fn a_plain_connection_future_stays_small() {
        let serve: fn(
            Stream,
            SocketAddr,
            &'static str,
            &'static Broker,
            watch::Receiver<bool>,
        ) -> _ = serve;
        let size = future_size(serve);
        // Unoptimized builds lay futures out larger than release builds.
        assert!(size <= 1280, "{size} bytes");
    }
}
