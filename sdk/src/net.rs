//! Serving a TCP port: what every socket listener needs around its
//! per-connection code, written once.
//!
//! [`Serve`] binds the listener's address and, for each client, in order:
//!
//! 1. takes a place in the broker's connection limit ([`Broker::admit`]),
//!    held until the connection's task ends;
//! 2. with [`Serve::tls`], performs the TLS handshake within the broker's
//!    handshake timeout ([`crate::ListenerLimits::handshake_timeout_ms`]),
//!    with the certificate named by the URI (see [`crate::tls`]);
//! 3. refuses a client the broker has no room for, in the listener's own
//!    protocol ([`Refusal`]), and closes it;
//! 4. otherwise hands the [`Stream`] to the listener's code.
//!
//! A panic in the accept loop is logged and the listener reports itself
//! failed through [`Listener::health`]; `SIGHUP` reaches
//! [`Listener::reload`], which re-reads the TLS certificate files.
//!
//! A process out of file descriptors (`accept` failing with `EMFILE` or
//! `ENFILE`) keeps serving the connections it has and refuses the ones
//! waiting to be accepted, in the listener's protocol, rather than leaving
//! them in the kernel's queue with no answer: the accept loops keep one
//! spare descriptor (`/dev/null`), give it up to take a waiting
//! connection, refuse and close it, and take the spare back. Once
//! descriptors are free again, connections are served as before. Each
//! listener warns about it at most every 10 s.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::{Broker, ConnectionPermit, Permits};
use crate::error::SdkError;
use crate::plugin::Listener;
use crate::tls::{TlsAcceptor, TlsStream};
use crate::uri::socket_address;

/// How a listener tells a client the broker has no room for it (SPEC §7),
/// before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// One error line, `{"command":"","error":"..."}`: line protocols.
    Line,
    /// `503 Service Unavailable` with a JSON `{"error":"..."}` body: HTTP
    /// and WebSocket.
    Http,
}

impl Refusal {
    /// The bytes that refuse a client with `message`.
    pub fn bytes(self, message: &str) -> Vec<u8> {
        match self {
            Refusal::Line => {
                let mut line = serde_json::json!({"command": "", "error": message}).to_string();
                line.push('\n');
                line.into_bytes()
            }
            Refusal::Http => {
                let body = serde_json::json!({ "error": message }).to_string();
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        }
    }
}

/// A client's connection: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Completes once the listener is stopping (or gone). Use it in a
/// connection's `select!`, and in its writer to switch to writing out what
/// is queued and ending (see [`crate::Session::try_output`]).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Runs one connection whose reading and writing share a task, and ends
/// its session the way every first-party listener does:
///
/// - the client is done (`reading` ends): what is queued is still written,
///   then the session closes;
/// - the listener stops: `writing` (which watches `stop` itself) writes out
///   what is queued and ends, then the session closes;
/// - the broker ends the session (a slow consumer): at once, even if a
///   write to the client is stuck;
/// - `writing` ends first (the client is gone, or the session closed and
///   everything queued was written): the session closes.
pub async fn drive_connection<R, W>(
    session: &crate::Session,
    reading: R,
    writing: W,
    mut stop: watch::Receiver<bool>,
) where
    R: Future<Output = ()>,
    W: Future<Output = ()>,
{
    tokio::pin!(writing);
    let stopped = tokio::select! {
        () = reading => false,
        _ = stopping(&mut stop) => true,
        () = session.closed() => return,
        () = &mut writing => {
            session.close();
            return;
        }
    };
    if !stopped {
        session.close();
    }
    writing.await;
    session.close();
}

/// A listener being set up: the address to bind, the broker, and how to
/// treat each connection before the listener's own code gets it.
///
/// ```no_run
/// use mist_sdk::net::{Refusal, Serve};
/// use mist_sdk::{Broker, Listener, SdkError};
/// fn start(uri: &str, broker: &Broker) -> Result<Box<dyn Listener>, SdkError> {
///     let mut serve = Serve::new(uri, broker).refusal(Refusal::Line);
///     if uri.starts_with("mylines+tls://") {
///         serve = serve.tls(&[]);
///     }
///     serve.start(|stream, peer, _stop| async move {
///         tracing::info!(%peer, "connected");
///         drop(stream);
///     })
/// }
/// ```
pub struct Serve {
    uri: String,
    broker: Broker,
    refusal: Refusal,
    alpn: Option<Vec<String>>,
}

impl Serve {
    /// Serves `uri` (`scheme://host:port[?...]`) for `broker`. Refuses with
    /// [`Refusal::Line`] unless told otherwise; plain TCP unless
    /// [`Serve::tls`].
    pub fn new(uri: &str, broker: &Broker) -> Serve {
        Serve {
            uri: uri.to_owned(),
            broker: broker.clone(),
            refusal: Refusal::Line,
            alpn: None,
        }
    }

