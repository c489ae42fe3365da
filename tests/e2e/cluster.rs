//! Clusters (docs/protocol.md, "Clusters"; docs/cluster.md): real `mist`
//! nodes on 127.0.0.1 joined with `--cluster` over a real backplane
//! (`redis-server` or `nats-server`, started by the test on a free port).
//! Every case runs against both backplanes (`cluster::redis::*`,
//! `cluster::nats::*`).
//!
//! No sleep is a barrier here. A subscription is live cluster-wide at the
//! pong that follows it; "nothing else arrived" is shown by a fence: the
//! same publisher's next message, which the subscriber can only see after
//! everything published before it (one publisher's order holds across
//! nodes). Every wait is bounded.

use std::process::Command;
use std::time::{Duration, Instant};

use mist_e2e::client::delivery;
use mist_e2e::nats::Nats;
use mist_e2e::postgres::shared as postgres_server;
use mist_e2e::redis::Redis;
use mist_e2e::service::Service;
use mist_e2e::web::{http, HttpResponse};
use mist_e2e::{Client, MistServer, TIMEOUT};
use serde_json::{json, Value};

/// The issue's bound for cross-node delivery to resume after the backplane
/// returns.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

/// The bound for a revocation to reach the other nodes.
pub(crate) const REVOKED_WITHIN: Duration = Duration::from_secs(1);

pub(crate) const ADMIN: &str = "cluster-admin-token";

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Redis,
    Nats,
}

/// The backplane server of one test.
pub(crate) enum Backplane {
    Redis(Redis),
    Nats(Nats),
}

impl Backplane {
    pub(crate) fn start(kind: Kind) -> Backplane {
        match kind {
            Kind::Redis => Backplane::Redis(Redis::start()),
            Kind::Nats => Backplane::Nats(Nats::start()),
        }
    }

    pub(crate) fn uri(&self) -> String {
        match self {
            Backplane::Redis(r) => r.uri(),
            Backplane::Nats(n) => n.uri(),
        }
    }

    pub(crate) fn service(&self) -> &Service {
        match self {
            Backplane::Redis(r) => &r.service,
            Backplane::Nats(n) => &n.service,
        }
    }
}

/// A backplane and the nodes joined over it.
pub(crate) struct Cluster {
    pub(crate) backplane: Backplane,
    pub(crate) nodes: Vec<MistServer>,
}

impl Cluster {
    /// `n` nodes, each with a TCP and an HTTP listener on port 0, plus `extra`.
    pub(crate) fn start(kind: Kind, n: usize, extra: &[&str]) -> Cluster {
        let backplane = Backplane::start(kind);
        let uri = backplane.uri();
        let nodes = (0..n).map(|_| node(&uri, extra)).collect();
        Cluster { backplane, nodes }
    }

    pub(crate) async fn client(&self, node: usize) -> Client {
        Client::connect(&self.nodes[node].tcp()).await
    }

    pub(crate) fn http(&self, node: usize) -> String {
        self.nodes[node].addr("http")
    }
}

fn node(uri: &str, extra: &[&str]) -> MistServer {
    let mut args = vec![
        "--listeners",
        "tcp://127.0.0.1:0,http://127.0.0.1:0",
        "--cluster",
        uri,
    ];
    args.extend_from_slice(extra);
    MistServer::start_with(&args, 2)
}

/// Deliveries that reach `client` up to and including the first whose data
/// is `fence` (the fence itself left out).
pub(crate) async fn until_fence(client: &mut Client, fence: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let message = client.recv().await;
        if message["data"] == fence {
            return got;
        }
        got.push(message);
    }
}

async fn readyz(addr: &str) -> HttpResponse {
    http(addr, "GET", "/readyz", &[], b"").await
}

/// Polls `/readyz` until its status is `status`; returns the last answer.
pub(crate) async fn await_readyz(addr: &str, status: u16) -> HttpResponse {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = readyz(addr).await;
        if answer.status == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status}; last: {} {}",
            answer.status,
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `who`'s figures.
pub(crate) async fn who(client: &mut Client) -> Value {
    let reply = client.request(json!({"command": "who"})).await;
    let data = reply["data"]
        .as_str()
        .unwrap_or_else(|| panic!("who answered {reply}"));
    serde_json::from_str(data).unwrap()
}

