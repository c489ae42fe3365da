//! Idle plain connections without a task, and out of tokio's reactor.
//!
//! A tokio task with a connection's futures in it is most of what an idle
//! connection costs, and after it tokio's reactor state for the socket
//! (its `ScheduledIo`, 256 B). So a plain connection with nothing to read
//! and nothing to write *parks*: its task ends, its socket leaves tokio's
//! reactor for the listener's own poller ([`Sockets`]: a mio `Poll` on a
//! thread of its own, which holds nothing in user space per socket), and
//! its state ([`Conn`]: the socket, the session, the connection permit)
//! waits in a [`Parked`]. That is the waker of everything the connection
//! waits for: the poller, when the socket turns readable or hangs up; the
//! broker, for output or the end of the session
//! ([`Session::register_waker`]); the listener stopping (the listener's
//! [`Parking`] keeps every parked connection). The first wake takes the
//! state out and starts a task for it again on the listener's runtime,
//! which gives the socket back to tokio.
//!
//! A quiet connection parks as soon as it is idle. One that is woken again
//! and again shortly after parking is busy ([`Conn::busy`]): its task then
//! parks only after [`IDLE`] without reading or writing anything, so that a
//! connection with steady traffic does not start a task, nor move its
//! socket between pollers, per message.

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use mist_sdk::{ConnectionPermit, Listener, SdkError, Session};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// A busy connection's task parks after this long without activity.
pub(crate) const IDLE: Duration = Duration::from_secs(1);
/// A wake this soon after parking is a quick one ...
const QUICK: Duration = IDLE;
/// ... and after this many in a row the connection is busy.
pub(crate) const QUICK_WAKES: u8 = 3;

/// A plain connection's state, between its tasks: over a tokio socket
/// while it runs, over a mio one ([`Asleep`]) while parked.
pub(crate) struct Conn<S = TcpStream> {
    stream: S,
    session: Session,
    parking: Arc<Parking>,
    /// Given back when the connection ends.
    _permit: ConnectionPermit,
    /// Its place in [`Parking::parked`] while parked, and its socket's
    /// token in the poller.
    slot: u32,
    /// Quick wakes in a row (see [`QUICK_WAKES`]), in the top byte; below,
    /// when it last parked, in milliseconds since [`Parking::base`] modulo
    /// 2^24 (a connection parked for hours may count one quick wake too
    /// many). One field: a parked connection is a byte-counted thing.
    woken: u32,
}

/// A parked connection: its socket is in the listener's poller.
type Asleep = Conn<mio::net::TcpStream>;

/// The milliseconds of [`Conn::woken`].
const MILLIS: u32 = (1 << 24) - 1;

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        session: Session,
        stop: &watch::Receiver<bool>,
        permit: ConnectionPermit,
        parking: &Arc<Parking>,
    ) -> Conn {
        // Every connection's receiver is the listener's: one is kept for
        // all (a parked connection has none of its own).
        parking.stop.get_or_init(|| stop.clone());
        Conn {
            stream,
            session,
            parking: parking.clone(),
            _permit: permit,
            slot: 0,
            woken: 0,
        }
    }

    /// Whether the connection has been woken shortly after parking, again
    /// and again: its task waits [`IDLE`] before parking.
    pub(crate) fn busy(&self) -> bool {
        self.quick() >= QUICK_WAKES
    }

    /// The socket, the session, and the listener's stop signal.
    pub(crate) fn parts(&mut self) -> (&mut TcpStream, &Session, watch::Receiver<bool>) {
        let stop = match self.parking.stop.get() {
            Some(stop) => stop.clone(),
            // Not reached (`new` sets it); a stop signal that never fires.
            None => watch::channel(false).1,
        };
        (&mut self.stream, &self.session, stop)
    }

    /// Takes the socket out of tokio's reactor, for the listener's poller.
    fn asleep(self) -> io::Result<Asleep> {
        self.with_stream(|stream| Ok(mio::net::TcpStream::from_std(stream.into_std()?)))
    }
}

impl Asleep {
    /// Gives the socket back to tokio's reactor (of the runtime this runs
    /// in), out of the listener's poller.
    fn awake(mut self) -> io::Result<Conn> {
        // Errors only if it was not registered; it is not, then.
        let _ = self.parking.sockets.registry.deregister(&mut self.stream);
        self.with_stream(|stream| TcpStream::from_std(stream.into()))
    }
}

impl<S> Conn<S> {
    /// The same connection over the socket `convert` makes of this one's.
    /// If it fails, the connection ends.
    fn with_stream<T>(self, convert: impl FnOnce(S) -> io::Result<T>) -> io::Result<Conn<T>> {
        let Conn {
            stream,
            session,
            parking,
            _permit,
            slot,
            woken,
        } = self;
        Ok(Conn {
            stream: convert(stream)?,
            session,
            parking,
            _permit,
            slot,
            woken,
        })
    }

    fn quick(&self) -> u8 {
        (self.woken >> 24) as u8
    }

    /// Notes the time of parking.
    fn parking(&mut self, now: u32) {
        self.woken = (self.woken & !MILLIS) | (now & MILLIS);
    }

