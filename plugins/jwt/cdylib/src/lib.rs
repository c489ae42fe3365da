//! `libmist_jwt.so`: the JWT authenticator, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_jwt::Jwt);
