//! Mist's TCP listener: `tcp://host:port` serves the line protocol of the
//! spec (one JSON object per `\n`-terminated line, both ways).
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
//! Memory per idle connection is kept small: a connection holds no read
//! buffer while it waits (reads go into a per-thread buffer once the socket
//! is readable) and its write buffer shrinks back after a burst.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;

use mist_sdk::abi::ModuleRef;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::{async_trait, Broker, Host, Listener, Plugin, SdkError, Session, SessionInfo};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Reads are this large at most.
const READ_CHUNK: usize = 64 * 1024;
/// A write buffer grown past this is released after use.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

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
    const LISTENERS: &'static [&'static str] = &["tcp"];

    fn init(host: Host) -> Result<Self, SdkError> {
        Ok(Tcp {
            broker: host.broker().clone(),
        })
    }

    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        let broker = self.broker.clone();
        mist_sdk::net::serve_tcp(uri, move |stream, peer, stop| {
            serve(stream, peer, broker.clone(), stop)
        })
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Broker,
    mut stop: watch::Receiver<bool>,
) {
    // Replies are small and latency matters more than packet count; output
    // is batched per drain anyway.
    let _ = stream.set_nodelay(true);
    let session = broker.open_session(SessionInfo::new("tcp", peer));
    let (reader, writer) = stream.into_split();
    let writing = tokio::spawn(write_output(session.clone(), writer));
    tokio::select! {
        result = read_input(&session, reader) => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection read failed: {e}");
            }
        }
        _ = stop.changed() => {}
    }
    // Queued replies are still written before the connection closes.
    session.close();
    let _ = writing.await;
}

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

async fn read_input(session: &Session, reader: OwnedReadHalf) -> io::Result<()> {
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

async fn write_output(session: Session, mut writer: OwnedWriteHalf) {
    let mut buffer = RVec::new();
    while session.output(&mut buffer).await {
        if writer.write_all(&buffer).await.is_err() {
            // The client is gone; its input side will notice too.
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