    /// Notes a wake at `now`: a quick one, or not.
    fn woken(&mut self, now: u32) {
        let parked = now.wrapping_sub(self.woken) & MILLIS;
        let quick = if parked < QUICK.as_millis() as u32 {
            self.quick().saturating_add(1)
        } else {
            0
        };
        self.woken = (u32::from(quick) << 24) | (now & MILLIS);
    }
}

/// Parks `conn`: hands it to a [`Parked`] that starts a task for it on
/// the first wake. Returns it instead when it has something to do already
/// (then it runs on in the caller's task). A connection whose socket
/// cannot move between pollers (the system is out of resources) ends.
pub(crate) fn park(mut conn: Conn) -> Option<Conn> {
    let parking = conn.parking.clone();
    let parked = Arc::new(Parked {
        state: AtomicU8::new(PARKING),
        conn: UnsafeCell::new(None),
    });
    let Some(slot) = parking.insert(&parked) else {
        // The listener is stopping: the connection sees it and ends.
        return Some(conn);
    };
    conn.slot = slot;
    // Registered first, checked after: output in between is not lost.
    let waker = Waker::from(parked.clone());
    conn.session.register_waker(&waker);
    // What tokio knows already of the socket: no need to ask the system.
    let readable = conn
        .stream
        .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        .is_ready();
    if readable || conn.session.output_pending() {
        parked.state.store(WOKEN, Ordering::Release);
        parking.remove(&parked, slot);
        // Woken before it could park: the quickest of wakes.
        conn.parking(parking.now());
        conn.woken(parking.now());
        return Some(conn);
    }
    conn.parking(parking.now());
    // Input that arrived since tokio last looked is seen by the poller as
    // soon as the socket is in it.
    let conn = conn.asleep().and_then(|mut conn| {
        let token = Token(slot as usize);
        parking
            .sockets
            .registry
            .register(&mut conn.stream, token, Interest::READABLE)
            .map(|()| conn)
    });
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!("a connection could not park, and ends: {e}");
            parked.state.store(WOKEN, Ordering::Release);
            parking.remove(&parked, slot);
            return None;
        }
    };
    // SAFETY: only `park` touches the cell while the state is `PARKING`.
    unsafe { *parked.conn.get() = Some(conn) };
    match parked
        .state
        .compare_exchange(PARKING, PARKED, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => None,
        // Woken while parking: it runs on here.
        Err(_) => {
            // SAFETY: the wake that set `WOKEN` found `PARKING` and left
            // the cell to `park`.
            let mut conn = unsafe { (*parked.conn.get()).take() }?;
            parking.remove(&parked, slot);
            // A wake like any other: counted, or a connection woken again
            // and again as it parks would never be found busy.
            conn.woken(parking.now());
            match conn.awake() {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::warn!("a parked connection could not wake, and ends: {e}");
                    None
                }
            }
        }
    }
}

/// A connection woken, in its new task: its socket back in tokio's
/// reactor, it runs on.
async fn wake_up(conn: Asleep) {
    match conn.awake() {
        Ok(conn) => crate::run(conn).await,
        Err(e) => tracing::warn!("a parked connection could not wake, and ends: {e}"),
    }
}

/// [`Parked::state`]: `park` is storing the connection ...
const PARKING: u8 = 0;
/// ... it is stored, for the first wake to take ...
const PARKED: u8 = 1;
/// ... it has been taken (a wake later does nothing).
const WOKEN: u8 = 2;

/// A parked connection, and the waker of everything it waits for.
pub(crate) struct Parked {
    state: AtomicU8,
    /// Owned by `park` while [`PARKING`], by the wake that ends
    /// [`PARKED`] after.
    conn: UnsafeCell<Option<Asleep>>,
}

// SAFETY: the connection in the cell is reached by one thread at a time, as
// `state` hands it over (see `park` and `wake_by_ref`); `Asleep` is `Send`.
unsafe impl Sync for Parked {}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.swap(WOKEN, Ordering::AcqRel) != PARKED {
            // Still parking (`park` sees the wake and keeps the connection
            // running), or woken already.
            return;
        }
        // SAFETY: `PARKED` to `WOKEN` is done once, by this wake: the cell
        // is its own now.
        let Some(mut conn) = (unsafe { (*self.conn.get()).take() }) else {
            return;
        };
        let parking = conn.parking.clone();
        parking.remove(self, conn.slot);
        conn.woken(parking.now());
        // The socket changes pollers in the task, not here: a wake may
        // come from a publisher's thread, which must not make system
        // calls for its subscribers. A task that is never run (the
        // runtime is shutting down) drops the connection.
        drop(parking.runtime.spawn(wake_up(conn)));
    }
}

/// A plain listener's parked connections.
pub(crate) struct Parking {
    /// Where a woken connection's task runs.
    runtime: Handle,
    /// The listener's stop signal.
    stop: OnceLock<watch::Receiver<bool>>,
    /// The clock of [`Conn::woken`].
    base: Instant,
    parked: Mutex<Registry>,
    sockets: Sockets,
}

