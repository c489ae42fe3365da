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
//! socket is readable), no write buffer (it is released once nothing is
//! waiting), and, idle, no task: it parks (module `park`), its state in one
//! small allocation that is also its waker, until the socket turns
//! readable, output arrives, the broker ends the session or the listener
//! stops. A TLS connection reads through rustls, which keeps buffers of its
//! own, and keeps its tasks.
//!
//! When the listener stops, a connection stops reading, writes out what is
//! queued for it, and only then closes its session: the host waits for the
//! sessions to close, up to its shutdown timeout.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use mist_sdk::abi::ModuleRef;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::{stopping, Refusal, Serve, Stream};
use mist_sdk::{
    async_trait, Broker, ConnectionPermit, Host, Listener, Plugin, SdkError, Session, SessionInfo,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::sync::watch;

mod park;

use park::{Conn, Parking, ParkingListener};

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
        if uri.starts_with("tls://") {
            return Serve::new(uri, &self.broker)
                .refusal(Refusal::Line)
                .tls(&[])
                .start(move |stream, peer, stop| serve(stream, peer, "tls", &broker, stop));
        }
        let (listener, _) = start_plain(uri, broker)?;
        Ok(Box::new(listener))
    }
}

/// Starts a plain listener, whose idle connections park.
fn start_plain(uri: &str, broker: Broker) -> Result<(ParkingListener, Arc<Parking>), SdkError> {
    let parking = Arc::new(Parking::new(tokio::runtime::Handle::current()));
    let connections = parking.clone();
    let listener = Serve::new(uri, &broker)
        .refusal(Refusal::Line)
        .start_with_permit(move |stream, peer, stop, permit| {
            serve_plain(stream, peer, &broker, stop, permit, &connections)
        })?;
    Ok((ParkingListener::new(listener, parking.clone()), parking))
}

/// Opens the client's session and returns the connection's future: a TLS
/// connection (see [`serve_tls`]).
fn serve(
    stream: Stream,
    peer: SocketAddr,
    scheme: &'static str,
    broker: &Broker,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let session = broker.open_session(SessionInfo::new(scheme, peer));
    async move {
        match stream {
            Stream::Tls(tls) => Box::pin(serve_tls(tls, peer, session, stop)).await,
            Stream::Plain(plain) => serve_tls(plain, peer, session, stop).await,
        }
    }
}

/// Opens a plain client's session and returns the connection's future,
/// which runs it until it ends or parks (see [`park`]).
fn serve_plain(
    stream: Stream,
    peer: SocketAddr,
    broker: &Broker,
    stop: watch::Receiver<bool>,
    permit: ConnectionPermit,
    parking: &Arc<Parking>,
) -> impl Future<Output = ()> + Send + 'static {
    let session = broker.open_session(SessionInfo::new("tcp", peer));
    let conn = match stream {
        Stream::Plain(stream) => Some(Conn::new(stream, session, &stop, permit, parking)),
        // Not served by this listener: closed.
        Stream::Tls(_) => None,
    };
    async move {
        if let Some(conn) = conn {
            run(conn).await;
        }
    }
}

/// Runs a plain connection, in this task, until it ends (`None`) or it has
/// parked (its state handed to a [`park::Parked`], which starts a new task
/// when the connection has something to do).
async fn run(mut conn: Conn) {
    loop {
        match drive_plain(&mut conn).await {
            Driven::Done => return,
            Driven::Idle => match park::park(conn) {
                Some(again) => conn = again,
                None => return,
            },
        }
    }
}

/// How a plain connection's task ends.
enum Driven {
    /// The connection is over: its session is closed.
    Done,
    /// Nothing to read, nothing to write: the connection may park.
    Idle,
}

/// Where a plain connection's reading and writing wait, for
/// [`drive_plain`] to tell an idle connection.
#[derive(Default)]
struct Idle {
    /// The reader waits for the socket to turn readable.
    reading: AtomicBool,
    /// The writer waits for output, holding none.
    writing: AtomicBool,
    /// Something was read or written since the last look.
    active: AtomicBool,
}

