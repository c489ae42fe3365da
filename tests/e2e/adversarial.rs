//! Attacks on the broker's memory and CPU (SPEC §7), each bounded in time
//! and asserting its bound: the broker's peak resident memory (read from
//! `/proc/PID/status`) and how soon a well-behaved client's ping is
//! answered while the attack runs.
//!
//! The memory attack at full size (400 silent subscribers, two publishers,
//! 20 s) is too slow for every run; it is an ignored test:
//!
//!     cargo test -p mist-e2e --release -- --ignored full_size
//!
//! Everything else runs in CI at a size that still shows the bound.

use std::time::{Duration, Instant};

use mist_e2e::attack::{peak_rss_mib, rss_mib, silent_subscriber, Watchdog};
use mist_e2e::web::WsClient;
use mist_e2e::{Client, MistServer, TIMEOUT};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// `subscribers` connections each subscribe to a tag of their own and never
/// read; two publishers flood `payload`-byte messages round-robin over
/// those tags for `duration`, while a watchdog client pings. Returns the
/// broker's peak RSS growth in MiB, and `who` at the end of the flood.
async fn flood_silent_subscribers(
    server: &MistServer,
    subscribers: usize,
    payload: usize,
    duration: Duration,
) -> (u64, serde_json::Value) {
    let pid = server.pid();
    let mut silent = Vec::new();
    for i in 0..subscribers {
        silent.push(silent_subscriber(server, &format!("victim{i}")).await);
    }
    let before = rss_mib(pid);
    let watchdog = Watchdog::start(server).await;
    let payload = "x".repeat(payload);
    let deadline = Instant::now() + duration;
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let addr = server.tcp();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&addr).await.expect("connect");
                // Publisher p takes every other tag; its lines are built once.
                let lines: Vec<Vec<u8>> = (p..subscribers)
                    .step_by(2)
                    .map(|i| {
                        format!(
                            "{{\"command\":\"publish\",\"tags\":[\"victim{i}\"],\"data\":\"{payload}\"}}\n"
                        )
                        .into_bytes()
                    })
                    .collect();
                for line in lines.iter().cycle() {
                    if Instant::now() >= deadline {
                        break;
                    }
                    stream.write_all(line).await.expect("publish");
                }
            })
        })
        .collect();
    for publisher in publishers {
        tokio::time::timeout(duration + TIMEOUT, publisher)
            .await
            .expect("publishers stop")
            .expect("publisher");
    }
    let slowest = watchdog.finish().await;
    assert!(
        slowest < 1000,
        "a well-behaved client's ping took {slowest} ms during the flood"
    );
    let who = mist_e2e::web::who(server).await;
    drop(silent);
    (peak_rss_mib(pid).saturating_sub(before), who)
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_subscribers_cannot_grow_the_broker_past_its_budget() {
    // A 16 MiB budget for all queues; each queue may hold 8 MiB, so 10
    // silent subscribers could otherwise hold 80 MiB.
    let server = MistServer::start(&[
        "--max-memory",
        "16MiB",
        "--max-queue-bytes",
        "8MiB",
        "--slow-consumer-timeout",
        "1h",
    ]);
    let (grew, who) =
        flood_silent_subscribers(&server, 10, 64 * 1024, Duration::from_secs(4)).await;
    eprintln!("figure: 10 silent subscribers, 16 MiB budget: peak RSS +{grew} MiB, {who}");
    assert!(who["dropped"].as_u64().unwrap_or(0) > 0, "{who}");
    assert!(
        who["queue_bytes"].as_u64().unwrap_or(0) <= 16 << 20,
        "{who}"
    );
    // The budget, plus what a process allocates around it (chunks being
    // filled, the allocator's slack): a small constant.
    assert!(grew <= 16 + 48, "the broker grew by {grew} MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_subscribers_are_disconnected_after_the_timeout() {
    let server = MistServer::start(&[
        "--max-queue-bytes",
        "256KiB",
        "--slow-consumer-timeout",
        "500ms",
    ]);
    let (_, who) = flood_silent_subscribers(&server, 10, 64 * 1024, Duration::from_secs(3)).await;
    assert_eq!(who["slow_consumers_disconnected"], 10, "{who}");
    assert!(
        server.log().contains("disconnected a slow consumer"),
        "{}",
        server.log()
    );
}

/// The attack as written: 400 silent subscribers, 20 s, defaults
/// but for the budget, which is the figure checked.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "full size: run with --release -- --ignored full_size"]
async fn full_size_memory_attack() {
    let server = MistServer::start(&["--max-memory", "1GiB"]);
    let (grew, _) = flood_silent_subscribers(&server, 400, 1024, Duration::from_secs(20)).await;
    eprintln!("figure: 400 silent subscribers, 20 s flood, 1 GiB budget: peak RSS +{grew} MiB");
    assert!(grew <= 1024 + 128, "the broker grew by {grew} MiB");
}

/// One connection holds 100,000 one-tag subscriptions and publishes a
/// message naming all 100,000 tags: answered within a second, and another
/// client's commands are not held up behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_naming_many_tags_costs_no_product() {
    const N: usize = 100_000;
    let server = MistServer::start(&["--max-tags", "200000", "--max-subscriptions", "200000"]);
    let mut attacker = Client::connect(&server.tcp()).await;
    let mut lines = String::new();
    for i in 0..N {
        lines.push_str(&format!(
            "{{\"command\":\"subscribe\",\"tags\":[\"t{i}\"]}}\n"
        ));
    }
    attacker.send_raw(lines.as_bytes()).await;
    assert!(attacker.sync().await.is_empty());
    let tags: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
    let publish = json!({"command": "publish", "tags": tags, "data": "all of them"});
    let mut receiver = Client::connect(&server.tcp()).await;
    receiver.subscribe(&["t99999"]).await;

    let watchdog = Watchdog::start(&server).await;
    let start = Instant::now();
    attacker.send(publish).await;
    assert!(attacker.sync().await.is_empty());
    let answered = start.elapsed();
    assert_eq!(receiver.recv().await["data"], "all of them");
    let slowest = watchdog.finish().await;
    eprintln!(
        "figure: 100,000 tags against 100,000 subscriptions: answered after {answered:?}, another client's slowest ping {slowest} ms"
    );
    // The bound in release on an idle machine is a second (BENCHMARKS.md,
    // "Under attack"); this is a debug build on a shared 2-core machine, so
    // the test allows three. The quadratic matcher this guards against took
    // 2.4 s in release, tens of seconds in a debug build: it still fails.
    assert!(
        answered < Duration::from_secs(3),
        "answered after {answered:?}"
    );
    assert!(slowest < 3000, "another client waited {slowest} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_caps_refuse_the_many_tags_attack_at_once() {
    let server = MistServer::start(&[]);
    let mut attacker = Client::connect(&server.tcp()).await;
    let tags: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    let reply = attacker
        .request(json!({"command": "publish", "tags": tags, "data": "x"}))
        .await;
    assert_eq!(reply["error"], "too many tags: 100000, the limit is 1024");
    let mut lines = String::new();
    for i in 0..10_001 {
        lines.push_str(&format!(
            "{{\"command\":\"subscribe\",\"tags\":[\"t{i}\"]}}\n"
        ));
    }
    attacker.send_raw(lines.as_bytes()).await;
    let replies = attacker.sync().await;
    assert_eq!(replies.len(), 1, "only the 10,001st is refused");
    assert_eq!(
        replies[0]["error"],
        "too many subscriptions: a connection may hold 10000"
    );
}

/// A connection holding 10,000 subscriptions sends `list` 68,000 times and
/// never reads: its replies may take its queue's limit, not the machine.
#[tokio::test(flavor = "multi_thread")]
async fn replies_to_a_client_that_never_reads_are_bounded() {
    let server = MistServer::start(&["--max-queue-bytes", "16MiB"]);
    let pid = server.pid();
    let before = rss_mib(pid);
    let watchdog = Watchdog::start(&server).await;
    let list = "{\"command\":\"list\"}\n".repeat(3_400);
    let addr = server.tcp();
    // Written from another task: the broker stops reading this client, so
    // its writes block once the socket buffers are full. That is the point.
    let writing = tokio::spawn(async move {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let mut subscribe = String::new();
        for i in 0..10_000 {
            subscribe.push_str(&format!(
                "{{\"command\":\"subscribe\",\"tags\":[\"t{i}\"]}}\n"
            ));
        }
        stream.write_all(subscribe.as_bytes()).await.expect("write");
        for _ in 0..20 {
            if tokio::time::timeout(Duration::from_secs(2), stream.write_all(list.as_bytes()))
                .await
                .is_err()
            {
                break; // blocked: the broker stopped reading, as it should
            }
        }
        stream
    });
    let stream = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("the writer gives up in time")
        .expect("writer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grew = peak_rss_mib(pid).saturating_sub(before);
    let slowest = watchdog.finish().await;
    drop(stream);
    eprintln!(
        "figure: 68,000 unread list replies, 16 MiB queue: peak RSS +{grew} MiB, slowest ping {slowest} ms"
    );
    assert!(
        slowest < 1000,
        "a well-behaved client's ping took {slowest} ms"
    );
    // The queue's 16 MiB, one reply past it (about 100 KiB), and a read
    // chunk of backlog: a small constant on top.
    assert!(grew <= 16 + 48, "the broker grew by {grew} MiB");
}

/// The same attack over WebSocket, where the reader also holds a batch of
/// lines and a read buffer while the client's queue is full: those are
/// bounded per connection, and the broker stops reading the client once its
/// queue is full.
#[tokio::test(flavor = "multi_thread")]
async fn replies_to_a_websocket_client_that_never_reads_are_bounded() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,ws://127.0.0.1:0",
            "--max-queue-bytes",
            "1MiB",
        ],
        2,
    );
    let pid = server.pid();
    let before = rss_mib(pid);
    let watchdog = Watchdog::start(&server).await;
    let url = format!("ws://{}/", server.addr("ws"));
    let writing = tokio::spawn(async move {
        let mut client = WsClient::connect(&url).await;
        let subscribe = (0..10_000)
            .map(|i| {
                Message::text(
                    json!({"command": "subscribe", "tags": [format!("t{i}")]}).to_string(),
                )
            })
            .collect();
        client.send_frames(subscribe).await;
        // Each reply names the 10,000 tags: about 119 KB.
        let list = Message::text(json!({"command": "list"}).to_string());
        for _ in 0..20 {
            let frames = vec![list.clone(); 3_400];
            if tokio::time::timeout(Duration::from_secs(2), client.send_frames(frames))
                .await
                .is_err()
            {
                break; // blocked: the broker stopped reading, as it should
            }
        }
        client
    });
    let client = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("the writer gives up in time")
        .expect("writer");
    // The queue fills once the socket buffers are full (the client reads
    // nothing); from then on the broker reads no more of this client.
    let deadline = Instant::now() + TIMEOUT;
    let queued = || async {
        let who = mist_e2e::web::who(&server).await;
        (who["queue_bytes"].as_u64().expect("queue_bytes"), who)
    };
    while queued().await.0 < 1 << 20 {
        assert!(
            Instant::now() < deadline,
            "the queue never filled: {}",
            queued().await.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bytes, who) = queued().await;
    let grew = peak_rss_mib(pid).saturating_sub(before);
    let slowest = watchdog.finish().await;
    drop(client);
    eprintln!(
        "figure: 68,000 unread list replies over WebSocket, 1 MiB queue: peak RSS +{grew} MiB, slowest ping {slowest} ms, {who}"
    );
    // The limit and one reply past it, not 68,000 replies (8 GB).
    // (Held memory: the queue, and the copy its writer is stuck writing,
    // at most one drain of 256 KiB.)
    assert!(bytes <= (1 << 20) + 200_000 + (256 << 10), "{who}");
    assert!(
        slowest < 1000,
        "a well-behaved client's ping took {slowest} ms"
    );
    // The queue's 1 MiB, one reply past it, what the reader holds (a 16 KiB
    // read buffer, at most 64 KiB of lines and their backlog) and the
    // allocator's slack.
    assert!(grew <= 1 + 48, "the broker grew by {grew} MiB");
}
