//! What the token stores keep: the SHA-256 of each token, never the token.
//! After `register` and the other admin commands, the `scribble://`
//! directory and the `postgres://` tables (read by the test, byte by byte
//! and row by row, from a real PostgreSQL server) hold neither a registered
//! token nor the server token; a store written in clear text by an older
//! Mist is migrated when mist opens it, once, and its tokens go on working.

use mist_e2e::postgres::{self, shared as postgres_server};
use mist_e2e::{Client, MistServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN: &str = "server-token-0b1e5";
const USER: &str = "user-token-9d2c7";

fn hex_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn start(store: &str) -> MistServer {
    MistServer::start(&["--authenticator", store, "--token", ADMIN])
}

async fn authed(server: &MistServer, token: &str) -> Client {
    let mut client = Client::connect(&server.tcp()).await;
    client.send(json!({"command": "auth", "data": token})).await;
    client
}

/// `request`'s replies, up to the pong.
async fn exchange(client: &mut Client, request: Value) -> Vec<Value> {
    client.send(request).await;
    client.sync().await
}

/// Every admin command on `USER`, answered as before the stores kept
/// digests; `USER` ends holding `b` and `c`.
async fn administer(server: &MistServer) {
    let mut admin = authed(server, ADMIN).await;
    for request in [
        json!({"command": "register", "tags": ["a", "b"], "data": USER}),
        json!({"command": "register", "tags": ["x"], "data": "short-lived-4a1f"}),
        json!({"command": "set", "tags": ["c"], "data": USER}),
        json!({"command": "unset", "tags": ["a"], "data": USER}),
        json!({"command": "unregister", "data": "short-lived-4a1f"}),
    ] {
        assert_eq!(
            exchange(&mut admin, request.clone()).await,
            [] as [Value; 0],
            "{request}"
        );
    }
    assert_eq!(
        exchange(&mut admin, json!({"command": "tags", "data": USER})).await,
        [json!({"command": "tags", "tags": ["b", "c"]})]
    );
    let refused = exchange(
        &mut admin,
        json!({"command": "tags", "data": "short-lived-4a1f"}),
    )
    .await;
    assert!(refused[0]["error"].as_str().is_some(), "{refused:?}");
    let refused = exchange(
        &mut admin,
        json!({"command": "register", "tags": ["x"], "data": USER}),
    )
    .await;
    assert!(
        refused[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("already")),
        "{refused:?}"
    );
    let mut user = authed(server, USER).await;
    assert_eq!(
        exchange(
            &mut user,
            json!({"command": "publish", "tags": ["b", "c"], "data": "x"})
        )
        .await,
        [] as [Value; 0]
    );
    let denied = exchange(
        &mut user,
        json!({"command": "publish", "tags": ["a"], "data": "x"}),
    )
    .await;
    assert!(
        denied[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("permission")),
        "{denied:?}"
    );
}

/// Every file under `dir`, as bytes read lossily into one text.
fn everything_under(dir: &std::path::Path) -> String {
    let mut text = String::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
            text.push('\n');
        }
    }
    text
}

/// Every row of every table of `database`, as PostgreSQL writes a row.
fn every_row(database: &str) -> String {
    let server = postgres_server();
    let tables = server.psql_in(
        database,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    );
    let mut rows = String::new();
    for table in tables.lines().filter(|t| !t.is_empty()) {
        rows.push_str(&server.psql_in(database, &format!("SELECT t::text FROM {table} t")));
    }
    rows
}

#[tokio::test]
async fn a_scribble_directory_holds_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("scribble://?db={}", dir.path().display());
    let server = start(&store);
    administer(&server).await;
    let files = everything_under(dir.path());
    for secret in [USER, ADMIN, "short-lived-4a1f"] {
        assert!(
            !files.contains(secret),
            "the store holds {secret}:\n{files}"
        );
    }
    assert!(files.contains(&hex_sha256(USER)), "{files}");
}

