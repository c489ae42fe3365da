//! A JSON Web Key Set fetched over HTTP(S) and kept: keys by `kid`.
//!
//! The set is fetched at start, again when a token names a `kid` the set
//! does not have (a key was rotated in) but at most once per `refetch`
//! interval, and again every `max-age` (a key was withdrawn). A token
//! naming an unknown `kid` while the interval runs is refused at once: a
//! flood of made-up `kid`s costs the key server one request per interval.
//! A fetch that fails (the server is down, answers garbage, takes longer
//! than the timeout) changes nothing: the keys fetched before stay in use.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::JwksOptions;
use crate::keys::VerifyKey;

/// The largest key set body read; more is refused, not buffered.
const MAX_BODY_BYTES: usize = 1 << 20;
/// The most keys kept from one set.
const MAX_KEYS: usize = 100;

/// Why the key set could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The HTTPS client could not be set up (a bad `ca-file`).
    #[error("{0}")]
    Tls(String),
    /// The request failed: refused, reset, TLS.
    #[error("fetching {url} failed: {error}")]
    Request {
        /// The key set's URL.
        url: String,
        /// Why.
        error: String,
    },
    /// No answer within the timeout.
    #[error("fetching {url} took longer than {timeout:?}")]
    Timeout {
        /// The key set's URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// An answer that is not a usable key set.
    #[error("{url} did not answer a usable key set: {why}")]
    Unusable {
        /// The key set's URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// One key of the set.
#[derive(Debug)]
pub struct Entry {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// The key.
    pub key: Arc<VerifyKey>,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The key set, and how to fetch it again.
pub struct Jwks {
    url: url::Url,
    /// The URL without its query, for logs and errors.
    shown: String,
    options: JwksOptions,
    client: HttpsClient,
    keys: std::sync::RwLock<Arc<Vec<Entry>>>,
    /// Serializes fetches; holds when the last one started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// Requests sent, for the readiness report.
    fetches: std::sync::atomic::AtomicU64,
    /// Why the last fetch failed, until one succeeds.
    last_error: std::sync::Mutex<Option<String>>,
}

/// What looking a `kid` up found.
pub enum Lookup {
    Found(Arc<VerifyKey>),
    /// No such key, even after fetching the set again when allowed.
    Unknown {
        /// Keys in the set.
        held: usize,
    },
}

impl Jwks {
    /// Sets up the client and fetches the set once. A failed first fetch
    /// is logged, not fatal: the broker starts, refuses tokens as of
    /// unknown keys, and reports itself not ready until a fetch works.
    pub async fn open(url: url::Url, options: JwksOptions) -> Result<Arc<Jwks>, FetchError> {
        let client = https_client(&options)?;
        let shown = {
            let mut shown = url.clone();
            shown.set_query(None);
            shown.set_fragment(None);
            shown.to_string()
        };
        if url.scheme() == "http" {
            tracing::warn!(
                url = %shown,
                "the JWT key set is fetched over plain http: anyone on the path can substitute keys; use https"
            );
        }
        let jwks = Arc::new(Jwks {
            url,
            shown,
            options,
            client,
            keys: std::sync::RwLock::new(Arc::new(Vec::new())),
            fetching: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
        });
        {
            let mut last = jwks.fetching.lock().await;
            *last = Some(Instant::now());
            jwks.fetch().await;
        }
        tokio::spawn(keep_fresh(Arc::downgrade(&jwks)));
        Ok(jwks)
    }

    /// The key for a token's `kid`: looked up, or fetched again when the
    /// set does not have it and the refetch interval allows.
    pub async fn lookup(&self, kid: Option<&str>) -> Lookup {
        if let Some(key) = self.find(kid) {
            return Lookup::Found(key);
        }
        {
            let mut last = self.fetching.lock().await;
            // Another token's fetch may have brought the key meanwhile.
            if let Some(key) = self.find(kid) {
                return Lookup::Found(key);
            }
            let due = last.is_none_or(|at| at.elapsed() >= self.options.refetch);
            if due {
                *last = Some(Instant::now());
                self.fetch().await;
            }
        }
        match self.find(kid) {
            Some(key) => Lookup::Found(key),
            None => Lookup::Unknown {
                held: self.current().len(),
            },
        }
    }

    fn current(&self) -> Arc<Vec<Entry>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A token without a `kid` is checked with the set's only key, if it
    /// has exactly one.
    fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        let keys = self.current();
        match kid {
            Some(kid) => keys
                .iter()
                .find(|e| e.kid.as_deref() == Some(kid))
                .map(|e| e.key.clone()),
            None if keys.len() == 1 => keys.first().map(|e| e.key.clone()),
            None => None,
        }
    }

    /// `Ok` once a set is held; else why not.
    pub fn health(&self) -> Result<(), String> {
        if !self.current().is_empty() {
            return Ok(());
        }
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "no key fetched yet".into());
        Err(format!("no JWT key set from {}: {why}", self.shown))
    }

    /// Requests sent to the key server so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches the set and, if it is usable, puts it in place. Called with
    /// `fetching` held.
    async fn fetch(&self) {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fetched = tokio::time::timeout(self.options.timeout, self.get())
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: self.shown.clone(),
                    timeout: self.options.timeout,
                })
            });
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match fetched {
            Ok(keys) => {
                tracing::info!(url = %self.shown, keys = keys.len(), "fetched the JWT key set");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
                *last_error = None;
            }
            Err(e) => {
                let held = self.current().len();
                tracing::warn!(keys_kept = held, "{e}; the keys fetched before stay in use");
                *last_error = Some(e.to_string());
            }
        }
    }

    async fn get(&self) -> Result<Vec<Entry>, FetchError> {
        let failed = |error: String| FetchError::Request {
            url: self.shown.clone(),
            error,
        };
        let unusable = |why: String| FetchError::Unusable {
            url: self.shown.clone(),
            why,
        };
        let request = hyper::Request::get(self.url.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| failed(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(unusable(format!("status {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| unusable(format!("reading the body: {e}")))?
            .to_bytes();
        parse_set(&body).map_err(unusable)
    }
}

/// The usable keys of a key set document. Keys that cannot be used (of
/// another kind, for encryption) are skipped, each with a log line; a set
/// with none left is unusable.
pub fn parse_set(body: &[u8]) -> Result<Vec<Entry>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWK set ({e})"))?;
    let mut entries = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        if entries.len() == MAX_KEYS {
            tracing::warn!("the JWT key set holds more than {MAX_KEYS} keys: the rest are ignored");
            break;
        }
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::warn!("skipping key #{i} of the JWT key set: not a JWK ({e})");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        match VerifyKey::from_jwk(&jwk) {
            Ok(key) => entries.push(Entry {
                kid,
                key: Arc::new(key),
            }),
            // A kid is public, set by the issuer: fine in a log line.
            Err(why) => tracing::warn!(kid = ?kid, "skipping key #{i} of the JWT key set: {why}"),
        }
    }
    if entries.is_empty() {
        return Err("it holds no key usable for JWT signatures".into());
    }
    Ok(entries)
}

/// Fetches the set every `max-age`, for as long as the store exists.
async fn keep_fresh(jwks: Weak<Jwks>) {
    loop {
        let Some(max_age) = jwks.upgrade().map(|j| j.options.max_age) else {
            return;
        };
        tokio::time::sleep(max_age).await;
        let Some(jwks) = jwks.upgrade() else {
            return;
        };
        let mut last = jwks.fetching.lock().await;
        *last = Some(Instant::now());
        jwks.fetch().await;
    }
}

/// hyper's errors say little at the top; the cause says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An HTTP(S) client trusting the system's CAs, or only those of
/// `ca-file`.
fn https_client(options: &JwksOptions) -> Result<HttpsClient, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| FetchError::Tls(format!("cannot read ca-file {shown}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    FetchError::Tls(format!("ca-file {shown} is not PEM certificates: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    FetchError::Tls(format!(
                        "ca-file {shown} holds an unusable certificate: {e}"
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(FetchError::Tls(format!(
                    "ca-file {shown} holds no certificate"
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!("reading the system's CA certificates: {error}");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            tracing::debug!("trusting {added} CA certificates of the system for the JWT key set");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
