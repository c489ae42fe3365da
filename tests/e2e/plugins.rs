//! Loading plugin libraries from `plugins.toml`: the real loader,
//! the real shared libraries, and the ways a library can be refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mist_e2e::client::{delivery, error_of};
use mist_e2e::{artifacts, Client, MistServer};
use serde_json::json;

fn plugins_file(dir: &Path, body: &str) -> String {
    let path = dir.join("plugins.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

fn entry(library: &Path, extra: &str) -> String {
    format!(
        "[[plugin]]\npath = {:?}\n{extra}\n",
        library.to_str().unwrap()
    )
}

#[tokio::test]
async fn the_tcp_plugin_loaded_from_its_library_carries_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let library = artifacts().library("mist_tcp");
    let file = plugins_file(dir.path(), &entry(&library, ""));
    let server = MistServer::start(&["--plugins", &file, "--log-level", "DEBUG"]);
    server.wait_for_log(&format!("source={}", library.display()));
    server.wait_for_log("now served by this plugin instead of the built-in one");

    let mut c = [
        Client::connect(&server.tcp()).await,
        Client::connect(&server.tcp()).await,
    ];
    c[0].subscribe(&["via", "library"]).await;
    c[1].publish(&["library", "via", "x"], "loaded").await;
    c[1].expect_nothing().await;
    assert_eq!(
        c[0].sync().await,
        [delivery(&["library", "via", "x"], "loaded")]
    );
}

#[tokio::test]
async fn the_http_and_ws_plugins_loaded_from_their_libraries_carry_traffic() {
    use mist_e2e::web::{http_publish, server_with_all_listeners, WsClient};
    let dir = tempfile::tempdir().unwrap();
    let http = artifacts().library("mist_http");
    let ws = artifacts().library("mist_ws");
    let file = plugins_file(
        dir.path(),
        &format!("{}{}", entry(&http, ""), entry(&ws, "")),
    );
    let server = server_with_all_listeners(&["--plugins", &file, "--log-level", "DEBUG"]);
    server.wait_for_log(&format!("source={}", http.display()));
    server.wait_for_log(&format!("source={}", ws.display()));

    let mut subscriber = WsClient::connect(&format!("ws://{}/", server.addr("ws"))).await;
    subscriber.subscribe(&["lib"]).await;
    let response = http_publish(
        &server.addr("http"),
        json!({"tags": ["lib"], "data": "through two libraries"}),
        None,
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.text());
    assert_eq!(
        subscriber.recv().await,
        delivery(&["lib"], "through two libraries")
    );
}

#[tokio::test]
async fn the_authenticator_plugins_loaded_from_their_libraries_keep_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let libraries: String = ["mist_memory", "mist_scribble", "mist_postgres"]
        .iter()
        .map(|name| entry(&artifacts().library(name), ""))
        .collect();
    let file = plugins_file(dir.path(), &libraries);
    let db = format!("scribble://?db={}", dir.path().join("db").display());
    let server = MistServer::start(&[
        "--plugins",
        &file,
        "--authenticator",
        &db,
        "--token",
        "admin",
        "--log-level",
        "DEBUG",
    ]);
    for name in ["mist_memory", "mist_scribble", "mist_postgres"] {
        server.wait_for_log(&format!("source={}", artifacts().library(name).display()));
    }
    let mut admin = Client::connect(&server.tcp()).await;
    admin
        .send(json!({"command": "auth", "data": "admin"}))
        .await;
    admin
        .send(json!({"command": "register", "tags": ["a"], "data": "t"}))
        .await;
    admin.expect_nothing().await;
    let mut user = Client::connect(&server.tcp()).await;
    user.send(json!({"command": "auth", "data": "t"})).await;
    user.publish(&["a"], "via library").await;
    user.expect_nothing().await;
    user.publish(&["b"], "denied").await;
    assert!(error_of(&user.recv().await).contains("permission denied"));
    assert_eq!(
        std::fs::read_dir(dir.path().join("db/tokens"))
            .unwrap()
            .count(),
        1
    );
}

fn refused(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = plugins_file(dir.path(), body);
    let (status, log) =
        MistServer::run_to_exit(&["--listeners", "tcp://127.0.0.1:0", "--plugins", &file]);
    assert!(
        !status.success(),
        "a required plugin that fails stops the start:\n{log}"
    );
    log
}