    /// How a client the broker has no room for is told.
    pub fn refusal(mut self, refusal: Refusal) -> Serve {
        self.refusal = refusal;
        self
    }

    /// Serves TLS with the certificate the URI names (see [`crate::tls`]),
    /// offering the ALPN protocols `alpn` (`["http/1.1"]` for HTTP and
    /// WebSocket).
    pub fn tls(mut self, alpn: &[&str]) -> Serve {
        self.alpn = Some(alpn.iter().map(|p| (*p).to_owned()).collect());
        self
    }

    /// Reads the certificate (when TLS), binds, and runs `serve` for each
    /// admitted connection on this library's runtime until the host stops
    /// the listener. A certificate that cannot be read and a port in use
    /// are returned here, as the start-up errors they are.
    ///
    /// `serve` gets a receiver that turns `true` when the listener stops:
    /// the connection should then stop reading, write out what is queued
    /// for it, and close (see [`stopping`]). Call this from
    /// [`crate::Plugin::start_listener`], which runs inside the plugin's
    /// runtime.
    pub fn start<F, Fut>(self, serve: F) -> Result<Box<dyn Listener>, SdkError>
    where
        F: Fn(Stream, SocketAddr, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start_with_permit(move |stream, peer, stop, permit| WithPermit {
            serving: serve(stream, peer, stop),
            permit: Some(permit),
        })
    }

    /// [`Serve::start`], handing `serve` the connection's place in the
    /// connection limit too: the place is given back when `serve` drops
    /// the [`ConnectionPermit`], which may be after its future has ended
    /// (a connection that waits without a task while it is idle keeps
    /// the permit with the rest of its state).
    pub fn start_with_permit<F, Fut>(self, serve: F) -> Result<Box<dyn Listener>, SdkError>
    where
        F: Fn(Stream, SocketAddr, watch::Receiver<bool>, ConnectionPermit) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tls = match &self.alpn {
            Some(alpn) => {
                let alpn: Vec<&str> = alpn.iter().map(String::as_str).collect();
                Some(Arc::new(TlsAcceptor::from_uri(&self.uri, &alpn)?))
            }
            None => None,
        };
        let bound = bind(&self.uri)?;
        let local_addr = local_addr(&bound)?;
        let (stop, stopped) = watch::channel(false);
        let handshake = Duration::from_millis(self.broker.limits().handshake_timeout_ms);
        let scheme = self.uri.split_once("://").map_or("", |(scheme, _)| scheme);
        let context = Arc::new(Shared {
            serve,
            permits: self.broker.permits(scheme),
            refusal: self.refusal,
            tls: tls.clone(),
            handshake,
            stop: stopped.clone(),
        });
        let health = Arc::new(Health::default());
        // Out of file descriptors, a waiting client is told so in the
        // listener's protocol; over TLS there is no handshake to say it in.
        let starved = match tls {
            None => Some(self.refusal.bytes(OUT_OF_FILES)),
            Some(_) => None,
        };
        let dispatch = move |stream: TcpStream, peer: SocketAddr| {
            let permit = context.permits.admit();
            tokio::spawn(connection(stream, peer, permit, context.clone()));
        };
        let accepting = accept(bound, dispatch, starved, listener_name(&self.uri), stopped);
        spawn_monitored(&self.uri, accepting, health.clone());
        Ok(Box::new(Serving {
            local_addr,
            stop,
            health,
            tls,
        }))
    }
}

/// Binds the `host:port` of `uri` and runs `serve` for each connection on
/// this library's runtime, until the host stops the listener: no
/// admission, no TLS. [`Serve`] does both.
///
/// ```no_run
/// use mist_sdk::{Listener, SdkError};
/// fn start(uri: &str) -> Result<Box<dyn Listener>, SdkError> {
///     mist_sdk::net::serve_tcp(uri, |stream, peer, _stop| async move {
///         tracing::info!(%peer, "connected");
///         drop(stream);
///     })
/// }
/// ```
pub fn serve_tcp<F, Fut>(uri: &str, serve: F) -> Result<Box<dyn Listener>, SdkError>
where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let bound = bind(uri)?;
    let local_addr = local_addr(&bound)?;
    let (stop, stopped) = watch::channel(false);
    let health = Arc::new(Health::default());
    let connection_stop = stopped.clone();
    let dispatch = move |stream: TcpStream, peer: SocketAddr| {
        tokio::spawn(serve(stream, peer, connection_stop.clone()));
    };
    let accepting = accept(bound, dispatch, None, listener_name(uri), stopped);
    spawn_monitored(uri, accepting, health.clone());
    Ok(Box::new(Serving {
        local_addr,
        stop,
        health,
        tls: None,
    }))
}

