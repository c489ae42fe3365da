//! Several simulated nodes over the in-memory hub: the cluster contract
//! (exactly once, in publisher order, never back to the publisher's node,
//! routed by interest) and its faults, without a real backplane.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;

use super::fake::{FakeTransport, Hub};
use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// A broker's local side as the tests see it: clients holding
/// subscriptions; `deliver` runs the exact match.
#[derive(Default)]
struct Local {
    clients: Mutex<Vec<LocalClient>>,
    tokens: Mutex<Vec<TokenDigest>>,
    deliver_calls: Mutex<u64>,
}

#[derive(Default, Clone)]
struct LocalClient {
    subscriptions: Vec<BTreeSet<String>>,
    got: Vec<String>,
}

impl LocalBroker for Local {
    fn deliver(&self, messages: &[Incoming<'_>]) {
        *self.deliver_calls.lock() += 1;
        let mut clients = self.clients.lock();
        for message in messages {
            let tags: BTreeSet<&str> = message.tags.iter().collect();
            let data: String = serde_json::from_str(message.data).unwrap();
            for client in clients.iter_mut() {
                if client
                    .subscriptions
                    .iter()
                    .any(|s| s.iter().all(|t| tags.contains(t.as_str())))
                {
                    client.got.push(data.clone());
                }
            }
        }
    }

    fn token_changed(&self, digest: &TokenDigest) {
        self.tokens.lock().push(*digest);
    }
}

struct TestNode {
    cluster: Cluster,
    local: Arc<Local>,
    transport: Arc<FakeTransport>,
}

impl TestNode {
    async fn start(hub: &Arc<Hub>) -> TestNode {
        let (transport, inbox) = hub.connect();
        let local = Arc::new(Local::default());
        let mut config = ClusterConfig::from_uri("fake://hub?prefix=test").unwrap();
        config.linger = Duration::from_secs(2);
        let cluster = Cluster::start(config, local.clone(), transport.clone(), inbox)
            .await
            .unwrap();
        TestNode {
            cluster,
            local,
            transport,
        }
    }

