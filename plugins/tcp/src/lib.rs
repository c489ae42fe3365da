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
//! waiting), and, idle, no task and no place in tokio's reactor: it parks
//! (module `park`), its state in one small allocation that is also its
//! waker, its socket in the listener's own poller (mio, on a thread of its
//! own), until the socket turns readable, output arrives, the broker ends
//! the session or the listener stops. A connection back from parking
//! reads and writes straight to its socket until the socket is first
//! empty or full: tokio knows nothing of it until its reactor next turns.
//! A TLS connection reads through rustls, which keeps buffers of its
//! own, and keeps its tasks.
//!
//! When the listener stops, a connection stops reading, writes out what is
//! queued for it, and only then closes its session: the host waits for the
//! sessions to close, up to its shutdown timeout.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use mist_sdk::abi::ModuleRef;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::{stopping, Refusal, Serve, Stream};
use mist_sdk::{
    async_trait, Broker, ConnectionPermit, Host, Listener, Plugin, SdkError, Session, SessionInfo,
};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::watch;

mod park;

use park::{Conn, Parking, ParkingListener};

/// Reads are this large at most. One read is one batch of publishes, and
/// a subscriber is woken (and written to) once per batch: with publishes
/// spread over many topics, a larger batch gives each subscriber more
/// than one message a write (1 MiB: about 5,000 publishes, five a
/// subscriber over 1,000 topics; routing was 30% slower with 256 KiB).
/// The buffer is per thread, not per connection, and its pages are
/// touched only as far as reads fill it.
const READ_CHUNK: usize = 1024 * 1024;
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
    let parking = Parking::start(tokio::runtime::Handle::current()).map_err(|e| {
        SdkError::unavailable(format!("cannot start the parked connections' poller: {e}"))
    })?;
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
    let mut writing = pin!(write_output(
        session,
        DirectFirst::new(writer),
        stop.clone(),
        &idle,
    ));
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
    // Straight from the socket until it first has nothing: one just back
    // from the poller of parked connections is news to tokio until its
    // reactor next turns, and waiting for that, the connection would look
    // idle and park again with its input unread.
    let socket = SockRef::from(reader.as_ref());
    let mut direct = true;
    loop {
        if !direct {
            Idle::set(&idle.reading, true);
            let readable = reader.readable().await;
            Idle::set(&idle.reading, false);
            readable?;
        }
        let fed = READ_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            let read = if direct {
                (&*socket).read(&mut buffer)
            } else {
                reader.try_read(&mut buffer)
            };
            match read {
                Ok(0) => Ok(None),
                Ok(n) => {
                    Idle::set(&idle.active, true);
                    Ok(Some(session.feed(&buffer[..n])))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    direct = false;
                    Ok(Some(mist_sdk::Feed::ready()))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
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

/// A plain connection's writer: straight to the socket until it is first
/// full, through tokio after (as [`read_plain`] reads, and for the same
/// reason: a socket back from parking could not be written to until
/// tokio's reactor turned).
struct DirectFirst<'a> {
    half: WriteHalf<'a>,
    direct: bool,
}

impl<'a> DirectFirst<'a> {
    fn new(half: WriteHalf<'a>) -> Self {
        DirectFirst { half, direct: true }
    }
}

impl AsyncWrite for DirectFirst<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.direct {
            match (&*SockRef::from(this.half.as_ref())).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.direct = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                written => return Poll::Ready(written),
            }
        }
        Pin::new(&mut this.half).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_shutdown(cx)
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
        fn drain_stream(&self, out: &mut RVec<u8>) -> bool {
            self.drain(out)
        }
        fn hold(&self, _bytes: u64) -> bool {
            true
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

    /// The file descriptors that the epoll instance `epoll` (of this
    /// process) watches, from `/proc/self/fdinfo`.
    #[cfg(target_os = "linux")]
    fn watched_by(epoll: i32) -> Vec<i32> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{epoll}")).unwrap();
        info.lines()
            .filter_map(|line| line.strip_prefix("tfd:"))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Every epoll instance of this process.
    #[cfg(target_os = "linux")]
    fn epolls() -> Vec<i32> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let target = std::fs::read_link(entry.path()).ok()?;
                (target.to_str()? == "anon_inode:[eventpoll]")
                    .then(|| entry.file_name().to_str()?.parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// The file descriptor of this process's socket whose peer is `peer`,
    /// from `/proc/self/net/tcp` (loopback, IPv4).
    #[cfg(target_os = "linux")]
    fn socket_of_peer(peer: SocketAddr) -> i32 {
        let SocketAddr::V4(peer) = peer else {
            panic!("IPv4 only")
        };
        let wanted = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(peer.ip().octets()),
            peer.port()
        );
        let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        let inode = table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields[2] == wanted)
            .map(|fields| fields[9].to_string())
            .expect("the server's side of the connection");
        let link = format!("socket:[{inode}]");
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
            .find(|entry| {
                std::fs::read_link(entry.path()).is_ok_and(|target| target.to_str() == Some(&link))
            })
            .and_then(|entry| entry.file_name().to_str()?.parse().ok())
            .expect("the socket's descriptor")
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_socket_waits_in_the_listeners_poller_not_tokios() {
        let setup = listen();
        let (mut client, session) = setup.parked_client().await;
        let socket = socket_of_peer(client.get_ref().local_addr().unwrap());
        let poller = setup.parking.poller_fd();
        // Which pollers watch `socket`: the listener's (`true`), others
        // (`false`). The listener's may have several descriptors (mio
        // duplicates it): they are the ones that watch what it watches.
        let holding = |socket| {
            let own = watched_by(poller);
            epolls()
                .into_iter()
                .map(watched_by)
                .filter(|watched| watched.contains(&socket))
                .map(|watched| watched == own)
                .collect::<std::collections::BTreeSet<bool>>()
        };
        let own = std::collections::BTreeSet::from([true]);
        let tokios = std::collections::BTreeSet::from([false]);
        // Parked: only the listener's poller has it.
        assert_eq!(holding(socket), own);
        // Busy (woken quickly again and again), it stays in a task: then
        // only tokio's reactor has it.
        for i in 0..park::QUICK_WAKES {
            until("parked", || setup.parking.parked() == 1).await;
            session.queue(&format!("{{\"n\":{i}}}\n"));
            assert_eq!(line(&mut client).await, format!("{{\"n\":{i}}}\n"));
        }
        until("in a task", || setup.parking.parked() == 0).await;
        assert_eq!(holding(socket), tokios);
        // Idle a while, it parks again: back in the poller, and it still
        // wakes for input.
        until("parked", || setup.parking.parked() == 1).await;
        until("in the poller", || holding(socket) == own).await;
        client.get_mut().write_all(b"{\"x\":1}\n").await.unwrap();
        until("fed", || {
            session.fed.lock().unwrap().as_slice() == b"{\"x\":1}\n"
        })
        .await;
    }

    #[test]
    fn a_parked_connection_stays_small() {
        // What an idle plain connection holds besides the session's own
        // (the task is gone, and tokio's state for the socket with it):
        // the socket is a descriptor, the rest a few pointers. 72 bytes in
        // release builds, 80 in unoptimized ones.
        let parked = std::mem::size_of::<park::Parked>();
        assert!(parked <= 80, "{parked} bytes");
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
