//! `libmist_redis.so`: the Redis cluster backplane, for loading from `plugins.toml`.
mist_sdk::export_plugin!(mist_plugin_redis::Redis);
