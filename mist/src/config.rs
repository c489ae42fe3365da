//! The server's configuration: flags over a YAML or TOML file over defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use mist_sdk::tls::TlsParams;

use crate::broker::Limits;
use crate::cli::ServerArgs;
use crate::logging::LogFormat;

// Still here, where they were defined first. They live in `units`, which
// `cli` uses too: `cli` importing from `config` made an import circle.
pub use crate::units::{parse_duration, parse_size};

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
    /// The server token, from `--token`, `--token-file`, `MIST_TOKEN` or
    /// the config file (in that order; see [`ServerConfig::resolve`]).
    pub token: Option<String>,
    /// The plugins file to read, if any.
    pub plugins_file: Option<PathBuf>,
    /// The log level.
    pub log_level: LevelFilter,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// An extra HTTP address serving only /metrics, /healthz and /readyz.
    pub metrics_listener: Option<String>,
    /// The cluster backplane's URI (`--cluster`), if this node is part of
    /// a cluster.
    pub cluster: Option<String>,
    /// The file holding the cluster key (`--cluster-key-file`), read by the
    /// cluster at start and on SIGHUP.
    pub cluster_key_file: Option<PathBuf>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// How long shutdown goes on writing what is queued.
    pub shutdown_timeout: Duration,
    /// Certificates for TLS listeners, written into each one's URI.
    pub tls: TlsParams,
}

/// The environment variable the server token can be given in.
pub const TOKEN_ENV: &str = "MIST_TOKEN";

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
    /// A token file that cannot be used. The message never holds the
    /// file's content.
    #[error("token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why: unreadable (with the system's reason), empty, or more than
        /// one line.
        reason: String,
    },
    /// Both `token` and `token-file` in the config file.
    #[error("config file {0}: give token or token-file, not both")]
    TwoTokens(PathBuf),
    /// `--tls-cert` without `--tls-key`, or the other way round.
    #[error("--{given} needs --{missing} (a certificate and its key go together)")]
    TlsPair {
        /// The key given.
        given: &'static str,
        /// The key missing.
        missing: &'static str,
    },
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
    token: Option<Secret>,
    #[serde(alias = "token_file")]
    token_file: Option<PathBuf>,
    server: Option<bool>,
    plugins: Option<PathBuf>,
    #[serde(alias = "log_format")]
    log_format: Option<LogFormat>,
    #[serde(alias = "metrics_listener")]
    metrics_listener: Option<String>,
    cluster: Option<Secret>,
    #[serde(alias = "cluster_key_file")]
    cluster_key_file: Option<PathBuf>,
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
    #[serde(alias = "tls_cert")]
    tls_cert: Option<PathBuf>,
    #[serde(alias = "tls_key")]
    tls_key: Option<PathBuf>,
    #[serde(alias = "tls_self_signed")]
    tls_self_signed: Option<bool>,
    #[serde(alias = "tls_client_ca")]
    tls_client_ca: Option<PathBuf>,
}

/// The `token` key: a string, or a number (YAML reads `token: 1234` as
/// one). Whatever it holds, its value never appears in an error.
#[derive(Debug)]
struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Signed(i64),
            Unsigned(u64),
        }
        // The untagged enum's own error would not echo the value either,
        // but says nothing useful; this does, still without the value.
        match Raw::deserialize(deserializer) {
            Ok(Raw::Text(text)) => Ok(Secret(text)),
            Ok(Raw::Signed(n)) => Ok(Secret(n.to_string())),
            Ok(Raw::Unsigned(n)) => Ok(Secret(n.to_string())),
            Err(_) => Err(serde::de::Error::custom("token must be a string")),
        }
    }
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

/// `listeners` as a list, or as one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Listeners {
    List(Vec<String>),
    Text(String),
}

