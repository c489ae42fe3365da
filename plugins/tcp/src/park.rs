//! Idle plain connections without a task.
//!
//! A tokio task with a connection's futures in it is most of what an idle
//! connection costs. So a plain connection with nothing to read and
//! nothing to write *parks*: its task ends, and its state ([`Conn`]: the
//! socket, the session, the stop signal, the connection permit) waits in a
//! [`Parked`], the waker it registers for the socket turning readable
//! ([`TcpStream::poll_read_ready`]), for output or the broker ending the
//! session ([`Session::register_waker`]), and for the listener stopping
//! (the listener's [`Parking`] keeps every parked connection). The first
//! wake takes the state out and starts a task for it again on the
//! listener's runtime.
//!
//! A quiet connection parks as soon as it is idle. One that is woken again
//! and again shortly after parking is busy ([`Conn::busy`]): its task then
//! parks only after [`IDLE`] without reading or writing anything, so that a
//! connection with steady traffic does not start a task per message.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

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

/// A plain connection's state, between its tasks.
pub(crate) struct Conn {
    stream: TcpStream,
    session: Session,
    parking: Arc<Parking>,
    /// Given back when the connection ends.
    _permit: ConnectionPermit,
    /// Its place in [`Parking::parked`] while parked.
    slot: u32,
    /// Quick wakes in a row (see [`QUICK_WAKES`]), in the top byte; below,
    /// when it last parked, in milliseconds since [`Parking::base`] modulo
    /// 2^24 (a connection parked for hours may count one quick wake too
    /// many). One field: a parked connection is a byte-counted thing.
    woken: u32,
}

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

    /// The socket, the session, and the listener's stop signal.
    pub(crate) fn parts(&mut self) -> (&mut TcpStream, &Session, watch::Receiver<bool>) {
        let stop = match self.parking.stop.get() {
            Some(stop) => stop.clone(),
            // Not reached (`new` sets it); a stop signal that never fires.
            None => watch::channel(false).1,
        };
        (&mut self.stream, &self.session, stop)
    }
}

/// Parks `conn`: hands it to a [`Parked`] that starts a task for it on
/// the first wake. Returns it instead when it has something to do already
/// (then it runs on in the caller's task).
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
    // Registered first, checked after: a wake in between is not lost.
    let waker = Waker::from(parked.clone());
    conn.session.register_waker(&waker);
    let ready = conn
        .stream
        .poll_read_ready(&mut Context::from_waker(&waker))
        .is_ready()
        || conn.session.output_pending();
    if ready {
        parked.state.store(WOKEN, Ordering::Release);
        parking.remove(&parked, slot);
        // Woken before it could park: the quickest of wakes.
        conn.parking(parking.now());
        conn.woken(parking.now());
        return Some(conn);
    }
    conn.parking(parking.now());
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
            let mut conn = unsafe { (*parked.conn.get()).take() };
            parking.remove(&parked, slot);
            // A wake like any other: counted, or a connection woken again
            // and again as it parks would never be found busy.
            if let Some(conn) = &mut conn {
                conn.woken(parking.now());
            }
            conn
        }
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
    conn: UnsafeCell<Option<Conn>>,
}

// SAFETY: the connection in the cell is reached by one thread at a time, as
// `state` hands it over (see `park` and `wake_by_ref`); `Conn` is `Send`.
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
        // A task that is never run (the runtime is shutting down) drops
        // the connection.
        drop(parking.runtime.spawn(crate::run(conn)));
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
}

#[derive(Default)]
struct Registry {
    /// No more parking: the listener stopped.
    stopped: bool,
    slots: Vec<Option<Arc<Parked>>>,
    free: Vec<u32>,
}

impl Parking {
    pub(crate) fn new(runtime: Handle) -> Parking {
        Parking {
            runtime,
            stop: OnceLock::new(),
            base: Instant::now(),
            parked: Mutex::default(),
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
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        lock(&self.parked).slots.iter().flatten().count()
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
