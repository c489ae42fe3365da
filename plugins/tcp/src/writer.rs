//! A session's output, written to its client: the writer that plain and
//! TLS connections share, and [`Idle`], where a connection's reading and
//! writing say that they wait.
//!
//! An idle connection holds no write buffer: one is taken when output
//! arrives and released once nothing is waiting (a large one at once).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};

use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::net::stopping;
use mist_sdk::Session;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// A write buffer grown past this is released after use; a smaller one is
/// kept while output keeps coming and released once there is none.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// Where a connection's reading and writing wait, for a plain connection
/// to tell that it is idle (and may park). A TLS connection keeps its
/// tasks, and gives the writer one it never looks at.
#[derive(Default)]
pub(crate) struct Idle {
    /// The reader waits for the socket to turn readable.
    pub(crate) reading: AtomicBool,
    /// The writer waits for output, holding none.
    pub(crate) writing: AtomicBool,
    /// Something was read or written since the last look.
    pub(crate) active: AtomicBool,
}

impl Idle {
    pub(crate) fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }

    /// Whether both wait.
    pub(crate) fn both(&self) -> bool {
        self.reading.load(Ordering::Relaxed) && self.writing.load(Ordering::Relaxed)
    }
}

/// Writes the session's output to `writer` until the session is closed
/// and drained, the client is gone, or the listener stops (`stop`): then
/// only what is queued at that moment is written. Shuts `writer` down
/// when done.
pub(crate) async fn write_output<W: AsyncWrite + Unpin>(
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
