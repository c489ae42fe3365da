//! `mist --server`: load the plugins, open the authenticator, start the
//! listeners, serve until told to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mist_sdk::abi::ListenerBox;

use crate::broker::{Broker, BrokerError};
use crate::cluster::{Cluster, ClusterConfig, MessageLimits};
use crate::config::ServerConfig;
use crate::health::{AuthenticatorPart, ClusterPart, ListenerPart};
use crate::plugins::{load_library, LoadError, PluginsFile, PluginsFileError, Registry, Source};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// `--authenticator` without `--token`.
    #[error("an authenticator needs a server token: start with --token-file FILE, the MIST_TOKEN environment variable, --token TOKEN, or token: in the config file")]
    TokenRequired,
    /// `plugins.toml` is unusable.
    #[error(transparent)]
    PluginsFile(#[from] PluginsFileError),
    /// A required plugin failed to load or start.
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// No plugin provides the authenticator's scheme.
    #[error("no loaded plugin provides authenticator {uri} (available: {available})")]
    NoAuthenticator {
        /// The URI, without credentials.
        uri: String,
        /// The schemes that are available.
        available: String,
    },
    /// The authenticator could not be opened.
    #[error("cannot open authenticator {uri}: {message}")]
    Authenticator {
        /// The URI, without credentials.
        uri: String,
        /// What the plugin said.
        message: String,
    },
    /// A listener could not start (for example, its port is taken).
    #[error("cannot start listener {uri}: {message}")]
    Listener {
        /// The URI.
        uri: String,
        /// What the plugin said.
        message: String,
    },
    /// No loaded plugin serves the `--cluster` URI's scheme.
    #[error("no loaded plugin provides cluster backplane {uri} (available: {available})")]
    NoBackplane {
        /// The URI, without credentials.
        uri: String,
        /// The schemes that are available.
        available: String,
    },
    /// The `--cluster` URI is malformed, or the plugin refused it. (A
    /// backplane that is merely unreachable is no error: the node starts,
    /// serves its own clients and reports `cluster` not ready until it
    /// connects.)
    #[error("cannot join cluster {uri}: {message}")]
    Cluster {
        /// The URI, without credentials.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// `--metrics-listener` is not an `http://host:port` URI.
    #[error("bad --metrics-listener {0:?}: expected http://host:port")]
    MetricsListener(String),
    /// Configuring the broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// How often the server checks its own readiness when nobody asks, for
/// the `mist_ready` metric.
const HEALTH_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// A started server: its plugins, broker and running listeners.
pub struct Server {
    broker: Broker,
    /// Refreshes the readiness answer the metrics export.
    health_checks: Option<tokio::task::JoinHandle<()>>,
    listeners: Vec<(String, Arc<ListenerBox>)>,
    /// This node's cluster, left at shutdown once connections are done.
    cluster: Option<Cluster>,
    /// The started plugins: held for as long as the server runs.
    registry: Registry,
}

impl Server {
    /// Starts everything `config` asks for, built-in plugins included.
    pub async fn start(config: &ServerConfig) -> Result<Server, ServerError> {
        if config.authenticator.is_some() && config.token.as_deref().unwrap_or("").is_empty() {
            return Err(ServerError::TokenRequired);
        }
        let broker = Broker::new(config.limits);
        let registry = load_plugins(config, &broker)?;
        broker.set_commands(registry.command_routes())?;

        if let (Some(uri), Some(token)) = (&config.authenticator, &config.token) {
            let shown = redact(uri);
            let scheme = scheme_of(uri);
            let plugin =
                registry
                    .authenticator(scheme)
                    .ok_or_else(|| ServerError::NoAuthenticator {
                        uri: shown.clone(),
                        available: registry.authenticator_schemes().join(", "),
                    })?;
            let store = plugin
                .handle
                .open_authenticator(uri.as_str().into())
                .await
                .into_result()
                .map_err(|e| ServerError::Authenticator {
                    uri: shown.clone(),
                    message: e.message.into_string(),
                })?;
            broker
                .health()
                .register(Arc::new(AuthenticatorPart::new(store.clone())));
            broker.set_authenticator(store, token.clone(), &plugin.name)?;
            tracing::info!("admin mode on, tokens stored in {shown}");
        }

        // Before any listener: no session may exist unknown to the cluster.
        let cluster = match &config.cluster {
            Some(uri) => Some(join_cluster(uri, config, &broker, &registry).await?),
            None => None,
        };

        let mut server = Server {
            health_checks: None,
            broker,
            listeners: Vec::new(),
            cluster,
            registry,
        };
        for uri in &config.listeners {
            let scheme = scheme_of(uri);
            // The global certificate flags reach TLS listeners through
            // their URI (parameters documented in mist_sdk::tls).
            let start_uri = if TLS_SCHEMES.contains(&scheme) {
                config.tls.apply(uri)
            } else {
                uri.clone()
            };
            let Some(plugin) = server.registry.listener(scheme) else {
                tracing::error!(
                    "skipping listener {uri}: no loaded plugin serves {scheme}:// (available: {})",
                    server.registry.listener_schemes().join(", ")
                );
                continue;
            };
            match plugin
                .handle
                .start_listener(start_uri.as_str().into())
                .into_result()
            {
                Ok(listener) => {
                    let addr = listener.local_addr();
                    let (uri, listener) = (format!("{scheme}://{addr}"), Arc::new(listener));
                    server
                        .broker
                        .health()
                        .register_listener(uri.clone(), listener.clone());
                    // Announced only once registered: whoever reads this
                    // line (a supervisor, a test) may scrape /metrics and
                    // must find the listener's series there.
                    tracing::info!("listening on {uri}");
                    server.listeners.push((uri, listener));
                }
                Err(e) => {
                    server.stop();
                    return Err(ServerError::Listener {
                        uri: uri.clone(),
                        message: e.message.into_string(),
                    });
                }
            }
        }
        if server.listeners.is_empty() {
            tracing::warn!("no listener is running: clients cannot connect");
        }
        if let Some(uri) = &config.metrics_listener {
            if let Err(e) = server.start_metrics_listener(uri) {
                server.stop();
                return Err(e);
            }
        }
        let health = server.broker.health().clone();
        server.health_checks = Some(tokio::spawn(health.keep_checking(HEALTH_CHECK_PERIOD)));
        Ok(server)
    }

    /// `--metrics-listener`: the http plugin, asked (`?only=ops`) to serve
    /// nothing but the operator's endpoints.
    fn start_metrics_listener(&mut self, uri: &str) -> Result<(), ServerError> {
        if scheme_of(uri) != "http" {
            return Err(ServerError::MetricsListener(uri.to_string()));
        }
        let plugin = self
            .registry
            .listener("http")
            .ok_or_else(|| ServerError::Listener {
                uri: uri.to_string(),
                message: "no loaded plugin serves http://".into(),
            })?;
        let separator = if uri.contains('?') { '&' } else { '?' };
        let listener = plugin
            .handle
            .start_listener(format!("{uri}{separator}only=ops").as_str().into())
            .into_result()
            .map_err(|e| ServerError::Listener {
                uri: uri.to_string(),
                message: e.message.into_string(),
            })?;
        let uri = format!("http://{}", listener.local_addr());
        tracing::info!("serving metrics and health on {uri}");
        let listener = Arc::new(listener);
        self.broker.health().register(Arc::new(ListenerPart {
            uri: format!("{uri} (metrics)"),
            listener: listener.clone(),
        }));
        self.listeners.push((uri, listener));
        Ok(())
    }

    /// The running listeners' URIs with the addresses actually bound.
    pub fn listener_uris(&self) -> Vec<String> {
        self.listeners.iter().map(|(uri, _)| uri.clone()).collect()
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops every listener: it accepts no more connections, and each of
    /// its connections stops reading, writes out what is queued for it and
    /// closes.
    pub fn stop(&mut self) {
        self.broker.health().set_stopping();
        if let Some(checks) = self.health_checks.take() {
            checks.abort();
        }
        for (uri, listener) in self.listeners.drain(..) {
            listener.stop();
            tracing::debug!("stopped {uri}");
        }
    }

    /// Asks every listener to re-read what it loaded from files (TLS
    /// certificates): new connections get the new ones, open ones keep
    /// theirs. A listener whose files fail keeps its old ones; why is logged.
    /// The cluster re-reads its key file the same way.
    pub fn reload(&self) {
        if let Some(cluster) = &self.cluster {
            if let Err(e) = cluster.reload_key() {
                tracing::error!(
                    "reloading the cluster key failed, the node keeps its old key: {e}"
                );
            }
        }
        for (uri, listener) in &self.listeners {
            let tls = TLS_SCHEMES.contains(&scheme_of(uri));
            match listener.reload().into_result() {
                Ok(()) if tls => tracing::info!("{uri}: TLS certificate reloaded"),
                Ok(()) => {}
                Err(e) => tracing::error!(
                    "{uri}: reloading failed, the listener keeps its old certificate: {}",
                    e.message
                ),
            }
        }
    }

    /// Shuts down gracefully (SPEC §7): stops accepting, gives connections
    /// up to `timeout` to write out what is queued for them, then calls each
    /// plugin's stop hook.
    pub async fn shutdown(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.stop();
        loop {
            let open = self.broker.stats().sessions;
            if open == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "{open} connection(s) still writing after the shutdown timeout of {timeout:?}: closing them"
                );
                break;
            }
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
        if let Some(cluster) = self.cluster.take() {
            // After the connections: what they published has been handed
            // on; the goodbye lets the other nodes drop this one at once.
            cluster.stop();
        }
        let mut stopping = tokio::task::JoinSet::new();
        for plugin in self.registry.plugins() {
            let (name, stop) = (plugin.name.clone(), plugin.handle.stop());
            stopping.spawn(async move {
                stop.await;
                name
            });
        }
        let all_stopped = tokio::time::timeout(PLUGIN_STOP_TIMEOUT, async {
            while let Some(stopped) = stopping.join_next().await {
                if let Ok(name) = stopped {
                    tracing::debug!("plugin {name} stopped");
                }
            }
        })
        .await;
        if all_stopped.is_err() {
            tracing::warn!(
                "{} plugin(s) did not stop within {PLUGIN_STOP_TIMEOUT:?}",
                stopping.len()
            );
        }
    }
}

/// Listener schemes served over TLS: the global `--tls-*` flags apply to them.
const TLS_SCHEMES: &[&str] = &["tls", "wss", "https"];
/// How often shutdown looks whether every connection has finished writing.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);
/// How long the plugins' stop hooks may take together.
const PLUGIN_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a server until `shutdown` completes, reloading certificates on
/// SIGHUP, then shuts it down gracefully.
pub async fn run(
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    // Poll the shutdown signal once before anything starts: a signal
    // handler that installs itself when first polled (tokio's) is then in
    // place before any listener is up or systemd hears READY=1, so a
    // SIGTERM at any moment after that is a clean shutdown, not the default
    // action (death). One that arrives during start-up is kept for below.
    let mut shutdown = std::pin::pin!(shutdown);
    let stop_now = futures_util::FutureExt::now_or_never(&mut shutdown).is_some();
    let server = Server::start(config).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let mut reloads = Reloads::new();
    if !stop_now {
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = reloads.next() => {
                    tracing::info!("SIGHUP: reloading certificates and the cluster key");
                    server.reload();
                }
            }
        }
    }
    tracing::info!(
        "shutting down: writing what is queued for up to {:?}",
        config.shutdown_timeout
    );
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    server.shutdown(config.shutdown_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (`Type=notify`) how start-up or shutdown went; nothing
/// when not started by systemd.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// SIGHUP, where there is such a thing.
struct Reloads {
    #[cfg(unix)]
    hangups: Option<tokio::signal::unix::Signal>,
}

impl Reloads {
    fn new() -> Reloads {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let hangups = signal(SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!("cannot watch for SIGHUP, certificates will not reload: {e}")
                })
                .ok();
            Reloads { hangups }
        }
        #[cfg(not(unix))]
        Reloads {}
    }

    /// Completes at the next SIGHUP; never, without a way to receive it.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(hangups) = &mut self.hangups {
            if hangups.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

fn load_plugins(config: &ServerConfig, broker: &Broker) -> Result<Registry, ServerError> {
    let mut registry = Registry::new();
    for module in crate::builtin::modules() {
        registry.start(module, Source::Builtin, "{}".into(), broker)?;
    }
    let Some(path) = &config.plugins_file else {
        return Ok(registry);
    };
    let file = PluginsFile::read(path)?;
    for entry in &file.plugins {
        let started = load_library(&entry.path).and_then(|module| {
            registry.start(
                module,
                Source::File(entry.path.clone()),
                entry.settings_json(),
                broker,
            )
        });
        match started {
            Ok(()) => tracing::info!("loaded plugin {}", entry.path.display()),
            Err(e) if entry.required => return Err(e.into()),
            Err(e) => tracing::error!("skipping plugin (required = false): {e}"),
        }
    }
    Ok(registry)
}

/// Joins the cluster `uri` names through the plugin serving its scheme, and
/// makes the broker a node of it, with a `cluster` part for `/readyz`.
async fn join_cluster(
    uri: &str,
    server: &ServerConfig,
    broker: &Broker,
    registry: &Registry,
) -> Result<Cluster, ServerError> {
    let shown = redact(uri);
    let failed = |message: String| ServerError::Cluster {
        uri: shown.clone(),
        message,
    };
    let mut config = ClusterConfig::from_uri(uri).map_err(|e| failed(e.to_string()))?;
    config.key_file = server.cluster_key_file.clone();
    config.limits = MessageLimits {
        max_message_bytes: server.limits.max_message_bytes,
    };
    let plugin = registry
        .backplane(&config.scheme)
        .ok_or_else(|| ServerError::NoBackplane {
            uri: shown.clone(),
            available: registry.backplane_schemes().join(", "),
        })?
        .handle
        .clone();
    let local = broker.cluster_local(tokio::runtime::Handle::current());
    let open_uri = uri.to_string();
    let cluster = Cluster::join(config, local, move |inbox| async move {
        plugin
            .open_backplane(open_uri.into(), inbox)
            .await
            .into_result()
    })
    .await
    .map_err(|e| failed(e.to_string()))?;
    if let Err(e) = broker.set_cluster(cluster.clone()) {
        cluster.stop();
        return Err(e.into());
    }
    broker
        .health()
        .register(Arc::new(ClusterPart::new(cluster.clone())));
    match cluster.health() {
        Ok(()) => tracing::info!("node {} joined cluster {shown}", cluster.node()),
        Err(e) => tracing::warn!(
            "node {} is serving its own clients only until cluster {shown} can be reached: {e}",
            cluster.node()
        ),
    }
    Ok(cluster)
}

fn scheme_of(uri: &str) -> &str {
    uri.split_once("://").map_or(uri, |(scheme, _)| scheme)
}

/// The URI without a password, for logs and errors.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432?db=x"),
            "postgres://u:***@h:5432?db=x"
        );
        assert_eq!(redact("memory://"), "memory://");
        assert_eq!(redact("scribble://?db=/tmp/a@b"), "scribble://?db=/tmp/a@b");
    }
}
