//! `libmist_tcp.so`: the TCP listener plugin, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_tcp::Tcp);
