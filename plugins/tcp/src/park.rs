//! Idle plain connections without a task, and out of tokio's reactor.
//!
//! A tokio task with a connection's futures in it is most of what an idle
//! connection costs, and after it tokio's reactor state for the socket
//! (its `ScheduledIo`, 256 B). So a plain connection with nothing to read
//! and nothing to write *parks*: its task ends, its socket leaves tokio's
//! reactor for the listener's own poller ([`Sockets`]: a mio `Poll` on a
//! thread of its own, which holds nothing in user space per socket), and
//! the rest of it (its session, its connection permit) waits with the
//! socket in a [`Parked`]. That is the waker of everything the connection
//! waits for: the poller, when the socket turns readable or hangs up; the
//! broker, for output or the end of the session
//! ([`Session::register_waker`]); the listener stopping (the listener's
//! [`Parking`] keeps every parked connection). The first wake takes the
//! connection out and starts a task for it again on the listener's
//! runtime, which gives the socket back to tokio.
//!
//! A quiet connection parks as soon as it is idle. One that is woken again
//! and again shortly after parking is busy ([`Berth::busy`]): its task then
//! parks only after [`IDLE`] without reading or writing anything, so that a
//! connection with steady traffic does not start a task, nor move its
//! socket between pollers, per message.
//!
//! The parking knows a connection only as a [`Parkable`]: something it can
//! take apart into a socket, a session and a [`Berth`] (plus a rest it only
//! keeps), put together again, and hand back to its own code to run on
//! when it wakes. It never names the plain connection (`plain.rs`): calls
//! go one way, from the connection down to its parking.

use std::cell::UnsafeCell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use mist_sdk::{Listener, SdkError, Session};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// A busy connection's task parks after this long without activity.
pub(crate) const IDLE: Duration = Duration::from_secs(1);
/// A wake this soon after parking is a quick one ...
const QUICK: Duration = IDLE;
/// ... and after this many in a row the connection is busy.
pub(crate) const QUICK_WAKES: u8 = 3;

/// What the parking parks: a connection over a tokio socket.
///
/// A trait, rather than a function to resume connections given to
/// [`Parking::start`]: such a function would have to box the future it
/// returns (one more allocation per wake), where the trait's future is
/// spawned as it is.
pub(crate) trait Parkable: Sized + Send + 'static {
    /// What the connection holds besides its [`Parts`]: the parking keeps
    /// it as it is.
    type Rest: Send + 'static;

    /// Takes the connection apart, to park it.
    fn into_parts(self) -> Parts<Self>;

    /// Puts it together again: woken, or not parked after all.
    fn from_parts(parts: Parts<Self>) -> Self;

    /// Runs the connection on in the task its wake started, until it ends
    /// or parks again.
    fn resume(self) -> impl Future<Output = ()> + Send + 'static;
}

/// A connection taken apart: what the parking works with, and the rest.
pub(crate) struct Parts<C: Parkable> {
    /// Its socket, in tokio's reactor.
    pub(crate) socket: TcpStream,
    /// Its session, whose output and end wake it.
    pub(crate) session: Session,
    /// Its place in the parking.
    pub(crate) berth: Berth<C>,
    /// The rest of it ([`Parkable::Rest`]).
    pub(crate) rest: C::Rest,
}

/// A connection's place in its listener's parking, which it keeps while it
/// runs: the parking, and its record of quick wakes.
pub(crate) struct Berth<C: Parkable> {
    parking: Arc<Parking<C>>,
    wakes: Wakes,
}

impl<C: Parkable> Berth<C> {
    /// A place in `parking`, for a connection of the listener whose stop
    /// signal is `stop`.
    pub(crate) fn new(parking: &Arc<Parking<C>>, stop: &watch::Receiver<bool>) -> Berth<C> {
        // Every connection's receiver is the listener's: one is kept for
        // all (a parked connection has none of its own).
        parking.stop.get_or_init(|| stop.clone());
        Berth {
            parking: parking.clone(),
            wakes: Wakes(0),
        }
    }

    /// Whether the connection has been woken shortly after parking, again
    /// and again: its task waits [`IDLE`] before parking.
    pub(crate) fn busy(&self) -> bool {
        self.wakes.quick() >= QUICK_WAKES
    }

