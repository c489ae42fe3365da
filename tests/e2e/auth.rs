//! Admin mode and per-token permissions (docs/protocol.md, "Tokens and
//! admin mode"), one set of cases run
//! against each authenticator: memory, scribble (a temporary directory) and
//! a real PostgreSQL server started by the tests.

use mist_e2e::client::{delivery, error_of};
use mist_e2e::postgres::{self, shared as postgres_server};
use mist_e2e::web::{http_publish, server_with_all_listeners, EventStream, WsClient};
use mist_e2e::{Client, MistServer};
use serde_json::{json, Value};

/// The server token of every server here.
const ADMIN: &str = "admin-secret-7f3a";

/// An authenticator URI, and what keeps its store alive.
pub struct Store {
    pub uri: String,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    pub fn memory() -> Store {
        Store {
            uri: "memory://".into(),
            _dir: None,
        }
    }

    pub fn scribble() -> Store {
        let dir = tempfile::tempdir().unwrap();
        Store {
            uri: format!("scribble://?db={}", dir.path().display()),
            _dir: Some(dir),
        }
    }

    pub fn postgres() -> Store {
        Store {
            uri: postgres_server().database(),
            _dir: None,
        }
    }

    /// `mist --server` on free ports with this store, plus `extra` flags.
    pub fn server(&self, extra: &[&str]) -> MistServer {
        let mut args = vec!["--authenticator", &self.uri, "--token", ADMIN];
        args.extend_from_slice(extra);
        server_with_all_listeners(&args)
    }
}

/// A TCP connection that has sent `auth` with `token`.
async fn authed(server: &MistServer, token: &str) -> Client {
    let mut client = Client::connect(&server.tcp()).await;
    client.send(json!({"command": "auth", "data": token})).await;
    client
}

/// Sends `request` and asserts the broker answers nothing but the pong.
async fn ok(client: &mut Client, request: Value) {
    client.send(request.clone()).await;
    let replies = client.sync().await;
    assert!(replies.is_empty(), "{request} got {replies:?}");
}

/// Sends `request` and returns its one error reply's text.
async fn refused(client: &mut Client, request: Value) -> String {
    client.send(request.clone()).await;
    let replies = client.sync().await;
    assert_eq!(replies.len(), 1, "{request} got {replies:?}");
    assert_eq!(replies[0]["command"], request["command"], "{replies:?}");
    error_of(&replies[0])
}

async fn register(admin: &mut Client, token: &str, tags: &[&str]) {
    ok(
        admin,
        json!({"command": "register", "tags": tags, "data": token}),
    )
    .await;
}

fn subscribe(tags: &[&str]) -> Value {
    json!({"command": "subscribe", "tags": tags})
}

fn publish(tags: &[&str], data: &str) -> Value {
    json!({"command": "publish", "tags": tags, "data": data})
}

async fn the_server_token_gives_admin_mode(store: Store) {
    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    ok(&mut admin, subscribe(&["any", "tags"])).await;
    let mut other_admin = authed(&server, ADMIN).await;
    ok(&mut other_admin, publish(&["tags", "any", "x"], "hi")).await;
    assert_eq!(admin.recv().await, delivery(&["tags", "any", "x"], "hi"));

    register(&mut admin, "t1", &["b", "a"]).await;
    let tags = json!({"command": "tags", "data": "t1"});
    assert_eq!(
        admin.request(tags.clone()).await,
        json!({"command": "tags", "tags": ["a", "b"]})
    );
    ok(
        &mut admin,
        json!({"command": "set", "tags": ["c", "a"], "data": "t1"}),
    )
    .await;
    assert_eq!(
        admin.request(tags.clone()).await,
        json!({"command": "tags", "tags": ["a", "b", "c"]})
    );
    ok(
        &mut admin,
        json!({"command": "unset", "tags": ["a"], "data": "t1"}),
    )
    .await;
    assert_eq!(
        admin.request(tags.clone()).await,
        json!({"command": "tags", "tags": ["b", "c"]})
    );
    register(&mut admin, "no-tags", &[]).await;
    assert_eq!(
        admin
            .request(json!({"command": "tags", "data": "no-tags"}))
            .await,
        json!({"command": "tags", "tags": []})
    );
    ok(&mut admin, json!({"command": "unregister", "data": "t1"})).await;
    assert!(refused(&mut admin, tags).await.contains("no such token"));

    let who = admin.request(json!({"command": "who"})).await;
    let figures: Value = serde_json::from_str(who["data"].as_str().unwrap()).unwrap();
    assert_eq!(figures["connections"], 2, "{figures}");
}

