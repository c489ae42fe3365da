//! Starting and stopping the server: listener start-up errors, the command
//! line and the configuration file.

use std::process::Command;

use mist_e2e::{artifacts, Client, MistServer};

#[test]
fn a_port_in_use_stops_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let uri = format!("tcp://{addr}");
    let (status, log) = MistServer::run_to_exit(&["--listeners", &uri]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("cannot start listener {uri}")),
        "{log}"
    );
    assert!(log.contains("in use"), "{log}");
}

#[test]
fn a_listener_no_plugin_serves_is_skipped_with_an_error() {
    let server = MistServer::start_with(
        &["--listeners", "gopher://127.0.0.1:70,tcp://127.0.0.1:0"],
        1,
    );
    let line = server.wait_for_log("skipping listener gopher://127.0.0.1:70");
    assert!(line.contains("ERROR"), "{line}");
    assert!(server.tcp().starts_with("127.0.0.1:"));
}

#[test]
fn an_authenticator_without_a_token_refuses_to_start() {
    let (status, log) = MistServer::run_to_exit(&[
        "--listeners",
        "tcp://127.0.0.1:0",
        "--authenticator",
        "memory://",
    ]);
    assert!(!status.success());
    assert!(
        log.contains("an authenticator needs a server token"),
        "{log}"
    );
}

#[test]
fn a_bad_log_level_or_config_file_is_refused() {
    let (status, log) = MistServer::run_to_exit(&["--log-level", "LOUD"]);
    assert!(!status.success());
    assert!(log.contains("unknown log level \"LOUD\""), "{log}");
    let (status, log) = MistServer::run_to_exit(&["--config", "/nonexistent/mist.yaml"]);
    assert!(!status.success());
    assert!(
        log.contains("cannot read config file /nonexistent/mist.yaml"),
        "{log}"
    );
}

#[test]
fn version_flags_print_the_version() {
    for flag in ["--version", "-v"] {
        let out = Command::new(artifacts().mist()).arg(flag).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.trim(), format!("mist {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn without_server_or_command_it_says_what_to_do() {
    let out = Command::new(artifacts().mist()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server"));
}

#[tokio::test]
async fn the_seeds_yaml_config_file_starts_a_server_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    // The seed's example, with port 0 and without an authenticator.
    std::fs::write(
        &config,
        "listeners:\n  - tcp://127.0.0.1:0\nlog-level: DEBUG\nserver: true\n",
    )
    .unwrap();
    let server = MistServer::start_with(&["--config", config.to_str().unwrap()], 1);
    assert!(
        server.log().contains("DEBUG"),
        "log-level from the file applies"
    );
    let mut c = Client::connect(&server.tcp()).await;
    c.expect_nothing().await;

    // TOML, with --listeners replacing the file's list.
    let toml = dir.path().join("mist.toml");
    std::fs::write(
        &toml,
        "listeners = [\"gopher://127.0.0.1:1\"]\nlog-level = \"INFO\"\n",
    )
    .unwrap();
    let server = MistServer::start_with(
        &[
            "--config",
            toml.to_str().unwrap(),
            "--listeners",
            "tcp://127.0.0.1:0,tcp://127.0.0.1:0",
        ],
        2,
    );
    assert_eq!(server.listeners.len(), 2);
    assert!(!server.log().contains("gopher"), "{}", server.log());
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut server = MistServer::start(&[]);
    let mut c = Client::connect(&server.tcp()).await;
    c.subscribe(&["a"]).await;
    let status = server.terminate();
    assert!(status.success(), "{}", server.log());
    assert!(server.log().contains("shutting down"));
    assert!(c.closed().await, "connections are closed on shutdown");
}

/// With no flags, the three default listeners start. This is the
/// one test that binds fixed ports (1445, 8080, 8888); if something else on
/// the machine holds one, it fails saying so.
#[tokio::test]
async fn with_no_flags_the_three_default_listeners_start() {
    let server = MistServer::start_with(&[], 3);
    let mut schemes: Vec<&str> = server
        .listeners
        .iter()
        .map(|l| l.split("://").next().unwrap())
        .collect();
    schemes.sort();
    assert_eq!(schemes, ["http", "tcp", "ws"], "{:?}", server.listeners);
    assert_eq!(server.tcp(), "127.0.0.1:1445");
    assert_eq!(server.addr("http"), "127.0.0.1:8080");
    assert_eq!(server.addr("ws"), "127.0.0.1:8888");

    let mut tcp = Client::connect(&server.tcp()).await;
    assert!(tcp.sync().await.is_empty());
    let pong = mist_e2e::web::http(&server.addr("http"), "GET", "/ping", &[], b"").await;
    assert_eq!(pong.text(), "pong");
    let mut ws = mist_e2e::web::WsClient::connect(&format!("ws://{}/", server.addr("ws"))).await;
    assert!(ws.sync().await.is_empty());
}