    /// The listener's stop signal.
    pub(crate) fn stop(&self) -> watch::Receiver<bool> {
        match self.parking.stop.get() {
            Some(stop) => stop.clone(),
            // Not reached (`new` sets it); a stop signal that never fires.
            None => watch::channel(false).1,
        }
    }
}

/// Quick wakes in a row (see [`QUICK_WAKES`]), in the top byte; below,
/// when the connection last parked, in milliseconds since
/// [`Parking::base`] modulo 2^24 (a connection parked for hours may count
/// one quick wake too many). One field: a parked connection is a
/// byte-counted thing.
#[derive(Clone, Copy)]
struct Wakes(u32);

/// The milliseconds of [`Wakes`].
const MILLIS: u32 = (1 << 24) - 1;

impl Wakes {
    fn quick(self) -> u8 {
        (self.0 >> 24) as u8
    }

    /// Notes the time of parking.
    fn parked(self, now: u32) -> Wakes {
        Wakes((self.0 & !MILLIS) | (now & MILLIS))
    }

    /// Notes a wake at `now`: a quick one, or not.
    fn woken(self, now: u32) -> Wakes {
        let parked = now.wrapping_sub(self.0) & MILLIS;
        let quick = if parked < QUICK.as_millis() as u32 {
            self.quick().saturating_add(1)
        } else {
            0
        };
        Wakes((u32::from(quick) << 24) | (now & MILLIS))
    }
}

/// A parked connection: its parts, the socket in the listener's poller.
/// (The [`Berth`]'s fields are laid out here one by one: a nested struct
/// would pad.)
struct Asleep<C: Parkable> {
    socket: mio::net::TcpStream,
    session: Session,
    parking: Arc<Parking<C>>,
    wakes: Wakes,
    /// Its place in [`Registry::slots`].
    slot: u32,
    rest: C::Rest,
}

impl<C: Parkable> Asleep<C> {
    /// Moves the socket of `parts` from tokio's reactor to the listener's
    /// poller, under `token`.
    fn new(parts: Parts<C>, slot: u32, token: Token) -> io::Result<Asleep<C>> {
        let Parts {
            socket,
            session,
            berth,
            rest,
        } = parts;
        let mut socket = mio::net::TcpStream::from_std(socket.into_std()?);
        berth
            .parking
            .sockets
            .registry
            .register(&mut socket, token, Interest::READABLE)?;
        Ok(Asleep {
            socket,
            session,
            parking: berth.parking,
            wakes: berth.wakes,
            slot,
            rest,
        })
    }

    /// Gives the socket back to tokio's reactor (of the runtime this runs
    /// in), out of the listener's poller.
    fn awake(self) -> io::Result<Parts<C>> {
        let Asleep {
            mut socket,
            session,
            parking,
            wakes,
            slot: _,
            rest,
        } = self;
        // Errors only if it was not registered; it is not, then.
        let _ = parking.sockets.registry.deregister(&mut socket);
        Ok(Parts {
            socket: TcpStream::from_std(socket.into())?,
            session,
            berth: Berth { parking, wakes },
            rest,
        })
    }
}

