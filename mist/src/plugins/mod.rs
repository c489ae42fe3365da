//! Plugins from the host's side: reading `plugins.toml`, loading shared
//! libraries, starting plugins and knowing which one serves what.
//!
//! Nothing here is part of the sdk: how the host finds and registers
//! plugins can change without changing the interface plugins are built on.

mod file;
mod loader;
mod logger;
mod registry;

pub use file::{PluginEntry, PluginsFile, PluginsFileError};
pub use loader::{load_library, sdk_compatible, LoadError};
pub use registry::{LoadedPlugin, Registry, Source};