async fn admin_commands_report_what_is_wrong(store: Store) {
    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "t", &["a"]).await;
    let cases = [
        (
            json!({"command": "register", "tags": ["x"], "data": "t"}),
            "already registered",
        ),
        (
            json!({"command": "register", "tags": ["x"], "data": ADMIN}),
            "server token",
        ),
        (
            json!({"command": "register", "tags": ["x"]}),
            "missing data",
        ),
        (
            json!({"command": "register", "tags": ["x"], "data": ""}),
            "missing data",
        ),
        (
            json!({"command": "unregister", "data": "nobody"}),
            "no such token",
        ),
        (
            json!({"command": "set", "tags": ["x"], "data": "nobody"}),
            "no such token",
        ),
        (json!({"command": "set", "data": "t"}), "tags"),
        (
            json!({"command": "unset", "tags": ["x"], "data": "nobody"}),
            "no such token",
        ),
        (
            json!({"command": "tags", "data": "nobody"}),
            "no such token",
        ),
    ];
    for (request, words) in cases {
        let error = refused(&mut admin, request.clone()).await;
        assert!(error.contains(words), "{request}: {error}");
    }
    // Nothing above changed the token.
    assert_eq!(
        admin.request(json!({"command": "tags", "data": "t"})).await,
        json!({"command": "tags", "tags": ["a"]})
    );
}

async fn a_registered_token_uses_only_its_own_tags(store: Store) {
    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "user-token", &["a", "b"]).await;
    ok(&mut admin, subscribe(&["a"])).await;

    let mut user = authed(&server, "user-token").await;
    ok(&mut user, subscribe(&["a"])).await;
    ok(&mut user, subscribe(&["b", "a"])).await;
    let denied = refused(&mut user, subscribe(&["a", "c"])).await;
    assert!(denied.contains("permission denied"), "{denied}");
    // Unsubscribing only narrows what a connection gets: never refused
    // for want of permission, even from a set it could not hold.
    ok(&mut user, json!({"command": "unsubscribe", "tags": ["c"]})).await;
    assert_eq!(
        user.request(json!({"command": "list"})).await,
        json!({"command": "list", "data": "[[\"a\"],[\"a\",\"b\"]]"})
    );

    ok(&mut user, publish(&["a", "b"], "allowed")).await;
    assert!(refused(&mut user, publish(&["a", "x"], "denied"))
        .await
        .contains("permission denied"));
    assert_eq!(admin.sync().await, [delivery(&["a", "b"], "allowed")]);

    // The admin's publish reaches the user's subscription.
    ok(&mut admin, publish(&["a", "z"], "from admin")).await;
    assert_eq!(user.recv().await, delivery(&["a", "z"], "from admin"));

    let error = refused(
        &mut user,
        json!({"command": "register", "tags": ["a"], "data": "mine"}),
    )
    .await;
    assert!(error.contains("admin mode"), "{error}");
    assert!(refused(&mut user, json!({"command": "who"}))
        .await
        .contains("admin mode"));
}

async fn permissions_are_looked_up_at_each_command(store: Store) {
    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "t", &["a"]).await;
    let mut user = authed(&server, "t").await;
    ok(&mut user, publish(&["a"], "1")).await;
    assert!(refused(&mut user, publish(&["b"], "2"))
        .await
        .contains("permission denied"));
    ok(
        &mut admin,
        json!({"command": "set", "tags": ["b"], "data": "t"}),
    )
    .await;
    ok(&mut user, publish(&["b"], "3")).await;
    ok(
        &mut admin,
        json!({"command": "unset", "tags": ["b"], "data": "t"}),
    )
    .await;
    assert!(refused(&mut user, publish(&["b"], "4"))
        .await
        .contains("permission denied"));
    ok(&mut admin, json!({"command": "unregister", "data": "t"})).await;
    assert!(refused(&mut user, publish(&["a"], "5"))
        .await
        .contains("permission denied"));
}

