//! Several simulated nodes over the in-memory hub: the cluster contract
//! (exactly once, in publisher order, never back to the publisher's node,
//! routed by interest) and its faults, without a real backplane.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;

use super::control::MAX_PENDING_TOKENS;
use super::fake::{FakeTransport, Hub};
use super::*;
use crate::cluster::wire::Kind;

const WAIT: Duration = Duration::from_secs(10);

/// A broker's local side as the tests see it: clients holding
/// subscriptions; `deliver` runs the exact match.
#[derive(Default)]
struct Local {
    clients: Mutex<Vec<LocalClient>>,
    tokens: Mutex<Vec<TokenDigest>>,
    deliver_calls: Mutex<u64>,
    /// Every data token delivered, as received (for the line check).
    raw: Mutex<Vec<String>>,
    rechecks: Mutex<u64>,
}

#[derive(Default, Clone)]
struct LocalClient {
    subscriptions: Vec<BTreeSet<String>>,
    got: Vec<String>,
}

impl LocalBroker for Local {
    fn deliver(&self, messages: &[Incoming<'_>]) -> usize {
        *self.deliver_calls.lock() += 1;
        let mut clients = self.clients.lock();
        for message in messages {
            self.raw.lock().push(message.data.to_string());
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
        0
    }

    fn token_changed(&self, digest: &TokenDigest) {
        self.tokens.lock().push(*digest);
    }

    fn recheck_all(&self) {
        *self.rechecks.lock() += 1;
    }
}

struct TestNode {
    cluster: Cluster,
    local: Arc<Local>,
    transport: Arc<FakeTransport>,
}

impl TestNode {
    async fn start(hub: &Arc<Hub>) -> TestNode {
        TestNode::start_with(hub, None).await
    }

    /// A node whose cluster key file is `key`.
    async fn start_with(hub: &Arc<Hub>, key: Option<&std::path::Path>) -> TestNode {
        let (transport, inbox) = hub.connect();
        let local = Arc::new(Local::default());
        let mut config = ClusterConfig::from_uri("fake://hub?prefix=test").unwrap();
        config.linger = Duration::from_secs(2);
        config.key_file = key.map(std::path::Path::to_path_buf);
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
async fn a_message_matching_several_subscriptions_of_a_node_crosses_once() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    // Two subscriptions the message matches.
    let on_b = b.client(&[&["x"], &["y"]]).await;
    assert_eq!(b.cluster.figures().channels, 2);
    a.cluster.publish(&["x", "y"], "\"once\"");
    a.cluster.publish(&["x"], "\"barrier\"");
    b.wait_for(on_b, "barrier").await;
    assert_eq!(b.got(on_b), ["once", "barrier"]);
    // One copy per node, however many of its sets match: nothing to drop.
    let figures = b.cluster.figures();
    assert_eq!(figures.duplicates, 0);
    assert!(figures.payloads_received <= 2, "{figures:?}");
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

/// This node's tag set changes as its announcements show them.
fn announced(hub: &Hub, node: &TestNode) -> Vec<(bool, Vec<String>)> {
    hub.published()
        .iter()
        .filter_map(|p| {
            let frame = wire::decode(p).ok()?;
            let wire::Body::Interest { changes, .. } = frame.body else {
                return None;
            };
            (frame.header.origin == node.cluster.node().0).then(|| {
                changes
                    .iter()
                    .map(|(added, tags)| (*added, tags.to_vec()))
                    .collect::<Vec<_>>()
            })
        })
        .flatten()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn unused_tag_sets_linger_before_they_are_withdrawn() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let set = || vec!["a".to_string(), "b".to_string()];
    let names = Channels::new("test").unwrap();
    let calls = hub.subscribe_calls();
    if let Some(confirmed) = a.cluster.subscribe(&["b", "a"]) {
        confirmed.await.unwrap();
    }
    assert_eq!(announced(&hub, &a), [(true, set())]);
    // Announced, not subscribed: the node holds its own channel and the
    // control channel, whatever its clients hold.
    assert_eq!(hub.subscribe_calls(), calls);
    assert!(hub.holds(&a.transport, &names.node(a.cluster.node().0)));
    assert!(hub.holds(&a.transport, names.control()));
    a.cluster.unsubscribe(&["a", "b"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Taken back within the linger: no new announcement, nothing to wait for.
    assert!(a.cluster.subscribe(&["a", "b", "a"]).is_none());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(announced(&hub, &a), [(true, set())], "withdrawn too early");
    a.cluster.unsubscribe(&["b", "a"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(announced(&hub, &a), [(true, set()), (false, set())]);
    assert_eq!(a.cluster.figures().channels, 0);
    assert_eq!(hub.unsubscribe_calls(), 0);
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
    // A token change is kept, not dropped: it goes once the backplane is back.
    a.cluster.token_changed("t");
    let rechecks = *b.local.rechecks.lock();
    // A subscribe meanwhile does not hang: nothing is waited for.
    if let Some(confirmed) = b.cluster.subscribe(&["new"]) {
        tokio::time::timeout(Duration::from_secs(1), confirmed)
            .await
            .expect("answered at once")
            .unwrap();
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
    wait_until(|| b.local.tokens.lock().as_slice() == [TokenDigest::of("t")]).await;
    // Back up, each node rechecked every token it holds sessions of.
    assert_eq!(*b.local.rechecks.lock(), rechecks + 1);
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
    a.cluster.token_changed("s3cret-token");
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

/// A payload as a stranger on the backplane would write it.
fn stranger(origin: u64, sequence: u64, keys: Option<&ClusterKeys>, data: &str) -> Vec<u8> {
    let mut body = Vec::new();
    wire::put_message(&mut body, &["x"], data);
    let count = wire::messages_count(1);
    wire::seal(
        Kind::Messages,
        origin,
        sequence,
        wall_ms(),
        keys,
        &[&count, &body],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_counted_and_do_no_harm() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_b = b.client(&[&["x"]]).await;
    let channel = Channels::new("test").unwrap().control().to_string();
    let mut evil = stranger(7, 1, None, "\"e\"");
    evil.truncate(evil.len() - 1);
    for payload in [
        b"".to_vec(),
        vec![0xff; 64],
        evil,
        // A line injected through the data field, and the issue's trailing
        // whitespace.
        stranger(7, 2, None, "\"a\"}\n{\"command\":\"x\""),
        stranger(7, 3, None, "\"x\"\n\n  \r\n"),
    ] {
        hub.inject(&channel, &payload);
    }
    // Without a key, a well-formed stranger payload is delivered like any
    // node's (docs/cluster.md, "Threat model").
    hub.inject(&channel, &stranger(7, 4, None, "\"stranger\""));
    a.cluster.publish(&["x"], "\"fine\"");
    b.wait_for(on_b, "fine").await;
    assert_eq!(b.got(on_b), ["stranger", "fine"]);
    assert_eq!(b.cluster.figures().malformed, 5);
}

/// The issue's attack: one payload under another node's id with sequence
/// 2^64-1 made every receiver drop that node's traffic for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_huge_sequence_does_not_silence_a_node() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    let on_b = b.client(&[&["x"]]).await;
    let channel = Channels::new("test").unwrap().control().to_string();
    a.cluster.publish(&["x"], "\"1\"");
    b.wait_for(on_b, "1").await;
    hub.inject(
        &channel,
        &stranger(a.cluster.node().0, u64::MAX, None, "\"forged\""),
    );
    for i in 2..=20 {
        a.cluster.publish(&["x"], &format!("\"{i}\""));
    }
    b.wait_for(on_b, "20").await;
    let got: Vec<String> = b.got(on_b).into_iter().filter(|d| d != "forged").collect();
    let expected: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
}

fn key_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const KEY_A: &str = "a-cluster-key-of-at-least-32-bytes-AAAA";
const KEY_B: &str = "a-cluster-key-of-at-least-32-bytes-BBBB";

/// With a key: unsigned, forged (another key), altered, truncated and
/// replayed payloads are all refused and counted; the nodes' own traffic
/// flows exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_only_the_nodes_own_payloads_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", KEY_A);
    let hub = Hub::new();
    let a = TestNode::start_with(&hub, Some(&key)).await;
    let b = TestNode::start_with(&hub, Some(&key)).await;
    let on_b = b.client(&[&["x"]]).await;
    // Every node hears the control channel.
    let channel = Channels::new("test").unwrap().control().to_string();
    a.cluster.publish(&["x"], "\"genuine\"");
    b.wait_for(on_b, "genuine").await;
    let genuine = hub
        .published()
        .into_iter()
        .rev()
        .find(|p| wire::decode(p).is_ok_and(|f| f.header.kind == Kind::Messages))
        .unwrap();
    let other = ClusterKeys::parse(KEY_B, std::path::Path::new("other")).unwrap();
    let mut hostile = vec![
        stranger(7, 1, None, "\"unsigned\""),
        stranger(7, 1, Some(&other), "\"other key\""),
        stranger(a.cluster.node().0, u64::MAX, Some(&other), "\"forged\""),
        genuine[..genuine.len() - 1].to_vec(),
    ];
    for at in (0..genuine.len()).step_by(3) {
        let mut altered = genuine.clone();
        altered[at] ^= 0x01;
        hostile.push(altered);
    }
    let refused = hostile.len() as u64;
    for payload in &hostile {
        hub.inject(&channel, payload);
    }
    // Replayed as it was: a copy, dropped.
    hub.inject(&channel, &genuine);
    a.cluster.publish(&["x"], "\"after\"");
    b.wait_for(on_b, "after").await;
    assert_eq!(b.got(on_b), ["genuine", "after"]);
    let figures = b.cluster.figures();
    // One altered byte may land in the origin and make the payload "this
    // node's own" (dropped uncounted); none did here: 0x01 in a's id.
    assert!(figures.malformed >= refused - 1, "{figures:?}");
    assert_eq!(figures.duplicates, 1, "{figures:?}");
    assert_eq!(figures.messages_received, 2, "{figures:?}");
}

/// Rotation: a node reloads a file with the new key first and the old one
/// second, and nodes on either key hear it; one on the old key only does
/// not hear the new key's payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_rotated_by_reloading_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let a_key = key_file(&dir, "a", KEY_A);
    let b_key = key_file(&dir, "b", KEY_A);
    let hub = Hub::new();
    let a = TestNode::start_with(&hub, Some(&a_key)).await;
    let b = TestNode::start_with(&hub, Some(&b_key)).await;
    let on_b = b.client(&[&["x"]]).await;
    // Step 1 on b: accept the new key too.
    std::fs::write(&b_key, format!("{KEY_A}\n{KEY_B}\n")).unwrap();
    b.cluster.reload_key().unwrap();
    // Step 2 on a: sign with the new key.
    std::fs::write(&a_key, format!("{KEY_B}\n{KEY_A}\n")).unwrap();
    a.cluster.reload_key().unwrap();
    a.cluster.publish(&["x"], "\"new key\"");
    b.wait_for(on_b, "new key").await;
    // A broken file keeps the keys a node had.
    std::fs::write(&a_key, "short").unwrap();
    assert!(matches!(a.cluster.reload_key(), Err(ClusterError::Key(_))));
    a.cluster.publish(&["x"], "\"still\"");
    b.wait_for(on_b, "still").await;
    // b back to the old key only: the new key's payloads are refused.
    std::fs::write(&b_key, KEY_A).unwrap();
    b.cluster.reload_key().unwrap();
    let refused = b.cluster.figures().malformed;
    a.cluster.publish(&["x"], "\"unreadable\"");
    wait_until(|| b.cluster.figures().malformed > refused).await;
    assert_eq!(b.got(on_b), ["new key", "still"]);
}

/// Each payload of a node has its own number, numbers only go up, and
/// nothing follows the goodbye, however publishes race with `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_races_no_number_and_sends_nothing_after_leaving() {
    for round in 0..20 {
        let hub = Hub::new();
        let a = TestNode::start(&hub).await;
        let b = TestNode::start(&hub).await;
        b.client(&[&["x"], &["y"]]).await;
        let publisher = a.cluster.clone();
        let flood = std::thread::spawn(move || {
            for i in 0..2000 {
                let tags: &[&str] = if i % 2 == 0 { &["x"] } else { &["y"] };
                publisher.publish(tags, &format!("\"{i}\""));
                if i == 1000 {
                    publisher.token_changed("t");
                }
            }
        });
        tokio::task::yield_now().await;
        a.cluster.stop();
        flood.join().unwrap();
        // Let a flusher that would still send have the chance.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mine: Vec<wire::Header> = hub
            .published()
            .iter()
            .filter_map(|p| wire::decode(p).ok())
            .map(|f| f.header)
            .filter(|h| h.origin == a.cluster.node().0)
            .collect();
        // One counter for every node, one for single nodes.
        for direct in [false, true] {
            let numbers: Vec<u64> = mine
                .iter()
                .filter(|h| (h.to != 0) == direct)
                .map(|h| h.sequence)
                .collect();
            assert!(
                numbers.windows(2).all(|w| w[0] < w[1]),
                "round {round}: {numbers:?}"
            );
        }
        assert_eq!(
            mine.last().map(|h| h.kind),
            Some(Kind::Leaving),
            "round {round}"
        );
        b.cluster.stop();
    }
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

/// More token changes than a node keeps while the backplane is down arrive
/// as one "recheck every token".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_token_changes_while_down_become_a_recheck_of_everything() {
    let hub = Hub::new();
    let a = TestNode::start(&hub).await;
    let b = TestNode::start(&hub).await;
    hub.set_down(true);
    for i in 0..=MAX_PENDING_TOKENS {
        a.cluster.token_changed(&format!("token-{i}"));
    }
    let before = *b.local.rechecks.lock();
    hub.set_down(false);
    // One for b's own reconnection, one for a's payload.
    wait_until(|| *b.local.rechecks.lock() == before + 2).await;
    assert!(b.local.tokens.lock().is_empty());
}