#[tokio::test]
async fn a_bare_library_name_is_the_file_next_to_its_plugins_file_and_no_other() {
    // mist's working directory holds plugins.toml (read by default), naming
    // its library bare, next to it: the tcp plugin's library.
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::copy(artifacts().library("mist_tcp"), site.join("libplugin.so")).unwrap();
    plugins_file(&site, "[[plugin]]\npath = \"libplugin.so\"\n");
    // A different library of the same name where the system's loader
    // looks for bare names.
    let decoy = dir.path().join("decoy");
    std::fs::create_dir(&decoy).unwrap();
    std::fs::copy(
        artifacts().library("mist_fixture_faulty"),
        decoy.join("libplugin.so"),
    )
    .unwrap();
    let decoy_path = decoy.display().to_string();
    let server = MistServer::start_in(
        &site,
        &["--listeners", "tcp://127.0.0.1:0", "--log-level", "DEBUG"],
        1,
        &[("LD_LIBRARY_PATH", decoy_path.as_str())],
    );
    let library = site.join("libplugin.so");
    server.wait_for_log(&format!("loaded plugin {}", library.display()));
    server.wait_for_log("now served by this plugin instead of the built-in one");
    assert!(
        !server.log().contains("faulty"),
        "the decoy was loaded:\n{}",
        server.log()
    );
    let mut c = [
        Client::connect(&server.tcp()).await,
        Client::connect(&server.tcp()).await,
    ];
    c[0].subscribe(&["next-to-it"]).await;
    c[1].publish(&["next-to-it"], "loaded").await;
    // The publisher's pong: the publish has been delivered.
    c[1].expect_nothing().await;
    assert_eq!(c[0].sync().await, [delivery(&["next-to-it"], "loaded")]);

    // A bare name with nothing next to it is a start-up error naming the
    // file where it was looked for, whatever the search path holds.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    plugins_file(&empty, "[[plugin]]\npath = \"libplugin.so\"\n");
    let (status, log) = MistServer::run_to_exit_in(&empty, &["--listeners", "tcp://127.0.0.1:0"]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "plugin library {}: no such file",
            empty.join("libplugin.so").display()
        )),
        "{log}"
    );
}

#[test]
fn a_missing_library_is_refused_by_name() {
    let log = refused("[[plugin]]\npath = \"/nonexistent/libnothing.so\"\n");
    assert!(
        log.contains("plugin library /nonexistent/libnothing.so: no such file"),
        "{log}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "this is text, not ELF").unwrap();
    let log = refused(&entry(&fake, ""));
    assert!(
        log.contains(&format!(
            "plugin library {} is not a Mist plugin",
            fake.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("cannot be loaded as a shared library"),
        "{log}"
    );
}

#[test]
fn a_shared_library_that_is_not_a_plugin_is_refused_by_name() {
    // A real shared library without Mist's root module: any of ours that
    // is not a plugin will do; the sdk-less fixture below is one, libz another.
    let not_plugin = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libz, a shared library every Debian has");
    let log = refused(&entry(Path::new(not_plugin), ""));
    assert!(
        log.contains(&format!("plugin library {not_plugin} is not a Mist plugin")),
        "{log}"
    );
    assert!(log.contains("exports no Mist root module"), "{log}");
}

#[test]
fn a_library_built_against_an_older_sdk_is_refused_by_name() {
    let library = artifacts().library("mist_fixture_old_sdk");
    let log = refused(&entry(&library, ""));
    assert!(
        log.contains(&format!(
            "plugin library {} was built against an incompatible mist-sdk",
            library.display()
        )),
        "{log}"
    );
    assert!(log.contains("0.0.1"), "the mismatch is named: {log}");
}

/// The libraries built from `tests/fixtures/sdk-*`: the current interface
/// stamped with mist-sdk 0.2.9, 0.3.7 and 0.4.0 (the host is 0.3.0). Each
/// fixture is its own workspace (its package is named mist-sdk), so it is
/// built here, once, into the same target directory.
fn sdk_fixture(version: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = &artifacts().dir; // target/<profile>
        let target = dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for fixture in ["sdk-0.2", "sdk-0.3-patch", "sdk-0.4"] {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join(fixture)
                .join("Cargo.toml");
            let mut build = Command::new(&cargo);
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
            assert!(status.success(), "building tests/fixtures/{fixture} failed");
        }
    });
    artifacts().library(&format!("mist_fixture_sdk_{}", version.replace('.', "_")))
}

#[test]
fn libraries_built_against_another_minor_sdk_are_refused_before_they_run() {
    // One minor below the host's (abi_stable refuses it too) and one above
    // (abi_stable 0.11 would let it through its version check).
    for version in ["0.2.9", "0.4.0"] {
        let library = sdk_fixture(version);
        let log = refused(&entry(&library, ""));
        assert!(
            log.contains(&format!(
                "plugin library {} was built against an incompatible mist-sdk: \
                 it uses mist-sdk {version}, and this mist (mist-sdk 0.3.0) loads only \
                 plugins built against mist-sdk 0.3.x",
                library.display()
            )),
            "{log}"
        );
        assert!(
            !log.contains("root module built"),
            "the library's code ran: {log}"
        );
    }
}

#[tokio::test]
async fn a_library_built_against_another_patch_of_the_sdk_loads_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let library = sdk_fixture("0.3.7");
    let file = plugins_file(dir.path(), &entry(&library, ""));
    let server = MistServer::start(&["--plugins", &file]);
    server.wait_for_log("sdk-0.3.7 fixture: root module built");
    server.wait_for_log(&format!("loaded plugin {}", library.display()));
    let mut c = Client::connect(&server.tcp()).await;
    assert_eq!(
        c.request(json!({"command": "sdk_version"})).await,
        json!({"command": "sdk_version", "data": "0.3.7"})
    );
}

