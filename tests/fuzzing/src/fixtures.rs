//! What a fuzzed broker is configured with: the `memory://` token store
//! (answering at once, so runs are deterministic and need no runtime) and a
//! custom command, `echo`, that sends the request back.

use std::collections::HashMap;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};
use mist_sdk::abi::{
    AuthenticatorApi, AuthenticatorApi_TO, AuthenticatorBox, BackplaneBox, BackplaneInboxBox,
    CommandContext, ListenerBox, PluginApi, PluginApi_TO,
};
use mist_sdk::{AuthError, Authenticator, Grant, Message, SdkError};

use mist::broker::{Broker, CommandRoute};

/// The server token of a fuzzed broker in admin mode.
pub(crate) const ADMIN: &str = "admin-token";
/// A registered token, holding [`USER_TAGS`].
pub(crate) const USER: &str = "user-token";
pub(crate) const USER_TAGS: &[&str] = &["a", "b"];
/// A token nobody registered.
pub(crate) const STRANGER: &str = "stranger-token";

/// Puts `broker` in admin mode over a fresh `memory://` store holding [`USER`].
pub(crate) fn admin_mode(broker: &Broker) {
    let tokens = mist_plugin_memory::Tokens::default();
    let tags: Vec<String> = USER_TAGS.iter().map(|t| t.to_string()).collect();
    let registered = poll_ready(tokens.add_token(USER, &tags));
    registered.expect("a fresh store registers a token");
    let store: AuthenticatorBox = AuthenticatorApi_TO::from_ptr(
        abi_stable::std_types::RArc::new(Store(Arc::new(tokens))),
        TD_Opaque,
    );
    broker
        .set_authenticator(store, ADMIN.into(), "fuzz-memory")
        .expect("a new broker has no authenticator");
}

/// Routes the custom command `echo` to [`Echo`].
pub(crate) fn echo_command(broker: &Broker) {
    let route = CommandRoute {
        plugin: "fuzz-echo".into(),
        handler: Arc::new(PluginApi_TO::from_value(Echo, TD_Opaque)),
    };
    broker
        .set_commands(HashMap::from([("echo".to_owned(), route)]))
        .expect("a new broker has no commands");
}

/// The memory store's answers are ready at once; anything else is a bug here.
fn poll_ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the memory store did not answer at once"),
    }
}

fn strings(tags: &RVec<RString>) -> Vec<String> {
    tags.iter().map(|t| t.to_string()).collect()
}

fn ready<T: Send + 'static>(result: Result<T, SdkError>) -> FfiFuture<RResult<T, SdkError>> {
    let result: RResult<T, SdkError> = result.into();
    async move { result }.into_ffi()
}

/// `memory://` behind the stable interface, as the sdk would wrap it,
/// answered synchronously.
#[derive(Clone)]
struct Store(Arc<mist_plugin_memory::Tokens>);

impl AuthenticatorApi for Store {
    fn add_token(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        ready(poll_ready(self.0.add_token(&token, &strings(&tags))))
    }

    fn remove_token(&self, token: RString) -> FfiFuture<RResult<(), SdkError>> {
        ready(poll_ready(self.0.remove_token(&token)))
    }

    fn add_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        ready(poll_ready(self.0.add_tags(&token, &strings(&tags))))
    }

    fn remove_tags(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<(), SdkError>> {
        ready(poll_ready(self.0.remove_tags(&token, &strings(&tags))))
    }

    fn tags(&self, token: RString) -> FfiFuture<RResult<RVec<RString>, SdkError>> {
        let tags = poll_ready(self.0.tags(&token));
        ready(tags.map(|tags| tags.into_iter().map(RString::from).collect()))
    }

    fn may_use(&self, token: RString, tags: RVec<RString>) -> FfiFuture<RResult<bool, SdkError>> {
        ready(poll_ready(self.0.may_use(&token, &strings(&tags))))
    }

    fn check(&self) -> FfiFuture<RResult<(), SdkError>> {
        ready(Ok(()))
    }

    fn authenticate(&self, token: RString) -> FfiFuture<RResult<Grant, AuthError>> {
        let grant: RResult<Grant, AuthError> = poll_ready(self.0.authenticate(&token)).into();
        async move { grant }.into_ffi()
    }

    fn keeps_tokens(&self) -> bool {
        true
    }
}

/// The custom command `echo`: replies with the request's tags and data;
/// data `"fail"` makes it fail, data starting with `"twice"` replies twice.
struct Echo;

impl PluginApi for Echo {
    fn start_listener(&self, _uri: RStr<'_>) -> RResult<ListenerBox, SdkError> {
        RErr(SdkError::unsupported("no listeners"))
    }

    fn open_authenticator(&self, _uri: RString) -> FfiFuture<RResult<AuthenticatorBox, SdkError>> {
        ready(Err(SdkError::unsupported("no authenticators")))
    }

    fn call_command(
        &self,
        context: CommandContext,
        request: Message,
    ) -> FfiFuture<RResult<(), SdkError>> {
        if request.data.as_str() == "fail" {
            return ready(Err(SdkError::invalid_input("echo was asked to fail")));
        }
        let times = if request.data.starts_with("twice") {
            2
        } else {
            1
        };
        for _ in 0..times {
            context.replies.send(request.clone());
        }
        async { ROk(()) }.into_ffi()
    }

    fn open_backplane(
        &self,
        _uri: RString,
        _inbox: BackplaneInboxBox,
    ) -> FfiFuture<RResult<BackplaneBox, SdkError>> {
        ready(Err(SdkError::unsupported("no backplanes")))
    }

    fn stop(&self) -> FfiFuture<()> {
        async {}.into_ffi()
    }
}
