//! `unix:///path/to/socket`: the line protocol over a Unix-domain socket.
//!
//! Like every listener, it only moves bytes: what a client writes is fed to
//! its broker session, and what the session outputs is written back. The
//! broker does the protocol.

use std::path::PathBuf;

use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::{Broker, Listener, SdkError, Session, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Binds the socket and serves it until the host stops the listener.
/// Called inside the plugin's runtime, so `tokio::spawn` works.
pub fn start(uri: &str, broker: Broker) -> Result<Box<dyn Listener>, SdkError> {
    let path = PathBuf::from(
        uri.strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| SdkError::invalid_input("expected unix:///absolute/path"))?,
    );
    // A socket file left by an earlier run would make bind fail.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    }) {
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| SdkError::unavailable(format!("cannot listen on {}: {e}", path.display())))?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(accept(listener, broker, stopped));
    Ok(Box::new(Serving { path, stop }))
}

struct Serving {
    path: PathBuf,
    stop: watch::Sender<bool>,
}

impl Listener for Serving {
    fn local_addr(&self) -> String {
        self.path.display().to_string()
    }

    fn stop(&self) {
        self.stop.send_replace(true);
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, broker: Broker, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, broker.clone(), stop.clone()));
                }
                Err(e) => tracing::warn!("accepting a connection failed: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}

async fn serve(stream: UnixStream, broker: Broker, mut stop: watch::Receiver<bool>) {
    let session = broker.open_session(SessionInfo::new("unix", "local"));
    let (mut reader, writer) = stream.into_split();
    let writing = tokio::spawn(write_output(session.clone(), writer));
    let mut buffer = vec![0; 64 * 1024];
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                // The broker frames lines; waiting on the feed is how it
                // slows a client that sends faster than it reads replies.
                Ok(n) => session.feed(&buffer[..n]).await,
            },
            _ = stop.changed() => break,
        }
    }
    session.close();
    let _ = writing.await;
}

async fn write_output(session: Session, mut writer: tokio::net::unix::OwnedWriteHalf) {
    let mut output = RVec::new();
    while session.output(&mut output).await {
        if writer.write_all(&output).await.is_err() {
            session.close();
            return;
        }
        output.clear();
    }
    let _ = writer.shutdown().await;
}
