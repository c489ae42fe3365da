//! The wire: one connection's writing task, and the task that reads it and
//! sorts what arrives into deliveries, notices and answers.
//!
//! The broker answers a connection's commands in order and has no request
//! ids, so a request is matched to its answer by position: every request is
//! followed by a `ping`, and everything the broker sends that is not a
//! delivery or a notice, up to the `pong`, is that request's answer.
//!
//! Only the writing task writes, and it queues a request for its answer
//! right before writing it, so the two orders agree. A caller hands its
//! request to that task whole, over a channel, and then only waits: a caller
//! that gives up (its future dropped) can neither leave half a line on the
//! wire nor leave a queued answer without its `ping`, either of which would
//! shift every later answer onto the wrong request. A request whose caller
//! gave up before the task reached it is not sent at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::{Error, Message, Notice};

/// The barrier that ends every request's answer.
pub(crate) const PING: &str = r#"{"command":"ping"}"#;

/// Commands the broker sends on its own, never as an answer: a line with
/// one of them goes to [`crate::Client::next_notice`].
const NOTICES: &[&str] = &["revoked"];

/// How many requests may wait for the writing task. A caller beyond them
/// waits for room (cancel-safely: a request is either handed over whole or
/// not at all).
const REQUEST_QUEUE: usize = 64;

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

/// A request on its way to the writing task.
pub(crate) struct Request {
    /// The command's line, without its newline; `None` for a bare ping.
    pub line: Option<String>,
    /// Where its replies go.
    pub answer: Answer,
}

/// Requests written and not yet answered, oldest first.
#[derive(Default)]
struct Pending {
    queue: VecDeque<(Answer, Vec<Reply>)>,
    /// Set when the connection ends: nothing queued after it would be answered.
    closed: bool,
    /// Why TLS ended the connection, in words: every later call gets it
    /// rather than a bare [`Error::Closed`]. (A TLS 1.3 server refuses a
    /// client after the handshake, so a first request can find the
    /// connection already closed by that refusal.)
    tls_refusal: Option<String>,
}

/// What the reading and writing tasks and the callers share.
pub(crate) struct Shared {
    /// What was dialled, for messages.
    target: String,
    pending: Mutex<Pending>,
    /// Deliveries dropped because the caller was not reading them.
    pub dropped: AtomicU64,
    /// Notices dropped because the caller was not reading them.
    pub notices_dropped: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every request still waiting with `why()` and every later one
    /// with [`Error::Closed`]: the connection is gone.
    fn fail(&self, why: impl Fn() -> Error) {
        let mut pending = self.pending();
        pending.closed = true;
        for (answer, _) in pending.queue.drain(..) {
            let _ = answer.send(Err(why()));
        }
    }

    /// Fails every request, waiting and later, with TLS's `reason`.
    fn fail_tls(&self, reason: String) {
        self.pending().tls_refusal = Some(reason.clone());
        self.fail(|| Error::Tls {
            target: self.target.clone(),
            reason: reason.clone(),
        });
    }

    /// What a request finds once the connection is closed.
    fn later_error(&self, pending: &Pending) -> Error {
        match &pending.tls_refusal {
            Some(reason) => Error::Tls {
                target: self.target.clone(),
                reason: reason.clone(),
            },
            None => Error::Closed,
        }
    }
}

use crate::transport::{LineStream, WsStream};

/// Any byte stream's writing half.
type ByteSink = Box<dyn AsyncWrite + Unpin + Send>;

/// The sending half of a connection, owned by the writing task.
enum Sink {
    Tcp(BufWriter<ByteSink>),
    Ws(SplitSink<WsStream, Frame>),
}

/// A started connection.
pub(crate) struct Parts {
    /// Where requests go; closed once the connection cannot take more.
    pub requests: mpsc::Sender<Request>,
    pub deliveries: mpsc::Receiver<Message>,
    pub notices: mpsc::Receiver<Notice>,
    pub shared: Arc<Shared>,
    /// The reading and writing tasks: they hold the socket open until aborted.
    pub tasks: [tokio::task::AbortHandle; 2],
}