async fn anonymous_connections_may_only_ping(store: Store) {
    let server = store.server(&[]);
    let mut anonymous = Client::connect(&server.tcp()).await;
    anonymous.expect_nothing().await;
    for request in [
        subscribe(&["a"]),
        json!({"command": "unsubscribe", "tags": ["a"]}),
        publish(&["a"], "x"),
        json!({"command": "list"}),
    ] {
        let error = refused(&mut anonymous, request.clone()).await;
        assert!(error.contains("not authenticated"), "{request}: {error}");
    }
    for request in [
        json!({"command": "register", "tags": ["a"], "data": "t"}),
        json!({"command": "tags", "data": "t"}),
        json!({"command": "who"}),
    ] {
        let error = refused(&mut anonymous, request.clone()).await;
        assert!(error.contains("admin mode"), "{request}: {error}");
    }
    anonymous.expect_nothing().await;
}

async fn a_wrong_or_late_auth_is_an_error_reply_not_a_disconnect(store: Store) {
    let server = store.server(&[]);
    let mut wrong = Client::connect(&server.tcp()).await;
    let error = refused(
        &mut wrong,
        json!({"command": "auth", "data": "not-a-token"}),
    )
    .await;
    assert_eq!(error, "invalid token");
    assert!(refused(&mut wrong, subscribe(&["a"]))
        .await
        .contains("not authenticated"));

    let mut late = Client::connect(&server.tcp()).await;
    late.expect_nothing().await;
    let error = refused(&mut late, json!({"command": "auth", "data": ADMIN})).await;
    assert!(error.contains("first command"), "{error}");
    assert!(refused(&mut late, subscribe(&["a"]))
        .await
        .contains("not authenticated"));

    let mut malformed = Client::connect(&server.tcp()).await;
    let error = refused(&mut malformed, json!({"command": "auth", "data": 42})).await;
    assert!(error.contains("token"), "{error}");
}

async fn websocket_tokens_come_from_the_header_or_the_query(store: Store) {
    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "ws-token", &["a"]).await;
    let ws = server.addr("ws");
    let http = server.addr("http");

    let mut by_header = WsClient::connect_with(
        &format!("ws://{ws}/subscribe/websocket"),
        &[("X-AUTH-TOKEN", "ws-token")],
    )
    .await;
    by_header.subscribe(&["a"]).await;
    by_header.send(subscribe(&["b"])).await;
    let replies = by_header.sync().await;
    assert!(
        error_of(&replies[0]).contains("permission denied"),
        "{replies:?}"
    );

    for url in [
        format!("ws://{ws}/?x-auth-token={ADMIN}"),
        format!("ws://{http}/subscribe/websocket?x-auth-token={ADMIN}"),
    ] {
        let mut by_query = WsClient::connect(&url).await;
        by_query
            .send(json!({"command": "set", "tags": ["q"], "data": "ws-token"}))
            .await;
        assert!(by_query.sync().await.is_empty(), "{url}");
    }
    assert_eq!(
        admin
            .request(json!({"command": "tags", "data": "ws-token"}))
            .await,
        json!({"command": "tags", "tags": ["a", "q"]})
    );

    // A wrong token still upgrades, to an anonymous connection.
    let mut wrong = WsClient::connect(&format!("ws://{ws}/?x-auth-token=wrong")).await;
    assert!(wrong.sync().await.is_empty());
    wrong.send(subscribe(&["a"])).await;
    let replies = wrong.sync().await;
    assert!(
        error_of(&replies[0]).contains("not authenticated"),
        "{replies:?}"
    );
}

