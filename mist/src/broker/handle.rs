//! The broker as plugins see it: the host's implementations of the sdk's
//! `BrokerApi` and `SessionApi`.
//!
//! These are the entry points from plugin code into the host, so each one
//! catches a panic (a bug in the broker) instead of letting it unwind into
//! an `extern "C"` frame, which would abort the process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, ROption, RResult, RSlice, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};
use mist_sdk::abi::{
    BrokerApi, BrokerApi_TO, BrokerBox, OutputWakerBox, SessionApi, SessionApi_TO, SessionBox,
};
use mist_sdk::{BrokerStats, ListenerLimits, Readiness, SdkError, SessionInfo};

use super::delivery::Delivery;
use super::id::SessionId;
use super::protocol::TagSet;
use super::session::{Arrival, Session};
use super::shared::Shared;

pub(crate) fn broker_box(shared: Arc<Shared>) -> BrokerBox {
    BrokerApi_TO::from_ptr(RArc::new(HostBroker(shared)), TD_Opaque)
}

fn guard<T>(what: &str, default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("internal error in {what}; please report this bug");
        default
    })
}

#[derive(Clone)]
struct HostBroker(Arc<Shared>);

impl BrokerApi for HostBroker {
    fn open_session(&self, info: SessionInfo, waker: OutputWakerBox) -> SessionBox {
        // No fallback value exists for a session: a panic here is a broker
        // bug, and `abort` is what an unwind into the plugin would cause
        // anyway; catching it at least logs it first.
        match catch_unwind(AssertUnwindSafe(|| {
            Session::open(self.0.clone(), info, waker)
        })) {
            Ok(session) => SessionApi_TO::from_ptr(RArc::new(SessionHandle(session)), TD_Opaque),
            Err(_) => {
                tracing::error!("internal error in open_session; please report this bug");
                std::process::abort();
            }
        }
    }

    fn publish(
        &self,
        tags: RVec<RString>,
        data: RString,
        exclude: ROption<u64>,
    ) -> RResult<u64, SdkError> {
        guard("publish", RErr(SdkError::other("internal error")), || {
            let tags =
                match TagSet::from_list(tags.iter().map(RString::as_str), self.0.limits.max_tags) {
                    Ok(tags) => tags,
                    Err(e) => return RErr(SdkError::invalid_input(e.to_string())),
                };
            let raw_data = serde_json::Value::String(data.into_string()).to_string();
            let exclude = exclude.into_option().map(SessionId::from_u64);
            let mut delivery = Delivery::begin(&self.0, Box::default());
            delivery.publish_as_broker(exclude, &tags, &raw_data);
            let (queued, _) = delivery.finish();
            ROk(queued)
        })
    }

    fn stats(&self) -> BrokerStats {
        guard("stats", BrokerStats::default(), || self.0.stats())
    }

    fn limits(&self) -> ListenerLimits {
        self.0.limits.listener()
    }

    fn admit(&self, listener: RStr<'_>) -> RResult<(), SdkError> {
        guard("admit", RErr(SdkError::other("internal error")), || {
            self.0.admit(listener.as_str()).into()
        })
    }

    fn release(&self, listener: RStr<'_>) {
        guard("release", (), || self.0.release(listener.as_str()))
    }

    fn metrics(&self, token: ROption<RString>) -> RResult<RString, SdkError> {
        guard("metrics", RErr(SdkError::other("internal error")), || {
            let server_token = self.0.auth.get().map(|a| a.server_token.as_str());
            let given = token.as_ref().into_option().map(RString::as_str);
            let text = crate::metrics::authorize(server_token, given)
                .map(|()| crate::metrics::render(self.0.figures(), &self.0.health).into());
            text.into()
        })
    }

    fn readiness(&self) -> FfiFuture<Readiness> {
        crate::health::readiness_ffi(self.0.health.clone())
    }
}

#[derive(Clone)]
struct SessionHandle(Arc<Session>);

impl SessionApi for SessionHandle {
    fn id(&self) -> u64 {
        self.0.id.to_u64()
    }

    fn feed(&self, bytes: RSlice<'_, u8>) -> ROption<FfiFuture<()>> {
        guard("feed", None, || self.0.accept(Arrival::Bytes(&bytes))).into()
    }

    fn feed_message(&self, message: RSlice<'_, u8>) -> ROption<FfiFuture<()>> {
        guard("feed_message", None, || {
            self.0.accept(Arrival::Message(&message))
        })
        .into()
    }

    fn drain(&self, out: &mut RVec<u8>) -> bool {
        guard("drain", false, || self.0.drain(out, false))
    }

    fn close(&self) {
        guard("close", (), || self.0.close())
    }

    fn refuse(&self, error: RStr<'_>) {
        guard("refuse", (), || {
            // A refusal never halts the input: there is nothing to wait for.
            let _ = self.0.accept(Arrival::Refusal(error.as_str()));
        })
    }

    fn execute(&self, request: RSlice<'_, u8>) -> FfiFuture<RResult<(), SdkError>> {
        guard(
            "execute",
            async { RErr(SdkError::other("internal error")) }.into_ffi(),
            || self.0.execute(request.to_vec()),
        )
    }

    fn drain_stream(&self, out: &mut RVec<u8>) -> bool {
        guard("drain_stream", false, || self.0.drain(out, true))
    }

    fn hold(&self, bytes: u64) -> bool {
        guard("hold", false, || {
            self.0.hold(usize::try_from(bytes).unwrap_or(usize::MAX))
        })
    }
}