/// Starts a line-protocol connection to `target` over `stream`.
/// Deliveries beyond `capacity` unread are dropped; a line longer than
/// `max_line` bytes ends the connection.
pub(crate) fn tcp(target: &str, stream: LineStream, capacity: usize, max_line: usize) -> Parts {
    let (read, write) = tokio::io::split(stream);
    lines(target, read, write, capacity, max_line)
}

/// As [`tcp`], over any byte stream's two halves.
pub(crate) fn lines<R, W>(
    target: &str,
    read: R,
    write: W,
    capacity: usize,
    max_line: usize,
) -> Parts
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let channels = Channels::new(target, capacity);
    let router = channels.router();
    let reader = tokio::spawn(read_lines(read, max_line, router));
    let write: ByteSink = Box::new(write);
    channels.start(Sink::Tcp(BufWriter::new(write)), reader.abort_handle())
}

/// As [`tcp`], for a WebSocket (whose message size tungstenite bounds).
pub(crate) fn ws(target: &str, socket: WsStream, capacity: usize, max_line: usize) -> Parts {
    let (write, read) = socket.split();
    let channels = Channels::new(target, capacity);
    let router = channels.router();
    let reader = tokio::spawn(read_ws(read, max_line, router));
    channels.start(Sink::Ws(write), reader.abort_handle())
}

/// The channels of a connection being started.
struct Channels {
    shared: Arc<Shared>,
    deliveries: (mpsc::Sender<Message>, mpsc::Receiver<Message>),
    notices: (mpsc::Sender<Notice>, mpsc::Receiver<Notice>),
}

impl Channels {
    fn new(target: &str, capacity: usize) -> Channels {
        Channels {
            shared: Arc::new(Shared {
                target: target.to_owned(),
                pending: Mutex::new(Pending::default()),
                dropped: AtomicU64::new(0),
                notices_dropped: AtomicU64::new(0),
            }),
            deliveries: mpsc::channel(capacity.max(1)),
            notices: mpsc::channel(crate::NOTICE_BUFFER),
        }
    }

    fn router(&self) -> Router {
        Router {
            shared: self.shared.clone(),
            deliveries: self.deliveries.0.clone(),
            notices: self.notices.0.clone(),
        }
    }

    fn start(self, sink: Sink, reader: tokio::task::AbortHandle) -> Parts {
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let writer = tokio::spawn(write(sink, queue, self.shared.clone()));
        Parts {
            requests,
            deliveries: self.deliveries.1,
            notices: self.notices.1,
            shared: self.shared,
            tasks: [reader, writer.abort_handle()],
        }
    }
}

/// The writing task: writes each request and its ping barrier, in the
/// order they are queued for their answers. Ends when every sender is gone
/// or a write fails; after a failed write the order of requests and
/// answers can no longer be trusted, so the connection is failed.
async fn write(mut sink: Sink, mut queue: mpsc::Receiver<Request>, shared: Arc<Shared>) {
    while let Some(Request { line, answer }) = queue.recv().await {
        if answer.is_closed() {
            // Its caller gave up before anything was written: skip it whole.
            continue;
        }
        {
            let mut pending = shared.pending();
            if pending.closed {
                let _ = answer.send(Err(shared.later_error(&pending)));
                continue;
            }
            pending.queue.push_back((answer, Vec::new()));
        }
        if let Err(error) = send(&mut sink, line.as_deref()).await {
            if let Some(reason) = tls_refusal(&error) {
                shared.fail_tls(reason);
                break;
            }
            // The request just queued is the newest: it gets the reason.
            let mine = shared.pending().queue.pop_back();
            if let Some((answer, _)) = mine {
                let _ = answer.send(Err(error));
            }
            shared.fail(|| Error::Closed);
            break;
        }
    }
    // Requests still in the channel are dropped with it: their callers see
    // `Error::Closed`.
}

