//! The cluster module over the real backplane plugins, through the plugin
//! interface as the broker will use it: three nodes in this process, each
//! with its own connection to a real `redis-server` or `nats-server` that
//! the test starts, kills and restarts. The same suite runs on both.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use mist::broker::{Broker, Limits};
use mist::cluster::{Cluster, ClusterConfig, Incoming, LocalBroker, TokenDigest};
use mist::plugins::{Registry, Source};
use mist_e2e::service::Service;
use mist_e2e::TIMEOUT;
use mist_sdk::abi::ModuleRef;
use parking_lot::Mutex;

/// What the broker would have delivered: the data of every message that
/// matches one of the node's subscriptions exactly (the broker's local
/// match: a node may receive a message none of its subscriptions match), in
/// order, and the token digests announced.
#[derive(Default)]
struct Recorder {
    subscriptions: Mutex<Vec<Vec<String>>>,
    messages: Mutex<Vec<String>>,
    tokens: Mutex<Vec<TokenDigest>>,
    /// Times the node asked for every token to be rechecked.
    rechecks: Mutex<u64>,
}

impl LocalBroker for Recorder {
    fn deliver(&self, messages: &[Incoming<'_>]) -> usize {
        let subscriptions = self.subscriptions.lock();
        let mut got = self.messages.lock();
        for message in messages {
            let tags: Vec<&str> = message.tags.iter().collect();
            if subscriptions
                .iter()
                .any(|s| s.iter().all(|t| tags.contains(&t.as_str())))
            {
                got.push(serde_json::from_str(message.data).unwrap());
            }
        }
        0
    }

    fn token_changed(&self, digest: &TokenDigest) {
        self.tokens.lock().push(*digest);
    }

    fn recheck_all(&self) {
        *self.rechecks.lock() += 1;
    }
}

impl Recorder {
    fn data(&self) -> Vec<String> {
        self.messages.lock().clone()
    }
}

struct Node {
    cluster: Cluster,
    local: Arc<Recorder>,
}

/// A node joined through `module`'s `open_backplane`, as the host loads a
/// built-in plugin.
async fn node(module: ModuleRef, uri: &str) -> Node {
    let broker = Broker::new(Limits::default());
    let mut registry = Registry::new();
    registry
        .start(module, Source::Builtin, "{}".into(), &broker)
        .unwrap();
    let config = ClusterConfig::from_uri(uri).unwrap();
    let plugin = registry
        .backplane(&config.scheme)
        .expect("a plugin serving the scheme")
        .handle
        .clone();
    let local = Arc::new(Recorder::default());
    let uri = uri.to_string();
    let cluster = Cluster::join(config, local.clone(), move |inbox| async move {
        plugin.open_backplane(uri.into(), inbox).await.into_result()
    })
    .await
    .unwrap();
    Node { cluster, local }
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn subscribe(node: &Node, tags: &[&str]) {
    node.local
        .subscriptions
        .lock()
        .push(tags.iter().map(|t| t.to_string()).collect());
    if let Some(confirmed) = node.cluster.subscribe(tags) {
        tokio::time::timeout(TIMEOUT, confirmed)
            .await
            .unwrap()
            .unwrap();
    }
}

/// `got == want`, reported by the first difference (the lists are long).
fn same(got: &[String], want: &[String], who: &str) {
    let first = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && first.is_none(),
        "{who}: got {} messages, want {}; first difference at {first:?}",
        got.len(),
        want.len()
    );
}

fn json(data: &str) -> String {
    serde_json::to_string(data).unwrap()
}

async fn suite(module: fn() -> ModuleRef, uri: &str, server: Option<&Service>) {
    let a = node(module(), uri).await;
    let b = node(module(), uri).await;
    let c = node(module(), uri).await;

    // The barrier: once b's confirmation is in, what a publishes reaches b.
    subscribe(&b, &["x"]).await;
    subscribe(&c, &["x", "y"]).await;
    subscribe(&c, &["z"]).await;
    a.cluster.publish(&["x"], &json("first"));
    until("b hears a", TIMEOUT, || b.local.data() == ["first"]).await;

    // A burst over overlapping interests: exactly once each, in order.
    let mut for_b = vec!["first".to_string()];
    let mut for_c = Vec::new();
    for i in 0..2000 {
        // Interleaved at first (a payload each), then in runs of 50
        // (batched: one payload per run).
        let pick = if i < 300 { i % 3 } else { (i / 50) % 3 };
        let tags: &[&str] = match pick {
            0 => &["x"],
            1 => &["x", "y", "z"],
            _ => &["z", "w"],
        };
        let data = format!("m{i}");
        a.cluster.publish(tags, &json(&data));
        if tags.contains(&"x") {
            for_b.push(data.clone());
        }
        if tags.contains(&"z") || tags.contains(&"y") && tags.contains(&"x") {
            for_c.push(data);
        }
    }
    until("the burst reaches b", TIMEOUT, || {
        b.local.data().len() >= for_b.len()
    })
    .await;
    until("the burst reaches c", TIMEOUT, || {
        c.local.data().len() >= for_c.len()
    })
    .await;
    // Messages after the burst would show up as extras: one more barrier.
    a.cluster.publish(&["x", "z"], &json("end"));
    for_b.push("end".into());
    for_c.push("end".into());
    until("the end reaches b", TIMEOUT, || {
        b.local.data().last().map(String::as_str) == Some("end")
    })
    .await;
    until("the end reaches c", TIMEOUT, || {
        c.local.data().last().map(String::as_str) == Some("end")
    })
    .await;
    same(&b.local.data(), &for_b, "b");
    same(&c.local.data(), &for_c, "c");
    assert!(
        a.local.data().is_empty(),
        "the publisher's node got its own messages"
    );
    let sent = a.cluster.figures();
    assert!(
        sent.payloads_sent < sent.messages_sent / 2,
        "no batching: {sent:?}"
    );
    // c holds "x"+"y" and "z": a message matching both crossed once.
    assert_eq!(c.cluster.figures().duplicates, 0);
    assert_eq!(
        c.cluster.figures().messages_received,
        for_c.len() as u64,
        "c received what it matches, nothing more"
    );

    // Heartbeats: every node sees the three.
    until("every node sees three nodes", TIMEOUT, || {
        [&a, &b, &c].iter().all(|n| n.cluster.nodes().len() == 3)
    })
    .await;

    // Token changes cross as digests.
    b.cluster.token_changed("t0ken");
    until("a hears of the token", TIMEOUT, || {
        !a.local.tokens.lock().is_empty()
    })
    .await;
    assert_eq!(a.local.tokens.lock()[0], TokenDigest::of("t0ken"));

    // The backplane dies (where there is a server to kill).
    if let Some(server) = server {
        // Every node notices, keeps going, drops and
        // counts what it would have sent.
        server.kill();
        until("every node notices", TIMEOUT, || {
            [&a, &b, &c]
                .iter()
                .all(|n| n.cluster.health().is_err() && !n.cluster.figures().up)
        })
        .await;
        let dropped = a.cluster.figures().dropped;
        a.cluster.publish(&["x"], &json("lost"));
        assert_eq!(a.cluster.figures().dropped, dropped + 1);
        // A token change cannot be lost: b keeps it until the backplane
        // takes it.
        b.cluster.token_changed("changed-while-down");
        let rechecks: Vec<u64> = [&a, &b, &c]
            .iter()
            .map(|n| *n.local.rechecks.lock())
            .collect();

        // It returns: nodes reconnect and resubscribe by themselves within 5 s.
        server.restart();
        let back = Instant::now();
        until("every node reconnects", Duration::from_secs(5), || {
            [&a, &b, &c].iter().all(|n| n.cluster.health().is_ok())
        })
        .await;
        a.cluster.publish(&["x"], &json("after"));
        until(
            "delivery resumes",
            Duration::from_secs(5).saturating_sub(back.elapsed()),
            || b.local.data().last().map(String::as_str) == Some("after"),
        )
        .await;
        assert!(!b.local.data().contains(&"lost".to_string()));
        // The others learn of the change made while down: by b's payload,
        // kept until the backplane took it, or, when b got back first and
        // sent it before they were listening again, by the recheck of every
        // token each does on its own return (docs/cluster.md,
        // "Revocation"); which one wins is a race between the nodes'
        // reconnections.
        until("the token change made while down arrives", TIMEOUT, || {
            [(&a, rechecks[0]), (&c, rechecks[2])]
                .iter()
                .all(|(n, before)| {
                    n.local
                        .tokens
                        .lock()
                        .contains(&TokenDigest::of("changed-while-down"))
                        || *n.local.rechecks.lock() > *before
                })
        })
        .await;
        // Back up, every node rechecked every token.
        until("every node rechecks every token", TIMEOUT, || {
            [&a, &b, &c]
                .iter()
                .zip(&rechecks)
                .all(|(n, before)| *n.local.rechecks.lock() > *before)
        })
        .await;
    }

    // A node leaving is dropped from the others' lists at once: by its
    // goodbye, which the Redis and NATS plugins still send at `stop`, well
    // before three missed heartbeats (at least 2 s from now) could drop it.
    // (The example plugin drops what is queued at `stop`.)
    c.cluster.stop();
    let goodbye = if server.is_some() {
        Duration::from_millis(1500)
    } else {
        TIMEOUT
    };
    until("c's goodbye arrives", goodbye, || {
        a.cluster.nodes().len() == 2
    })
    .await;
    a.cluster.stop();
    b.cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_redis() {
    let redis = mist_e2e::redis::Redis::start();
    suite(
        mist_plugin_redis::module,
        &redis.uri(),
        Some(&redis.service),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_nats() {
    let nats = mist_e2e::nats::Nats::start();
    suite(
        mist_plugin_nats::module,
        &format!("{}?prefix=app.test", nats.uri()),
        Some(&nats.service),
    )
    .await;
}

/// The example plugin's `unixgram://` backplane, built as a stranger builds
/// it and loaded from its shared library: a third party's backplane passes
/// the same suite (there is no server to kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_the_example_plugin() {
    static LIBRARY: std::sync::OnceLock<ModuleRef> = std::sync::OnceLock::new();
    fn example() -> ModuleRef {
        *LIBRARY.get().unwrap()
    }
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugin/Cargo.toml");
    // target/<profile>/deps/cluster-<hash> → target/
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap());
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building examples/plugin failed"
    );
    let library = profile_dir.join(format!(
        "{}mist_example_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let _ = LIBRARY.set(mist::plugins::load_library(&library).unwrap());
    let dir = tempfile::tempdir().unwrap();
    suite(
        example,
        &format!("unixgram://{}", dir.path().display()),
        None,
    )
    .await;
}
