//! `libmist_ws.so`: the WebSocket listener plugin, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_ws::Ws);