impl ServerConfig {
    /// Resolves `args` over the file they name (if any) over the defaults.
    ///
    /// The server token is taken from the first of: `--token` or
    /// `--token-file` (never both), the [`TOKEN_ENV`] environment variable
    /// (unless empty), the config file's `token` or `token-file`. A token
    /// file holds the token on one line; its trailing newline is ignored,
    /// and an unreadable or empty file is an error naming the file.
    pub fn resolve(args: &ServerArgs) -> Result<ServerConfig, ConfigError> {
        Self::resolve_with_env(args, std::env::var(TOKEN_ENV).ok())
    }

    /// [`ServerConfig::resolve`] with `env_token` standing for the value of
    /// [`TOKEN_ENV`].
    fn resolve_with_env(
        args: &ServerArgs,
        env_token: Option<String>,
    ) -> Result<ServerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        let tls = resolve_tls(args, &file, base)?;
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
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => match env_token.filter(|t| !t.is_empty()) {
                Some(token) => Some(token),
                None => match (file.token, &file.token_file) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::TwoTokens(
                            args.config.clone().unwrap_or_default(),
                        ))
                    }
                    (Some(Secret(token)), None) => Some(token),
                    (None, Some(path)) => Some(read_token_file(&base.join(path))?),
                    (None, None) => None,
                },
            },
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
            token,
            plugins_file,
            log_level: match level {
                Some(level) => parse_level(&level)?,
                None => LevelFilter::INFO,
            },
            limits,
            shutdown_timeout,
            tls,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            metrics_listener: args.metrics_listener.clone().or(file.metrics_listener),
            cluster: args.cluster.clone().or(file.cluster.map(|c| c.0)),
            // A file's path is relative to the file, as for token-file.
            cluster_key_file: args
                .cluster_key_file
                .clone()
                .or(file.cluster_key_file.map(|p| base.join(p))),
        })
    }
}

/// The TLS flags over the file's keys; a file's paths are relative to it.
fn resolve_tls(
    args: &ServerArgs,
    file: &FileConfig,
    base: &Path,
) -> Result<TlsParams, ConfigError> {
    let flags = &args.tls;
    let path = |flag: &Option<PathBuf>, from_file: &Option<PathBuf>| match flag {
        Some(flag) => Some(flag.clone()),
        None => from_file.as_ref().map(|p| base.join(p)),
    };
    let tls = TlsParams {
        cert: path(&flags.tls_cert, &file.tls_cert),
        key: path(&flags.tls_key, &file.tls_key),
        self_signed: flags.tls_self_signed || file.tls_self_signed.unwrap_or(false),
        client_ca: path(&flags.tls_client_ca, &file.tls_client_ca),
    };
    match (&tls.cert, &tls.key) {
        (Some(_), None) => Err(ConfigError::TlsPair {
            given: "tls-cert",
            missing: "tls-key",
        }),
        (None, Some(_)) => Err(ConfigError::TlsPair {
            given: "tls-key",
            missing: "tls-cert",
        }),
        _ => Ok(tls),
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

/// The token in `path`: its one line, without the line's end.
fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let error = |reason: &str| ConfigError::TokenFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    // io::Error's message names the failure (not found, permission denied),
    // never the content.
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => error("not UTF-8 text"),
        _ => error(&format!("cannot read it: {e}")),
    })?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.trim().is_empty() {
        return Err(error("it is empty"));
    }
    if token.contains(['\n', '\r']) {
        return Err(error(
            "it holds more than one line; put the token alone on one line",
        ));
    }
    Ok(token.to_owned())
}

/// A TOML error by line and column. `toml`'s own message quotes the
/// offending line of the file, which may hold the token or a password.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.message().to_string();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}: {}", error.message())
}

