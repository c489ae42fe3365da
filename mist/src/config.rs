//! The server's configuration: flags over a YAML or TOML file over defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::broker::Limits;
use crate::cli::ServerArgs;
use crate::logging::LogFormat;

/// The listeners started when none are given.
pub const DEFAULT_LISTENERS: &[&str] = &[
    "tcp://127.0.0.1:1445",
    "http://127.0.0.1:8080",
    "ws://127.0.0.1:8888",
];

/// Everything `mist --server` needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Run as a server (`--server`, or `server: true` in the file).
    pub server: bool,
    /// Listener URIs to start.
    pub listeners: Vec<String>,
    /// The authenticator URI, if admin mode is on.
    pub authenticator: Option<String>,
    /// The server token.
    pub token: Option<String>,
    /// The plugins file to read, if any.
    pub plugins_file: Option<PathBuf>,
    /// The log level.
    pub log_level: LevelFilter,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// An extra HTTP address serving only /metrics, /healthz and /readyz.
    pub metrics_listener: Option<String>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// How long shutdown goes on writing what is queued.
    pub shutdown_timeout: Duration,
}

/// How long shutdown writes what is queued, when not configured.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is neither valid YAML nor valid TOML of the expected keys.
    #[error("config file {path} is not valid: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An unknown log level.
    #[error("unknown log level {0:?}: use TRACE, DEBUG, INFO, WARN, ERROR or FATAL")]
    LogLevel(String),
    /// A limit of zero.
    #[error("{0} must be greater than zero")]
    ZeroLimit(&'static str),
    /// A size or duration that does not parse.
    #[error("{key}: {reason}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The keys of a configuration file (as in the seed's example).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    authenticator: Option<String>,
    listeners: Option<Listeners>,
    #[serde(alias = "log_level")]
    log_level: Option<String>,
    token: Option<String>,
    server: Option<bool>,
    plugins: Option<PathBuf>,
    #[serde(alias = "log_format")]
    log_format: Option<LogFormat>,
    #[serde(alias = "metrics_listener")]
    metrics_listener: Option<String>,
    #[serde(alias = "max_message_bytes")]
    max_message_bytes: Option<Value>,
    #[serde(alias = "max_queue_bytes")]
    max_queue_bytes: Option<Value>,
    #[serde(alias = "max_memory")]
    max_memory: Option<Value>,
    #[serde(alias = "max_tags")]
    max_tags: Option<usize>,
    #[serde(alias = "max_subscriptions")]
    max_subscriptions: Option<usize>,
    #[serde(alias = "max_connections")]
    max_connections: Option<usize>,
    #[serde(alias = "slow_consumer_timeout")]
    slow_consumer_timeout: Option<Value>,
    #[serde(alias = "header_timeout")]
    header_timeout: Option<Value>,
    #[serde(alias = "handshake_timeout")]
    handshake_timeout: Option<Value>,
    #[serde(alias = "request_timeout")]
    request_timeout: Option<Value>,
    #[serde(alias = "shutdown_timeout")]
    shutdown_timeout: Option<Value>,
}

/// A size or a duration in a file: a number (bytes, seconds) or a string
/// with a unit (`64MiB`, `10s`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Value {
    Number(u64),
    Text(String),
}

impl Value {
    fn size(&self, key: &'static str) -> Result<usize, ConfigError> {
        match self {
            Value::Number(n) => usize::try_from(*n).map_err(|_| ConfigError::BadValue {
                key,
                reason: format!("{n} is too large"),
            }),
            Value::Text(text) => {
                parse_size(text).map_err(|reason| ConfigError::BadValue { key, reason })
            }
        }
    }

    fn duration(&self, key: &'static str) -> Result<Duration, ConfigError> {
        match self {
            Value::Number(seconds) => Ok(Duration::from_secs(*seconds)),
            Value::Text(text) => {
                parse_duration(text).map_err(|reason| ConfigError::BadValue { key, reason })
            }
        }
    }
}

/// `1048576`, `64KiB`, `1MiB`, `1.5GB`, ...: a number of bytes, with an
/// optional unit (decimal `kB`/`MB`/`GB` or binary `KiB`/`MiB`/`GiB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a size such as 1048576 or 64MiB ({e})"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

/// `500ms`, `10s`, `1m`, `1h 30m`: a duration with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 500ms or 10s ({e})"))
}

/// `listeners` as a list, or as one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Listeners {
    List(Vec<String>),
    Text(String),
}

