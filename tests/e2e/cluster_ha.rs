//! A backplane that is not one process (docs/cluster.md, "Several servers"):
//! real `mist` nodes over a three-server NATS cluster, and over two Redis
//! instances, with one server killed or restarted while two publishers
//! publish numbered messages without pause.
//!
//! Publishers are paced (a message every 2 ms: pacing, not a barrier);
//! every read is bounded; "the traffic crossed" is shown by messages
//! arriving, never by a sleep.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mist_e2e::nats::Nats;
use mist_e2e::redis::Redis;
use mist_e2e::web::http;
use mist_e2e::{Client, MistServer, TIMEOUT};
use serde_json::json;

use crate::cluster::until_fence;

/// The bound: delivery resumes this soon after a server dies.
const RESUMES_WITHIN: Duration = Duration::from_secs(2);

/// How long a Redis instance that came back waits before a node publishes
/// through it (the plugin's `HOLD_OFF`).
const HOLD_OFF: Duration = Duration::from_secs(1);

fn node(uri: &str) -> MistServer {
    MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,http://127.0.0.1:0",
            "--cluster",
            uri,
        ],
        2,
    )
}

async fn client(node: &MistServer) -> Client {
    Client::connect(&node.tcp()).await
}

/// A counter of `node`'s `/metrics`.
async fn counter(node: &MistServer, name: &str) -> u64 {
    let text = http(&node.addr("http"), "GET", "/metrics", &[], b"")
        .await
        .text();
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line[name.len() + 1..].trim().parse().unwrap()
}

/// The remote ports of the TCP connections process `pid` holds (from
/// /proc): which servers a node is connected to.
fn remote_ports(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.display().to_string();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[3] == "01" && inodes.contains(fields[9]) {
                if let Some(port) = fields[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

/// One delivery as a subscriber saw it: tag, publisher, number, when.
#[derive(Debug, Clone)]
struct Seen {
    tag: String,
    publisher: String,
    number: usize,
    at: Instant,
}

/// Reads `subscriber` until it has seen `ends` end markers (data
/// `"<publisher> end"`); returns what came before them.
async fn collect(mut subscriber: Client, ends: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut ended = 0;
    while ended < ends {
        let message = subscriber.recv().await;
        let data = message["data"].as_str().unwrap().to_string();
        let tag = message["tags"][0].as_str().unwrap().to_string();
        let (publisher, rest) = data.split_once(' ').unwrap();
        if rest == "end" {
            ended += 1;
            continue;
        }
        seen.push(Seen {
            tag,
            publisher: publisher.to_string(),
            number: rest.parse().unwrap(),
            at: Instant::now(),
        });
    }
    seen
}

/// A publisher publishing `"<name> <i>"` on `tags[i % len]`, i = 0, 1, ...,
/// every 2 ms until `stop`; then `"<name> end"` on every tag. `sent` is the
/// next number.
fn publish_until(
    mut publisher: Client,
    name: &'static str,
    tags: Vec<String>,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            pace.tick().await;
            let tag = &tags[i % tags.len()];
            publisher.publish(&[tag], &format!("{name} {i}")).await;
            i += 1;
            sent.store(i, Ordering::SeqCst);
        }
        for tag in &tags {
            publisher.publish(&[tag], &format!("{name} end")).await;
        }
        assert!(publisher.sync().await.is_empty());
        publisher
    })
}

/// Per publisher and tag, numbers only grow (nothing twice, nothing out
/// of order); returns how many of each publisher's messages are missing
/// below the highest seen.
fn assert_ordered_once(who: &str, seen: &[Seen], sent: &HashMap<String, usize>) -> usize {
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    let mut numbers: HashMap<&str, HashSet<usize>> = HashMap::new();
    for s in seen {
        if let Some(before) = last.insert((&s.publisher, &s.tag), s.number) {
            assert!(
                s.number > before,
                "{who}: {} {} on {} after {before}",
                s.publisher,
                s.number,
                s.tag
            );
        }
        assert!(
            numbers.entry(&s.publisher).or_default().insert(s.number),
            "{who}: {} {} twice",
            s.publisher,
            s.number
        );
    }
    let mut missing = 0;
    for (publisher, count) in sent {
        let got = numbers.get(publisher.as_str()).map_or(0, HashSet::len);
        missing += count - got.min(*count);
    }
    missing
}

/// The first message of `publisher` numbered `from` or more, when it came.
fn first_from(seen: &[Seen], publisher: &str, from: usize) -> Option<Instant> {
    seen.iter()
        .find(|s| s.publisher == publisher && s.number >= from)
        .map(|s| s.at)
}