async fn http_takes_the_token_from_its_header(store: Store) {
    let server = store.server(&[]);
    let http = server.addr("http");
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "http-token", &["a"]).await;
    ok(&mut admin, subscribe(&["a"])).await;

    let body = json!({"tags": ["a"], "data": "x"});
    let response = http_publish(&http, body.clone(), None).await;
    assert_eq!(response.status, 401, "{}", response.text());
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("not authenticated"));
    let response = http_publish(&http, body.clone(), Some("wrong")).await;
    assert_eq!(response.status, 401, "{}", response.text());
    let response = http_publish(
        &http,
        json!({"tags": ["b"], "data": "x"}),
        Some("http-token"),
    )
    .await;
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        admin.sync().await.is_empty(),
        "refused publishes delivered nothing"
    );

    let response = http_publish(
        &http,
        json!({"tags": ["a"], "data": "by token"}),
        Some("http-token"),
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.text());
    let response = http_publish(
        &http,
        json!({"tags": ["a", "z"], "data": "by admin"}),
        Some(ADMIN),
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.text());
    assert_eq!(
        admin.sync().await,
        [
            delivery(&["a"], "by token"),
            delivery(&["a", "z"], "by admin")
        ]
    );

    let mut events = EventStream::open(
        &http,
        "/subscribe?tags=a",
        &[("X-AUTH-TOKEN", "http-token")],
    )
    .await;
    assert_eq!(events.status, 200);
    assert_eq!(events.next_line().await, ": subscribed");
    let events = EventStream::open(
        &http,
        "/subscribe?tags=b",
        &[("X-AUTH-TOKEN", "http-token")],
    )
    .await;
    assert_eq!(events.status, 403);
    let events = EventStream::open(&http, "/subscribe?tags=a", &[]).await;
    assert_eq!(events.status, 401);
}

async fn tokens_never_reach_the_log(store: Store) {
    let server = store.server(&["--log-level", "TRACE"]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "secret-user-91c2", &["a"]).await;
    ok(
        &mut admin,
        json!({"command": "set", "tags": ["b"], "data": "secret-user-91c2"}),
    )
    .await;
    refused(
        &mut admin,
        json!({"command": "register", "tags": ["b"], "data": "secret-user-91c2"}),
    )
    .await;
    refused(
        &mut admin,
        json!({"command": "tags", "data": "secret-missing-44d1"}),
    )
    .await;
    let mut user = authed(&server, "secret-user-91c2").await;
    ok(&mut user, publish(&["a"], "x")).await;
    let mut wrong = Client::connect(&server.tcp()).await;
    refused(
        &mut wrong,
        json!({"command": "auth", "data": "secret-wrong-5e0b"}),
    )
    .await;
    let mut ws = WsClient::connect(&format!(
        "ws://{}/?x-auth-token=secret-query-2b7d",
        server.addr("ws")
    ))
    .await;
    assert!(ws.sync().await.is_empty());
    let response = http_publish(
        &server.addr("http"),
        json!({"tags": ["a"], "data": "x"}),
        Some("secret-header-a4c0"),
    )
    .await;
    assert_eq!(response.status, 401);
    ok(
        &mut admin,
        json!({"command": "unregister", "data": "secret-user-91c2"}),
    )
    .await;
    drop((user, wrong, ws));

    let log = server.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is at TRACE:\n{log}"
    );
    for secret in [
        ADMIN,
        "secret-user-91c2",
        "secret-missing-44d1",
        "secret-wrong-5e0b",
        "secret-query-2b7d",
        "secret-header-a4c0",
    ] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
}

/// Each case, once per authenticator.
macro_rules! for_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $case() { super::$case(super::Store::memory()).await } )*
        }
        mod scribble {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $case() { super::$case(super::Store::scribble()).await } )*
        }
        mod postgres_store {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $case() { super::$case(super::Store::postgres()).await } )*
        }
    };
}

for_every_store!(
    the_server_token_gives_admin_mode,
    admin_commands_report_what_is_wrong,
    a_registered_token_uses_only_its_own_tags,
    permissions_are_looked_up_at_each_command,
    anonymous_connections_may_only_ping,
    a_wrong_or_late_auth_is_an_error_reply_not_a_disconnect,
    websocket_tokens_come_from_the_header_or_the_query,
    http_takes_the_token_from_its_header,
    tokens_never_reach_the_log,
);

async fn survives_a_restart_of_mist(store: Store) {
    let mut server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "kept", &["b", "a"]).await;
    ok(
        &mut admin,
        json!({"command": "set", "tags": ["c"], "data": "kept"}),
    )
    .await;
    drop(admin);
    server.terminate();

    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    assert_eq!(
        admin
            .request(json!({"command": "tags", "data": "kept"}))
            .await,
        json!({"command": "tags", "tags": ["a", "b", "c"]})
    );
    let mut user = authed(&server, "kept").await;
    ok(&mut user, publish(&["a", "c"], "after restart")).await;
}