/// Parks `conn`: hands it to a [`Parked`] that starts a task for it on
/// the first wake. Returns it instead when it has something to do already
/// (then it runs on in the caller's task). A connection whose socket
/// cannot move between pollers (the system is out of resources) ends.
pub(crate) fn park<C: Parkable>(conn: C) -> Option<C> {
    let mut parts = conn.into_parts();
    let parking = parts.berth.parking.clone();
    let parked = Arc::new(Parked {
        state: AtomicU8::new(PARKING),
        generation: parking.generations.fetch_add(1, Ordering::Relaxed),
        conn: UnsafeCell::new(None),
    });
    let Some(slot) = parking.insert(&parked) else {
        // The listener is stopping: the connection sees it and ends.
        return Some(C::from_parts(parts));
    };
    // Registered first, checked after: output in between is not lost.
    let waker = Waker::from(parked.clone());
    parts.session.register_waker(&waker);
    // What tokio knows already of the socket: no need to ask the system.
    let readable = parts
        .socket
        .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        .is_ready();
    let wakes = parts.berth.wakes.parked(parking.now());
    if readable || parts.session.output_pending() {
        parked.state.store(WOKEN, Ordering::Release);
        parking.remove(&parked, slot);
        // Woken before it could park: the quickest of wakes.
        parts.berth.wakes = wakes.woken(parking.now());
        return Some(C::from_parts(parts));
    }
    parts.berth.wakes = wakes;
    // Input that arrived since tokio last looked is seen by the poller as
    // soon as the socket is in it.
    let asleep = match Asleep::new(parts, slot, parked.token(slot)) {
        Ok(asleep) => asleep,
        Err(e) => {
            tracing::warn!("a connection could not park, and ends: {e}");
            parked.state.store(WOKEN, Ordering::Release);
            parking.remove(&parked, slot);
            return None;
        }
    };
    // SAFETY: only `park` touches the cell while the state is `PARKING`.
    unsafe { *parked.conn.get() = Some(asleep) };
    match parked
        .state
        .compare_exchange(PARKING, PARKED, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => None,
        // Woken while parking: it runs on here.
        Err(_) => {
            // SAFETY: the wake that set `WOKEN` found `PARKING` and left
            // the cell to `park`.
            let mut asleep = unsafe { (*parked.conn.get()).take() }?;
            parking.remove(&parked, slot);
            // A wake like any other: counted, or a connection woken again
            // and again as it parks would never be found busy.
            asleep.wakes = asleep.wakes.woken(parking.now());
            match asleep.awake() {
                Ok(parts) => Some(C::from_parts(parts)),
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
async fn wake_up<C: Parkable>(asleep: Asleep<C>) {
    match asleep.awake() {
        Ok(parts) => C::from_parts(parts).resume().await,
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
pub(crate) struct Parked<C: Parkable> {
    state: AtomicU8,
    /// Tells this connection's poller events from those of its slot's
    /// earlier occupants (see [`token`]). Beside `state`, in what would be
    /// padding.
    generation: u32,
    /// Owned by `park` while [`PARKING`], by the wake that ends
    /// [`PARKED`] after.
    conn: UnsafeCell<Option<Asleep<C>>>,
}

// SAFETY: the connection in the cell is reached by one thread at a time, as
// `state` hands it over (see `park` and `wake_by_ref`); `Asleep` is `Send`.
unsafe impl<C: Parkable> Sync for Parked<C> {}

impl<C: Parkable> Parked<C> {
    /// Its socket's token in the poller, parked in `slot`.
    fn token(&self, slot: u32) -> Token {
        token(slot, self.generation)
    }

    /// Whether it is parked still: not woken, not parking.
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.state.load(Ordering::Acquire) == PARKED
    }
}

impl<C: Parkable> Wake for Parked<C> {
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
        let Some(mut asleep) = (unsafe { (*self.conn.get()).take() }) else {
            return;
        };
        let parking = asleep.parking.clone();
        parking.remove(self, asleep.slot);
        asleep.wakes = asleep.wakes.woken(parking.now());
        // The socket changes pollers in the task, not here: a wake may
        // come from a publisher's thread, which must not make system
        // calls for its subscribers. A task that is never run (the
        // runtime is shutting down) drops the connection.
        drop(parking.runtime.spawn(wake_up(asleep)));
    }
}

/// A parked socket's token in the poller: its slot in the low 32 bits,
/// above them the generation of the connection parked there.
///
/// A socket stays in the poller from its connection's wake until the
/// connection's new task takes it out, and an event may already be on its
/// way to the poller's thread: by then the slot may hold another
/// connection. Its token names the earlier generation, so the event is
/// dropped ([`Parking::event`]) instead of waking that one for nothing and
/// counting a quick wake of it, which could keep an idle connection in a
/// task (and its timer). The generations of a slot's occupants differ
/// unless 2^32 connections parked in between. (Where `usize` has 32 bits
/// the generation is cut off, and such an event wakes the slot's
/// connection, which reads nothing and parks again.)
fn token(slot: u32, generation: u32) -> Token {
    Token(((u64::from(generation) << 32) | u64::from(slot)) as usize)
}

/// A plain listener's parked connections.
pub(crate) struct Parking<C: Parkable> {
    /// Where a woken connection's task runs.
    runtime: Handle,
    /// The listener's stop signal.
    stop: OnceLock<watch::Receiver<bool>>,
    /// The clock of [`Wakes`].
    base: Instant,
    /// The generation of the next connection to park (see [`token`]).
    generations: AtomicU32,
    parked: Mutex<Registry<C>>,
    sockets: Sockets,
}

/// The poller of parked connections' sockets: a mio `Poll` whose thread
/// ([`watch()`]) wakes the connection an event's token names.
struct Sockets {
    /// Where sockets are registered, by token.
    registry: mio::Registry,
    /// Ends the thread. Shared with it: the thread keeps the waker's
    /// descriptor open until it has seen the wake, because closing it
    /// would take its pending event out of the poller.
    stop: Arc<mio::Waker>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        // The thread holds no strong reference to the parking; without
        // this, the parking of a listener that failed to start (its port
        // in use) would leave it waiting for ever, its epoll instance with
        // it. It has stopped already if the listener stopped.
        let _ = self.stop.wake();
    }
}

/// The poller's own token, for [`Sockets::stop`]: no slot's (slots are
/// far fewer than 2^32).
const STOP: Token = Token(usize::MAX);

struct Registry<C: Parkable> {
    /// No more parking: the listener stopped.
    stopped: bool,
    slots: Vec<Option<Arc<Parked<C>>>>,
    free: Vec<u32>,
}

impl<C: Parkable> Parking<C> {
    /// Parking for a listener whose connections run on `runtime`, with its
    /// poller's thread.
    pub(crate) fn start(runtime: Handle) -> io::Result<Arc<Parking<C>>> {
        let poll = mio::Poll::new()?;
        let sockets = Sockets {
            registry: poll.registry().try_clone()?,
            stop: Arc::new(mio::Waker::new(poll.registry(), STOP)?),
        };
        let parking = Arc::new(Parking {
            runtime,
            stop: OnceLock::new(),
            base: Instant::now(),
            generations: AtomicU32::new(0),
            parked: Mutex::new(Registry {
                stopped: false,
                slots: Vec::new(),
                free: Vec::new(),
            }),
            sockets,
        });
        let (weak, stop) = (Arc::downgrade(&parking), parking.sockets.stop.clone());
        std::thread::Builder::new()
            .name("mist-tcp-parked".into())
            .spawn(move || watch(poll, weak, stop))?;
        Ok(parking)
    }

    /// What the poller's thread does with an event for `token`: wakes the
    /// connection parked under it, if it still is (see [`token`]).
    pub(crate) fn event(&self, token: Token) {
        // The low 32 bits.
        let slot = token.0 as u32;
        let parked = lock(&self.parked)
            .slots
            .get(slot as usize)
            .cloned()
            .flatten();
        if let Some(parked) = parked.filter(|parked| parked.token(slot) == token) {
            parked.wake_by_ref();
        }
    }

    fn now(&self) -> u32 {
        self.base.elapsed().as_millis() as u32
    }

    /// Keeps `parked` for [`Parking::stop`], in the slot returned; `None`
    /// once stopped.
    fn insert(&self, parked: &Arc<Parked<C>>) -> Option<u32> {
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

    fn remove(&self, parked: &Arc<Parked<C>>, slot: u32) {
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

    /// The parked connections, with their sockets' tokens in the poller.
    #[cfg(test)]
    pub(crate) fn parked_now(&self) -> Vec<(Token, Arc<Parked<C>>)> {
        let registry = lock(&self.parked);
        (0..)
            .zip(&registry.slots)
            .filter_map(|(slot, parked)| {
                let parked = parked.as_ref()?;
                Some((parked.token(slot), parked.clone()))
            })
            .collect()
    }

    /// The poller's file descriptor, for tests that look into it.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn poller_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sockets.registry.as_raw_fd()
    }
}

/// The poller's thread: wakes the connection of each socket that turns
/// readable (or hangs up, or fails), until the listener stops or its
/// parking is dropped (see [`Sockets::stop`] for `_stop`).
fn watch<C: Parkable>(mut poll: mio::Poll, parking: Weak<Parking<C>>, _stop: Arc<mio::Waker>) {
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
            parking.event(event.token());
        }
    }
}

/// The listener of [`mist_sdk::net::Serve`], waking parked connections when
/// it stops.
pub(crate) struct ParkingListener<C: Parkable> {
    inner: Box<dyn Listener>,
    parking: Arc<Parking<C>>,
}

impl<C: Parkable> ParkingListener<C> {
    pub(crate) fn new(inner: Box<dyn Listener>, parking: Arc<Parking<C>>) -> ParkingListener<C> {
        ParkingListener { inner, parking }
    }
}

impl<C: Parkable> Listener for ParkingListener<C> {
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

impl<C: Parkable> Drop for ParkingListener<C> {
    fn drop(&mut self) {
        self.inner.stop();
        self.parking.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
