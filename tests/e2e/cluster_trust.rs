//! A cluster that trusts nothing it has not checked (docs/cluster.md,
//! "Threat model"): real `mist` nodes over a real `redis-server` or
//! `nats-server`, and a stranger on the backplane (`mist_e2e::spy`) that
//! publishes hostile payloads straight on the nodes' channels; revocation
//! that survives a backplane outage; a token store that fails during a
//! recheck. Every case runs on both backplanes.
//!
//! What the stranger knows of the payload format is what the wire shows
//! (docs/cluster.md, "Payloads"): a 30-byte header (version 2, kind, key
//! id, origin, sequence number, time), the body, and with a key a 32-byte
//! MAC at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mist_e2e::client::delivery;
use mist_e2e::postgres::shared as postgres_server;
use mist_e2e::spy::{control_channel, node_channel, Spy};
use mist_e2e::TIMEOUT;
use serde_json::{json, Value};

use super::cluster::{
    await_nodes, await_readyz, cluster_counter, on_both_backplanes, until_fence, Cluster, Kind,
    ADMIN, REVOKED_WITHIN,
};

const HEADER: usize = 38;
const MALFORMED: &str = "mist_cluster_malformed_total";
const DUPLICATES: &str = "mist_cluster_duplicates_total";
/// docs/cluster.md, "Revocation": a recheck the store cannot answer fails
/// closed this long after it began.
const FAIL_CLOSED_AFTER: Duration = Duration::from_secs(5);

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// An unsigned messages payload of one message, as a stranger writes it.
fn unsigned(origin: u64, sequence: u64, tags: &[&str], data: &str) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut p = vec![3, 1, 0, 0, 0, 0];
    p.extend_from_slice(&origin.to_be_bytes());
    p.extend_from_slice(&0u64.to_be_bytes()); // to every node
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&now.to_be_bytes());
    varint(1, &mut p);
    varint(tags.len() as u64, &mut p);
    for tag in tags {
        varint(tag.len() as u64, &mut p);
        p.extend_from_slice(tag.as_bytes());
    }
    varint(data.len() as u64, &mut p);
    p.extend_from_slice(data.as_bytes());
    p
}

/// An unsigned payload of `kind` with an empty body (leaving: 4).
fn unsigned_control(kind: u8, origin: u64, sequence: u64) -> Vec<u8> {
    let mut p = unsigned(origin, sequence, &["x"], "\"\"");
    p.truncate(HEADER);
    p[1] = kind;
    p
}

fn origin_of(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[6..14].try_into().unwrap())
}

/// A real payload made hostile in every way the issue lists: mutated byte
/// by byte, newlines inserted, truncated, a forged origin and the largest
/// sequence number; and strangers' own payloads under a node's id.
fn hostile_from(genuine: &[u8]) -> Vec<Vec<u8>> {
    let mut hostile = Vec::new();
    for at in 0..genuine.len() {
        let mut p = genuine.to_vec();
        p[at] ^= 0x01;
        hostile.push(p);
    }
    for at in (HEADER..genuine.len()).step_by(5) {
        for inserted in [&b"\n"[..], b"\"\n\n  \r\n"] {
            let mut p = genuine.to_vec();
            p.splice(at..at, inserted.iter().copied());
            hostile.push(p);
        }
    }
    for cut in [1, HEADER - 1, HEADER, genuine.len() / 2, genuine.len() - 1] {
        hostile.push(genuine[..cut].to_vec());
    }
    let mut forged = genuine.to_vec();
    forged[22..30].copy_from_slice(&u64::MAX.to_be_bytes());
    hostile.push(forged);
    hostile
}

/// Node 1's own channel (`who` names the node).
async fn subscriber_channel(cluster: &Cluster) -> String {
    let mut observer = cluster.client(1).await;
    let who = await_nodes(&mut observer, 2).await;
    node_channel("mist", who["node"].as_str().expect("who names the node"))
}

fn key_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("cluster.key");
    std::fs::write(
        &path,
        "# the cluster's key\n3f6c1d2a9b8e7f605142332415f6e7d8c9bafe0d1c2b3a495867f8e9d0c1b2a3\n",
    )
    .unwrap();
    path
}