#[tokio::test]
async fn scribble_survives_a_restart_of_mist() {
    survives_a_restart_of_mist(Store::scribble()).await;
}

#[tokio::test]
async fn postgres_survives_a_restart_of_mist() {
    survives_a_restart_of_mist(Store::postgres()).await;
}

#[tokio::test]
async fn postgres_going_away_gives_clear_errors_and_coming_back_heals() {
    let database = postgres::Postgres::start_owned();
    let store = Store {
        uri: database.database(),
        _dir: None,
    };
    let server = store.server(&[]);
    let mut admin = authed(&server, ADMIN).await;
    register(&mut admin, "t", &["a"]).await;
    let mut user = authed(&server, "t").await;
    ok(&mut user, publish(&["a"], "before")).await;

    database.stop();
    let error = refused(&mut admin, json!({"command": "tags", "data": "t"})).await;
    assert!(error.contains("unreachable"), "{error}");
    // While the user's publish waits on the dead database (until the pool
    // gives up), another session's exchange completes: a store call holds
    // up only its own session.
    user.send(publish(&["a"], "while down")).await;
    tokio::select! {
        biased;
        () = ok(&mut admin, publish(&["x"], "admin needs no database")) => {}
        reply = user.recv() => panic!("the admin waited for the user's store call: {reply}"),
    }
    let reply = user.recv().await;
    assert!(error_of(&reply).contains("unreachable"), "{reply}");
    assert!(user.sync().await.is_empty());
    let mut newcomer = Client::connect(&server.tcp()).await;
    let error = refused(&mut newcomer, json!({"command": "auth", "data": "t"})).await;
    assert!(error.contains("unreachable"), "{error}");
    assert!(!error.contains(postgres::PASSWORD), "{error}");

    database.start();
    assert_eq!(
        admin.request(json!({"command": "tags", "data": "t"})).await,
        json!({"command": "tags", "tags": ["a"]})
    );
    ok(&mut user, publish(&["a"], "after")).await;
    register(&mut admin, "u", &["b"]).await;
    assert!(!server.log().contains(postgres::PASSWORD));
}

#[test]
fn an_authenticator_that_cannot_open_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("postgres://mist:hunter2@127.0.0.1:{port}?db=x");
    let cases = [
        ("scribble://".to_owned(), "no db parameter"),
        (
            format!("scribble://?db={}", file.display()),
            "cannot create the token directory",
        ),
        (unreachable, "cannot connect to PostgreSQL at 127.0.0.1"),
        (
            "postgres://mist@127.0.0.1:1".to_owned(),
            "names no database",
        ),
    ];
    for (uri, words) in cases {
        let (status, log) = MistServer::run_to_exit(&[
            "--listeners",
            "tcp://127.0.0.1:0",
            "--authenticator",
            &uri,
            "--token",
            ADMIN,
        ]);
        assert!(!status.success(), "{uri}");
        assert!(log.contains(words), "{uri}: {log}");
        assert!(!log.contains("hunter2"), "{log}");
    }
}

/// `mist --server` with a memory store, on TCP only, logging at TRACE.
fn memory_server(args: &[&str], env: &[(&str, &str)]) -> MistServer {
    let mut all = vec![
        "--listeners",
        "tcp://127.0.0.1:0",
        "--authenticator",
        "memory://",
        "--log-level",
        "TRACE",
    ];
    all.extend_from_slice(args);
    MistServer::start_with_env(&all, 1, env)
}

/// The process's command line, as `ps` shows it to every user.
fn command_line(server: &MistServer) -> String {
    std::fs::read(format!("/proc/{}/cmdline", server.pid()))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap()
}