/// Three NATS servers in one cluster; nodes 0 and 1 each given all three
/// (in the two list forms), node 2 given one server only. A publisher on
/// node 0 and one on node 1 publish without pause; the server node 0 is
/// using is killed. Delivery of node 0's messages resumes at every
/// subscriber within two seconds (node 0 fails over), nothing arrives
/// twice or out of order, node 0 counts what it dropped meanwhile, and the
/// node given one URL interoperates throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_failover_keeps_order_and_resumes() {
    let servers = Nats::cluster(3);
    let ports: Vec<u16> = servers.iter().map(|s| s.service.port).collect();
    let a = node(&format!(
        "nats://127.0.0.1:{},nats://127.0.0.1:{},nats://127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    ));
    let b = node(&format!(
        "nats://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        ports[2], ports[0], ports[1]
    ));
    // The server node 0 is connected to is the one to kill; node 2 is
    // given one of the others.
    let deadline = Instant::now() + TIMEOUT;
    let doomed = loop {
        let connected = remote_ports(a.pid());
        if let Some(i) = (0..3).find(|&i| connected.contains(&ports[i])) {
            break i;
        }
        assert!(Instant::now() < deadline, "node 0 never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let survivor = (doomed + 1) % 3;
    let c = node(&format!("nats://127.0.0.1:{}", ports[survivor]));
    let nodes = [&a, &b, &c];

    let mut subscribers = Vec::new();
    for n in nodes {
        let mut s = client(n).await;
        s.subscribe(&["ha"]).await;
        subscribers.push(s);
    }
    // The routes between the servers carry interest a moment after they
    // form: warm up until a message from each publisher's node reached
    // every subscriber, then fence.
    let mut pa = client(&a).await;
    let mut pb = client(&b).await;
    for s in &mut subscribers {
        let deadline = Instant::now() + TIMEOUT;
        let mut heard = HashSet::new();
        while heard.len() < 2 {
            pa.publish(&["ha"], "warm-a").await;
            pb.publish(&["ha"], "warm-b").await;
            assert!(pa.sync().await.is_empty() && pb.sync().await.is_empty());
            while let Ok(message) = tokio::time::timeout(Duration::from_millis(100), s.recv()).await
            {
                heard.insert(message["data"].as_str().unwrap().to_string());
            }
            assert!(Instant::now() < deadline, "the NATS cluster never carried");
        }
    }
    pa.publish(&["ha"], "fence").await;
    pb.publish(&["ha"], "fence").await;
    for s in &mut subscribers {
        // Both publishers' fences (in either order).
        until_fence(s, "fence").await;
        until_fence(s, "fence").await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent_a = Arc::new(AtomicUsize::new(0));
    let sent_b = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|s| tokio::spawn(collect(s, 2)))
        .collect();
    let tags = vec!["ha".to_string()];
    let publisher_a = publish_until(pa, "a", tags.clone(), sent_a.clone(), stop.clone());
    let publisher_b = publish_until(pb, "b", tags, sent_b.clone(), stop.clone());
    // Traffic flows before the kill: 100 messages of node 0's publisher.
    let deadline = Instant::now() + TIMEOUT;
    while sent_a.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "the publisher is stuck");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    servers[doomed].service.kill();
    let killed = Instant::now();
    let sent_at_kill = sent_a.load(Ordering::SeqCst);
    // Publishing goes on past the bound, then each publisher ends.
    tokio::time::sleep(RESUMES_WITHIN + Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = publisher_a.await.unwrap();
    let _ = publisher_b.await.unwrap();
    let sent: HashMap<String, usize> = [
        ("a".to_string(), sent_a.load(Ordering::SeqCst)),
        ("b".to_string(), sent_b.load(Ordering::SeqCst)),
    ]
    .into();

    for (n, reader) in readers.into_iter().enumerate() {
        let seen = reader.await.unwrap();
        let who = format!("subscriber on node {n}");
        let missing = assert_ordered_once(&who, &seen, &sent);
        let resumed = first_from(&seen, "a", sent_at_kill)
            .unwrap_or_else(|| panic!("{who}: nothing of node 0 after the kill"));
        assert!(
            resumed.saturating_duration_since(killed) < RESUMES_WITHIN,
            "{who}: node 0's messages resumed {:?} after the kill",
            resumed.saturating_duration_since(killed)
        );
        eprintln!(
            "{who}: {} messages, {missing} missing, node 0 resumed after {:?}",
            seen.len(),
            resumed.saturating_duration_since(killed)
        );
    }
    // Node 0 noticed and said so, and counted what it could not send.
    let log = a.wait_for_log("cluster backplane lost");
    assert!(log.contains("cluster backplane lost"), "{log}");
    a.wait_for_log("cross-node delivery resumed");
    assert!(counter(&a, "mist_cluster_dropped_total").await > 0);
    assert_eq!(counter(&a, "mist_cluster_up").await, 1);
}

/// `redis-cli -p PORT ARGS...`'s output lines.
fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let output = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The channels an instance has subscribers on, with how many.
fn subscriptions(port: u16) -> HashMap<String, u64> {
    let channels = redis_cli(port, &["PUBSUB", "CHANNELS", "mist.*"]);
    if channels.is_empty() || channels.iter().any(String::is_empty) {
        return HashMap::new();
    }
    let mut args = vec!["PUBSUB", "NUMSUB"];
    args.extend(channels.iter().map(String::as_str));
    let answer = redis_cli(port, &args);
    answer
        .chunks(2)
        .filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.parse().ok()?)))
        .collect()
}