/// Connections the kernel queues before they are accepted (it caps the
/// figure at `net.core.somaxconn`, 4096 by default on Linux). std's
/// listeners ask for 128: a reconnect storm of 10,000 clients then waited
/// for SYN retries, a second or more, however fast the accept loop was.
const BACKLOG: u32 = 4096;

fn bind(uri: &str) -> Result<TcpListener, SdkError> {
    use std::net::ToSocketAddrs;
    let addr = socket_address(uri)?;
    let listen = |at: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's listeners do: a restarted server binds its port at once.
        socket.set_reuseaddr(true)?;
        socket.bind(at)?;
        socket.listen(BACKLOG)
    };
    // Each address the name resolves to in turn, as std's `bind` does.
    let mut last = None;
    for at in addr
        .to_socket_addrs()
        .map_err(|e| SdkError::unavailable(format!("cannot listen on {addr}: {e}")))?
    {
        match listen(at) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    let why = last.map_or_else(|| "no address to listen on".to_string(), |e| e.to_string());
    Err(SdkError::unavailable(format!(
        "cannot listen on {addr}: {why}"
    )))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, SdkError> {
    listener
        .local_addr()
        .map_err(|e| SdkError::other(format!("cannot read the bound address: {e}")))
}

pin_project_lite::pin_project! {
    /// A connection's future and its place in the connection limit, given
    /// back when the future ends. A future of its own, not an `async`
    /// block awaiting `serving`: that would store `serving` twice, once as
    /// the block's capture and once as what it awaits (it did: 1.4 KiB more
    /// per idle WebSocket).
    struct WithPermit<F> {
        #[pin]
        serving: F,
        permit: Option<ConnectionPermit>,
    }
}

impl<F: Future<Output = ()>> Future for WithPermit<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.serving.poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.permit.take();
        Poll::Ready(())
    }
}

/// What every connection of one listener shares.
struct Shared<F> {
    serve: F,
    permits: Arc<Permits>,
    refusal: Refusal,
    tls: Option<Arc<TlsAcceptor>>,
    handshake: Duration,
    stop: watch::Receiver<bool>,
}

/// How long a refused client may go on sending before it is cut off: its
/// request is read (and thrown away) so that closing does not reset the
/// connection before the refusal arrives.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

async fn connection<F, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Result<ConnectionPermit, SdkError>,
    context: Arc<Shared<F>>,
) where
    F: Fn(Stream, SocketAddr, watch::Receiver<bool>, ConnectionPermit) -> Fut,
    Fut: Future<Output = ()>,
{
    // Replies are small and latency matters more than packet count; output
    // is batched per drain anyway.
    let _ = stream.set_nodelay(true);
    let stream = match &context.tls {
        None => Stream::Plain(stream),
        // Boxed: the handshake's state (a whole rustls connection) would
        // otherwise make every plain connection's task as large.
        Some(tls) => {
            match Box::pin(tokio::time::timeout(context.handshake, tls.accept(stream))).await {
                Ok(Ok(stream)) => Stream::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished within {:?}: closed", context.handshake);
                    return;
                }
            }
        }
    };
    match permit {
        Ok(permit) => (context.serve)(stream, peer, context.stop.clone(), permit).await,
        // Boxed: refusing drains into a 4 KiB buffer, which would otherwise
        // sit in every admitted connection's task too.
        Err(refused) => Box::pin(refuse(stream, context.refusal, refused.message.as_str())).await,
    }
}

