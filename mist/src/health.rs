//! `/readyz`: whether every part the broker depends on is up.
//!
//! Each part (a listener, the authenticator's store, the cluster
//! backplane) is registered once at start-up as a [`Part`]; a readiness
//! probe asks all of them at once, each bounded by [`CHECK_TIMEOUT`], and
//! the answer is kept for [`CACHE_FOR`] so that a probe every few hundred
//! milliseconds (or a crowd of them) costs the store one query a second at
//! most. Probes that arrive while a check runs wait for its answer instead
//! of starting their own.
//!
//! The cluster backplane (`--cluster`) is the part named `cluster`
//! ([`ClusterPart`], wrapping the node's `health()`); `/readyz`,
//! `mist_ready` and `mist_check_ready{check}` include it like the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RString;
use async_ffi::{FfiFuture, FutureExt};
use mist_sdk::abi::{AuthenticatorBox, ListenerBox};
use mist_sdk::Readiness;
use parking_lot::RwLock;
use tokio::time::Instant;

/// How long one part may take to answer before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// The future a [`Part::check`] returns.
pub type Check<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Something the broker needs in order to serve.
pub trait Part: Send + Sync + 'static {
    /// Its name in the report: `listener tcp://127.0.0.1:1445`, `authenticator`.
    fn name(&self) -> String;
    /// `Ok` when it is up; why not otherwise. Must not hold secrets.
    fn check(&self) -> Check<'_>;
}

/// The parts of one server and the last answer about them.
#[derive(Default)]
pub struct Health {
    parts: RwLock<Vec<Arc<dyn Part>>>,
    /// Schemes of the running listeners, for the metrics' zero series.
    listener_schemes: RwLock<Vec<String>>,
    /// Set once shutdown begins: a draining server is not ready.
    stopping: AtomicBool,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Report>)>>,
    /// The newest answer, for readers that cannot wait (the metrics).
    latest: parking_lot::Mutex<Option<Arc<Report>>>,
}

/// One readiness answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every part is up and the server is not shutting down.
    pub ready: bool,
    /// Each part's name and its error, if any, in registration order.
    pub parts: Vec<(String, Option<String>)>,
    /// The server is shutting down.
    pub stopping: bool,
}

impl Report {
    /// The body of `/readyz`: `{"ready":false,"not_ready":["authenticator"],
    /// "checks":{"authenticator":{"ready":false,"error":"..."},...}}`.
    pub fn to_json(&self) -> String {
        let mut checks = serde_json::Map::new();
        let mut not_ready = Vec::new();
        for (name, error) in &self.parts {
            let entry = match error {
                None => serde_json::json!({ "ready": true }),
                Some(error) => {
                    not_ready.push(name.clone());
                    serde_json::json!({ "ready": false, "error": error })
                }
            };
            checks.insert(name.clone(), entry);
        }
        if self.stopping {
            not_ready.push("shutdown".into());
        }
        serde_json::json!({
            "ready": self.ready,
            "not_ready": not_ready,
            "checks": checks,
        })
        .to_string()
    }
}

impl Health {
    /// Adds a part to every readiness check from now on.
    pub fn register(&self, part: Arc<dyn Part>) {
        self.parts.write().push(part);
    }

    /// Registers a running listener (`scheme://address`).
    pub fn register_listener(&self, uri: String, listener: Arc<ListenerBox>) {
        self.add_listener_scheme(&uri);
        self.register(Arc::new(ListenerPart { uri, listener }));
    }

    /// Notes the scheme of `uri` among the running listeners' (once).
    pub(crate) fn add_listener_scheme(&self, uri: &str) {
        let scheme = uri.split_once("://").map_or(uri, |(s, _)| s);
        let mut schemes = self.listener_schemes.write();
        if !schemes.iter().any(|s| s == scheme) {
            schemes.push(scheme.to_owned());
        }
    }

    /// The schemes of the registered listeners, each once.
    pub fn listener_schemes(&self) -> Vec<String> {
        self.listener_schemes.read().clone()
    }

    /// Marks the server as shutting down: not ready from now on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The current answer: a cached one younger than [`CACHE_FOR`], or a
    /// fresh check of every part.
    pub async fn readiness(&self) -> Arc<Report> {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = &*last {
            if at.elapsed() < CACHE_FOR {
                return report.clone();
            }
        }
        let report = Arc::new(self.check_all().await);
        *last = Some((Instant::now(), report.clone()));
        *self.latest.lock() = Some(report.clone());
        report
    }

    /// The newest answer, if a check has run.
    pub fn latest(&self) -> Option<Arc<Report>> {
        self.latest.lock().clone()
    }

