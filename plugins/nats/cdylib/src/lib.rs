//! `libmist_nats.so`: the NATS cluster backplane, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_nats::Nats);