async fn refuse(mut stream: Stream, refusal: Refusal, message: &str) {
    let written = async {
        stream.write_all(&refusal.bytes(message)).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(REFUSAL_LINGER, written).await.is_err() {
        return;
    }
    let mut sink = [0; 4096];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What a client waiting to be accepted is told when the process has no
/// file descriptor left for it.
const OUT_OF_FILES: &str = "this broker has run out of file descriptors; try again later";

/// How often, at most, an accept loop out of file descriptors says so.
const STARVED_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long an accept loop waits before trying again after an error it
/// cannot do anything about.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

async fn accept<D>(
    listener: TcpListener,
    dispatch: D,
    refusal: Option<Vec<u8>>,
    name: String,
    mut stop: watch::Receiver<bool>,
) where
    D: Fn(TcpStream, SocketAddr),
{
    spare::hold();
    let mut starved = Starved::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => dispatch(stream, peer),
                Err(e) if spare::out_of_files(&e) => {
                    let outcome = spare::refuse_waiting(&listener, refusal.as_deref());
                    starved.note(&name, &e, outcome);
                    // Refused one: the next may be waiting too. None
                    // waiting: the listener's readiness is cleared, the
                    // next accept waits for a connection. No spare: nothing
                    // to do but try again shortly.
                    if outcome == spare::Outcome::NoSpare {
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
                // Out of memory for socket buffers and the like: keep
                // serving the connections we have and try again shortly.
                Err(e) => {
                    tracing::warn!("{name}: accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            _ = stopping(&mut stop) => return,
        }
    }
}

/// A listener's URI without its query (which may name key files), for logs.
fn listener_name(uri: &str) -> String {
    uri.split(['?', '#']).next().unwrap_or(uri).to_owned()
}

/// An accept loop's record of running out of file descriptors: one warning
/// at most every [`STARVED_LOG_EVERY`], with what happened since the last.
#[derive(Default)]
struct Starved {
    refused: u64,
    stuck: u64,
    logged: Option<std::time::Instant>,
}

impl Starved {
    fn note(&mut self, name: &str, error: &io::Error, outcome: spare::Outcome) {
        match outcome {
            spare::Outcome::Refused => self.refused += 1,
            spare::Outcome::NoSpare => self.stuck += 1,
            spare::Outcome::NoneWaiting => {}
        }
        let now = std::time::Instant::now();
        if self
            .logged
            .is_some_and(|at| now.duration_since(at) < STARVED_LOG_EVERY)
        {
            return;
        }
        if self.refused == 0 && self.stuck == 0 {
            return;
        }
        tracing::warn!(
            "{name}: out of file descriptors ({error}): the open connections are served, \
             {} waiting connection(s) refused{}",
            self.refused,
            if self.stuck > 0 {
                " (no spare descriptor to refuse more with: they wait)"
            } else {
                ""
            }
        );
        self.refused = 0;
        self.stuck = 0;
        self.logged = Some(now);
    }
}

/// The spare file descriptor that lets an accept loop refuse a client when
/// the process has none left: one per process (per copy of this library),
/// shared by its listeners.
mod spare {
    use std::fs::File;
    use std::io::{self, Read, Write};
    use std::net::Shutdown;
    use std::sync::{Mutex, PoisonError};
    use std::task::{Context, Poll, Waker};

    use tokio::net::TcpListener;

    static SPARE: Mutex<Option<File>> = Mutex::new(None);

    /// What [`refuse_waiting`] did.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Outcome {
        /// A waiting connection was refused and closed.
        Refused,
        /// No connection was waiting after all.
        NoneWaiting,
        /// No spare descriptor to do it with (something else took it).
        NoSpare,
    }

    /// Whether `error` is the process (`EMFILE`) or the system (`ENFILE`)
    /// out of file descriptors.
    pub(super) fn out_of_files(error: &io::Error) -> bool {
        // The same numbers on Linux, the BSDs and macOS.
        cfg!(unix) && matches!(error.raw_os_error(), Some(23 | 24))
    }

    fn open() -> Option<File> {
        if cfg!(unix) {
            File::open("/dev/null").ok()
        } else {
            None
        }
    }

    fn lock() -> std::sync::MutexGuard<'static, Option<File>> {
        SPARE.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the spare descriptor if there is none yet.
    pub(super) fn hold() {
        let mut spare = lock();
        if spare.is_none() {
            *spare = open();
        }
    }

    /// Gives up the spare, accepts the connection waiting on `listener`
    /// with its descriptor, writes `refusal` to it (best effort: a fresh
    /// socket's buffer takes a line), closes it, and takes the spare back.
    pub(super) fn refuse_waiting(listener: &TcpListener, refusal: Option<&[u8]>) -> Outcome {
        let mut spare = lock();
        if spare.take().is_none() {
            *spare = open();
            return Outcome::NoSpare;
        }
        // Polled once: `Pending` means nothing is waiting (Linux fails
        // `accept` for want of a descriptor before it looks), and clears
        // the listener's readiness, so that the loop waits again.
        let outcome = match listener.poll_accept(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok((stream, _))) => {
                if let Ok(stream) = stream.into_std() {
                    refuse(stream, refusal);
                }
                Outcome::Refused
            }
            Poll::Ready(Err(_)) => Outcome::NoSpare,
            Poll::Pending => Outcome::NoneWaiting,
        };
        *spare = open();
        outcome
    }

    /// Refuses a non-blocking socket at once, without a task: what the
    /// client sent already is read first, so that closing sends its
    /// refusal and a FIN rather than a reset.
    fn refuse(stream: std::net::TcpStream, refusal: Option<&[u8]>) {
        let mut sink = [0; 1024];
        let _ = (&stream).read(&mut sink);
        if let Some(refusal) = refusal {
            let _ = (&stream).write(refusal);
        }
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// Whether a listener still accepts connections.
#[derive(Default)]
struct Health {
    failure: Mutex<Option<String>>,
}

impl Health {
    fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    fn check(&self) -> Result<(), SdkError> {
        match &*self.failure.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(why) => Err(SdkError::unavailable(why.clone())),
        }
    }
}

/// Runs `accepting`; if it panics, the panic is logged and `health` turns
/// failed, so that readiness says so instead of the listener vanishing.
fn spawn_monitored<Fut>(uri: &str, accepting: Fut, health: Arc<Health>)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let uri = listener_name(uri);
    let running = tokio::spawn(accepting);
    tokio::spawn(async move {
        if let Err(e) = running.await {
            if e.is_panic() {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!("listener {uri} failed: its accept loop panicked: {message}");
                health.fail(format!(
                    "{uri} accepts no more connections: its accept loop panicked: {message}"
                ));
            }
        }
    });
}

struct Serving {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    health: Arc<Health>,
    tls: Option<Arc<TlsAcceptor>>,
}

impl Listener for Serving {
    fn local_addr(&self) -> String {
        self.local_addr.to_string()
    }

    fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn health(&self) -> Result<(), SdkError> {
        if *self.stop.borrow() {
            return Err(SdkError::unavailable("stopped"));
        }
        self.health.check()
    }

    fn reload(&self) -> Result<(), SdkError> {
        match &self.tls {
            Some(tls) => tls.reload().map_err(SdkError::from),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A storm of connections before the first is accepted: every one
    /// completes its handshake into the kernel's queue. With std's backlog
    /// of 128 the rest would wait for SYN retries and, nothing accepting,
    /// never complete.
    #[tokio::test]
    async fn listeners_queue_a_storm_of_connections() {
        let listener = bind("tcp://127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..1000)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_secs(10),
                    TcpStream::connect(addr),
                ))
            })
            .collect();
        let mut streams = Vec::new();
        for connect in connects {
            let stream = connect.await.unwrap().expect("connected in time");
            streams.push(stream.unwrap());
        }
        assert_eq!(streams.len(), 1000);
        drop(listener);
    }

    #[test]
    fn refusals_are_one_line_or_one_response() {
        let line = Refusal::Line.bytes("too many \"connections\"");
        assert_eq!(
            line,
            b"{\"command\":\"\",\"error\":\"too many \\\"connections\\\"\"}\n"
        );
        let http = String::from_utf8(Refusal::Http.bytes("full")).unwrap();
        assert!(http.starts_with("HTTP/1.1 503 "), "{http}");
        assert!(http.ends_with("\r\n\r\n{\"error\":\"full\"}"), "{http}");
        assert!(http.contains("Content-Length: 16\r\n"), "{http}");
    }

    #[tokio::test]
    async fn a_panicking_accept_loop_turns_the_listener_unhealthy() {
        let health = Arc::new(Health::default());
        assert!(health.check().is_ok());
        spawn_monitored(
            "tcp://127.0.0.1:0?x=y",
            async { panic!("accept loop bug") },
            health.clone(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while health.check().is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still healthy");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let why = health.check().unwrap_err().message.into_string();
        assert!(
            why.contains("tcp://127.0.0.1:0") && why.contains("accept loop bug"),
            "{why}"
        );
        assert!(!why.contains("x=y"), "{why}");
    }

    #[tokio::test]
    async fn a_stopped_listener_says_so_and_closes_its_port() {
        let listener = serve_tcp("tcp://127.0.0.1:0", |_stream, _peer, _stop| async {}).unwrap();
        assert!(listener.health().is_ok());
        let addr = listener.local_addr();
        listener.stop();
        assert!(listener.health().is_err());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
