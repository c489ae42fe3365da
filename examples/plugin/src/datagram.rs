//! `unixgram:///path/to/dir`: a cluster backplane for nodes on one machine,
//! over Unix datagram sockets in a shared directory.
//!
//! Each node binds a socket `DIR/<pid>-<n>.sock`. Publishing sends one
//! datagram per channel to every socket in the directory; each node keeps
//! only the channels it subscribed. That is a broadcast with a filter at
//! the receiver, fine for an example and for a few nodes; Redis and NATS
//! filter at the server instead.
//!
//! What the host relies on (see `mist_sdk::Backplane`) holds here simply:
//! a subscription is "confirmed" as soon as the channel is in the filter
//! (every datagram read afterwards passes it); one socket sends, from one
//! writer task, and one task reads, and the kernel keeps one sender's
//! datagrams in order; `publish` never waits: it queues in a bounded
//! [`Outbox`] (full: `OVERLOADED`, and the host offers it again), and the writer waits for a busy
//! receiver at most a second before dropping the datagram for it.
//! Datagrams are limited to about 200 KB by the kernel's default socket
//! buffer, so larger payloads are refused (`TOO_LARGE`).
//!
//! A datagram is `[channel length: u16 big-endian][channel][payload]`.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mist_sdk::{Backplane, Confirmation, Inbox, Outbox, Outgoing, SdkError};
use tokio::net::UnixDatagram;
use tokio::task::JoinHandle;

/// Largest datagram sent (under Linux's default 208 KiB socket buffer).
const MAX_DATAGRAM: usize = 200_000;
/// Bytes queued for the writer at most.
const QUEUE_BYTES: usize = 8 << 20;
/// How long the writer waits for one busy receiver.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One node's place in the directory.
pub struct DirBackplane {
    own: PathBuf,
    outbox: Outbox,
    channels: Arc<Mutex<HashSet<String>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Binds this node's socket in the directory `uri` names (created if
/// missing) and starts reading. Called inside the plugin's runtime.
pub fn open(uri: &str, inbox: Inbox) -> Result<DirBackplane, SdkError> {
    let dir = PathBuf::from(
        uri.strip_prefix("unixgram://")
            .map(|rest| rest.split('?').next().unwrap_or(rest))
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| SdkError::invalid_input("expected unixgram:///absolute/dir"))?,
    );
    std::fs::create_dir_all(&dir)
        .map_err(|e| SdkError::unavailable(format!("cannot use {}: {e}", dir.display())))?;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let own = dir.join(format!(
        "{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&own);
    let receiver = UnixDatagram::bind(&own)
        .map_err(|e| SdkError::unavailable(format!("cannot bind {}: {e}", own.display())))?;
    let sender = UnixDatagram::unbound()
        .map_err(|e| SdkError::unavailable(format!("cannot open a socket: {e}")))?;
    let channels = Arc::new(Mutex::new(HashSet::new()));
    let reader = tokio::spawn(read(receiver, channels.clone(), inbox.clone()));
    let outbox = Outbox::new(QUEUE_BYTES);
    outbox.open();
    let writer = tokio::spawn(write(sender, dir, outbox.clone()));
    inbox.connection(true);
    Ok(DirBackplane {
        own,
        outbox,
        channels,
        reader,
        writer,
    })
}

/// Sends what `publish` queued to every node's socket, in order.
async fn write(socket: UnixDatagram, dir: PathBuf, outbox: Outbox) {
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        outbox.next_batch(64, &mut batch).await;
        let peers = peers(&dir);
        for item in batch.drain(..) {
            for channel in &item.channels {
                let Ok(datagram) = frame(channel, &item.payload) else {
                    continue; // checked at publish
                };
                for peer in &peers {
                    match tokio::time::timeout(SEND_TIMEOUT, socket.send_to(&datagram, peer)).await
                    {
                        Ok(Ok(_)) => {}
                        // A node killed without cleaning up: its socket is dead.
                        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                            let _ = std::fs::remove_file(peer);
                        }
                        Ok(Err(e)) => tracing::warn!("{}: datagram dropped: {e}", peer.display()),
                        Err(_) => tracing::warn!("{}: busy, datagram dropped", peer.display()),
                    }
                }
            }
        }
    }
}

/// Hands every datagram on a subscribed channel to the inbox, in order.
async fn read(socket: UnixDatagram, channels: Arc<Mutex<HashSet<String>>>, inbox: Inbox) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while let Ok(n) = socket.recv(&mut buf).await {
        let Some((channel, payload)) = split(&buf[..n]) else {
            continue; // not ours: too short, or the channel is not UTF-8
        };
        let wanted = channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(channel);
        if wanted {
            inbox.receive(channel, payload);
        }
    }
}

fn split(datagram: &[u8]) -> Option<(&str, &[u8])> {
    let len = u16::from_be_bytes([*datagram.first()?, *datagram.get(1)?]) as usize;
    let channel = std::str::from_utf8(datagram.get(2..2 + len)?).ok()?;
    Some((channel, &datagram[2 + len..]))
}

fn frame(channel: &str, payload: &[u8]) -> Result<Vec<u8>, SdkError> {
    let len = u16::try_from(channel.len())
        .map_err(|_| SdkError::invalid_input("a channel name over 65535 bytes"))?;
    let mut datagram = Vec::with_capacity(2 + channel.len() + payload.len());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(channel.as_bytes());
    datagram.extend_from_slice(payload);
    if datagram.len() > MAX_DATAGRAM {
        return Err(SdkError::too_large(format!(
            "a datagram of {} bytes is over {MAX_DATAGRAM}",
            datagram.len()
        )));
    }
    Ok(datagram)
}

/// The sockets of every node in the directory (this one included).
fn peers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "sock"))
        .collect()
}

impl Backplane for DirBackplane {
    fn subscribe(&self, channels: Vec<String>) -> Confirmation {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(channels);
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, channels: Vec<String>) {
        let mut held = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in &channels {
            held.remove(channel);
        }
    }

    fn publish(&self, channels: Vec<String>, payload: Vec<u8>) -> Result<(), SdkError> {
        for channel in &channels {
            // Refuse now what could never be sent.
            frame(channel, &[])?;
            if 2 + channel.len() + payload.len() > MAX_DATAGRAM {
                return Err(SdkError::too_large(format!(
                    "a datagram of {} bytes is over {MAX_DATAGRAM}",
                    2 + channel.len() + payload.len()
                )));
            }
        }
        self.outbox.push(channels, payload)
    }

    fn health(&self) -> Result<(), SdkError> {
        std::fs::metadata(&self.own)
            .map(|_| ())
            .map_err(|e| SdkError::unavailable(format!("{}: {e}", self.own.display())))
    }

    fn stop(&self) {
        self.outbox.close("stopped");
        self.reader.abort();
        self.writer.abort();
        let _ = std::fs::remove_file(&self.own);
    }
}

impl Drop for DirBackplane {
    fn drop(&mut self) {
        self.stop();
    }
}