#[tokio::test]
async fn the_server_token_comes_from_a_file_or_the_environment_and_stays_out_of_sight() {
    const FROM_FILE: &str = "file-token-3c9e";
    const FROM_ENV: &str = "env-token-8b1f";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // As `echo TOKEN > file` writes it: the newline is not part of the token.
    std::fs::write(&token_file, format!("{FROM_FILE}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();

    let by_file = memory_server(&["--token-file", token_file], &[]);
    let by_env = memory_server(&[], &[("MIST_TOKEN", FROM_ENV)]);
    // The flag is taken before the environment.
    let both = memory_server(&["--token-file", token_file], &[("MIST_TOKEN", FROM_ENV)]);
    for (server, token) in [
        (&by_file, FROM_FILE),
        (&by_env, FROM_ENV),
        (&both, FROM_FILE),
    ] {
        let mut admin = authed(server, token).await;
        register(&mut admin, "user-token-77aa", &["a"]).await;
    }
    let mut not_admin = Client::connect(&both.tcp()).await;
    let error = refused(&mut not_admin, json!({"command": "auth", "data": FROM_ENV})).await;
    assert_eq!(error, "invalid token");

    for server in [&by_file, &by_env, &both] {
        let (command_line, log) = (command_line(server), server.log());
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "the log is at TRACE:\n{log}"
        );
        for secret in [FROM_FILE, FROM_ENV, "user-token-77aa"] {
            assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
            assert!(!command_line.contains(secret), "{command_line}");
        }
    }
}

#[test]
fn a_token_file_that_cannot_be_used_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let two_lines = dir.path().join("two-lines");
    std::fs::write(&two_lines, "secret-part-one\nsecret-part-two\n").unwrap();
    let missing = dir.path().join("missing");
    let cases = [
        (&empty, "it is empty"),
        (&two_lines, "it holds more than one line"),
        (&missing, "cannot read it: No such file"),
        (&dir.path().to_owned(), "cannot read it"),
    ];
    for (path, words) in cases {
        let path = path.to_str().unwrap();
        let (status, log) = MistServer::run_to_exit(&[
            "--listeners",
            "tcp://127.0.0.1:0",
            "--authenticator",
            "memory://",
            "--token-file",
            path,
            "--log-level",
            "TRACE",
        ]);
        assert_eq!(status.code(), Some(1), "{path}: {log}");
        assert!(
            log.contains(&format!("mist: token file {path}: {words}")),
            "{path}: {log}"
        );
        assert!(!log.contains("secret"), "{log}");
    }
}

#[test]
fn start_up_errors_never_show_a_token_or_a_password() {
    let dir = tempfile::tempdir().unwrap();
    // Each config file is broken on the very line that holds the secret:
    // a parser's message quoting that line would show it.
    let broken = [
        (
            "unterminated.toml",
            "token = \"cfg-secret-1\nserver = true\n",
        ),
        ("wrong-type.toml", "token = [\"cfg-secret-2\"]\n"),
        (
            "extra.toml",
            "authenticator = \"postgres://u:cfg-secret-3@h?db=x\" x\n",
        ),
        ("wrong-type.yaml", "token: [cfg-secret-4]\n"),
        ("no-extension", "token = \"cfg-secret-5\n"),
    ];
    for (name, text) in broken {
        let config = dir.path().join(name);
        std::fs::write(&config, text).unwrap();
        let (status, log) = MistServer::run_to_exit(&[
            "--config",
            config.to_str().unwrap(),
            "--log-level",
            "TRACE",
        ]);
        assert_eq!(status.code(), Some(1), "{name}: {log}");
        assert!(log.contains(name), "the file is named: {log}");
        assert!(!log.contains("cfg-secret"), "{name}: {log}");
    }
    // Two ways to give the token at once is a usage error that names the
    // flags, not the token.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-secret-6\n").unwrap();
    let (status, log) = MistServer::run_to_exit(&[
        "--token",
        "flag-secret-7",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("--token-file"), "{log}");
    assert!(!log.contains("secret-"), "{log}");
    // An authenticator that needs a token and has none says how to give one.
    let (status, log) = MistServer::run_to_exit(&[
        "--listeners",
        "tcp://127.0.0.1:0",
        "--authenticator",
        "postgres://u:pw-secret-8@127.0.0.1:1?db=x",
    ]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--token-file FILE, the MIST_TOKEN environment variable"),
        "{log}"
    );
    assert!(!log.contains("pw-secret"), "{log}");
}