    /// Adds a local client holding `subscriptions`; waits for the
    /// confirmations as the broker would before answering a ping.
    async fn client(&self, subscriptions: &[&[&str]]) -> usize {
        let mut client = LocalClient::default();
        for tags in subscriptions {
            client
                .subscriptions
                .push(tags.iter().map(|t| t.to_string()).collect());
            if let Some(confirmed) = self.cluster.subscribe(tags) {
                tokio::time::timeout(WAIT, confirmed)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        let mut clients = self.local.clients.lock();
        clients.push(client);
        clients.len() - 1
    }

    fn got(&self, client: usize) -> Vec<String> {
        self.local.clients.lock()[client].got.clone()
    }

    /// Waits until `client` has received `data`.
    async fn wait_for(&self, client: usize, data: &str) {
        tokio::time::timeout(WAIT, async {
            while !self.got(client).iter().any(|d| d == data) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{data} never arrived; got {:?}", self.got(client)));
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition never held");
}

/// A small deterministic generator (xorshift), so a failing seed can be
/// replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn tags(&mut self, alphabet: &[&'static str], max: usize) -> Vec<&'static str> {
        let n = 1 + self.below(max);
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_in_publisher_order_with_overlapping_subscriptions() {
    const TAGS: &[&str] = &["a", "b", "c", "d", "e", "f"];
    for seed in 1..=12u64 {
        let hub = Hub::new();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let nodes = [
            TestNode::start(&hub).await,
            TestNode::start(&hub).await,
            TestNode::start(&hub).await,
        ];
        // Clients with overlapping subscriptions; one sentinel per node
        // that hears each node's end marker.
        let mut clients: Vec<(usize, usize, Vec<BTreeSet<&str>>)> = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for _ in 0..4 {
                let subs: Vec<Vec<&str>> =
                    (0..1 + rng.below(3)).map(|_| rng.tags(TAGS, 3)).collect();
                let refs: Vec<&[&str]> = subs.iter().map(|s| s.as_slice()).collect();
                let id = node.client(&refs).await;
                clients.push((
                    n,
                    id,
                    subs.iter().map(|s| s.iter().copied().collect()).collect(),
                ));
            }
        }
        let mut sentinels = Vec::new();
        for node in &nodes {
            sentinels.push(node.client(&[&["end"]]).await);
        }
        // Random publishes from random nodes, in bursts.
        let mut published: Vec<(usize, Vec<&str>, String)> = Vec::new();
        for i in 0..300 {
            let from = rng.below(3);
            let tags = rng.tags(TAGS, 4);
            let data = format!("n{from}-{i}");
            nodes[from]
                .cluster
                .publish(&tags, &serde_json::to_string(&data).unwrap());
            published.push((from, tags, data));
            if rng.below(20) == 0 {
                tokio::task::yield_now().await;
            }
        }
        for (n, node) in nodes.iter().enumerate() {
            node.cluster.publish(&["end"], &format!("\"end-{n}\""));
        }
        for (n, node) in nodes.iter().enumerate() {
            for other in 0..3 {
                if other != n {
                    node.wait_for(sentinels[n], &format!("end-{other}")).await;
                }
            }
        }
        // Everything from every publisher has arrived (order): compare.
        for (n, id, subs) in &clients {
            let got = nodes[*n].got(*id);
            let expected: Vec<String> = published
                .iter()
                .filter(|(from, tags, _)| {
                    from != n && subs.iter().any(|s| s.iter().all(|t| tags.contains(t)))
                })
                .map(|(_, _, data)| data.clone())
                .collect();
            // Per publisher: exactly the expected messages, in order.
            for from in 0..3 {
                let prefix = format!("n{from}-");
                let got: Vec<&String> = got.iter().filter(|d| d.starts_with(&prefix)).collect();
                let want: Vec<&String> =
                    expected.iter().filter(|d| d.starts_with(&prefix)).collect();
                assert_eq!(
                    got, want,
                    "seed {seed}, node {n}, client {id}, publisher {from}"
                );
            }
        }
        for node in &nodes {
            node.cluster.stop();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_goes_only_to_nodes_with_a_matching_interest() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let c = TestNode::start(&hub).await;
    let on_b = b.client(&[&["x"]]).await;
    let on_c = c.client(&[&["y", "z"]]).await;
    a.cluster.publish(&["x", "q"], "\"for b\"");
    a.cluster.publish(&["y", "z"], "\"for c\"");
    b.wait_for(on_b, "for b").await;
    c.wait_for(on_c, "for c").await;
    // b never received c's payload, c never b's: no broadcast.
    assert_eq!(b.cluster.figures().payloads_received, 1);
    assert_eq!(c.cluster.figures().payloads_received, 1);
    assert_eq!(b.got(on_b), ["for b"]);
    assert_eq!(c.got(on_c), ["for c"]);
    // A message nobody elsewhere wants reaches no node.
    a.cluster.publish(&["nobody"], "\"lost\"");
    a.cluster.publish(&["x"], "\"barrier\"");
    b.wait_for(on_b, "barrier").await;
    assert_eq!(b.cluster.figures().payloads_received, 2);
    assert_eq!(c.cluster.figures().payloads_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_through_several_anchors_are_delivered_once() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    // Two subscriptions anchored on different channels.
    let on_b = b.client(&[&["x"], &["y"]]).await;
    assert_eq!(b.cluster.figures().channels, 2);
    a.cluster.publish(&["x", "y"], "\"once\"");
    a.cluster.publish(&["x"], "\"barrier\"");
    b.wait_for(on_b, "barrier").await;
    assert_eq!(b.got(on_b), ["once", "barrier"]);
    let figures = b.cluster.figures();
    assert_eq!(figures.duplicates, 1);
    assert_eq!(figures.payloads_received, 3);
    assert_eq!(figures.messages_received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_node_never_delivers_its_own_message_again() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_a = a.client(&[&["x"]]).await;
    let on_b = b.client(&[&["x"]]).await;
    a.cluster.publish(&["x"], "\"from a\"");
    b.cluster.publish(&["x"], "\"from b\"");
    a.wait_for(on_a, "from b").await;
    b.wait_for(on_b, "from a").await;
    // a's own payload came back through its channel and was dropped: the
    // broker delivers locally, the cluster only brings other nodes' traffic.
    assert_eq!(a.got(on_a), ["from b"]);
    assert_eq!(b.got(on_b), ["from a"]);
}

/// A burst published with no pause is batched into few payloads, and
/// arrives complete and in order.
#[tokio::test(flavor = "current_thread")]
async fn bursts_are_batched_and_keep_their_order() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_b = b.client(&[&["x"], &["y"]]).await;
    let count = 10_000;
    // Runs of the same tags, switching every 1000 messages.
    for i in 0..count {
        let tags: &[&str] = if (i / 1000) % 2 == 0 {
            &["x"]
        } else {
            &["y", "x"]
        };
        a.cluster.publish(tags, &format!("\"{i}\""));
    }
    a.cluster.publish(&["x"], "\"end\"");
    b.wait_for(on_b, "end").await;
    let got = b.got(on_b);
    let expected: Vec<String> = (0..count)
        .map(|i| i.to_string())
        .chain(["end".to_string()])
        .collect();
    assert_eq!(got, expected);
    let figures = a.cluster.figures();
    assert_eq!(figures.messages_sent, count + 1);
    // One flush: one payload per run of identical channels (11 runs; the
    // last run merges the "end" message).
    assert!(figures.payloads_sent <= 12, "{figures:?}");
    assert!(*b.local.deliver_calls.lock() <= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_waits_for_the_backplanes_confirmation() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    hub.hold();
    let first = a
        .cluster
        .subscribe(&["q"])
        .expect("a new channel must be confirmed");
    // Another holder of the same channel waits for the same confirmation.
    let second = a.cluster.subscribe(&["q", "r"]).expect("still pending");
    assert!(first.clone().now_or_never().is_none());
    hub.release();
    tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    // Confirmed: nothing to wait for any more.
    assert!(a.cluster.subscribe(&["q"]).is_none());
}

#[tokio::test(start_paused = true)]
async fn unused_channels_linger_before_they_are_unsubscribed() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let channel = Channels::new("test").unwrap().tag("a");
    let calls = hub.subscribe_calls();
    if let Some(confirmed) = a.cluster.subscribe(&["a"]) {
        confirmed.await.unwrap();
    }
    assert_eq!(hub.subscribe_calls(), calls + 1);
    a.cluster.unsubscribe(&["a"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(hub.holds(&a.transport, &channel), "unsubscribed too early");
    // Taken back within the linger: no new subscription, nothing to wait for.
    assert!(a.cluster.subscribe(&["a"]).is_none());
    assert_eq!(hub.subscribe_calls(), calls + 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(hub.holds(&a.transport, &channel));
    a.cluster.unsubscribe(&["a"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!hub.holds(&a.transport, &channel));
    assert_eq!(hub.unsubscribe_calls(), 1);
    assert_eq!(a.cluster.figures().channels, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_backplane_is_down_traffic_is_dropped_and_counted_then_resumes() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_b = b.client(&[&["x"]]).await;
    hub.set_down(true);
    assert!(a.cluster.health().is_err());
    a.cluster.publish(&["x"], "\"while down\"");
    a.cluster.publish(&["x"], "\"while down 2\"");
    assert_eq!(a.cluster.figures().dropped, 2);
    assert!(a.cluster.token_changed("t").is_err());
    // A subscribe meanwhile does not hang: it fails at once.
    if let Some(confirmed) = b.cluster.subscribe(&["new"]) {
        assert!(tokio::time::timeout(WAIT, confirmed)
            .await
            .unwrap()
            .is_err());
    }
    let on_new = b.local.clients.lock().len();
    b.local.clients.lock().push(LocalClient {
        subscriptions: vec![["new".to_string()].into()],
        got: Vec::new(),
    });
    hub.set_down(false);
    a.cluster.health().unwrap();
    a.cluster.publish(&["x"], "\"after\"");
    a.cluster.publish(&["new"], "\"new after\"");
    b.wait_for(on_b, "after").await;
    b.wait_for(on_new, "new after").await;
    assert_eq!(b.got(on_b), ["after"]);
}

#[tokio::test(start_paused = true)]
async fn nodes_see_each_other_and_forget_a_killed_or_leaving_node() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let c = TestNode::start(&hub).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut all = vec![a.cluster.node(), b.cluster.node(), c.cluster.node()];
    all.sort();
    assert_eq!(a.cluster.nodes(), all);
    // c leaves politely: gone at once.
    c.cluster.stop();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!a.cluster.nodes().contains(&c.cluster.node()));
    // b is killed (no goodbye): gone after three missed heartbeats.
    hub.crash(&b.transport);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.cluster.nodes().contains(&b.cluster.node()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.cluster.nodes(), [a.cluster.node()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_changes_cross_as_a_digest_only() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    a.cluster.token_changed("s3cret-token").unwrap();
    wait_until(|| !b.local.tokens.lock().is_empty()).await;
    assert_eq!(
        b.local.tokens.lock().as_slice(),
        [TokenDigest::of("s3cret-token")]
    );
    // Not back to its own node, and the token never on the backplane.
    assert!(a.local.tokens.lock().is_empty());
    for payload in hub.published() {
        assert!(!payload.windows(12).any(|w| w == b"s3cret-token"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_counted_and_do_no_harm() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_b = b.client(&[&["x"]]).await;
    let channel = Channels::new("test").unwrap().tag("x");
    let mut evil = wire::messages(7, 1, 1, &[]);
    evil.truncate(evil.len() - 1);
    for payload in [
        &b""[..],
        &[0xff; 64],
        &evil,
        // A line injected through the data field.
        &wire::messages(7, 2, 1, &{
            let mut body = Vec::new();
            wire::put_message(&mut body, &["x"], "\"a\"}\n{\"command\":\"x\"");
            body
        }),
    ] {
        hub.inject(&channel, payload);
    }
    // A well-formed stranger payload is delivered like any node's.
    let mut body = Vec::new();
    wire::put_message(&mut body, &["x"], "\"stranger\"");
    hub.inject(&channel, &wire::messages(7, 3, 1, &body));
    a.cluster.publish(&["x"], "\"fine\"");
    b.wait_for(on_b, "fine").await;
    assert_eq!(b.got(on_b), ["stranger", "fine"]);
    assert_eq!(b.cluster.figures().malformed, 4);
}

/// The broker may call in from threads with no tokio runtime of this
/// library (a listener plugin's own runtime): nothing may need one there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_threads_without_a_runtime_work() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_b = b.local.clients.lock().len();
    b.local.clients.lock().push(LocalClient {
        subscriptions: vec![["x".to_string()].into()],
        got: Vec::new(),
    });
    let cluster = b.cluster.clone();
    let confirmation = std::thread::spawn(move || {
        let confirmation = cluster.subscribe(&["x"]);
        cluster.subscribe(&["gone"]);
        cluster.unsubscribe(&["gone"]);
        confirmation
    })
    .join()
    .unwrap();
    if let Some(confirmed) = confirmation {
        tokio::time::timeout(WAIT, confirmed)
            .await
            .unwrap()
            .unwrap();
    }
    let publisher = a.cluster.clone();
    std::thread::spawn(move || publisher.publish(&["x"], "\"from a thread\""))
        .join()
        .unwrap();
    b.wait_for(on_b, "from a thread").await;
}
