//! The plugin library's own tokio runtime.
//!
//! A plugin built as a `cdylib` carries its own copy of tokio and of every
//! static, so the host's runtime is invisible to it: `tokio::spawn` or
//! `Handle::current()` in plugin code would panic with "no reactor running".
//! Instead every library gets one runtime of its own, started on first use,
//! and the sdk runs all plugin code inside it: listeners are started within
//! it, and every async call (authenticator, command) is spawned onto it and
//! awaited through a join handle, which any executor can poll. When plugins
//! are linked into the `mist` binary they share the host's copy of this
//! static, so they share one runtime with the host.

use std::any::Any;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::std_types::{RErr, RResult};
use async_ffi::{FfiFuture, FutureExt};
use tokio::runtime::Runtime;

use crate::error::SdkError;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// This library's runtime, started on first use with one worker per core.
///
/// # Panics
///
/// If the operating system refuses to start the runtime's threads.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("mist-worker")
            .build()
            .expect("the operating system refused to start the plugin runtime")
    })
}

/// Runs `future` on this library's runtime and returns a future any executor
/// can await across the boundary. A panic becomes an [`SdkError`].
pub(crate) fn spawn_ffi<T, F>(future: F) -> FfiFuture<RResult<T, SdkError>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, SdkError>> + Send + 'static,
{
    let handle = runtime().spawn(future);
    async move {
        match handle.await {
            Ok(result) => result.into(),
            Err(err) if err.is_panic() => RErr(from_panic(err.into_panic())),
            Err(err) => RErr(SdkError::other(format!("plugin task ended early: {err}"))),
        }
    }
    .into_ffi()
}

/// Runs `f`, turning a panic into an [`SdkError`]: every call from the host
/// into plugin code goes through here, because a panic unwinding out of an
/// `extern "C"` function aborts the whole broker.
pub(crate) fn catch<T>(f: impl FnOnce() -> Result<T, SdkError>) -> Result<T, SdkError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(from_panic(payload)),
    }
}

/// [`catch`], inside this library's runtime: for the host's synchronous
/// calls into plugin code (a listener's `stop`, `local_addr`, `health`,
/// `reload`), which arrive on a host thread where plugin code that touches
/// tokio (`tokio::spawn`, dropping an I/O object) would otherwise panic.
pub(crate) fn inside<T>(f: impl FnOnce() -> Result<T, SdkError>) -> Result<T, SdkError> {
    let _inside = runtime().enter();
    catch(f)
}

/// The error for a caught panic. The payload is leaked rather than
/// dropped: its `Drop` is plugin code too, and a panic there, outside any
/// `catch_unwind`, would abort the process. It is one small allocation per
/// panic.
fn from_panic(payload: Box<dyn Any + Send>) -> SdkError {
    let error = SdkError::from_panic(&*payload);
    std::mem::forget(payload);
    error
}

/// A plugin object the host owns through the boundary (a listener, an
/// authenticator, a backplane, the plugin itself). When the host lets go of
/// it, its `Drop` — plugin code — runs inside this library's runtime, with
/// a panic caught and logged: a panic unwinding out of the host's call into
/// the drop would abort the process.
pub(crate) struct InRuntime<T>(ManuallyDrop<T>);

impl<T> InRuntime<T> {
    pub(crate) fn new(value: T) -> Self {
        InRuntime(ManuallyDrop::new(value))
    }
}

impl<T> Deref for InRuntime<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> Clone for InRuntime<T> {
    fn clone(&self) -> Self {
        InRuntime::new(T::clone(&self.0))
    }
}

impl<T> Drop for InRuntime<T> {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and nothing reads the value after it
        // has been taken here.
        let value = unsafe { ManuallyDrop::take(&mut self.0) };
        let dropped = inside(move || {
            drop(value);
            Ok(())
        });
        if let Err(e) = dropped {
            tracing::error!("dropping a plugin object failed: {e}");
        }
    }
}
