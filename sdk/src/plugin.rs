//! What a plugin author implements, and how the sdk turns it into the stable
//! root module the host loads.

use std::sync::Arc;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};
use serde::de::DeserializeOwned;

use crate::abi::{
    AuthenticatorApi_TO, BackplaneApi_TO, BackplaneBox, BackplaneInboxBox,
    CommandContext as AbiCommandContext, HostContext, ListenerApi, ListenerApi_TO, ListenerBox,
    Message, Module, ModuleRef, PluginApi, PluginApi_TO, PluginBox, PluginInfo,
};
use crate::auth::{Authenticator, AuthenticatorAdapter};
use crate::backplane::{Backplane, BackplaneAdapter, Inbox};
use crate::broker::Broker;
use crate::command::CommandContext;
use crate::error::SdkError;
use crate::runtime::{catch, inside, runtime, spawn_ffi, InRuntime};

/// A Mist plugin: one or more listeners, authenticators and custom commands.
///
/// Implement it with `#[mist_sdk::async_trait]`, declare what you provide in
/// the constants, override the methods for what you provide, and export it
/// with [`crate::export_plugin!`]. The sdk calls every method inside this
/// library's own tokio runtime and turns a panic into an error.
#[async_trait::async_trait]
pub trait Plugin: Send + Sync + Sized + 'static {
    /// Short name, used in logs and errors.
    const NAME: &'static str;
    /// The plugin's version; `env!("CARGO_PKG_VERSION")` is the usual value.
    const VERSION: &'static str;
    /// URI schemes of the listeners this plugin serves.
    const LISTENERS: &'static [&'static str] = &[];
    /// URI schemes of the authenticators this plugin provides.
    const AUTHENTICATORS: &'static [&'static str] = &[];
    /// Names of the custom commands this plugin handles.
    const COMMANDS: &'static [&'static str] = &[];
    /// URI schemes of the cluster backplanes this plugin serves.
    const BACKPLANES: &'static [&'static str] = &[];

    /// Starts the plugin. An error here refuses the plugin at load.
    fn init(host: Host) -> Result<Self, SdkError>;

    /// Binds `uri` (one of [`Self::LISTENERS`]) and starts serving it.
    fn start_listener(&self, uri: &str) -> Result<Box<dyn Listener>, SdkError> {
        Err(SdkError::unsupported(format!(
            "plugin {} has no listener for {uri}",
            Self::NAME
        )))
    }

    /// Opens the store named by `uri` (one of [`Self::AUTHENTICATORS`]).
    async fn open_authenticator(&self, uri: &str) -> Result<Arc<dyn Authenticator>, SdkError> {
        Err(SdkError::unsupported(format!(
            "plugin {} has no authenticator for {uri}",
            Self::NAME
        )))
    }

    /// Runs the custom command `request.command` (one of [`Self::COMMANDS`]).
    /// Reply through `context`; an error becomes an error reply.
    async fn command(&self, context: CommandContext, request: Message) -> Result<(), SdkError> {
        let _ = context;
        Err(SdkError::unsupported(format!(
            "plugin {} has no command {}",
            Self::NAME,
            request.command
        )))
    }

    /// Connects to the backplane named by `uri` (one of [`Self::BACKPLANES`]);
    /// what arrives on subscribed channels goes to `inbox`.
    async fn open_backplane(
        &self,
        uri: &str,
        inbox: Inbox,
    ) -> Result<Box<dyn Backplane>, SdkError> {
        let _ = inbox;
        Err(SdkError::unsupported(format!(
            "plugin {} has no backplane for {uri}",
            Self::NAME
        )))
    }

    /// The broker is shutting down, after its listeners have stopped:
    /// release pools and connections. The default does nothing.
    async fn stop(&self) {}
}

/// A running listener, as the plugin author provides it.
pub trait Listener: Send + Sync + 'static {
    /// The address actually bound, e.g. `127.0.0.1:40123`.
    fn local_addr(&self) -> String;
    /// Stops accepting and closes this listener's connections. Idempotent.
    fn stop(&self);

    /// `Ok` while the listener accepts connections; why not otherwise.
    /// The default is always `Ok`.
    fn health(&self) -> Result<(), SdkError> {
        Ok(())
    }

    /// Re-reads what the listener loaded from files at start (TLS
    /// certificates); on error the old state must stay. The default has
    /// nothing to reload.
    fn reload(&self) -> Result<(), SdkError> {
        Ok(())
    }
}

/// What the host gives a plugin at start.
pub struct Host {
    settings: String,
    broker: Broker,
}

impl Host {
    /// The plugin's `settings` table from `plugins.toml`, parsed into `T`.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, SdkError> {
        serde_json::from_str(&self.settings)
            .map_err(|e| SdkError::invalid_input(format!("bad settings: {e}")))
    }

    /// The settings as JSON text (`{}` when there are none).
    pub fn settings_json(&self) -> &str {
        &self.settings
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}

/// The root module for plugin `P`. First-party plugins linked into `mist`
/// hand this to the host directly; [`crate::export_plugin!`] exports it from
/// a `cdylib`.
pub fn module<P: Plugin>() -> ModuleRef {
    Module {
        describe: describe::<P>,
        init: init::<P>,
    }
    .leak_into_prefix()
}

