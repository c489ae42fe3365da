//! `libmist_scribble.so`: the scribble authenticator, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_scribble::Scribble);
