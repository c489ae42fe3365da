//! The `jwt://` URI: where the keys come from and what a token must say.

use std::path::PathBuf;
use std::time::Duration;

/// Why a `jwt://` URI is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not a URI at all.
    #[error("bad authenticator URI: {0}")]
    Uri(String),
    /// A parameter this authenticator does not know (a typo, usually).
    #[error("unknown parameter {0:?}; known: secret-file, public-key, jwks, aud, iss, claim, leeway, jwks-refetch, jwks-timeout, jwks-max-age, ca-file")]
    Unknown(String),
    /// A parameter given twice.
    #[error("parameter {0} is given twice")]
    Twice(String),
    /// None, or more than one, of the key sources.
    #[error("give exactly one of secret-file=FILE, public-key=FILE or jwks=URL")]
    KeySource,
    /// A parameter's value is unusable.
    #[error("bad {name}: {why}")]
    Value {
        /// The parameter.
        name: &'static str,
        /// What is wrong with its value.
        why: String,
    },
}

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HMAC secret (HS256/384/512), the file's bytes.
    Secret(PathBuf),
    /// A PEM public key: RSA, EC (P-256, P-384) or Ed25519.
    PublicKey(PathBuf),
    /// A JSON Web Key Set fetched over HTTP(S), keys chosen by `kid`.
    Jwks(url::Url),
}

/// How the key set is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksOptions {
    /// A token naming an unknown `kid` fetches the set again, at most once
    /// per this interval: a flood of made-up `kid`s costs the key server
    /// one request per interval, and a key rotated in is found soon.
    pub refetch: Duration,
    /// How long one fetch may take.
    pub timeout: Duration,
    /// The set is fetched again this often even when every `kid` is
    /// known, so that a key the issuer withdrew stops being trusted.
    pub max_age: Duration,
    /// CA certificates (PEM) to trust for an `https` key server instead of
    /// the system's: a private CA.
    pub ca_file: Option<PathBuf>,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            refetch: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            max_age: Duration::from_secs(300),
            ca_file: None,
        }
    }
}

/// Everything a `jwt://` URI says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The keys.
    pub source: KeySource,
    /// The audience a token must name (`aud`), when given.
    pub audience: Option<String>,
    /// The issuer a token must name (`iss`), when given.
    pub issuer: Option<String>,
    /// The claim holding the token's tags.
    pub claim: String,
    /// Clock skew allowed on `exp` and `nbf`, whole seconds.
    pub leeway: Duration,
    /// For [`KeySource::Jwks`].
    pub jwks: JwksOptions,
}

/// The longest refetch interval: a rotated-in key must be found well
/// within a minute.
const MAX_REFETCH: Duration = Duration::from_secs(60);

