//! The first-party plugins linked into the binary, so that `mist --server`
//! works with no plugin files at all. Each is the same root module its
//! `cdylib` crate exports; a library loaded from `plugins.toml` takes over
//! the schemes of a built-in one.

use mist_sdk::abi::ModuleRef;

/// The root modules of the built-in plugins.
pub fn modules() -> Vec<ModuleRef> {
    vec![
        mist_plugin_tcp::module(),
        mist_plugin_http::module(),
        mist_plugin_ws::module(),
        mist_plugin_memory::module(),
        mist_plugin_scribble::module(),
        mist_plugin_postgres::module(),
        mist_plugin_jwt::module(),
        mist_plugin_redis::module(),
        mist_plugin_nats::module(),
    ]
}