impl Idle {
    fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }

    fn both(&self) -> bool {
        self.reading.load(Ordering::Relaxed) && self.writing.load(Ordering::Relaxed)
    }
}

/// One task's share of a plain connection: its reading and its writing
/// together, ending the session the way every first-party listener does
/// (see [`mist_sdk::net::drive_connection`]), or returning
/// [`Driven::Idle`] when the connection may park: at once while it is
/// quiet, after [`park::IDLE`] without activity once it is busy (see
/// [`Conn::busy`]).
async fn drive_plain(conn: &mut Conn) -> Driven {
    let busy = conn.busy();
    let (stream, session, mut stop) = conn.parts();
    // Borrowed halves: `into_split` would allocate an `Arc` per connection.
    let (reader, writer) = stream.split();
    let idle = Idle::default();
    let mut writing = pin!(write_output(session, writer, stop.clone(), &idle));
    let mut reading = pin!(async {
        if let Err(e) = read_plain(session, reader, &idle).await {
            tracing::debug!("connection read failed: {e}");
        }
    });
    let mut stopped = pin!(stopping(&mut stop));
    // Only a busy connection's task has a timer (it is not small).
    let mut timer = busy.then(|| Box::pin(tokio::time::sleep(park::IDLE)));
    enum First {
        Read,
        Stopped,
        Closed,
        Written,
        Idle,
    }
    let first = poll_fn(|cx| {
        if reading.as_mut().poll(cx).is_ready() {
            return Poll::Ready(First::Read);
        }
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(First::Stopped);
        }
        if session.poll_closed(cx).is_ready() {
            return Poll::Ready(First::Closed);
        }
        if writing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(First::Written);
        }
        match &mut timer {
            None => {
                if idle.both() {
                    return Poll::Ready(First::Idle);
                }
            }
            Some(timer) => {
                if timer.as_mut().poll(cx).is_ready() {
                    let active = idle.active.swap(false, Ordering::Relaxed);
                    if idle.both() && !active {
                        return Poll::Ready(First::Idle);
                    }
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + park::IDLE);
                    // Registers the timer again (it is not due yet).
                    let _ = timer.as_mut().poll(cx);
                }
            }
        }
        Poll::Pending
    })
    .await;
    match first {
        First::Idle => return Driven::Idle,
        First::Closed => return Driven::Done,
        First::Written => {
            session.close();
            return Driven::Done;
        }
        First::Read => session.close(),
        First::Stopped => {}
    }
    writing.await;
    session.close();
    Driven::Done
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

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