impl ServerConfig {
    /// Resolves `args` over the file they name (if any) over the defaults.
    pub fn resolve(args: &ServerArgs) -> Result<ServerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        let listeners = if !args.listeners.is_empty() {
            split_listeners(&args.listeners)
        } else {
            match file.listeners {
                Some(Listeners::List(list)) => split_listeners(&list),
                Some(Listeners::Text(text)) => split_listeners(&[text]),
                None => DEFAULT_LISTENERS.iter().map(|s| s.to_string()).collect(),
            }
        };
        let plugins_file = match (&args.plugins, file.plugins) {
            (Some(flag), _) => Some(flag.clone()),
            (None, Some(from_file)) => Some(base.join(from_file)),
            (None, None) => Some(PathBuf::from("plugins.toml")).filter(|p| p.exists()),
        };
        let level = args.log_level.clone().or(file.log_level);
        let (flags, default) = (&args.limits, Limits::default());
        let size =
            |key: &'static str, flag: Option<usize>, value: &Option<Value>, default: usize| {
                let value = match (flag, value) {
                    (Some(flag), _) => Some(flag),
                    (None, Some(value)) => Some(value.size(key)?),
                    (None, None) => None,
                };
                nonzero(key, value, default)
            };
        let duration = |key: &'static str,
                        flag: Option<Duration>,
                        value: &Option<Value>,
                        default: Duration| {
            let value = match (flag, value) {
                (Some(flag), _) => flag,
                (None, Some(value)) => value.duration(key)?,
                (None, None) => default,
            };
            if value.is_zero() {
                return Err(ConfigError::ZeroLimit(key));
            }
            Ok(value)
        };
        let limits = Limits {
            max_message_bytes: size(
                "max-message-bytes",
                flags.max_message_bytes,
                &file.max_message_bytes,
                default.max_message_bytes,
            )?,
            max_queue_bytes: size(
                "max-queue-bytes",
                flags.max_queue_bytes,
                &file.max_queue_bytes,
                default.max_queue_bytes,
            )?,
            max_memory: size(
                "max-memory",
                flags.max_memory,
                &file.max_memory,
                default.max_memory,
            )?,
            max_tags: nonzero(
                "max-tags",
                flags.max_tags.or(file.max_tags),
                default.max_tags,
            )?,
            max_subscriptions: nonzero(
                "max-subscriptions",
                flags.max_subscriptions.or(file.max_subscriptions),
                default.max_subscriptions,
            )?,
            max_connections: nonzero(
                "max-connections",
                flags.max_connections.or(file.max_connections),
                default.max_connections,
            )?,
            slow_consumer_timeout: duration(
                "slow-consumer-timeout",
                flags.slow_consumer_timeout,
                &file.slow_consumer_timeout,
                default.slow_consumer_timeout,
            )?,
            header_timeout: duration(
                "header-timeout",
                flags.header_timeout,
                &file.header_timeout,
                default.header_timeout,
            )?,
            handshake_timeout: duration(
                "handshake-timeout",
                flags.handshake_timeout,
                &file.handshake_timeout,
                default.handshake_timeout,
            )?,
            request_timeout: duration(
                "request-timeout",
                flags.request_timeout,
                &file.request_timeout,
                default.request_timeout,
            )?,
        };
        let shutdown_timeout = duration(
            "shutdown-timeout",
            flags.shutdown_timeout,
            &file.shutdown_timeout,
            DEFAULT_SHUTDOWN_TIMEOUT,
        )?;
        Ok(ServerConfig {
            server: args.server || file.server.unwrap_or(false),
            listeners,
            authenticator: args.authenticator.clone().or(file.authenticator),
            token: args.token.clone().or(file.token),
            plugins_file,
            log_level: match level {
                Some(level) => parse_level(&level)?,
                None => LevelFilter::INFO,
            },
            limits,
            shutdown_timeout,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            metrics_listener: args.metrics_listener.clone().or(file.metrics_listener),
        })
    }
}

