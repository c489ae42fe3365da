//! The started plugins and which of them serves each listener scheme,
//! authenticator scheme and custom command.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use mist_sdk::abi::{HostContext, ModuleRef, PluginBox};

use super::logger;
use super::LoadError;
use crate::broker::{Broker, CommandRoute, BUILTIN_COMMANDS};

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Linked into the `mist` binary.
    Builtin,
    /// Loaded from this library.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("built in"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A started plugin.
pub struct LoadedPlugin {
    /// Its declared name.
    pub name: String,
    /// Where it came from.
    pub source: Source,
    /// The plugin itself.
    pub handle: Arc<PluginBox>,
}

/// Every started plugin, and what each serves.
#[derive(Default)]
pub struct Registry {
    plugins: Vec<Arc<LoadedPlugin>>,
    listeners: HashMap<String, usize>,
    authenticators: HashMap<String, usize>,
    backplanes: HashMap<String, usize>,
    commands: HashMap<String, usize>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Checks `module`'s declaration against what is registered, starts it
    /// and registers what it provides. A plugin from a file takes a scheme
    /// over from a built-in one; any other clash refuses the plugin before
    /// it is started.
    pub fn start(
        &mut self,
        module: ModuleRef,
        source: Source,
        settings_json: String,
        broker: &Broker,
    ) -> Result<(), LoadError> {
        let info = (module.describe())();
        let name = info.name.to_string();
        let clash = |reason: String| LoadError::Clash {
            name: name.clone(),
            source_name: source.to_string(),
            reason,
        };
        for command in &info.commands {
            if BUILTIN_COMMANDS.contains(&command.as_str()) {
                return Err(clash(format!(
                    "command {command:?} is built into the broker"
                )));
            }
            if let Some(&other) = self.commands.get(command.as_str()) {
                return Err(clash(format!(
                    "command {command:?} is provided by plugin {} already",
                    self.plugins[other].name
                )));
            }
        }
        for (kind, schemes, taken) in [
            ("listener", &info.listeners, &self.listeners),
            ("authenticator", &info.authenticators, &self.authenticators),
            ("backplane", &info.backplanes, &self.backplanes),
        ] {
            for scheme in schemes {
                if let Some(&other) = taken.get(scheme.as_str()) {
                    let other = &self.plugins[other];
                    if other.source != Source::Builtin || source == Source::Builtin {
                        return Err(clash(format!(
                            "{kind} scheme {scheme:?} is provided by plugin {} ({}) already",
                            other.name, other.source
                        )));
                    }
                }
            }
        }

        let context = HostContext {
            settings: settings_json.into(),
            broker: broker.handle(),
            logger: logger::logger_for(&name),
            max_level: logger::max_level(),
        };
        let handle = (module.init())(context)
            .into_result()
            .map_err(|e| LoadError::InitFailed {
                name: name.clone(),
                source_name: source.to_string(),
                message: e.message.into_string(),
            })?;

        let index = self.plugins.len();
        for (kind, schemes, map) in [
            ("listener", &info.listeners, &mut self.listeners),
            (
                "authenticator",
                &info.authenticators,
                &mut self.authenticators,
            ),
            ("backplane", &info.backplanes, &mut self.backplanes),
        ] {
            for scheme in schemes {
                if map.insert(scheme.to_string(), index).is_some() {
                    tracing::info!(plugin = %name, %source, "{kind} scheme {scheme}:// now served by this plugin instead of the built-in one");
                }
            }
        }
        for command in &info.commands {
            self.commands.insert(command.to_string(), index);
        }
        tracing::debug!(plugin = %name, version = %info.version, %source, "plugin started");
        self.plugins.push(Arc::new(LoadedPlugin {
            name,
            source,
            handle: Arc::new(handle),
        }));
        Ok(())
    }

    /// The plugin serving listener URIs of `scheme`.
    pub fn listener(&self, scheme: &str) -> Option<&LoadedPlugin> {
        self.listeners.get(scheme).map(|&i| &*self.plugins[i])
    }

    /// The plugin providing authenticators of `scheme`.
    pub fn authenticator(&self, scheme: &str) -> Option<&LoadedPlugin> {
        self.authenticators.get(scheme).map(|&i| &*self.plugins[i])
    }

    /// The plugin serving cluster backplanes of `scheme`.
    pub fn backplane(&self, scheme: &str) -> Option<&LoadedPlugin> {
        self.backplanes.get(scheme).map(|&i| &*self.plugins[i])
    }

    /// Where each custom command goes, for the broker.
    pub fn command_routes(&self) -> HashMap<String, CommandRoute> {
        self.commands
            .iter()
            .map(|(command, &i)| {
                let plugin = &self.plugins[i];
                (
                    command.clone(),
                    CommandRoute {
                        plugin: plugin.name.as_str().into(),
                        handler: plugin.handle.clone(),
                    },
                )
            })
            .collect()
    }

    /// Every started plugin, in the order they were started (for their
    /// stop hooks at shutdown).
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// The listener schemes served, sorted, for error messages.
    pub fn listener_schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = self.listeners.keys().cloned().collect();
        schemes.sort();
        schemes
    }

    /// The authenticator schemes provided, sorted, for error messages.
    pub fn authenticator_schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = self.authenticators.keys().cloned().collect();
        schemes.sort();
        schemes
    }

    /// The cluster backplane schemes provided, sorted, for error messages.
    pub fn backplane_schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = self.backplanes.keys().cloned().collect();
        schemes.sort();
        schemes
    }
}
