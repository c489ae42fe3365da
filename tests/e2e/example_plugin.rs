//! The example third-party plugin (`examples/plugin`), built from its own
//! crate as a stranger would, loaded from `plugins.toml`, and driven from
//! real clients: its commands, its Unix-socket listener and its token file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mist_e2e::client::{delivery, error_of};
use mist_e2e::{artifacts, Client, MistServer};
use serde_json::{json, Value};

/// `cargo build` in examples/plugin, once; returns the library.
fn example_library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = &artifacts().dir; // target/<profile>
        let target = dir.parent().unwrap();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugin/Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building examples/plugin failed");
        artifacts().library("mist_example_plugin")
    })
}

#[tokio::test]
async fn a_stranger_plugin_provides_commands_a_listener_and_an_authenticator() {
    let library = example_library();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[tokens]\nalice = [\"chat\", \"news\"]\nbob = [\"chat\"]\n",
    )
    .unwrap();
    let plugins = dir.path().join("plugins.toml");
    std::fs::write(
        &plugins,
        format!(
            "[[plugin]]\npath = {:?}\nrequired = true\n",
            library.display().to_string()
        ),
    )
    .unwrap();
    let socket = dir.path().join("mist.sock");
    let listeners = format!("tcp://127.0.0.1:0,unix://{}", socket.display());
    let server = MistServer::start_with(
        &[
            "--plugins",
            plugins.to_str().unwrap(),
            "--listeners",
            &listeners,
            "--authenticator",
            &format!("tokenfile://{}", tokens.display()),
            "--token",
            "admin",
        ],
        2,
    );
    assert_eq!(server.addr("unix"), socket.display().to_string());

    // The listener and the authenticator: alice over the Unix socket.
    let mut alice = Client::connect_unix(socket.to_str().unwrap()).await;
    alice
        .send(json!({"command": "auth", "data": "alice"}))
        .await;
    alice
        .send(json!({"command": "subscribe", "tags": ["chat"]}))
        .await;
    assert!(alice.sync().await.is_empty());
    alice
        .send(json!({"command": "subscribe", "tags": ["secret"]}))
        .await;
    let replies = alice.sync().await;
    assert!(
        error_of(&replies[0]).contains("permission denied"),
        "{replies:?}"
    );

    let mut admin = Client::connect(&server.tcp()).await;
    admin
        .send(json!({"command": "auth", "data": "admin"}))
        .await;
    admin.publish(&["chat", "x"], "over tcp").await;
    admin.expect_nothing().await;
    assert_eq!(alice.recv().await, delivery(&["chat", "x"], "over tcp"));

    let mut bob = Client::connect(&server.tcp()).await;
    bob.send(json!({"command": "auth", "data": "bob"})).await;
    bob.publish(&["news"], "not bob's").await;
    assert!(error_of(&bob.recv().await).contains("permission denied"));
    let mut nobody = Client::connect(&server.tcp()).await;
    let reply = nobody
        .request(json!({"command": "auth", "data": "carol"}))
        .await;
    assert_eq!(error_of(&reply), "invalid token");

    // The file is read-only: admin commands say so.
    let reply = admin
        .request(json!({"command": "register", "tags": ["a"], "data": "carol"}))
        .await;
    assert!(error_of(&reply).contains("read-only"), "{reply}");
    assert_eq!(
        admin
            .request(json!({"command": "tags", "data": "alice"}))
            .await,
        json!({"command": "tags", "tags": ["chat", "news"]})
    );

    // The commands, from either listener.
    let echo = json!({"command": "echo", "tags": ["t"], "data": "hi \"there\""});
    alice.send(echo.clone()).await;
    assert_eq!(alice.recv().await, echo);
    let stats = admin.request(json!({"command": "stats"})).await;
    let figures: Value = serde_json::from_str(stats["data"].as_str().unwrap()).unwrap();
    assert_eq!(figures["sessions"], 4, "{figures}");
    assert_eq!(figures["subscriptions"], 1, "{figures}");
    assert!(figures["messages_in"].as_u64().unwrap() >= 1, "{figures}");
    assert!(figures["messages_out"].as_u64().unwrap() >= 1, "{figures}");
    assert_eq!(figures["dropped"], 0, "{figures}");

    let reply = admin
        .request(json!({"command": "announce", "tags": ["chat"], "data": "from the plugin"}))
        .await;
    assert_eq!(reply, json!({"command": "announce", "data": "1 clients"}));
    assert_eq!(alice.recv().await, delivery(&["chat"], "from the plugin"));
    alice
        .send(json!({"command": "announce", "tags": ["secret"], "data": "no"}))
        .await;
    let replies = alice.sync().await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["command"], "announce");
    assert!(
        error_of(&replies[0]).contains("permission denied"),
        "{replies:?}"
    );
    assert!(admin.sync().await.is_empty());
}

#[test]
fn a_missing_token_file_stops_the_start_naming_it() {
    let library = example_library();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.toml");
    std::fs::write(
        &plugins,
        format!("[[plugin]]\npath = {:?}\n", library.display().to_string()),
    )
    .unwrap();
    let (status, log) = MistServer::run_to_exit(&[
        "--plugins",
        plugins.to_str().unwrap(),
        "--listeners",
        "tcp://127.0.0.1:0",
        "--authenticator",
        "tokenfile:///nonexistent/tokens.toml",
        "--token",
        "admin",
    ]);
    assert!(!status.success());
    assert!(
        log.contains("cannot read /nonexistent/tokens.toml"),
        "{log}"
    );
}

/// The example plugin's `unixgram://` backplane picked by `--cluster`'s
/// scheme: two real nodes that load it from `plugins.toml` form a cluster
/// (a third party's backplane, no server of its own).
#[tokio::test]
async fn a_stranger_backplane_joins_nodes_into_a_cluster() {
    let library = example_library();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.toml");
    std::fs::write(
        &plugins,
        format!(
            "[[plugin]]\npath = {:?}\nrequired = true\n",
            library.display().to_string()
        ),
    )
    .unwrap();
    let sockets = dir.path().join("cluster");
    std::fs::create_dir(&sockets).unwrap();
    let uri = format!("unixgram://{}", sockets.display());
    let plugins = plugins.display().to_string();
    let node = || MistServer::start(&["--plugins", plugins.as_str(), "--cluster", uri.as_str()]);
    let (a, b) = (node(), node());
    let mut subscriber = Client::connect(&a.tcp()).await;
    let mut publisher = Client::connect(&b.tcp()).await;
    subscriber.subscribe(&["pigeon"]).await;
    publisher.publish(&["pigeon", "post"], "coo").await;
    assert!(publisher.sync().await.is_empty(), "never to the publisher");
    assert_eq!(
        subscriber.recv().await,
        delivery(&["pigeon", "post"], "coo")
    );
    let who = subscriber.request(json!({"command": "who"})).await;
    let figures: Value = serde_json::from_str(who["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        figures["node"].as_str().map(str::len),
        Some(16),
        "{figures}"
    );
}
