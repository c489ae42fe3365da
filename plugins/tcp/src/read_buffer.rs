//! The per-thread buffer that plain and TLS connections read into: a read
//! is handed to the broker (`Session::feed`, which consumes the bytes
//! before it returns) while the buffer is borrowed, so one buffer per
//! worker thread serves every connection, and a connection holds none.

use std::cell::RefCell;

/// Reads are this large at most. One read is one batch of publishes, and
/// a subscriber is woken (and written to) once per batch: with publishes
/// spread over many topics, a larger batch gives each subscriber more
/// than one message a write (1 MiB: about 5,000 publishes, five a
/// subscriber over 1,000 topics; routing was 30% slower with 256 KiB).
/// The buffer is per thread, not per connection, and its pages are
/// touched only as far as reads fill it.
const READ_CHUNK: usize = 1024 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Runs `f` with this thread's read buffer ([`READ_CHUNK`] bytes). `f`
/// must not reach `with` again.
pub(crate) fn with<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    READ_BUFFER.with(|buffer| f(&mut buffer.borrow_mut()))
}