/// How many `PUBLISH` commands an instance ran since it started.
fn publishes(port: u16) -> u64 {
    redis_cli(port, &["INFO", "commandstats"])
        .iter()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Two Redis instances; two nodes given both (in opposite orders), each
/// with a subscriber on sixteen tags and a publisher publishing without
/// pause across them. One instance is killed and started again on its
/// port: delivery goes on through the other without a pause of a second,
/// the nodes never report the backplane down (nothing dropped), nothing
/// arrives twice or out of order on any tag, and once it is back every
/// node subscribes there again (`PUBSUB NUMSUB`: both nodes on the control
/// channel, each on its own) and, after the hold-off, publishes through it again
/// (`INFO commandstats`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_instance_restart_moves_channels_and_back() {
    let r = [Redis::start(), Redis::start()];
    let ports = [r[0].service.port, r[1].service.port];
    let a = node(&format!(
        "redis://127.0.0.1:{},127.0.0.1:{}",
        ports[0], ports[1]
    ));
    let b = node(&format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        ports[1], ports[0]
    ));
    let started = Instant::now();
    let tags: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let mut subscribers = Vec::new();
    for n in [&a, &b] {
        let mut s = client(n).await;
        for tag in &tags {
            s.send(json!({"command": "subscribe", "tags": [tag]})).await;
        }
        // The ping barrier: confirmed on both instances.
        assert!(s.sync().await.is_empty());
        subscribers.push(s);
    }
    // Every instance holds every subscription: the control channel (both
    // nodes) and each node's own channel.
    let both = subscriptions(ports[0]);
    assert_eq!(both.len(), 3, "{both:?}");
    assert_eq!(both, subscriptions(ports[1]));
    assert_eq!(both.get("mist.control"), Some(&2), "{both:?}");
    assert!(
        both.iter()
            .filter(|(channel, _)| channel.starts_with("mist.n."))
            .all(|(_, n)| *n == 1),
        "{both:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent_a = Arc::new(AtomicUsize::new(0));
    let sent_b = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|s| tokio::spawn(collect(s, 2 * 16)))
        .collect();
    let publisher_a = publish_until(
        client(&a).await,
        "a",
        tags.clone(),
        sent_a.clone(),
        stop.clone(),
    );
    let publisher_b = publish_until(
        client(&b).await,
        "b",
        tags.clone(),
        sent_b.clone(),
        stop.clone(),
    );
    // Traffic through the instance, and the nodes past the start, when a
    // new instance is used at once (there is nothing else to use yet).
    let deadline = Instant::now() + TIMEOUT;
    while sent_a.load(Ordering::SeqCst) < 100
        || started.elapsed() < HOLD_OFF + Duration::from_millis(500)
    {
        assert!(Instant::now() < deadline, "no traffic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Three channels over two instances: the one carrying the most
    // publishes (the messages' channels, as a rule) is the one to lose.
    let v = if publishes(ports[0]) >= publishes(ports[1]) {
        0
    } else {
        1
    };
    assert!(
        publishes(ports[v]) > 0,
        "no traffic through either instance"
    );
    r[v].service.kill();
    let killed = Instant::now();
    r[v].service.restart();
    // Back: every node subscribes every channel there again, and after the
    // hold-off publishes through it again (its counters started at zero).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let again = subscriptions(ports[v]);
        if again == both && publishes(ports[v]) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not used again: {again:?}, {} publishes",
            publishes(ports[v])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let used_again = killed.elapsed();
    assert!(
        used_again >= HOLD_OFF,
        "published through the instance {used_again:?} after it died, within the hold-off"
    );
    stop.store(true, Ordering::SeqCst);
    let _ = publisher_a.await.unwrap();
    let _ = publisher_b.await.unwrap();
    let sent: HashMap<String, usize> = [
        ("a".to_string(), sent_a.load(Ordering::SeqCst)),
        ("b".to_string(), sent_b.load(Ordering::SeqCst)),
    ]
    .into();
    for (n, reader) in readers.into_iter().enumerate() {
        let seen = reader.await.unwrap();
        let who = format!("subscriber on node {n}");
        let missing = assert_ordered_once(&who, &seen, &sent);
        // Delivery never paused for long, from either publisher.
        for publisher in ["a", "b"] {
            let times: Vec<Instant> = seen
                .iter()
                .filter(|s| s.publisher == publisher)
                .map(|s| s.at)
                .collect();
            let longest = times
                .windows(2)
                .map(|w| w[1].saturating_duration_since(w[0]))
                .max()
                .unwrap_or_default();
            assert!(
                longest < Duration::from_secs(1),
                "{who}: {publisher}'s messages paused {longest:?}"
            );
        }
        eprintln!(
            "{who}: {} messages, {missing} missing; used again {used_again:?} after the kill",
            seen.len()
        );
    }
    for n in [&a, &b] {
        assert_eq!(counter(n, "mist_cluster_dropped_total").await, 0);
        assert_eq!(counter(n, "mist_cluster_up").await, 1);
    }
}