impl Config {
    /// Reads `jwt://?secret-file=...&aud=...`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mist_plugin_jwt::config::{Config, KeySource};
    /// let config = Config::from_uri("jwt://?secret-file=/etc/mist/jwt.key&leeway=5s").unwrap();
    /// assert_eq!(config.source, KeySource::Secret("/etc/mist/jwt.key".into()));
    /// assert_eq!((config.claim.as_str(), config.leeway), ("tags", Duration::from_secs(5)));
    /// assert!(Config::from_uri("jwt://?aud=x").is_err()); // no key
    /// ```
    pub fn from_uri(uri: &str) -> Result<Config, ConfigError> {
        let parsed = url::Url::parse(uri).map_err(|e| ConfigError::Uri(e.to_string()))?;
        if parsed.scheme() != "jwt" {
            return Err(ConfigError::Uri(format!(
                "the scheme is {}, expected jwt",
                parsed.scheme()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut sources = Vec::new();
        let mut config = Config {
            source: KeySource::Secret(PathBuf::new()),
            audience: None,
            issuer: None,
            claim: "tags".into(),
            leeway: Duration::from_secs(30),
            jwks: JwksOptions::default(),
        };
        for (name, value) in parsed.query_pairs() {
            if !seen.insert(name.to_string()) {
                return Err(ConfigError::Twice(name.into_owned()));
            }
            let value = value.into_owned();
            match &*name {
                "secret-file" => sources.push(KeySource::Secret(path("secret-file", value)?)),
                "public-key" => sources.push(KeySource::PublicKey(path("public-key", value)?)),
                "jwks" => sources.push(KeySource::Jwks(jwks_url(&value)?)),
                "aud" => config.audience = Some(non_empty("aud", value)?),
                "iss" => config.issuer = Some(non_empty("iss", value)?),
                "claim" => config.claim = non_empty("claim", value)?,
                "leeway" => config.leeway = whole_seconds("leeway", &value)?,
                "jwks-refetch" => {
                    let refetch = duration("jwks-refetch", &value)?;
                    if refetch < Duration::from_secs(1) || refetch > MAX_REFETCH {
                        return Err(ConfigError::Value {
                            name: "jwks-refetch",
                            why: "must be from 1s to 60s".into(),
                        });
                    }
                    config.jwks.refetch = refetch;
                }
                "jwks-timeout" => config.jwks.timeout = positive("jwks-timeout", &value)?,
                "jwks-max-age" => config.jwks.max_age = positive("jwks-max-age", &value)?,
                "ca-file" => config.jwks.ca_file = Some(path("ca-file", value)?),
                other => return Err(ConfigError::Unknown(other.to_string())),
            }
        }
        let mut sources = sources.into_iter();
        match (sources.next(), sources.next()) {
            (Some(source), None) => config.source = source,
            _ => return Err(ConfigError::KeySource),
        }
        if config.jwks.ca_file.is_some() && !matches!(config.source, KeySource::Jwks(_)) {
            return Err(ConfigError::Value {
                name: "ca-file",
                why: "it is for an https key set (jwks=https://...)".into(),
            });
        }
        Ok(config)
    }
}

fn non_empty(name: &'static str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::Value {
            name,
            why: "empty".into(),
        });
    }
    Ok(value)
}

fn path(name: &'static str, value: String) -> Result<PathBuf, ConfigError> {
    non_empty(name, value).map(PathBuf::from)
}

fn jwks_url(value: &str) -> Result<url::Url, ConfigError> {
    let bad = |why: String| ConfigError::Value { name: "jwks", why };
    let url = url::Url::parse(value).map_err(|e| bad(format!("{e}")))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err(bad("expected an http:// or https:// URL".into())),
    }
}

/// `30s`, `1m`, or a plain number of seconds.
fn duration(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|e| ConfigError::Value {
        name,
        why: format!("{value:?} is not a duration ({e}): write 30s, 5m, ..."),
    })
}

fn positive(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(name, value)?;
    if d.is_zero() {
        return Err(ConfigError::Value {
            name,
            why: "must be more than zero".into(),
        });
    }
    Ok(d)
}

/// `exp` and `nbf` are whole seconds: so is the leeway.
fn whole_seconds(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(name, value)?;
    if d.subsec_nanos() != 0 {
        return Err(ConfigError::Value {
            name,
            why: "must be whole seconds (exp and nbf are)".into(),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_parameter() {
        let config = Config::from_uri(
            "jwt://?jwks=https%3A%2F%2Fidp.example%2Fkeys%3Fv%3D2&aud=mist&iss=https://idp.example/&claim=scopes&leeway=0&jwks-refetch=2s&jwks-timeout=500ms&jwks-max-age=1h&ca-file=/ca.pem",
        )
        .unwrap();
        assert_eq!(
            config.source,
            KeySource::Jwks(url::Url::parse("https://idp.example/keys?v=2").unwrap())
        );
        assert_eq!(config.audience.as_deref(), Some("mist"));
        assert_eq!(config.issuer.as_deref(), Some("https://idp.example/"));
        assert_eq!(config.claim, "scopes");
        assert_eq!(config.leeway, Duration::ZERO);
        assert_eq!(
            config.jwks,
            JwksOptions {
                refetch: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                max_age: Duration::from_secs(3600),
                ca_file: Some("/ca.pem".into()),
            }
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        let err = |uri: &str| Config::from_uri(uri).unwrap_err().to_string();
        assert!(err("jwt://").contains("exactly one of"));
        assert!(err("jwt://?secret-file=a&public-key=b").contains("exactly one of"));
        assert!(err("jwt://?secret-file=a&secret-file=b").contains("twice"));
        assert!(err("jwt://?secretfile=a").contains("unknown parameter \"secretfile\""));
        assert!(err("jwt://?jwks=ftp://x/keys").contains("http:// or https://"));
        assert!(err("jwt://?secret-file=a&leeway=1.5s").contains("whole seconds"));
        assert!(err("jwt://?secret-file=a&leeway=soon").contains("not a duration"));
        assert!(err("jwt://?jwks=http://x/&jwks-refetch=5m").contains("1s to 60s"));
        assert!(err("jwt://?secret-file=a&ca-file=b").contains("https key set"));
        assert!(err("jwt://?secret-file=").contains("empty"));
        assert!(err("memory://?secret-file=a").contains("expected jwt"));
    }
}
