//! `libmist_http.so`: the HTTP listener plugin, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_http::Http);