#[test]
fn a_library_with_a_different_interface_layout_is_refused_by_name() {
    let library = artifacts().library("mist_fixture_changed_abi");
    let log = refused(&entry(&library, ""));
    assert!(
        log.contains(&format!(
            "plugin library {} was built against an incompatible mist-sdk",
            library.display()
        )),
        "{log}"
    );
    assert!(log.contains("interface differs"), "{log}");
}

#[test]
fn a_plugin_whose_init_fails_is_refused_by_name() {
    let library = artifacts().library("mist_fixture_faulty");
    let log = refused(&entry(&library, "[plugin.settings]\nfail_init = true"));
    assert!(
        log.contains(&format!(
            "plugin faulty ({}) failed to start: fail_init is set",
            library.display()
        )),
        "{log}"
    );
}

#[tokio::test]
async fn an_optional_plugin_that_fails_is_skipped_and_the_broker_serves() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        entry(Path::new("/nonexistent/libgone.so"), "required = false"),
        entry(
            &artifacts().library("mist_fixture_old_sdk"),
            "required = false"
        )
    );
    let file = plugins_file(dir.path(), &body);
    let server = MistServer::start(&["--plugins", &file]);
    let line = server
        .wait_for_log("skipping plugin (required = false): plugin library /nonexistent/libgone.so");
    assert!(line.contains("ERROR"), "{line}");
    server.wait_for_log("incompatible mist-sdk");
    let mut c = Client::connect(&server.tcp()).await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn a_plugin_that_panics_or_fails_does_not_bring_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let file = plugins_file(
        dir.path(),
        &entry(&artifacts().library("mist_fixture_faulty"), ""),
    );
    let server = MistServer::start(&["--plugins", &file]);
    let mut c = [
        Client::connect(&server.tcp()).await,
        Client::connect(&server.tcp()).await,
    ];
    c[1].subscribe(&["still"]).await;

    let reply = c[0].request(json!({"command": "boom"})).await;
    assert_eq!(reply["command"], "boom");
    assert!(
        error_of(&reply).contains("plugin panicked: boom was called"),
        "{reply}"
    );
    let reply = c[0].request(json!({"command": "fail"})).await;
    assert!(error_of(&reply).contains("fail always fails"), "{reply}");

    // The same connection and everyone else carry on.
    c[0].publish(&["still"], "alive").await;
    c[0].expect_nothing().await;
    assert_eq!(c[1].sync().await, [delivery(&["still"], "alive")]);
}

#[test]
fn a_listener_that_panics_on_start_is_a_start_up_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let file = plugins_file(
        dir.path(),
        &entry(&artifacts().library("mist_fixture_faulty"), ""),
    );
    let (status, log) =
        MistServer::run_to_exit(&["--plugins", &file, "--listeners", "faulty://127.0.0.1:0"]);
    assert_eq!(
        status.code(),
        Some(1),
        "a clean exit with an error, not an abort:\n{log}"
    );
    assert!(
        log.contains("cannot start listener faulty://127.0.0.1:0: plugin panicked"),
        "{log}"
    );
}

#[tokio::test]
async fn a_listener_that_panics_in_local_addr_stop_or_drop_does_not_bring_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let file = plugins_file(
        dir.path(),
        &entry(&artifacts().library("mist_fixture_faulty"), ""),
    );
    let mut server = MistServer::start_with(
        &[
            "--plugins",
            &file,
            "--listeners",
            "tcp://127.0.0.1:0,faulty://x?panic=local_addr+stop+drop",
        ],
        2,
    );
    server.wait_for_log("faulty listener local_addr: inside a runtime: true");
    server.wait_for_log(
        "listening on faulty://plugin panicked: the faulty listener panics in local_addr",
    );
    let mut c = [
        Client::connect(&server.tcp()).await,
        Client::connect(&server.tcp()).await,
    ];
    c[1].subscribe(&["still"]).await;
    c[0].publish(&["still"], "alive").await;
    // The publisher's pong: the publish has been delivered.
    c[0].expect_nothing().await;
    assert_eq!(c[1].sync().await, [delivery(&["still"], "alive")]);

    // Shutdown stops and drops the listener: both panic, both are caught.
    let status = server.terminate();
    let log = server.log();
    assert!(
        status.success(),
        "a clean exit, not an abort ({status}):\n{log}"
    );
    for line in [
        "faulty listener stop: inside a runtime: true",
        "stopping a listener failed: plugin panicked: the faulty listener panics in stop",
        "faulty listener drop: inside a runtime: true",
        "dropping a plugin object failed: plugin panicked: the faulty listener panics in drop",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
}

#[test]
fn a_command_that_clashes_with_a_builtin_or_another_plugin_is_refused() {
    let faulty = artifacts().library("mist_fixture_faulty");
    let log = refused(&format!("{}{}", entry(&faulty, ""), entry(&faulty, "")));
    assert!(
        log.contains("command \"boom\" is provided by plugin faulty already"),
        "{log}"
    );
}