/// Polls `who` until its `nodes` has `n` entries; returns the figures.
pub(crate) async fn await_nodes(client: &mut Client, n: usize) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let figures = who(client).await;
        if figures["nodes"].as_array().map(Vec::len) == Some(n) {
            return figures;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {n} nodes; last who: {figures}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The seed's table (docs/protocol.md, "The model"), each subscriber on a
/// different node from the publisher, plus one beside it.
async fn the_seeds_table_holds_across_nodes(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]);
    let mut one = cluster.client(0).await;
    let mut two = cluster.client(2).await;
    let mut three = cluster.client(0).await;
    let mut local = cluster.client(1).await;
    let mut a = cluster.client(2).await;
    let mut publisher = cluster.client(1).await;
    one.subscribe(&["onefish"]).await;
    two.subscribe(&["onefish", "twofish"]).await;
    three.subscribe(&["onefish", "twofish", "redfish"]).await;
    local.subscribe(&["twofish", "onefish"]).await;
    a.subscribe(&["a"]).await;

    publisher.publish(&["onefish"], "1").await;
    publisher.publish(&["onefish", "twofish"], "2").await;
    publisher
        .publish(&["onefish", "twofish", "redfish"], "3")
        .await;
    publisher.publish(&["a"], "a").await;
    publisher.publish(&["a", "b"], "ab").await;
    publisher.publish(&["b"], "b").await;
    // The fence: matches everyone, published last.
    publisher
        .publish(&["onefish", "twofish", "redfish", "a"], "fence")
        .await;
    assert!(publisher.sync().await.is_empty(), "never to the publisher");

    assert_eq!(
        until_fence(&mut one, "fence").await,
        [
            delivery(&["onefish"], "1"),
            delivery(&["onefish", "twofish"], "2"),
            delivery(&["onefish", "twofish", "redfish"], "3")
        ]
    );
    assert_eq!(
        until_fence(&mut two, "fence").await,
        [
            delivery(&["onefish", "twofish"], "2"),
            delivery(&["onefish", "twofish", "redfish"], "3")
        ]
    );
    assert_eq!(
        until_fence(&mut three, "fence").await,
        [delivery(&["onefish", "twofish", "redfish"], "3")]
    );
    assert_eq!(
        until_fence(&mut local, "fence").await,
        [
            delivery(&["onefish", "twofish"], "2"),
            delivery(&["onefish", "twofish", "redfish"], "3")
        ]
    );
    assert_eq!(
        until_fence(&mut a, "fence").await,
        [delivery(&["a"], "a"), delivery(&["a", "b"], "ab")]
    );
    for client in [&mut one, &mut two, &mut three, &mut local, &mut a] {
        client.expect_nothing().await;
    }
}

/// A node holding several matching subscriptions (several of its tag sets
/// match the message) delivers it once to each matching client; a
/// node whose interest the message misses gets nothing.
async fn overlapping_subscriptions_get_a_message_exactly_once(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]);
    let mut many = cluster.client(0).await;
    let mut other = cluster.client(0).await;
    let mut far = cluster.client(2).await;
    let mut unrelated = cluster.client(2).await;
    let mut publisher = cluster.client(1).await;
    many.subscribe(&["a"]).await;
    many.subscribe(&["b"]).await;
    many.subscribe(&["a", "b"]).await;
    other.subscribe(&["c"]).await;
    other.subscribe(&["b", "c"]).await;
    far.subscribe(&["b"]).await;
    unrelated.subscribe(&["z"]).await;

    for i in 0..50 {
        publisher.publish(&["a", "b", "c"], &i.to_string()).await;
    }
    publisher.publish(&["a", "b", "c", "z"], "fence").await;
    assert!(publisher.sync().await.is_empty());
    let expected: Vec<Value> = (0..50)
        .map(|i| delivery(&["a", "b", "c"], &i.to_string()))
        .collect();
    for client in [&mut many, &mut other, &mut far] {
        assert_eq!(until_fence(client, "fence").await, expected);
        client.expect_nothing().await;
    }
    assert!(until_fence(&mut unrelated, "fence").await.is_empty());

    // One copy per node, however many of its sets match: node 0 had
    // no copy to drop.
    let metrics = http(&cluster.http(0), "GET", "/metrics", &[], b"")
        .await
        .text();
    let duplicates = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mist_cluster_duplicates_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no duplicate counter in:\n{metrics}"));
    assert_eq!(duplicates, 0.0, "{metrics}");
}

