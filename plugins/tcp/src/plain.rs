//! A plain connection (`tcp://`): [`Conn`] and its loop.
//!
//! [`Conn::run`] reads the socket into the session and writes the
//! session's output to the socket, in one task, until the client or the
//! broker ends the session or the listener stops; when there is nothing to
//! read and nothing to write it parks (`park.rs`): its task ends, and a
//! wake starts another that runs it on ([`Parkable::resume`]).
//!
//! Reads go into a per-thread buffer, not the connection's; the write
//! buffer is the writer's (`writer.rs`), held only while there is output.
//! A connection back from parking reads and writes straight to its socket
//! until the socket is first empty or full: tokio knows nothing of it
//! until its reactor next turns.

use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use mist_sdk::net::{stopping, Refusal, Serve, Stream};
use mist_sdk::{Broker, ConnectionPermit, SdkError, Session, SessionInfo};
use socket2::SockRef;
use tokio::io::AsyncWrite;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::park::{self, Berth, Parkable, Parking, ParkingListener, Parts};
use crate::read_buffer;
use crate::writer::{write_output, Idle};

/// Starts a plain listener, whose idle connections park.
pub(crate) fn start(
    uri: &str,
    broker: Broker,
) -> Result<(ParkingListener<Conn>, Arc<Parking<Conn>>), SdkError> {
    let parking = Parking::start(tokio::runtime::Handle::current()).map_err(|e| {
        SdkError::unavailable(format!("cannot start the parked connections' poller: {e}"))
    })?;
    let connections = parking.clone();
    let listener = Serve::new(uri, &broker)
        .refusal(Refusal::Line)
        .start_with_permit(move |stream, peer, stop, permit| {
            serve(stream, peer, &broker, stop, permit, &connections)
        })?;
    Ok((ParkingListener::new(listener, parking.clone()), parking))
}

/// Opens a plain client's session and returns the connection's future,
/// which runs it until it ends or parks.
fn serve(
    stream: Stream,
    peer: SocketAddr,
    broker: &Broker,
    stop: watch::Receiver<bool>,
    permit: ConnectionPermit,
    parking: &Arc<Parking<Conn>>,
) -> impl Future<Output = ()> + Send + 'static {
    let session = broker.open_session(SessionInfo::new("tcp", peer));
    // A byte stream: output may end in the middle of a line, so what the
    // broker hands the writer stays within its drain's bound.
    session.write_in_pieces();
    let conn = match stream {
        Stream::Plain(stream) => Some(Conn {
            stream,
            session,
            permit,
            berth: Berth::new(parking, &stop),
        }),
        // Not served by this listener: closed.
        Stream::Tls(_) => None,
    };
    async move {
        if let Some(conn) = conn {
            conn.run().await;
        }
    }
}

/// A plain connection: what it holds while it runs, and what it leaves to
/// the parking while it is idle.
pub(crate) struct Conn {
    stream: TcpStream,
    session: Session,
    /// Given back when the connection ends.
    permit: ConnectionPermit,
    /// Its place in the listener's parking.
    berth: Berth<Conn>,
}

/// How a plain connection's task ends.
enum Driven {
    /// The connection is over: its session is closed.
    Done,
    /// Nothing to read, nothing to write: the connection may park.
    Idle,
}

impl Conn {
    /// Runs the connection, in this task, until it ends or it has parked
    /// (then its wake starts a task that runs it on).
    pub(crate) async fn run(mut self) {
        loop {
            match self.drive().await {
                Driven::Done => return,
                Driven::Idle => match park::park(self) {
                    Some(again) => self = again,
                    None => return,
                },
            }
        }
    }

    /// Reads and writes together, ending the session the way every
    /// first-party listener does (see [`mist_sdk::net::drive_connection`]),
    /// or returning [`Driven::Idle`] when the connection may park: at once
    /// while it is quiet, after [`park::IDLE`] without activity once it is
    /// busy (see [`Berth::busy`]).
    async fn drive(&mut self) -> Driven {
        let busy = self.berth.busy();
        let mut stop = self.berth.stop();
        let session = &self.session;
        // Borrowed halves: `into_split` would allocate an `Arc` per
        // connection.
        let (reader, writer) = self.stream.split();
        let idle = Idle::default();
        let mut writing = pin!(write_output(
            session,
            DirectFirst::new(writer),
            stop.clone(),
            &idle,
        ));
        let mut reading = pin!(async {
            if let Err(e) = read(session, reader, &idle).await {
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
}

impl Parkable for Conn {
    type Rest = ConnectionPermit;

    fn into_parts(self) -> Parts<Conn> {
        Parts {
            socket: self.stream,
            session: self.session,
            berth: self.berth,
            rest: self.permit,
        }
    }

    fn from_parts(parts: Parts<Conn>) -> Conn {
        Conn {
            stream: parts.socket,
            session: parts.session,
            permit: parts.rest,
            berth: parts.berth,
        }
    }

    fn resume(self) -> impl Future<Output = ()> + Send + 'static {
        self.run()
    }
}

/// Feeds the session what the client sends, until it is done.
async fn read(session: &Session, reader: ReadHalf<'_>, idle: &Idle) -> io::Result<()> {
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
        let fed = read_buffer::with(|buffer| {
            let read = if direct {
                (&*socket).read(buffer)
            } else {
                reader.try_read(buffer)
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
/// full, through tokio after (as [`read`] reads, and for the same reason:
/// a socket back from parking could not be written to until tokio's
/// reactor turned).
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