fn nonzero(name: &'static str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::ZeroLimit(name)),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

/// Accepts `a,b`, `["a", "b"]` and the seed's `"a", "b"` (quotes and
/// spaces around the commas).
fn split_listeners(items: &[String]) -> Vec<String> {
    items
        .iter()
        .flat_map(|item| item.split(','))
        .map(|s| s.trim().trim_matches('"').trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `TRACE`..`FATAL`, any case. FATAL logs errors only: tracing has no
/// level above ERROR.
pub fn parse_level(level: &str) -> Result<LevelFilter, ConfigError> {
    Ok(match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => LevelFilter::TRACE,
        "DEBUG" => LevelFilter::DEBUG,
        "INFO" => LevelFilter::INFO,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "ERROR" | "FATAL" => LevelFilter::ERROR,
        _ => return Err(ConfigError::LogLevel(level.to_string())),
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |reason: String| ConfigError::Parse {
        path: path.to_owned(),
        reason,
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "toml" => toml::from_str(&text).map_err(|e| parse_error(e.to_string())),
        "yaml" | "yml" => serde_yaml_ng::from_str(&text).map_err(|e| parse_error(e.to_string())),
        // No telling extension: TOML, else YAML (the seed's files have none).
        _ => toml::from_str(&text).or_else(|toml_error| {
            serde_yaml_ng::from_str(&text).map_err(|yaml_error| {
                parse_error(format!("as TOML: {toml_error}; as YAML: {yaml_error}"))
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServerArgs {
        ServerArgs::default()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn defaults() {
        let c = ServerConfig::resolve(&args()).expect("resolve");
        assert!(!c.server);
        assert_eq!(c.listeners, DEFAULT_LISTENERS);
        assert_eq!(c.log_level, LevelFilter::INFO);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn reads_the_seeds_yaml_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "config",
            "authenticator: memory://\nlisteners:\n  - tcp://127.0.0.1:1445\nlog-level: DEBUG\ntoken: TOKEN\nserver: true\n",
        );
        let mut a = args();
        a.config = Some(path.clone());
        let c = ServerConfig::resolve(&a).expect("resolve");
        assert!(c.server);
        assert_eq!(c.listeners, ["tcp://127.0.0.1:1445"]);
        assert_eq!(c.authenticator.as_deref(), Some("memory://"));
        assert_eq!(c.token.as_deref(), Some("TOKEN"));
        assert_eq!(c.log_level, LevelFilter::DEBUG);

        a.listeners = vec!["tcp://127.0.0.1:1".into(), "ws://127.0.0.1:2".into()];
        a.log_level = Some("fatal".into());
        let c = ServerConfig::resolve(&a).expect("resolve");
        assert_eq!(c.listeners, ["tcp://127.0.0.1:1", "ws://127.0.0.1:2"]);
        assert_eq!(c.log_level, LevelFilter::ERROR);
    }

    #[test]
    fn reads_toml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "mist.toml",
            "listeners = \"tcp://127.0.0.1:9, ws://127.0.0.1:8\"\nmax-message-bytes = 10\nplugins = \"p.toml\"\n",
        );
        let mut a = args();
        a.config = Some(path);
        let c = ServerConfig::resolve(&a).expect("resolve");
        assert_eq!(c.listeners, ["tcp://127.0.0.1:9", "ws://127.0.0.1:8"]);
        assert_eq!(c.limits.max_message_bytes, 10);
        assert_eq!(c.plugins_file, Some(dir.path().join("p.toml")));
    }

    #[test]
    fn explains_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "bad.yaml", "listeners: [\n");
        let mut a = args();
        a.config = Some(path);
        assert!(ServerConfig::resolve(&a)
            .expect_err("bad")
            .to_string()
            .contains("bad.yaml"));
        a.config = Some(write(dir.path(), "typo.toml", "listners = []\n"));
        assert!(ServerConfig::resolve(&a)
            .expect_err("bad")
            .to_string()
            .contains("listners"));
        assert!(parse_level("LOUD").is_err());
        let mut a = args();
        a.limits.max_queue_bytes = Some(0);
        assert!(ServerConfig::resolve(&a).is_err());
    }

    #[test]
    fn reads_sizes_and_durations_with_units() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "limits.yaml",
            "max-memory: 2GiB\nmax-queue-bytes: 65536\nslow-consumer-timeout: 1m\nheader-timeout: 3\nmax-tags: 7\n",
        );
        let mut a = args();
        a.config = Some(path);
        let c = ServerConfig::resolve(&a).expect("resolve");
        assert_eq!(c.limits.max_memory, 2 << 30);
        assert_eq!(c.limits.max_queue_bytes, 65536);
        assert_eq!(c.limits.slow_consumer_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.header_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_tags, 7);
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        // A flag beats the file.
        a.limits.max_memory = Some(1 << 20);
        assert_eq!(
            ServerConfig::resolve(&a)
                .expect("resolve")
                .limits
                .max_memory,
            1 << 20
        );

        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(
            parse_duration("10").is_err(),
            "a flag's duration needs its unit"
        );
        let bad = write(dir.path(), "bad-limits.yaml", "header-timeout: soon\n");
        a.config = Some(bad);
        let error = ServerConfig::resolve(&a)
            .expect_err("bad duration")
            .to_string();
        assert!(error.contains("header-timeout"), "{error}");
    }

    #[test]
    fn splits_the_seeds_listener_list() {
        let items = vec![
            "\"tcp://127.0.0.1:1445\",".to_string(),
            "\"http://127.0.0.1:8080\"".to_string(),
        ];
        assert_eq!(
            split_listeners(&items),
            ["tcp://127.0.0.1:1445", "http://127.0.0.1:8080"]
        );
    }
}
