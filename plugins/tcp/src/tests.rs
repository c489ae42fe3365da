//! The listener's tests: real sockets against a broker that keeps what
//! its sessions are fed and queues what a test tells it to.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mist_sdk::abi::{
    BrokerApi, BrokerApi_TO, OutputWakerBox, SessionApi, SessionApi_TO, SessionBox,
};
use mist_sdk::abi_stable::sabi_trait::TD_Opaque;
use mist_sdk::abi_stable::std_types::{
    RArc, RNone, ROk, ROption, RResult, RSlice, RStr, RString, RVec,
};
use mist_sdk::async_ffi::{FfiFuture, FutureExt};
use mist_sdk::{Broker, BrokerStats, Listener, ListenerLimits, Readiness, SdkError, SessionInfo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::park::{self, Parking, ParkingListener};
use crate::plain::{self, Conn};
use crate::tls;

/// A broker that keeps what its sessions are fed and queues what a
/// test tells it to.
#[derive(Clone, Default)]
struct FakeBroker(Arc<Mutex<Vec<Arc<FakeSession>>>>);

struct FakeSession {
    fed: Mutex<Vec<u8>>,
    /// How many times the session was fed.
    feeds: AtomicUsize,
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
        self.0.feeds.fetch_add(1, Ordering::SeqCst);
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
            feeds: AtomicUsize::new(0),
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
    listener: ParkingListener<Conn>,
    parking: Arc<Parking<Conn>>,
}

impl FakeBroker {
    fn broker(&self) -> Broker {
        Broker::from_abi(BrokerApi_TO::from_ptr(RArc::new(self.clone()), TD_Opaque))
    }
}

fn listen() -> Setup {
    let fake = FakeBroker::default();
    let (listener, parking) = plain::start("tcp://127.0.0.1:0", fake.broker()).unwrap();
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
        // A closed connection that used the same client port may linger
        // in the table (TIME_WAIT) with no socket, inode 0: not ours.
        .find(|fields| fields[2] == wanted && fields[9] != "0")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_poller_event_does_not_wake_the_next_connection_in_its_slot() {
    let setup = listen();
    let (mut first, first_session) = setup.parked_client().await;
    let [(stale, _)] = setup.parking.parked_now()[..] else {
        panic!("one parked")
    };
    // The broker ends the first session: the connection wakes, leaves its
    // slot, and closes.
    first_session.end();
    eof(&mut first).await;
    until("unparked", || setup.parking.parked() == 0).await;
    // The next connection to park takes the slot.
    let (_second, _) = setup.parked_client().await;
    let [(current, ref second)] = setup.parking.parked_now()[..] else {
        panic!("one parked")
    };
    assert_eq!(stale.0 as u32, current.0 as u32, "the slot is not reused");
    // An event for the first connection's socket, which reached the
    // poller's thread after the slot changed hands, as it does with it.
    setup.parking.event(stale);
    // The second connection did not wake (a wake would have counted as a
    // quick one: a `Parked` is woken once, and one woken stays so).
    assert!(second.is_parked(), "woken by another socket's event");
    // Its own socket's events still wake it.
    setup.parking.event(current);
    assert!(!second.is_parked(), "not woken by its own socket's event");
    until("parked again", || setup.parking.parked() == 1).await;
}

/// How many threads of this process are named `name`.
#[cfg(target_os = "linux")]
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .count()
}

#[cfg(target_os = "linux")]
#[test]
fn a_listener_on_a_port_in_use_leaves_no_poller_behind() {
    // Threads and descriptors are the process's, and other tests start
    // listeners meanwhile: the test runs again in a process of its own,
    // alone, and that run is the one that counts.
    const ALONE: &str = "MIST_TCP_TEST_ALONE";
    if std::env::var_os(ALONE).is_none() {
        let name = concat!(
            module_path!(),
            "::a_listener_on_a_port_in_use_leaves_no_poller_behind"
        );
        let name = name.split_once("::").unwrap().1;
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success() && out.contains("1 passed"),
            "{out}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _runtime = runtime.enter();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp://{}", taken.local_addr().unwrap());
    let before = epolls().len();
    assert_eq!(threads_named("mist-tcp-parked"), 0);
    let Err(refused) = plain::start(&uri, FakeBroker::default().broker()) else {
        panic!("started on a port in use");
    };
    assert!(refused.to_string().contains("cannot listen"), "{refused}");
    // The poller's thread ends, and its epoll instance is closed.
    let deadline = std::time::Instant::now() + WAIT;
    while threads_named("mist-tcp-parked") > 0 || epolls().len() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "{} poller thread(s), {} epoll instance(s) more than before",
            threads_named("mist-tcp-parked"),
            epolls().len() - before
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_parked_connection_stays_small() {
    // What an idle plain connection holds besides the session's own
    // (the task is gone, and tokio's state for the socket with it):
    // the socket is a descriptor, the rest a few pointers. 72 bytes in
    // release builds, 80 in unoptimized ones.
    let parked = std::mem::size_of::<park::Parked<Conn>>();
    assert!(parked <= 80, "{parked} bytes");
}

fn future_size<A, F: Future>(_: fn(A) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// A busy plain connection's task is this future: a future stored
/// twice, or a buffer held across an await, shows here.
#[test]
fn a_plain_connection_future_stays_small() {
    let size = future_size(Conn::run);
    // Unoptimized builds lay futures out larger than release builds.
    assert!(size <= 1152, "{size} bytes");
}

/// A TLS connection feeds the broker everything its stream holds at once
/// (up to the per-thread buffer), not a record's worth at a time: one feed
/// is one batch of publishes, and each subscriber is written to once per
/// batch. Bytes before the end of the stream are fed too.
#[tokio::test]
async fn a_tls_connection_feeds_a_burst_at_once() {
    let fake = FakeBroker::default();
    let session = fake
        .broker()
        .open_session(SessionInfo::new("tls", "127.0.0.1:1"));
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    let burst: Vec<u8> = b"{\"command\":\"ping\"}\n"
        .iter()
        .copied()
        .cycle()
        .take(100 * 1024)
        .collect();
    client.write_all(&burst).await.unwrap();
    client.shutdown().await.unwrap();
    tokio::time::timeout(WAIT, tls::read_stream(&session, server))
        .await
        .expect("the stream's end was not seen")
        .unwrap();
    let fed = fake.0.lock().unwrap()[0].clone();
    assert_eq!(*fed.fed.lock().unwrap(), burst);
    assert_eq!(fed.feeds.load(Ordering::SeqCst), 1);
}