/// The poller of parked connections' sockets: a mio `Poll` whose thread
/// ([`watch()`]) wakes the connection in the slot an event names.
struct Sockets {
    /// Where sockets are registered, by slot.
    registry: mio::Registry,
    /// Ends the thread.
    stop: mio::Waker,
}

/// The poller's own token, for [`Sockets::stop`]; slots are `u32`.
const STOP: Token = Token(usize::MAX);

#[derive(Default)]
struct Registry {
    /// No more parking: the listener stopped.
    stopped: bool,
    slots: Vec<Option<Arc<Parked>>>,
    free: Vec<u32>,
}

impl Parking {
    /// Parking for a listener whose connections run on `runtime`, with its
    /// poller's thread.
    pub(crate) fn start(runtime: Handle) -> io::Result<Arc<Parking>> {
        let poll = mio::Poll::new()?;
        let sockets = Sockets {
            registry: poll.registry().try_clone()?,
            stop: mio::Waker::new(poll.registry(), STOP)?,
        };
        let parking = Arc::new(Parking {
            runtime,
            stop: OnceLock::new(),
            base: Instant::now(),
            parked: Mutex::default(),
            sockets,
        });
        let weak = Arc::downgrade(&parking);
        std::thread::Builder::new()
            .name("mist-tcp-parked".into())
            .spawn(move || watch(poll, weak))?;
        Ok(parking)
    }

    /// Wakes the connection parked in `slot`, if any. (A socket's event
    /// may come after its connection woke for something else and another
    /// took the slot: that one then wakes for nothing, reads nothing and
    /// parks again.)
    fn wake(&self, slot: usize) {
        let parked = lock(&self.parked).slots.get(slot).cloned().flatten();
        if let Some(parked) = parked {
            parked.wake_by_ref();
        }
    }

    fn now(&self) -> u32 {
        self.base.elapsed().as_millis() as u32
    }

    /// Keeps `parked` for [`Parking::stop`], in the slot returned; `None`
    /// once stopped.
    fn insert(&self, parked: &Arc<Parked>) -> Option<u32> {
        let mut registry = lock(&self.parked);
        if registry.stopped {
            return None;
        }
        let slot = match registry.free.pop() {
            Some(slot) => {
                registry.slots[slot as usize] = Some(parked.clone());
                slot
            }
            None => {
                registry.slots.push(Some(parked.clone()));
                (registry.slots.len() - 1) as u32
            }
        };
        Some(slot)
    }

    fn remove(&self, parked: &Arc<Parked>, slot: u32) {
        let mut registry = lock(&self.parked);
        let place = registry.slots.get_mut(slot as usize);
        if let Some(place) = place {
            if place.as_ref().is_some_and(|p| Arc::ptr_eq(p, parked)) {
                *place = None;
                registry.free.push(slot);
            }
        }
    }

    /// Wakes every parked connection, to see the listener stopped, and
    /// parks none after.
    fn stop(&self) {
        let parked = {
            let mut registry = lock(&self.parked);
            registry.stopped = true;
            registry.free = Vec::new();
            std::mem::take(&mut registry.slots)
        };
        for parked in parked.into_iter().flatten() {
            parked.wake_by_ref();
        }
        if let Err(e) = self.sockets.stop.wake() {
            tracing::warn!("the parked connections' poller did not stop: {e}");
        }
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        lock(&self.parked).slots.iter().flatten().count()
    }

    /// The poller's file descriptor, for tests that look into it.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn poller_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sockets.registry.as_raw_fd()
    }
}

/// The poller's thread: wakes the connection of each socket that turns
/// readable (or hangs up, or fails), until the listener stops.
fn watch(mut poll: mio::Poll, parking: Weak<Parking>) {
    let mut events = mio::Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Not expected of epoll; parked connections still wake for
            // output and for the listener stopping.
            tracing::error!("the parked connections' poller failed: {e}");
            return;
        }
        let Some(parking) = parking.upgrade() else {
            return;
        };
        for event in &events {
            if event.token() == STOP {
                // Every parked connection has been woken.
                return;
            }
            parking.wake(event.token().0);
        }
    }
}

/// The listener of [`mist_sdk::net::Serve`], waking parked connections when
/// it stops.
pub(crate) struct ParkingListener {
    inner: Box<dyn Listener>,
    parking: Arc<Parking>,
}

impl ParkingListener {
    pub(crate) fn new(inner: Box<dyn Listener>, parking: Arc<Parking>) -> ParkingListener {
        ParkingListener { inner, parking }
    }
}

impl Listener for ParkingListener {
    fn local_addr(&self) -> String {
        self.inner.local_addr()
    }

    fn stop(&self) {
        // The stop signal first: a connection woken sees it.
        self.inner.stop();
        self.parking.stop();
    }

    fn health(&self) -> Result<(), SdkError> {
        self.inner.health()
    }

    fn reload(&self) -> Result<(), SdkError> {
        self.inner.reload()
    }
}

impl Drop for ParkingListener {
    fn drop(&mut self) {
        self.inner.stop();
        self.parking.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