/// Polls `/metrics` of `node` until `name` is `value`.
async fn await_counter(cluster: &Cluster, node: usize, name: &str, value: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = cluster_counter(cluster, node, name).await;
        if now == value {
            return;
        }
        assert!(
            now < value && Instant::now() < deadline,
            "{name} of node {node} is {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With a key, every hostile payload is dropped and counted (the replay of
/// the real one as a copy, every other one as refused), no subscriber sees
/// any of them, no node is silenced, and the nodes' own traffic goes on
/// exactly once, in order.
async fn with_a_key_hostile_payloads_are_dropped_and_counted(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let cluster = Cluster::start(kind, 2, &["--cluster-key-file", key.to_str().unwrap()]);
    assert!(
        cluster.nodes[0]
            .log()
            .contains("signed and checked with the cluster key"),
        "{}",
        cluster.nodes[0].log()
    );
    assert!(
        !cluster.nodes[0].log().contains("3f6c1d2a9b8e"),
        "the key is in the log"
    );
    let mut subscriber = cluster.client(1).await;
    subscriber.subscribe(&["h"]).await;
    let mut publisher = cluster.client(0).await;
    // What node 0 sends node 1 travels on node 1's own channel.
    let channel = subscriber_channel(&cluster).await;
    let control = control_channel("mist");
    let mut spy = Spy::connect(&cluster.backplane.uri(), std::slice::from_ref(&channel)).await;

    publisher.publish(&["h"], "captured").await;
    assert_eq!(subscriber.recv().await, delivery(&["h"], "captured"));
    let genuine = spy
        .next_on(&channel, |p| p.len() > HEADER && p[1] == 1)
        .await;
    let victim = origin_of(&genuine);
    let mut hostile = hostile_from(&genuine);
    hostile.push(unsigned(victim, u64::MAX, &["h"], "\"forged\""));
    hostile.push(unsigned(7, 1, &["h"], "\"x\"\n\n  \r\n"));
    let malformed = cluster_counter(&cluster, 1, MALFORMED).await;
    let duplicates = cluster_counter(&cluster, 1, DUPLICATES).await;
    for payload in &hostile {
        spy.publish(&channel, payload).await;
    }
    // On the control channel: a forged goodbye of the publisher's node.
    spy.publish(&control, &unsigned_control(4, victim, u64::MAX))
        .await;
    // The real payload again, as it was.
    spy.publish(&channel, &genuine).await;

    let refused = hostile.len() as u64 + 1;
    await_counter(&cluster, 1, MALFORMED, malformed + refused).await;
    await_counter(&cluster, 1, DUPLICATES, duplicates + 1).await;

    for i in 1..=20 {
        publisher.publish(&["h"], &format!("own-{i}")).await;
    }
    publisher.publish(&["h"], "fence").await;
    let expected: Vec<Value> = (1..=20)
        .map(|i| delivery(&["h"], &format!("own-{i}")))
        .collect();
    assert_eq!(until_fence(&mut subscriber, "fence").await, expected);
    subscriber.expect_nothing().await;
    // Nothing more was refused, and the forged goodbye changed nothing.
    assert_eq!(
        cluster_counter(&cluster, 1, MALFORMED).await,
        malformed + refused
    );
    let mut observer = cluster.client(1).await;
    assert_eq!(
        await_nodes(&mut observer, 2).await["nodes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Without a key, strangers can deliver (docs/cluster.md says so), but
/// every line any subscriber gets is still one valid JSON delivery, and
/// nothing stops a node's traffic: a forged payload under the publisher's
/// node id with the largest sequence number included.
async fn without_a_key_lines_stay_whole_and_no_node_is_silenced(kind: Kind) {
    let cluster = Cluster::start(kind, 2, &[]);
    assert!(
        cluster.nodes[0]
            .log()
            .contains("the cluster has no key (--cluster-key-file)"),
        "{}",
        cluster.nodes[0].log()
    );
    let mut subscriber = cluster.client(1).await;
    subscriber.subscribe(&["h"]).await;
    let mut publisher = cluster.client(0).await;
    let channel = subscriber_channel(&cluster).await;
    let mut spy = Spy::connect(&cluster.backplane.uri(), std::slice::from_ref(&channel)).await;

    publisher.publish(&["h"], "captured").await;
    assert_eq!(subscriber.recv().await, delivery(&["h"], "captured"));
    let genuine = spy
        .next_on(&channel, |p| p.len() > HEADER && p[1] == 1)
        .await;
    let victim = origin_of(&genuine);
    let mut hostile = hostile_from(&genuine);
    // Below the forged copy's 2^64-1 (already seen): new, so delivered.
    hostile.push(unsigned(victim, u64::MAX - 1, &["h"], "\"forged\""));
    hostile.push(unsigned(7, 1, &["h"], "\"x\"\n\n  \r\n"));
    hostile.push(unsigned(7, 2, &["h"], "\"a\"}\n{\"command\":\"x\""));
    hostile.push(genuine.clone());
    let malformed = cluster_counter(&cluster, 1, MALFORMED).await;
    for payload in &hostile {
        spy.publish(&channel, payload).await;
    }
    for i in 1..=20 {
        publisher.publish(&["h"], &format!("own-{i}")).await;
    }
    publisher.publish(&["h"], "fence").await;
    // `recv` fails the test on any line that is not JSON.
    let got = until_fence(&mut subscriber, "fence").await;
    for line in &got {
        let object = line.as_object().unwrap();
        assert_eq!(object.len(), 3, "{line}");
        assert_eq!(object["command"], "publish", "{line}");
        assert!(object["data"].is_string(), "{line}");
        assert!(
            object["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().all(Value::is_string) && tags.contains(&json!("h"))),
            "{line}"
        );
    }
    let own: Vec<&str> = got
        .iter()
        .filter_map(|m| m["data"].as_str())
        .filter(|d| d.starts_with("own-"))
        .collect();
    let expected: Vec<String> = (1..=20).map(|i| format!("own-{i}")).collect();
    assert_eq!(own, expected, "the publisher's node was silenced");
    assert!(
        got.iter().any(|m| m["data"] == "forged"),
        "without a key a stranger's well-formed payload is delivered: {got:?}"
    );
    // The malformed ones (the line injections among them) were counted.
    assert!(cluster_counter(&cluster, 1, MALFORMED).await >= malformed + 3);
}

/// An admin's `unset` while the backplane is down: the node where it ran
/// keeps the change until the backplane takes it, and every node rechecks
/// its tokens when it reconnects. The other node's subscription is gone
/// within a second of the backplane's return.
async fn a_revocation_while_the_backplane_is_down_is_not_lost(kind: Kind) {
    let store = postgres_server().database();
    let cluster = Cluster::start(
        kind,
        2,
        &["--authenticator", store.as_str(), "--token", ADMIN],
    );
    let mut admin = cluster.client(0).await;
    admin.send(json!({"command": "auth", "data": ADMIN})).await;
    admin
        .send(json!({"command": "register", "data": "user-d", "tags": ["a", "b"]}))
        .await;
    assert!(admin.sync().await.is_empty());
    let mut user = cluster.client(1).await;
    user.send(json!({"command": "auth", "data": "user-d"}))
        .await;
    user.subscribe(&["a"]).await;
    user.subscribe(&["b"]).await;

    cluster.backplane.service().kill();
    for node in 0..2 {
        await_readyz(&cluster.http(node), 503).await;
    }
    admin
        .send(json!({"command": "unset", "data": "user-d", "tags": ["a"]}))
        .await;
    assert!(admin.sync().await.is_empty());
    // Down, the other node cannot know yet.
    let list = user.request(json!({"command": "list"})).await;
    assert_eq!(list["data"], "[[\"a\"],[\"b\"]]", "{list}");

    cluster.backplane.service().restart();
    let back = Instant::now();
    let notice = user.recv().await;
    let took = back.elapsed();
    assert_eq!(notice["command"], "revoked", "{notice}");
    assert_eq!(notice["tags"], json!(["a"]), "{notice}");
    assert!(
        took < REVOKED_WITHIN,
        "revoked {took:?} after the backplane returned"
    );
    admin.publish(&["a"], "revoked").await;
    admin.publish(&["a", "b"], "fence").await;
    assert_eq!(until_fence(&mut user, "fence").await, Vec::<Value>::new());
    let list = user.request(json!({"command": "list"})).await;
    assert_eq!(list["data"], "[[\"b\"]]", "{list}");
}

/// A node rechecks its tokens when the backplane returns, and the store
/// cannot answer: the recheck is tried again, and once the documented bound
/// has passed without an answer the token's sessions lose every
/// subscription (fail closed). Once the store is back they may subscribe
/// again.
async fn a_store_failing_during_the_recheck_fails_closed(kind: Kind) {
    let server = postgres_server();
    let store = server.database();
    let database = store.rsplit_once("db=").unwrap().1.to_string();
    let cluster = Cluster::start(
        kind,
        2,
        &["--authenticator", store.as_str(), "--token", ADMIN],
    );
    let mut admin = cluster.client(0).await;
    admin.send(json!({"command": "auth", "data": ADMIN})).await;
    admin
        .send(json!({"command": "register", "data": "user-f", "tags": ["a", "b"]}))
        .await;
    assert!(admin.sync().await.is_empty());
    let mut user = cluster.client(1).await;
    user.send(json!({"command": "auth", "data": "user-f"}))
        .await;
    user.subscribe(&["a"]).await;
    user.subscribe(&["b"]).await;

    // The store goes away for the nodes: no new connection to its
    // database, and the open ones are ended.
    server.psql(&format!(
        "ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false"
    ));
    server.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    ));
    cluster.backplane.service().kill();
    await_readyz(&cluster.http(1), 503).await;
    cluster.backplane.service().restart();
    let back = Instant::now();
    let mut revoked = Vec::new();
    while revoked.len() < 2 {
        let notice = tokio::time::timeout(FAIL_CLOSED_AFTER + TIMEOUT, user.recv())
            .await
            .expect("the sessions never lost their subscriptions");
        assert_eq!(notice["command"], "revoked", "{notice}");
        revoked.push(notice["tags"].clone());
    }
    let took = back.elapsed();
    revoked.sort_by_key(Value::to_string);
    assert_eq!(revoked, [json!(["a"]), json!(["b"])]);
    // Asked again meanwhile (not given up at the first failure), and closed
    // within the bound of the recheck that began on reconnection.
    assert!(
        took > FAIL_CLOSED_AFTER - Duration::from_secs(1),
        "failed closed after only {took:?}"
    );
    assert!(
        took < FAIL_CLOSED_AFTER + REVOKED_WITHIN,
        "failed closed only after {took:?}"
    );
    let list = user.request(json!({"command": "list"})).await;
    assert_eq!(list["data"], "[]", "{list}");

    server.psql(&format!(
        "ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true"
    ));
    // The store answers again: subscribing asks it, and works.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        user.send(json!({"command": "subscribe", "tags": ["a"]}))
            .await;
        let replies = user.sync().await;
        if replies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribing again failed: {replies:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.publish(&["a"], "back").await;
    assert_eq!(user.recv().await, delivery(&["a"], "back"));
}

on_both_backplanes!(
    with_a_key_hostile_payloads_are_dropped_and_counted,
    without_a_key_lines_stay_whole_and_no_node_is_silenced,
    a_revocation_while_the_backplane_is_down_is_not_lost,
    a_store_failing_during_the_recheck_fails_closed,
);

/// A key file that cannot be used stops the start, naming the file and
/// never showing the key.
#[test]
fn a_bad_key_file_stops_the_start_without_showing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "secret-but-short\n").unwrap();
    let missing = dir.path().join("missing.key");
    for (path, says) in [
        (&short, "a key must be at least 32 bytes"),
        (&missing, "missing.key"),
    ] {
        let (status, log) = mist_e2e::MistServer::run_to_exit(&[
            "--listeners",
            "tcp://127.0.0.1:0",
            "--cluster",
            "redis://127.0.0.1:1",
            "--cluster-key-file",
            path.to_str().unwrap(),
        ]);
        assert!(!status.success(), "{log}");
        assert!(log.contains(says), "{log}");
        assert!(!log.contains("secret-but-short"), "{log}");
    }
}