#[tokio::test]
async fn a_postgres_table_holds_no_token() {
    let database = postgres_server().database();
    let server = start(&database);
    administer(&server).await;
    let rows = every_row(&database);
    for secret in [USER, ADMIN, "short-lived-4a1f"] {
        assert!(!rows.contains(secret), "the tables hold {secret}:\n{rows}");
    }
    // bytea as PostgreSQL writes it.
    assert!(
        rows.contains(&format!("\\\\x{}", hex_sha256(USER))),
        "{rows}"
    );
}

/// After a migration: the old tokens keep their tags, and the admin
/// commands work on them.
async fn old_tokens_work(server: &MistServer) {
    let mut admin = authed(server, ADMIN).await;
    assert_eq!(
        exchange(
            &mut admin,
            json!({"command": "tags", "data": "old-token-1"})
        )
        .await,
        [json!({"command": "tags", "tags": ["a", "b"]})]
    );
    let mut old = authed(server, "old-token-1").await;
    assert_eq!(
        exchange(
            &mut old,
            json!({"command": "publish", "tags": ["a"], "data": "x"})
        )
        .await,
        [] as [Value; 0]
    );
    let mut old = authed(server, "old token two, with spaces").await;
    assert_eq!(old.sync().await, [] as [Value; 0], "its auth is accepted");
    let denied = exchange(
        &mut old,
        json!({"command": "publish", "tags": ["a"], "data": "x"}),
    )
    .await;
    assert!(denied[0]["error"].as_str().is_some(), "{denied:?}");
}

#[tokio::test]
async fn a_clear_text_scribble_store_is_migrated_once() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    // As mist 0.2 wrote them.
    for (token, tags) in [
        ("old-token-1", json!(["a", "b"])),
        ("old token two, with spaces", json!([])),
    ] {
        let document = serde_json::to_vec_pretty(&json!({"token": token, "tags": tags})).unwrap();
        std::fs::write(tokens.join(format!("{}.json", hex_sha256(token))), document).unwrap();
    }
    let store = format!("scribble://?db={}", dir.path().display());
    let mut server = start(&store);
    let line = server.wait_for_log("clear-text token(s) migrated");
    assert!(line.contains("2 clear-text token(s)"), "{line}");
    old_tokens_work(&server).await;
    let files = everything_under(dir.path());
    assert!(
        !files.contains("old-token-1") && !files.contains("old token two"),
        "{files}"
    );
    server.terminate();

    let server = start(&store);
    old_tokens_work(&server).await;
    assert!(!server.log().contains("migrated"), "{}", server.log());
}

#[tokio::test]
async fn clear_text_postgres_tables_are_migrated_once() {
    let pg = postgres_server();
    let database = pg.database();
    // As mist 0.2 created and filled them.
    for statement in [
        "CREATE TABLE mist_tokens (token TEXT PRIMARY KEY)",
        "CREATE TABLE mist_token_tags (
            token TEXT NOT NULL REFERENCES mist_tokens (token) ON DELETE CASCADE,
            tag TEXT NOT NULL,
            PRIMARY KEY (token, tag))",
        "INSERT INTO mist_tokens VALUES ('old-token-1'), ('old token two, with spaces')",
        "INSERT INTO mist_token_tags VALUES ('old-token-1', 'a'), ('old-token-1', 'b')",
    ] {
        pg.psql_in(&database, statement);
    }
    let mut server = start(&database);
    let line = server.wait_for_log("clear-text token(s) migrated");
    assert!(line.contains("2 clear-text token(s)"), "{line}");
    assert!(!line.contains(postgres::PASSWORD), "{line}");
    old_tokens_work(&server).await;
    let rows = every_row(&database);
    assert!(
        !rows.contains("old-token-1") && !rows.contains("old token two"),
        "{rows}"
    );
    assert_eq!(
        pg.psql_in(
            &database,
            "SELECT to_regclass('mist_tokens') IS NULL AND to_regclass('mist_token_tags') IS NULL"
        )
        .trim(),
        "t",
        "the clear-text tables are dropped"
    );
    server.terminate();

    let server = start(&database);
    old_tokens_work(&server).await;
    assert!(!server.log().contains("migrated"), "{}", server.log());
}
