//! The wire: one connection's writer, and the task that reads it and sorts
//! what arrives into deliveries and replies.
//!
//! The broker answers a connection's commands in order and has no request
//! ids, so a request is matched to its answer by position: every request is
//! followed by a `ping`, and everything the broker sends that is not a
//! delivery, up to the `pong`, is that request's answer. Requests are written
//! and queued for an answer under one lock, so the two orders agree.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::transport::{LineStream, WsStream};
use crate::{Error, Message};

/// The barrier that ends every request's answer.
pub(crate) const PING: &str = r#"{"command":"ping"}"#;

/// A line the broker sent, as far as the client cares.
#[derive(Debug, Deserialize)]
pub(crate) struct Reply {
    #[serde(default)]
    pub command: String,
    pub tags: Option<Vec<String>>,
    pub data: Option<String>,
    pub error: Option<String>,
}

type Answer = oneshot::Sender<Result<Vec<Reply>, Error>>;

/// Requests written and not yet answered, oldest first.
#[derive(Default)]
struct Pending {
    queue: VecDeque<(Answer, Vec<Reply>)>,
    /// Set when the reader stops: nothing queued after it would be answered.
    closed: bool,
}

/// What the reader task and the callers share.
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    /// Deliveries dropped because the caller was not reading them.
    pub dropped: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every request still waiting, and every later one: the
    /// connection is gone.
    fn close(&self) {
        let mut pending = self.pending();
        pending.closed = true;
        for (answer, _) in pending.queue.drain(..) {
            let _ = answer.send(Err(Error::Closed));
        }
    }
}

/// The sending half of a connection. Once a write fails it stays failed:
/// the order of requests and answers can no longer be trusted.
pub(crate) struct Writer {
    sink: Sink,
    shared: Arc<Shared>,
    broken: bool,
}

enum Sink {
    Tcp(BufWriter<WriteHalf<LineStream>>),
    Ws(SplitSink<WsStream, Frame>),
}

impl Writer {
    /// Writes `line` (if any) and the ping barrier, and returns where the
    /// answer will arrive.
    pub(crate) async fn request(
        &mut self,
        line: Option<&str>,
    ) -> Result<oneshot::Receiver<Result<Vec<Reply>, Error>>, Error> {
        if self.broken {
            return Err(Error::Closed);
        }
        let (answer, receiver) = oneshot::channel();
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(Error::Closed);
            }
            pending.queue.push_back((answer, Vec::new()));
        }
        if let Err(e) = self.write(line).await {
            self.broken = true;
            self.shared.close();
            return Err(e);
        }
        Ok(receiver)
    }

    async fn write(&mut self, line: Option<&str>) -> Result<(), Error> {
        match &mut self.sink {
            Sink::Tcp(out) => {
                if let Some(line) = line {
                    out.write_all(line.as_bytes()).await?;
                    out.write_all(b"\n").await?;
                }
                out.write_all(PING.as_bytes()).await?;
                out.write_all(b"\n").await?;
                out.flush().await?;
            }
            Sink::Ws(out) => {
                if let Some(line) = line {
                    out.feed(Frame::text(line)).await?;
                }
                out.feed(Frame::text(PING)).await?;
                out.flush().await?;
            }
        }
        Ok(())
    }
}

/// A started connection.
pub(crate) struct Parts {
    pub writer: Writer,
    pub deliveries: mpsc::Receiver<Message>,
    pub shared: Arc<Shared>,
    /// The reading task: it holds the socket open until aborted.
    pub reader: tokio::task::AbortHandle,
}

/// Starts reading `stream`. Deliveries beyond `capacity` unread are dropped.
pub(crate) fn tcp(stream: LineStream, capacity: usize) -> Parts {
    let (read, write) = tokio::io::split(stream);
    let (shared, deliveries, receiver) = channels(capacity);
    let reader = tokio::spawn(read_tcp(read, Router::new(shared.clone(), deliveries)));
    Parts {
        writer: Writer {
            sink: Sink::Tcp(BufWriter::new(write)),
            shared: shared.clone(),
            broken: false,
        },
        deliveries: receiver,
        shared,
        reader: reader.abort_handle(),
    }
}

/// As [`tcp`], for a WebSocket.
pub(crate) fn ws(socket: WsStream, capacity: usize) -> Parts {
    let (write, read) = socket.split();
    let (shared, deliveries, receiver) = channels(capacity);
    let reader = tokio::spawn(read_ws(read, Router::new(shared.clone(), deliveries)));
    Parts {
        writer: Writer {
            sink: Sink::Ws(write),
            shared: shared.clone(),
            broken: false,
        },
        deliveries: receiver,
        shared,
        reader: reader.abort_handle(),
    }
}

fn channels(capacity: usize) -> (Arc<Shared>, mpsc::Sender<Message>, mpsc::Receiver<Message>) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        dropped: AtomicU64::new(0),
    });
    let (deliveries, receiver) = mpsc::channel(capacity.max(1));
    (shared, deliveries, receiver)
}

async fn read_tcp(read: ReadHalf<LineStream>, mut router: Router) {
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if !router.route(&line) {
            break;
        }
    }
    router.shared.close();
}

async fn read_ws(mut read: SplitStream<WsStream>, mut router: Router) {
    while let Some(Ok(frame)) = read.next().await {
        match frame {
            Frame::Text(text) if !router.route(&text) => break,
            Frame::Close(_) => break,
            // Pings are answered by tungstenite; nothing else is expected.
            _ => {}
        }
    }
    router.shared.close();
}

/// Sorts incoming lines into deliveries and answers.
struct Router {
    shared: Arc<Shared>,
    /// When full, the newest delivery is dropped and counted, as the broker
    /// does for a slow subscriber: replies must never wait behind
    /// deliveries nobody reads.
    deliveries: mpsc::Sender<Message>,
}

impl Router {
    fn new(shared: Arc<Shared>, deliveries: mpsc::Sender<Message>) -> Router {
        Router { shared, deliveries }
    }

    /// Returns false when the connection can no longer be trusted.
    fn route(&mut self, line: &str) -> bool {
        if line.trim().is_empty() {
            return true;
        }
        let reply: Reply = match serde_json::from_str(line) {
            Ok(reply) => reply,
            Err(e) => {
                let error = Error::Protocol(format!("{e}: {line:.200}"));
                if let Some((answer, _)) = self.shared.pending().queue.pop_front() {
                    let _ = answer.send(Err(error));
                }
                return false;
            }
        };
        if reply.error.is_none() && reply.command == "publish" {
            let message = Message {
                tags: reply.tags.unwrap_or_default(),
                data: reply.data.unwrap_or_default(),
            };
            if self.deliveries.try_send(message).is_err() {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        let mut pending = self.shared.pending();
        let is_pong = reply.error.is_none()
            && reply.command == "ping"
            && reply.data.as_deref() == Some("pong");
        if is_pong {
            if let Some((answer, replies)) = pending.queue.pop_front() {
                let _ = answer.send(Ok(replies));
            }
        } else if let Some((_, replies)) = pending.queue.front_mut() {
            replies.push(reply);
        }
        // A reply nobody asked for (the broker's own notice) has no caller
        // to go to; it is dropped.
        true
    }
}