/// `message` with the values serde quotes in it left out (`invalid type:
/// string "…"`): a value in the wrong place may be the token or a password.
/// Names of keys (`unknown field \`listners\``) stay.
fn without_values(message: &str) -> String {
    const QUOTED: [(&str, char); 5] = [
        ("string \"", '"'),
        ("integer `", '`'),
        ("floating point `", '`'),
        ("character `", '`'),
        ("boolean `", '`'),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, prefix, close)) = QUOTED
        .iter()
        .filter_map(|&(prefix, close)| rest.find(prefix).map(|at| (at, prefix, close)))
        .min_by_key(|&(at, ..)| at)
    {
        // Keep the kind ("string"), drop the quoted value.
        out.push_str(&rest[..at + prefix.len() - 2]);
        let value = &rest[at + prefix.len()..];
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let found = c == close && !escaped;
                escaped = c == '\\' && !escaped;
                found
            })
            .map_or(value.len(), |(i, c)| i + c.len_utf8());
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |reason: String| ConfigError::Parse {
        path: path.to_owned(),
        reason: without_values(&reason),
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "toml" => toml::from_str(&text).map_err(|e| parse_error(toml_error(&text, &e))),
        "yaml" | "yml" => serde_yaml_ng::from_str(&text).map_err(|e| parse_error(e.to_string())),
        // No telling extension: TOML, else YAML (the seed's files have none).
        _ => toml::from_str(&text).or_else(|as_toml| {
            serde_yaml_ng::from_str(&text).map_err(|yaml_error| {
                let toml_error = toml_error(&text, &as_toml);
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

        let bad = write(dir.path(), "bad-limits.yaml", "header-timeout: soon\n");
        a.config = Some(bad);
        let error = ServerConfig::resolve(&a)
            .expect_err("bad duration")
            .to_string();
        assert!(error.contains("header-timeout"), "{error}");
    }

    #[test]
    fn the_cluster_key_file_comes_from_the_flag_or_the_config_relative_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = args();
        a.config = Some(write(
            dir.path(),
            "mist.yaml",
            "cluster: redis://127.0.0.1:6379\ncluster-key-file: keys/cluster.key\n",
        ));
        let resolved = ServerConfig::resolve(&a).expect("resolve");
        assert_eq!(
            resolved.cluster_key_file,
            Some(dir.path().join("keys/cluster.key"))
        );
        a.cluster_key_file = Some(PathBuf::from("/etc/mist/cluster.key"));
        let resolved = ServerConfig::resolve(&a).expect("resolve");
        assert_eq!(
            resolved.cluster_key_file.as_deref(),
            Some(Path::new("/etc/mist/cluster.key"))
        );
    }

    #[test]
    fn the_token_comes_from_the_flag_the_file_the_environment_or_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write(dir.path(), "mist.yaml", "token: from-config\n");
        let token_file = write(dir.path(), "token", "from-file\n");
        let resolve = |a: &ServerArgs, env: Option<&str>| {
            ServerConfig::resolve_with_env(a, env.map(str::to_owned))
                .expect("resolve")
                .token
        };
        let mut a = args();
        assert_eq!(resolve(&a, None), None);
        a.config = Some(config);
        assert_eq!(resolve(&a, None).as_deref(), Some("from-config"));
        assert_eq!(resolve(&a, Some("")).as_deref(), Some("from-config"));
        assert_eq!(resolve(&a, Some("from-env")).as_deref(), Some("from-env"));
        a.token_file = Some(token_file);
        assert_eq!(resolve(&a, Some("from-env")).as_deref(), Some("from-file"));
        a.token_file = None;
        a.token = Some("from-flag".into());
        assert_eq!(resolve(&a, Some("from-env")).as_deref(), Some("from-flag"));

        // The config file may name a token file, relative to itself.
        write(dir.path(), "token2", "from-config-file\r\n");
        let mut a = args();
        a.config = Some(write(dir.path(), "mist2.toml", "token-file = \"token2\"\n"));
        assert_eq!(resolve(&a, None).as_deref(), Some("from-config-file"));
        // A number is a token too.
        a.config = Some(write(dir.path(), "mist3.yaml", "token: 123456\n"));
        assert_eq!(resolve(&a, None).as_deref(), Some("123456"));
        a.config = Some(write(
            dir.path(),
            "both.toml",
            "token = \"x\"\ntoken-file = \"token2\"\n",
        ));
        let error = ServerConfig::resolve_with_env(&a, None).expect_err("both");
        assert!(error.to_string().contains("not both"), "{error}");
    }

    #[test]
    fn a_bad_token_file_is_named_and_its_content_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("empty", "", "is empty"),
            ("blank", "\n", "is empty"),
            (
                "two-lines",
                "secret-one\nsecret-two\n",
                "more than one line",
            ),
        ];
        for (name, content, words) in cases {
            let mut a = args();
            a.token_file = Some(write(dir.path(), name, content));
            let error = ServerConfig::resolve_with_env(&a, None)
                .expect_err(name)
                .to_string();
            assert!(error.contains(&format!("token file {}", dir.path().join(name).display())));
            assert!(error.contains(words), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let mut a = args();
        a.token_file = Some(dir.path().join("missing"));
        let error = ServerConfig::resolve_with_env(&a, None)
            .expect_err("missing")
            .to_string();
        assert!(error.contains("missing: cannot read it"), "{error}");
    }

    #[test]
    fn a_config_file_error_never_quotes_the_token_or_a_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            ("a.toml", "token = \"tok-secret-1\nserver = true\n"),
            ("b.toml", "token = [\"tok-secret-2\"]\n"),
            (
                "c.toml",
                "authenticator = \"postgres://u:pw-secret-3@h?db=x\" x\n",
            ),
            ("d", "token = \"tok-secret-4\n"),
            ("e.yaml", "token: [tok-secret-5]\n"),
            (
                "f.yaml",
                "authenticator: postgres://u:pw-secret-6@h\n  - x: [\n",
            ),
        ] {
            let mut a = args();
            a.config = Some(write(dir.path(), name, text));
            let error = ServerConfig::resolve_with_env(&a, None)
                .expect_err(name)
                .to_string();
            assert!(error.contains(name), "{error}");
            assert!(!error.contains("secret"), "{name}: {error}");
        }
    }

    #[test]
    fn values_are_left_out_of_messages_and_names_kept() {
        assert_eq!(
            without_values(r#"invalid type: string "a \"q\" b", expected struct X"#),
            "invalid type: string, expected struct X"
        );
        assert_eq!(
            without_values("invalid type: integer `5`, expected a string at line 1"),
            "invalid type: integer, expected a string at line 1"
        );
        assert_eq!(
            without_values("unknown field `listners`, expected `listeners`"),
            "unknown field `listners`, expected `listeners`"
        );
        assert_eq!(without_values(r#"string "unterminated"#), "string");
    }

    #[test]
    fn reads_tls_flags_and_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "tls.yaml",
            "tls-cert: certs/cert.pem\ntls-key: certs/key.pem\ntls-client-ca: /etc/ca.pem\n",
        );
        let mut a = args();
        a.config = Some(path);
        let c = ServerConfig::resolve(&a).expect("resolve");
        assert_eq!(c.tls.cert, Some(dir.path().join("certs/cert.pem")));
        assert_eq!(c.tls.key, Some(dir.path().join("certs/key.pem")));
        assert_eq!(c.tls.client_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!c.tls.self_signed);
        a.tls.tls_self_signed = true;
        a.tls.tls_cert = Some("/flag/cert.pem".into());
        let c = ServerConfig::resolve(&a).expect("resolve");
        assert!(c.tls.self_signed);
        assert_eq!(c.tls.cert, Some(PathBuf::from("/flag/cert.pem")));

        let mut a = args();
        a.tls.tls_cert = Some("/c.pem".into());
        let error = ServerConfig::resolve(&a).expect_err("no key").to_string();
        assert!(error.contains("--tls-cert needs --tls-key"), "{error}");
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