fn strings(items: &[&str]) -> RVec<RString> {
    items.iter().map(|s| RString::from(*s)).collect()
}

extern "C" fn describe<P: Plugin>() -> PluginInfo {
    PluginInfo {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        listeners: strings(P::LISTENERS),
        authenticators: strings(P::AUTHENTICATORS),
        commands: strings(P::COMMANDS),
        backplanes: strings(P::BACKPLANES),
    }
}

extern "C" fn init<P: Plugin>(host: HostContext) -> RResult<PluginBox, SdkError> {
    catch(|| {
        crate::log::install(host.logger, host.max_level);
        let _inside = runtime().enter();
        let plugin = P::init(Host {
            settings: host.settings.into_string(),
            broker: Broker::from_abi(host.broker),
        })?;
        Ok(PluginApi_TO::from_value(
            Adapter(InRuntime::new(Arc::new(plugin))),
            TD_Opaque,
        ))
    })
    .into()
}

/// Implements the stable [`PluginApi`] around an author's [`Plugin`].
struct Adapter<P>(InRuntime<Arc<P>>);

impl<P: Plugin> PluginApi for Adapter<P> {
    fn start_listener(&self, uri: RStr<'_>) -> RResult<ListenerBox, SdkError> {
        catch(|| {
            // Listeners bind sockets and spawn tasks: that needs our runtime.
            let _inside = runtime().enter();
            let listener = self.0.start_listener(uri.as_str())?;
            Ok(ListenerApi_TO::from_value(
                ListenerAdapter(InRuntime::new(listener)),
                TD_Opaque,
            ))
        })
        .into()
    }

    fn open_authenticator(
        &self,
        uri: RString,
    ) -> FfiFuture<RResult<crate::abi::AuthenticatorBox, SdkError>> {
        let plugin = Arc::clone(&self.0);
        spawn_ffi(async move {
            let store = plugin.open_authenticator(uri.as_str()).await?;
            Ok(AuthenticatorApi_TO::from_ptr(
                RArc::new(AuthenticatorAdapter(InRuntime::new(store))),
                TD_Opaque,
            ))
        })
    }

    fn call_command(
        &self,
        context: AbiCommandContext,
        request: Message,
    ) -> FfiFuture<RResult<(), SdkError>> {
        let plugin = Arc::clone(&self.0);
        spawn_ffi(async move {
            plugin
                .command(CommandContext::from_abi(context), request)
                .await
        })
    }

    fn open_backplane(
        &self,
        uri: RString,
        inbox: BackplaneInboxBox,
    ) -> FfiFuture<RResult<BackplaneBox, SdkError>> {
        let plugin = Arc::clone(&self.0);
        spawn_ffi(async move {
            let backplane = plugin
                .open_backplane(uri.as_str(), Inbox::from_abi(inbox))
                .await?;
            Ok(BackplaneApi_TO::from_value(
                BackplaneAdapter(InRuntime::new(Arc::from(backplane))),
                TD_Opaque,
            ))
        })
    }

    fn stop(&self) -> FfiFuture<()> {
        let plugin = Arc::clone(&self.0);
        let stopping = spawn_ffi(async move {
            plugin.stop().await;
            Ok(())
        });
        async move {
            if let RResult::RErr(e) = stopping.await {
                tracing::error!("stopping the plugin failed: {e}");
            }
        }
        .into_ffi()
    }
}

/// The host calls these on its own threads: each runs inside this
/// library's runtime (a listener's code may use tokio there) with panics
/// caught, and the listener is dropped the same way.
struct ListenerAdapter(InRuntime<Box<dyn Listener>>);

impl ListenerApi for ListenerAdapter {
    fn local_addr(&self) -> RString {
        inside(|| Ok(self.0.local_addr()))
            .unwrap_or_else(|e| e.message.into_string())
            .into()
    }

    fn stop(&self) {
        if let Err(e) = inside(|| {
            self.0.stop();
            Ok(())
        }) {
            tracing::error!("stopping a listener failed: {e}");
        }
    }

    fn health(&self) -> RResult<(), SdkError> {
        inside(|| self.0.health()).into()
    }

    fn reload(&self) -> RResult<(), SdkError> {
        inside(|| self.0.reload()).into()
    }
}

/// Exports plugin type `$plugin` as this `cdylib`'s root module, so that
/// `mist` can load the library from `plugins.toml`.
///
/// Use it once, in a crate built with `crate-type = ["cdylib"]`. A crate that
/// is also linked into another binary as an `rlib` must not use it: two
/// exports in one binary collide; export from a separate `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // What `abi_stable`'s `#[export_root_module]` generates, spelled with
        // `$crate` paths so the plugin needs no direct `abi_stable` dependency.
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __MIST_PLUGIN_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __mist_plugin_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(|| {
                    $crate::__exported();
                    $crate::module::<$plugin>()
                })
            }
            // SAFETY: the constructor returns the root module of type `ModuleRef`.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::ModuleRef>(
                    __mist_plugin_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// Called by [`crate::export_plugin!`] as the host builds the exported root
/// module: this library has its own copy of the sdk (and of `tracing`), so
/// its log events must be forwarded to the host. Not for other use.
#[doc(hidden)]
pub fn __exported() {
    crate::log::exported();
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_name_matches_abi_stable() {
        // `export_plugin!` hard-codes the symbol `abi_stable` looks up.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
