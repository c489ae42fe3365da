//! `libmist_postgres.so`: the PostgreSQL authenticator, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_postgres::Postgres);