    /// Checks every `period`, so that [`Health::latest`] (and the
    /// `mist_ready` metric) stays fresh when nobody probes `/readyz`.
    /// Runs until the task is aborted.
    pub async fn keep_checking(self: Arc<Self>, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.readiness().await;
        }
    }

    async fn check_all(&self) -> Report {
        let parts = self.parts.read().clone();
        let checks = parts.iter().map(|part| async move {
            let error = match tokio::time::timeout(CHECK_TIMEOUT, part.check()).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error),
                Err(_) => Some(format!(
                    "did not answer within {} ms",
                    CHECK_TIMEOUT.as_millis()
                )),
            };
            (part.name(), error)
        });
        let parts = futures_util::future::join_all(checks).await;
        let stopping = self.stopping.load(Ordering::Relaxed);
        let ready = !stopping && parts.iter().all(|(_, error)| error.is_none());
        if !ready {
            let down: Vec<&str> = parts
                .iter()
                .filter(|(_, e)| e.is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            tracing::debug!(?down, stopping, "not ready");
        }
        Report {
            ready,
            parts,
            stopping,
        }
    }
}

/// The readiness answer as the ABI carries it. The check runs on the host's
/// runtime (it uses tokio's timers); the caller, possibly a plugin library
/// with a tokio of its own, only awaits the join handle.
pub(crate) fn readiness_ffi(health: Arc<Health>) -> FfiFuture<Readiness> {
    let checking = mist_sdk::runtime().spawn(async move { health.readiness().await });
    async move {
        match checking.await {
            Ok(report) => Readiness {
                ready: report.ready,
                report: RString::from(report.to_json()),
            },
            Err(_) => Readiness {
                ready: false,
                report: r#"{"ready":false,"error":"the readiness check failed"}"#.into(),
            },
        }
    }
    .into_ffi()
}

/// A running listener: up while its accept loop runs.
pub struct ListenerPart {
    /// `scheme://address`.
    pub uri: String,
    /// The listener, shared with the server that stops it.
    pub listener: Arc<ListenerBox>,
}

impl Part for ListenerPart {
    fn name(&self) -> String {
        format!("listener {}", self.uri)
    }

    fn check(&self) -> Check<'_> {
        let state = self.listener.health().into_result();
        Box::pin(async move { state.map_err(|e| e.message.into_string()) })
    }
}

/// The authenticator's token store: up while the plugin can reach it.
pub struct AuthenticatorPart {
    store: AuthenticatorBox,
}

impl AuthenticatorPart {
    /// The part for `store`.
    pub fn new(store: AuthenticatorBox) -> Self {
        AuthenticatorPart { store }
    }
}

impl Part for AuthenticatorPart {
    fn name(&self) -> String {
        "authenticator".into()
    }

    fn check(&self) -> Check<'_> {
        let checking = self.store.check();
        Box::pin(async move {
            checking
                .await
                .into_result()
                .map_err(|e| e.message.into_string())
        })
    }
}

/// The cluster backplane: up while this node is connected to it. While it
/// is down the node serves its own clients, but messages do not cross
/// nodes, so a load balancer should prefer another node.
pub struct ClusterPart {
    cluster: crate::cluster::Cluster,
}

impl ClusterPart {
    /// The part for `cluster`.
    pub fn new(cluster: crate::cluster::Cluster) -> Self {
        ClusterPart { cluster }
    }
}

impl Part for ClusterPart {
    fn name(&self) -> String {
        "cluster".into()
    }

    fn check(&self) -> Check<'_> {
        // A flag and the plugin's own connection state: nothing to wait for.
        let health = self.cluster.health().map_err(|e| e.to_string());
        Box::pin(std::future::ready(health))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Flaky {
        up: Arc<AtomicBool>,
        asked: Arc<AtomicUsize>,
        hang: bool,
    }

    impl Part for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }

        fn check(&self) -> Check<'_> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let up = self.up.load(Ordering::SeqCst);
            let hang = self.hang;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                if up {
                    Ok(())
                } else {
                    Err("down for maintenance".into())
                }
            })
        }
    }

    fn flaky(hang: bool) -> (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<dyn Part>) {
        let up = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(AtomicUsize::new(0));
        let part = Arc::new(Flaky {
            up: up.clone(),
            asked: asked.clone(),
            hang,
        });
        (up, asked, part)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_for_a_second_then_checked_again() {
        let health = Health::default();
        let (up, asked, part) = flaky(false);
        health.register(part);
        assert!(health.readiness().await.ready);
        up.store(false, Ordering::SeqCst);
        for _ in 0..100 {
            assert!(health.readiness().await.ready, "cached");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one check per second");
        tokio::time::advance(CACHE_FOR).await;
        let report = health.readiness().await;
        assert!(!report.ready);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(json["not_ready"], serde_json::json!(["flaky"]));
        assert_eq!(json["checks"]["flaky"]["error"], "down for maintenance");
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_that_never_answers_is_down_after_the_timeout() {
        let health = Health::default();
        let (_, _, good) = flaky(false);
        let (_, _, hung) = flaky(true);
        health.register(good);
        health.register(hung);
        let report = health.readiness().await;
        assert!(!report.ready);
        assert_eq!(report.parts[0].1, None);
        assert!(report.parts[1]
            .1
            .as_deref()
            .is_some_and(|e| e.contains("did not answer")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_server_is_not_ready() {
        let health = Health::default();
        assert!(health.readiness().await.ready, "no parts, not stopping");
        health.set_stopping();
        tokio::time::advance(CACHE_FOR).await;
        let report = health.readiness().await;
        assert!(!report.ready);
        assert!(report.to_json().contains("shutdown"));
    }
}
