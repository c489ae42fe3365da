//! `libmist_memory.so`: the memory authenticator, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_memory::Memory);