/// 10,000 messages from each of two publishers on two nodes, written in one
/// go: a subscriber on a third node gets every one, once, each publisher's
/// in order.
async fn a_burst_keeps_each_publishers_order(kind: Kind) {
    const N: usize = 10_000;
    let cluster = Cluster::start(kind, 3, &[]);
    let mut subscriber = cluster.client(0).await;
    subscriber.subscribe(&["burst"]).await;
    let mut publishers = [cluster.client(1).await, cluster.client(2).await];
    for (name, publisher) in ["b", "c"].iter().zip(publishers.iter_mut()) {
        let mut lines = String::with_capacity(N * 64);
        for i in 0..N {
            lines.push_str(&format!(
                "{{\"command\":\"publish\",\"tags\":[\"burst\",\"{name}\"],\"data\":\"{name}{i}\"}}\n"
            ));
        }
        lines.push_str(&format!(
            "{{\"command\":\"publish\",\"tags\":[\"burst\"],\"data\":\"{name}-end\"}}\n"
        ));
        publisher.send_raw(lines.as_bytes()).await;
    }
    let mut seen = [Vec::with_capacity(N), Vec::with_capacity(N)];
    let mut ended = [false, false];
    while ended != [true, true] {
        let message = subscriber.recv().await;
        let data = message["data"].as_str().unwrap().to_string();
        let which = usize::from(data.starts_with('c'));
        assert!(!ended[which], "{data} after its publisher's end");
        if data.ends_with("-end") {
            ended[which] = true;
        } else {
            seen[which].push(data);
        }
    }
    for (which, name) in ["b", "c"].iter().enumerate() {
        let expected: Vec<String> = (0..N).map(|i| format!("{name}{i}")).collect();
        assert!(
            seen[which] == expected,
            "publisher {name}: {} messages, first difference at {:?}",
            seen[which].len(),
            seen[which].iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    for publisher in &mut publishers {
        assert!(publisher.sync().await.is_empty());
    }
    subscriber.expect_nothing().await;
}

/// Once the pong after a `subscribe` arrived, a message published on any
/// other node reaches the subscription: no sleep between the two.
async fn the_ping_barrier_holds_across_nodes(kind: Kind) {
    let cluster = Cluster::start(kind, 2, &[]);
    let mut subscriber = cluster.client(0).await;
    let mut publisher = cluster.client(1).await;
    for i in 0..25 {
        // A fresh tag each time: a backplane channel nobody holds yet.
        let tag = format!("barrier-{i}");
        subscriber.subscribe(&[&tag]).await;
        publisher.publish(&[&tag], "now").await;
        let message = subscriber.recv().await;
        assert_eq!(message, delivery(&[&tag], "now"), "round {i}");
    }
    // A fresh connection whose first command is the subscribe.
    let mut fresh = cluster.client(0).await;
    fresh.subscribe(&["fresh"]).await;
    publisher.publish(&["fresh"], "hello").await;
    assert_eq!(fresh.recv().await, delivery(&["fresh"], "hello"));
}

/// Unsubscribing and closing connections release the node's interest:
/// nothing more reaches them, and the rest still works.
async fn unsubscribe_and_close_release_interest(kind: Kind) {
    let cluster = Cluster::start(kind, 2, &[]);
    let mut subscriber = cluster.client(0).await;
    let mut publisher = cluster.client(1).await;
    subscriber.subscribe(&["x"]).await;
    subscriber.subscribe(&["y"]).await;
    subscriber
        .send(json!({"command": "unsubscribe", "tags": ["x"]}))
        .await;
    assert!(subscriber.sync().await.is_empty());
    publisher.publish(&["x"], "gone").await;
    publisher.publish(&["x", "y"], "fence").await;
    assert!(until_fence(&mut subscriber, "fence").await.is_empty());

    // A closed connection's subscriptions go with it: a new one on the same
    // tags sees only what is published after its own subscribe.
    drop(subscriber);
    let mut again = cluster.client(0).await;
    again.subscribe(&["y"]).await;
    publisher.publish(&["y"], "after").await;
    assert_eq!(again.recv().await, delivery(&["y"], "after"));
    // The closed connection is gone once the node has read its end.
    let mut observer = cluster.client(0).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let figures = who(&mut observer).await;
        if figures["subscriptions"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{figures}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `who` names this node and the nodes it sees; a node killed with SIGKILL
/// drops out of the others' `nodes` and harms nothing else.
async fn a_killed_node_harms_no_other(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3, &[]);
    let mut observer = cluster.client(1).await;
    let figures = await_nodes(&mut observer, 3).await;
    let me = figures["node"].as_str().unwrap().to_string();
    assert_eq!(me.len(), 16, "{figures}");
    assert!(
        figures["nodes"].as_array().unwrap().contains(&json!(me)),
        "{figures}"
    );

    let mut doomed = cluster.client(0).await;
    doomed.subscribe(&["k"]).await;
    let mut subscriber = cluster.client(2).await;
    subscriber.subscribe(&["k"]).await;
    let mut publisher = cluster.client(1).await;

    let victim = cluster.nodes.remove(0);
    let status = Command::new("kill")
        .args(["-KILL", &victim.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(victim);

    for i in 0..20 {
        publisher.publish(&["k"], &i.to_string()).await;
    }
    publisher.publish(&["k"], "fence").await;
    assert!(publisher.sync().await.is_empty());
    let expected: Vec<Value> = (0..20).map(|i| delivery(&["k"], &i.to_string())).collect();
    assert_eq!(until_fence(&mut subscriber, "fence").await, expected);
    // Three missed heartbeats later, the dead node is no longer listed.
    await_nodes(&mut observer, 2).await;
    assert_eq!(await_readyz(&cluster.http(0), 200).await.status, 200);
}

/// A rolling restart: each node in turn is stopped (SIGTERM: it hands the
/// backplane what waits and says goodbye) and a new one started in its
/// place (a new node: new id, new ports), as an operator upgrading a
/// cluster does. Meanwhile nothing is lost between the nodes that stay: a
/// subscriber on one gets every message a publisher on another sends,
/// once, in order. And each new node joins at once: a client of it that
/// subscribes has, after its pong, what the others publish, and what it
/// publishes reaches them.
async fn a_rolling_restart_loses_nothing_between_the_nodes_that_stay(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3, &[]);
    let uri = cluster.backplane.uri();
    for round in 0..3 {
        let (stays, publishes) = ((round + 1) % 3, (round + 2) % 3);
        let mut subscriber = cluster.client(stays).await;
        subscriber.subscribe(&["roll"]).await;
        let mut publisher = cluster.client(publishes).await;
        publisher.publish(&["roll"], "before").await;
        assert_eq!(subscriber.recv().await, delivery(&["roll"], "before"));

        assert!(cluster.nodes[round].terminate().success(), "round {round}");
        for i in 0..50 {
            publisher.publish(&["roll"], &format!("{round}-{i}")).await;
        }
        cluster.nodes[round] = node(&uri, &[]);
        for i in 50..100 {
            publisher.publish(&["roll"], &format!("{round}-{i}")).await;
        }
        publisher.publish(&["roll"], "fence").await;
        let expected: Vec<Value> = (0..100)
            .map(|i| delivery(&["roll"], &format!("{round}-{i}")))
            .collect();
        assert_eq!(
            until_fence(&mut subscriber, "fence").await,
            expected,
            "round {round}"
        );

        // The new node: its client's subscription is live after the pong,
        // across nodes, both ways.
        let mut fresh = cluster.client(round).await;
        fresh.subscribe(&["roll"]).await;
        publisher.publish(&["roll"], "to the new node").await;
        assert_eq!(fresh.recv().await, delivery(&["roll"], "to the new node"));
        assert_eq!(
            subscriber.recv().await,
            delivery(&["roll"], "to the new node")
        );
        fresh.publish(&["roll"], "from the new node").await;
        assert_eq!(
            subscriber.recv().await,
            delivery(&["roll"], "from the new node")
        );
        subscriber.expect_nothing().await;
    }
}

/// The backplane killed: each node goes on serving its own clients,
/// `/readyz` says the cluster is down, cross-node messages are dropped and
/// counted. Restarted on the same port: the nodes reconnect by themselves
/// and cross-node delivery resumes within five seconds.
async fn the_cluster_survives_a_backplane_restart(kind: Kind) {
    let cluster = Cluster::start(kind, 2, &[]);
    let mut subscriber = cluster.client(0).await;
    subscriber.subscribe(&["r"]).await;
    let mut neighbour = cluster.client(0).await;
    let mut remote = cluster.client(1).await;
    remote.publish(&["r"], "before").await;
    assert_eq!(subscriber.recv().await, delivery(&["r"], "before"));

    cluster.backplane.service().kill();
    for node in 0..2 {
        let answer = await_readyz(&cluster.http(node), 503).await;
        let report = answer.json();
        assert!(
            report["not_ready"]
                .as_array()
                .is_some_and(|parts| parts.contains(&json!("cluster"))),
            "{report}"
        );
    }
    // Local service goes on.
    neighbour.publish(&["r"], "local").await;
    assert!(neighbour.sync().await.is_empty());
    assert_eq!(subscriber.recv().await, delivery(&["r"], "local"));
    // A subscribe while the backplane is down is answered, not held.
    let mut late = cluster.client(0).await;
    late.subscribe(&["late"]).await;
    // Cross-node traffic is dropped (at most once), and counted.
    remote.publish(&["r"], "lost").await;
    assert!(remote.sync().await.is_empty());

    cluster.backplane.service().restart();
    let restarted = Instant::now();
    // Probes every 100 ms (pacing, not a barrier) until one arrives; the
    // subscriber's read is bounded by TIMEOUT.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let prober = tokio::spawn(async move {
        for probe in 0.. {
            remote
                .publish(&["r", "late"], &format!("probe-{probe}"))
                .await;
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        remote
    });
    let first = subscriber.recv().await;
    let resumed = restarted.elapsed();
    let _ = stop.send(());
    let mut remote = prober.await.unwrap();
    assert!(
        first["data"]
            .as_str()
            .is_some_and(|d| d.starts_with("probe-")),
        "{first}"
    );
    assert!(
        resumed < RESUME_WITHIN,
        "cross-node delivery resumed only after {resumed:?}"
    );
    // The channel subscribed during the outage is live too, and in order.
    remote.publish(&["r", "late"], "fence").await;
    let probes = until_fence(&mut late, "fence").await;
    assert!(
        probes
            .iter()
            .all(|m| m["data"].as_str().is_some_and(|d| d.starts_with("probe-"))),
        "{probes:?}"
    );
    let rest = until_fence(&mut subscriber, "fence").await;
    assert!(
        rest.iter().all(|m| m["data"] != "lost"),
        "a message dropped during the outage came back: {rest:?}"
    );
    for node in 0..2 {
        await_readyz(&cluster.http(node), 200).await;
    }
    let metrics = http(&cluster.http(1), "GET", "/metrics", &[], b"")
        .await
        .text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mist_cluster_dropped_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// With a shared PostgreSQL store, an admin's `unset` on one node revokes
/// the matching subscriptions of that token's connections on another node
/// within a second.
async fn revocation_reaches_every_node(kind: Kind) {
    let store = postgres_server().database();
    let cluster = Cluster::start(
        kind,
        2,
        &["--authenticator", store.as_str(), "--token", ADMIN],
    );
    let mut admin = cluster.client(0).await;
    admin.send(json!({"command": "auth", "data": ADMIN})).await;
    admin
        .send(json!({"command": "register", "data": "user-t", "tags": ["a", "b"]}))
        .await;
    assert!(admin.sync().await.is_empty());

    let mut user = cluster.client(1).await;
    user.send(json!({"command": "auth", "data": "user-t"}))
        .await;
    user.subscribe(&["a"]).await;
    user.subscribe(&["b"]).await;
    admin.publish(&["a"], "granted").await;
    assert_eq!(user.recv().await, delivery(&["a"], "granted"));

    admin
        .send(json!({"command": "unset", "data": "user-t", "tags": ["a"]}))
        .await;
    assert!(admin.sync().await.is_empty());
    let unset = Instant::now();
    let notice = tokio::time::timeout(TIMEOUT, user.recv())
        .await
        .expect("no revocation notice");
    let took = unset.elapsed();
    assert_eq!(notice["command"], "revoked", "{notice}");
    assert_eq!(notice["tags"], json!(["a"]), "{notice}");
    assert!(took < REVOKED_WITHIN, "revoked after {took:?}");

    admin.publish(&["a"], "revoked").await;
    admin.publish(&["a", "b"], "fence").await;
    assert_eq!(until_fence(&mut user, "fence").await, Vec::<Value>::new());
    let list = user.request(json!({"command": "list"})).await;
    assert_eq!(list["data"], "[[\"b\"]]", "{list}");
}

/// Each case, once per backplane.
/// Reads deliveries whose data starts with their number (`"<i> ..."`)
/// until the one whose data is `end`; asserts they come 0, 1, 2, ... with
/// none missing or repeated, checks each with `check`, and returns how
/// many came.
async fn numbered_until_end(client: &mut Client, check: impl Fn(usize, &Value)) -> usize {
    let mut next = 0;
    loop {
        let message = client.recv().await;
        let data = message["data"].as_str().unwrap();
        if data == "end" {
            return next;
        }
        let i: usize = data.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(i, next, "message {i} arrived where {next} was due");
        check(i, &message);
        next += 1;
    }
}

/// A counter of node `node`'s `/metrics`.
pub(crate) async fn cluster_counter(cluster: &Cluster, node: usize, name: &str) -> u64 {
    let text = http(&cluster.http(node), "GET", "/metrics", &[], b"")
        .await
        .text();
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line[name.len() + 1..].trim().parse().unwrap()
}

/// One publisher floods messages on 200 topics (each with its own tag set,
/// so nothing batches) as fast as it can write, through a backplane whose
/// queue (`buffer=4096`) is far smaller than the flood: the node slows the
/// publisher down instead of losing the other node's copies. Every message
/// arrives exactly once, in order, and nothing is dropped.
async fn a_flood_faster_than_the_backplane_loses_nothing(kind: Kind) {
    // 12 MB: more than the node lets wait (1 MiB) before it slows the
    // publisher, through a 4 KiB backplane queue, plus what the sockets to
    // the backplane hold, while the backplane is frozen (batched, a few MB
    // would otherwise pass before anything waits).
    const N: usize = 12_000;
    const TOPICS: usize = 200;
    let backplane = Backplane::start(kind);
    let uri = format!("{}?buffer=4096", backplane.uri());
    let cluster = Cluster {
        nodes: (0..2).map(|_| node(&uri, &[])).collect(),
        backplane,
    };
    let mut subscriber = cluster.client(1).await;
    for topic in 0..TOPICS {
        subscriber
            .send(json!({"command": "subscribe", "tags": [format!("r{topic}"), "app"]}))
            .await;
    }
    assert!(subscriber.sync().await.is_empty());
    let mut publisher = cluster.client(0).await;
    let padding = "x".repeat(1000);
    let mut lines = String::with_capacity(N * 1100);
    for i in 0..N {
        lines.push_str(&format!(
            "{{\"command\":\"publish\",\"tags\":[\"r{}\",\"app\",\"extra\"],\"data\":\"{i} {padding}\"}}\n",
            i % TOPICS
        ));
    }
    lines.push_str("{\"command\":\"publish\",\"tags\":[\"r0\",\"app\"],\"data\":\"end\"}\n");
    cluster.backplane.service().pause();
    let writing = tokio::spawn(async move {
        publisher.send_raw(lines.as_bytes()).await;
        publisher
    });
    // The publisher outruns the frozen backplane: the node is congested
    // (within the backplane's 1 s ping, so the node never thinks it down).
    await_congested(&cluster).await;
    cluster.backplane.service().resume();
    let mut publisher = tokio::time::timeout(TIMEOUT, writing)
        .await
        .expect("the publisher was held")
        .unwrap();
    let next = numbered_until_end(&mut subscriber, |i, message| {
        assert_eq!(
            message["tags"],
            json!([format!("r{}", i % TOPICS), "app", "extra"])
        );
    })
    .await;
    assert_eq!(next, N, "{next} of {N} messages arrived");
    assert!(publisher.sync().await.is_empty());
    subscriber.expect_nothing().await;
    assert_eq!(
        cluster_counter(&cluster, 0, "mist_cluster_dropped_total").await,
        0
    );
    assert_eq!(
        cluster_counter(&cluster, 0, "mist_cluster_messages_sent_total").await,
        N as u64 + 1
    );
}

/// Waits until node 0 has been congested (its backplane fell behind).
async fn await_congested(cluster: &Cluster) {
    let deadline = Instant::now() + TIMEOUT;
    while cluster_counter(cluster, 0, "mist_cluster_congestions_total").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the flood never congested the node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The backplane dies while a flood has the node congested: the publisher
/// is not left waiting for a backplane that is gone. Its node answers it,
/// delivers to local subscribers, and counts what it could not send.
async fn a_backplane_lost_mid_flood_does_not_hold_the_publisher(kind: Kind) {
    const N: usize = 12_000;
    let backplane = Backplane::start(kind);
    let uri = format!("{}?buffer=4096", backplane.uri());
    let cluster = Cluster {
        nodes: (0..2).map(|_| node(&uri, &[])).collect(),
        backplane,
    };
    let mut remote = cluster.client(1).await;
    remote.subscribe(&["f"]).await;
    let mut local = cluster.client(0).await;
    local.subscribe(&["f"]).await;
    let mut publisher = cluster.client(0).await;
    let padding = "y".repeat(1000);
    let mut lines = String::with_capacity(N * 1100);
    for i in 0..N {
        // Alternating tag sets (batched all the same).
        let tags = if i % 2 == 0 {
            r#"["f","even"]"#
        } else {
            r#"["f","odd"]"#
        };
        lines.push_str(&format!(
            "{{\"command\":\"publish\",\"tags\":{tags},\"data\":\"{i} {padding}\"}}\n"
        ));
    }
    lines.push_str("{\"command\":\"publish\",\"tags\":[\"f\"],\"data\":\"end\"}\n");
    // A backplane that falls behind (frozen), then dies while the node is
    // congested.
    cluster.backplane.service().pause();
    let writing = tokio::spawn(async move {
        publisher.send_raw(lines.as_bytes()).await;
        publisher
    });
    await_congested(&cluster).await;
    cluster.backplane.service().kill();
    let mut publisher = tokio::time::timeout(TIMEOUT, writing)
        .await
        .expect("the publisher was held after the backplane died")
        .unwrap();
    assert!(publisher.sync().await.is_empty());
    // Every message reached the local subscriber, in order.
    let next = numbered_until_end(&mut local, |_, _| {}).await;
    assert_eq!(next, N);
    assert!(cluster_counter(&cluster, 0, "mist_cluster_dropped_total").await > 0);
}

macro_rules! on_both_backplanes {
    ($($case:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Redis).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Nats).await
                }
            )*
        }
    };
}

pub(crate) use on_both_backplanes;

on_both_backplanes!(
    the_seeds_table_holds_across_nodes,
    overlapping_subscriptions_get_a_message_exactly_once,
    a_burst_keeps_each_publishers_order,
    the_ping_barrier_holds_across_nodes,
    unsubscribe_and_close_release_interest,
    a_killed_node_harms_no_other,
    a_rolling_restart_loses_nothing_between_the_nodes_that_stay,
    the_cluster_survives_a_backplane_restart,
    revocation_reaches_every_node,
    a_flood_faster_than_the_backplane_loses_nothing,
    a_backplane_lost_mid_flood_does_not_hold_the_publisher,
);

#[test]
fn an_unknown_backplane_scheme_stops_the_start_naming_the_schemes() {
    let (status, log) = MistServer::run_to_exit(&[
        "--listeners",
        "tcp://127.0.0.1:0",
        "--cluster",
        "carrier-pigeon://u:secret@loft:1",
    ]);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("no loaded plugin provides cluster backplane carrier-pigeon://"),
        "{log}"
    );
    assert!(log.contains("nats") && log.contains("redis"), "{log}");
    assert!(
        !log.contains("secret"),
        "the password must not be shown:\n{log}"
    );
}

/// A backplane that cannot be reached at start does not keep a node from
/// serving its own clients; it is not ready until the backplane is there.
#[tokio::test]
async fn an_unreachable_backplane_at_start_means_local_service_not_ready() {
    let port = mist_e2e::service::free_port();
    let server = node(&format!("redis://127.0.0.1:{port}"), &[]);
    let answer = await_readyz(&server.addr("http"), 503).await;
    assert!(answer.text().contains("cluster"), "{}", answer.text());
    let mut subscriber = Client::connect(&server.tcp()).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["here"]).await;
    publisher.publish(&["here"], "local").await;
    assert_eq!(subscriber.recv().await, delivery(&["here"], "local"));
}