async fn send(sink: &mut Sink, line: Option<&str>) -> Result<(), Error> {
    match sink {
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

/// TLS's reason, in words, when a write or read failed because TLS ended
/// the connection (an alert from the server).
fn tls_refusal(error: &Error) -> Option<String> {
    match error {
        Error::Io(io) => crate::tls::rustls_error(io).map(|tls| crate::tls::words(tls, None)),
        _ => None,
    }
}

/// Reads newline-terminated lines of at most `max_line` bytes: a longer
/// line fails the connection instead of growing the buffer.
async fn read_lines<R: AsyncRead + Unpin>(read: R, max_line: usize, mut router: Router) {
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(max_line));
    loop {
        match lines.next().await {
            Some(Ok(line)) => {
                if let Err(error) = router.route(&line) {
                    return router.shared.fail(|| Error::Protocol(error.clone()));
                }
            }
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                return router
                    .shared
                    .fail(|| Error::LineTooLong { limit: max_line });
            }
            Some(Err(LinesCodecError::Io(error))) => {
                // Over TLS 1.3 a server that refuses this client (it wants a
                // client certificate) says so after the handshake, with the
                // first read.
                if let Some(tls) = crate::tls::rustls_error(&error) {
                    return router.shared.fail_tls(crate::tls::words(tls, None));
                }
                let error = error.to_string();
                return router.shared.fail(|| Error::Protocol(error.clone()));
            }
            None => return router.shared.fail(|| Error::Closed),
        }
    }
}

async fn read_ws(mut read: SplitStream<WsStream>, max_line: usize, mut router: Router) {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    while let Some(frame) = read.next().await {
        match frame {
            Ok(Frame::Text(text)) => {
                if let Err(error) = router.route(&text) {
                    return router.shared.fail(|| Error::Protocol(error.clone()));
                }
            }
            Ok(Frame::Close(_)) => break,
            // Pings are answered by tungstenite; nothing else is expected.
            Ok(_) => {}
            Err(WsError::Capacity(
                CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
            )) => {
                return router
                    .shared
                    .fail(|| Error::LineTooLong { limit: max_line });
            }
            Err(WsError::Io(error)) => {
                if let Some(tls) = crate::tls::rustls_error(&error) {
                    return router.shared.fail_tls(crate::tls::words(tls, None));
                }
                break;
            }
            Err(_) => break,
        }
    }
    router.shared.fail(|| Error::Closed);
}

/// Sorts incoming lines into deliveries, notices and answers.
struct Router {
    shared: Arc<Shared>,
    /// When full, the newest delivery is dropped and counted, as the broker
    /// does for a slow subscriber: replies must never wait behind
    /// deliveries nobody reads.
    deliveries: mpsc::Sender<Message>,
    /// When full, the newest notice is dropped and counted, for the same reason.
    notices: mpsc::Sender<Notice>,
}

impl Router {
    /// An error when the connection can no longer be trusted: the line is
    /// not a Mist message.
    fn route(&mut self, line: &str) -> Result<(), String> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let reply: Reply = serde_json::from_str(line).map_err(|e| format!("{e}: {line:.200}"))?;
        if reply.error.is_none() && reply.command == "publish" {
            let message = Message {
                tags: reply.tags.unwrap_or_default(),
                data: reply.data.unwrap_or_default(),
            };
            if self.deliveries.try_send(message).is_err() {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        if NOTICES.contains(&reply.command.as_str()) {
            let notice = Notice {
                command: reply.command,
                tags: reply.tags.unwrap_or_default(),
                error: reply.error.unwrap_or_default(),
            };
            if self.notices.try_send(notice).is_err() {
                self.shared.notices_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        let mut pending = self.shared.pending();
        let is_pong = reply.error.is_none()
            && reply.command == "ping"
            && reply.data.as_deref() == Some("pong");
        if is_pong {
            if let Some((answer, replies)) = pending.queue.pop_front() {
                // Its caller may have given up: then nobody hears it.
                let _ = answer.send(Ok(replies));
            }
        } else if let Some((_, replies)) = pending.queue.front_mut() {
            replies.push(reply);
        }
        // A reply with no request waiting has no caller to go to; it is dropped.
        Ok(())
    }
}