async fn read_plain(session: &Session, reader: ReadHalf<'_>, idle: &Idle) -> io::Result<()> {
    loop {
        Idle::set(&idle.reading, true);
        let readable = reader.readable().await;
        Idle::set(&idle.reading, false);
        readable?;
        let fed = READ_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            match reader.try_read(&mut buffer) {
                Ok(0) => Ok(None),
                Ok(n) => {
                    Idle::set(&idle.active, true);
                    Ok(Some(session.feed(&buffer[..n])))
                }
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
    session: &Session,
    mut writer: W,
    mut stop: watch::Receiver<bool>,
    idle: &Idle,
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
                Idle::set(&idle.writing, true);
                let waited = tokio::select! {
                    open = poll_fn(|cx| session.poll_output(cx, &mut buffer)) => Some(open),
                    _ = stopping(&mut stop) => None,
                };
                Idle::set(&idle.writing, false);
                match waited {
                    Some(open) => {
                        if !open && buffer.is_empty() {
                            break;
                        }
                    }
                    None => {
                        stopped = true;
                        continue;
                    }
                }
            }
        }
        Idle::set(&idle.active, true);
        let written = tokio::select! {
            written = writer.write_all(&buffer) => written.is_ok(),
            () = poll_fn(|cx| session.poll_closed(cx)) => false,
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
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;
    use std::time::Duration;

    use mist_sdk::abi::{
        BrokerApi, BrokerApi_TO, OutputWakerBox, SessionApi, SessionApi_TO, SessionBox,
    };
    use mist_sdk::abi_stable::sabi_trait::TD_Opaque;
    use mist_sdk::abi_stable::std_types::{
        RArc, RNone, ROk, ROption, RResult, RSlice, RStr, RString,
    };
    use mist_sdk::async_ffi::{FfiFuture, FutureExt};
    use mist_sdk::{BrokerStats, ListenerLimits, Readiness};
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpStream;

    use super::*;

    /// A broker that keeps what its sessions are fed and queues what a
    /// test tells it to.
    #[derive(Clone, Default)]
    struct FakeBroker(Arc<Mutex<Vec<Arc<FakeSession>>>>);

    struct FakeSession {
        fed: Mutex<Vec<u8>>,
        output: Mutex<Vec<u8>>,
        closed: AtomicBool,
        waker: OutputWakerBox,
    }

    impl FakeSession {
        fn queue(&self, line: &str) {
            self.output
                .lock()
                .unwrap()
                .extend_from_slice(line.as_bytes());
            self.waker.wake();
        }

        /// The broker ends the session.
        fn end(&self) {
            self.closed.store(true, Ordering::SeqCst);
            self.waker.closed();
        }
    }

    #[derive(Clone)]
    struct FakeHandle(Arc<FakeSession>);

    impl SessionApi for FakeHandle {
        fn id(&self) -> u64 {
            1
        }
        fn feed(&self, bytes: RSlice<'_, u8>) -> ROption<FfiFuture<()>> {
            self.0.fed.lock().unwrap().extend_from_slice(&bytes);
            RNone
        }
        fn feed_message(&self, message: RSlice<'_, u8>) -> ROption<FfiFuture<()>> {
            self.feed(message)
        }
        fn drain(&self, out: &mut RVec<u8>) -> bool {
            let mut output = self.0.output.lock().unwrap();
            out.extend_from_slice(&output);
            let open = !(self.0.closed.load(Ordering::SeqCst) && output.is_empty());
            output.clear();
            open
        }
        fn close(&self) {
            self.0.closed.store(true, Ordering::SeqCst);
        }
        fn refuse(&self, _error: RStr<'_>) {}
        fn execute(&self, _request: RSlice<'_, u8>) -> FfiFuture<RResult<(), SdkError>> {
            async { ROk(()) }.into_ffi()
        }
    }

    impl BrokerApi for FakeBroker {
        fn open_session(&self, _info: SessionInfo, waker: OutputWakerBox) -> SessionBox {
            let session = Arc::new(FakeSession {
                fed: Mutex::default(),
                output: Mutex::default(),
                closed: AtomicBool::new(false),
                waker,
            });
            self.0.lock().unwrap().push(session.clone());
            SessionApi_TO::from_ptr(RArc::new(FakeHandle(session)), TD_Opaque)
        }
        fn publish(
            &self,
            _tags: RVec<RString>,
            _data: RString,
            _exclude: ROption<u64>,
        ) -> RResult<u64, SdkError> {
            ROk(0)
        }
        fn stats(&self) -> BrokerStats {
            BrokerStats {
                sessions: 0,
                subscriptions: 0,
                messages_in: 0,
                messages_out: 0,
                dropped: 0,
            }
        }
        fn limits(&self) -> ListenerLimits {
            ListenerLimits {
                max_message_bytes: 1 << 20,
                header_timeout_ms: 10_000,
                handshake_timeout_ms: 10_000,
                request_timeout_ms: 10_000,
            }
        }
        fn admit(&self, _listener: RStr<'_>) -> RResult<(), SdkError> {
            ROk(())
        }
        fn release(&self, _listener: RStr<'_>) {}
        fn metrics(&self, _token: ROption<RString>) -> RResult<RString, SdkError> {
            ROk(RString::new())
        }
        fn readiness(&self) -> FfiFuture<Readiness> {
            async {
                Readiness {
                    ready: true,
                    report: RString::new(),
                }
            }
            .into_ffi()
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// Waits (up to [`WAIT`]) until `condition` holds.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "never {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    struct Setup {
        fake: FakeBroker,
        listener: ParkingListener,
        parking: Arc<Parking>,
    }

    fn listen() -> Setup {
        let fake = FakeBroker::default();
        let broker = Broker::from_abi(BrokerApi_TO::from_ptr(RArc::new(fake.clone()), TD_Opaque));
        let (listener, parking) = start_plain("tcp://127.0.0.1:0", broker).unwrap();
        Setup {
            fake,
            listener,
            parking,
        }
    }

    impl Setup {
        /// A client whose connection has parked, and its session.
        async fn parked_client(&self) -> (tokio::io::BufReader<TcpStream>, Arc<FakeSession>) {
            let parked = self.parking.parked();
            let client = TcpStream::connect(self.listener.local_addr())
                .await
                .unwrap();
            until("parked", || self.parking.parked() == parked + 1).await;
            let session = self.fake.0.lock().unwrap().last().unwrap().clone();
            (tokio::io::BufReader::new(client), session)
        }
    }

    async fn line(client: &mut tokio::io::BufReader<TcpStream>) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, client.read_line(&mut line))
            .await
            .expect("no line")
            .unwrap();
        line
    }

    async fn eof(client: &mut tokio::io::BufReader<TcpStream>) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
            .await
            .expect("not closed");
        assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_connection_wakes_for_input_and_output() {
        let setup = listen();
        let (mut client, session) = setup.parked_client().await;
        // Input: read, fed, parked again.
        client
            .get_mut()
            .write_all(b"{\"command\":\"ping\"}\n")
            .await
            .unwrap();
        until("fed", || {
            session.fed.lock().unwrap().as_slice() == b"{\"command\":\"ping\"}\n"
        })
        .await;
        until("parked again", || setup.parking.parked() == 1).await;
        // Output: written, parked again.
        session.queue("{\"command\":\"pong\"}\n");
        assert_eq!(line(&mut client).await, "{\"command\":\"pong\"}\n");
        until("parked again", || setup.parking.parked() == 1).await;
        // The client leaves: the session closes, nothing stays parked.
        drop(client);
        until("closed", || session.closed.load(Ordering::SeqCst)).await;
        until("unparked", || setup.parking.parked() == 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_connection_ends_when_the_listener_stops_or_the_broker_ends_it() {
        let setup = listen();
        let (mut stopped, stopped_session) = setup.parked_client().await;
        let (mut ended, ended_session) = setup.parked_client().await;
        ended_session.end();
        eof(&mut ended).await;
        // Queued before the stop: still written, then the connection closes.
        stopped_session
            .output
            .lock()
            .unwrap()
            .extend_from_slice(b"{\"last\":1}\n");
        setup.listener.stop();
        assert_eq!(line(&mut stopped).await, "{\"last\":1}\n");
        eof(&mut stopped).await;
        until("closed", || stopped_session.closed.load(Ordering::SeqCst)).await;
        assert_eq!(setup.parking.parked(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_connection_parks_once_it_has_been_idle_a_while() {
        let setup = listen();
        let (mut client, session) = setup.parked_client().await;
        for i in 0..park::QUICK_WAKES {
            until("parked", || setup.parking.parked() == 1).await;
            session.queue(&format!("{{\"n\":{i}}}\n"));
            assert_eq!(line(&mut client).await, format!("{{\"n\":{i}}}\n"));
        }
        // Busy now: it parks after `park::IDLE` without activity.
        let busy = tokio::time::Instant::now();
        until("parked", || setup.parking.parked() == 1).await;
        assert!(busy.elapsed() >= park::IDLE / 2, "{:?}", busy.elapsed());
        session.queue("{\"n\":-1}\n");
        assert_eq!(line(&mut client).await, "{\"n\":-1}\n");
    }

    #[test]
    fn a_parked_connection_stays_small() {
        // What an idle plain connection holds besides the socket's and the
        // session's own (the task is gone).
        // An `Arc` of it (16 bytes more) fits a 128-byte malloc chunk.
        let parked = std::mem::size_of::<park::Parked>();
        assert!(parked <= 104, "{parked} bytes");
    }

    fn future_size<A, F: Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A busy plain connection's task is this future: a future stored
    /// twice, or a buffer held across an await, shows here.
    #[test]
    fn a_plain_connection_future_stays_small() {
        let size = future_size(run);
        // Unoptimized builds lay futures out larger than release builds.
        assert!(size <= 1152, "{size} bytes");
    }
}
