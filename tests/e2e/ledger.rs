//! `--max-memory` as a promise (SPEC §7): the three shapes of attack that
//! once walked around the budget, each re-run with its bound asserted, and
//! a churn of connections that must leave nothing behind.
//!
//! - **Fan-out copies:** a thousand silent subscribers of one tag; each
//!   writer's copy of the shared deliveries is charged.
//! - **Input buffers:** three hundred half-sent 1 MB lines; unfinished
//!   lines are charged, the biggest holders closed, and a finished line
//!   gives its buffer back.
//! - **Replies:** a client that pipelines pings and never reads; its
//!   input stops before its pongs take the budget, and a subscriber that
//!   reads gets everything and stays.
//!
//! Each bound is the budget plus 128 MiB of peak resident memory (what a
//! process allocates around its budget: buffers being filled, the
//! allocator's slack, a thousand connections' fixed cost).

use std::time::{Duration, Instant};

use mist_e2e::attack::{peak_rss_mib, rss_mib, silent_subscriber, silent_subscriber_at, Watchdog};
use mist_e2e::web::{self, EventStream, WsClient};
use mist_e2e::{Client, MistServer, TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Peak resident memory allowed over the budget.
const SLACK_MIB: u64 = 128;

/// Waits until `who` satisfies `done`, within `wait`; returns it.
async fn until_who(server: &MistServer, wait: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let who = web::who(server).await;
        if done(&who) {
            return who;
        }
        assert!(Instant::now() < deadline, "never: {who}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn figure(who: &Value, name: &str) -> u64 {
    who[name].as_u64().unwrap_or(0)
}

/// Attack 1: 1,000 subscribers on one tag with small receive buffers that
/// never read, and four 1 MiB bursts of 1 KB messages. Before the ledger
/// each writer copied up to 1 MiB of the shared deliveries, uncounted: 973
/// MB of RSS under a 16 MiB budget.
#[tokio::test(flavor = "multi_thread")]
async fn fan_out_to_a_thousand_silent_subscribers_stays_within_the_budget() {
    let server = MistServer::start(&["--max-memory", "64MiB", "--slow-consumer-timeout", "1h"]);
    let pid = server.pid();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(silent_subscriber(&server, "room").await);
    }
    let watchdog = Watchdog::start(&server).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    let line = format!(
        "{{\"command\":\"publish\",\"tags\":[\"room\"],\"data\":\"{}\"}}\n",
        "x".repeat(960)
    );
    let burst = line.repeat(1024);
    for _ in 0..4 {
        publisher.send_raw(burst.as_bytes()).await;
        // The publisher's own barrier: its burst has been read and fanned out.
        assert_eq!(
            publisher.request(json!({"command": "ping"})).await["data"],
            "pong"
        );
    }
    let who = until_who(&server, TIMEOUT, |w| figure(w, "messages_in") == 4096).await;
    // The writers have had their turn at the deliveries.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = peak_rss_mib(pid);
    let slowest = watchdog.finish().await;
    let after = web::who(&server).await;
    eprintln!("figure: 1,000 silent subscribers of one tag, 4 x 1 MiB, 64 MiB budget: peak RSS {peak} MiB, slowest ping {slowest} ms, {after}");
    assert!(
        figure(&who, "dropped") > 0,
        "the budget made room by dropping: {who}"
    );
    assert!(
        figure(&after, "queue_bytes") <= (64 + 16) << 20,
        "held memory within the budget and the writers' small copies: {after}"
    );
    assert!(peak <= 64 + SLACK_MIB, "peak RSS {peak} MiB");
    // A thousand writers copy and write while the bursts fan out: the
    // bystander waits its turn for the CPU (in the unoptimized build the
    // tests run, on two cores), not for memory.
    assert!(slowest < 5000, "a bystander's ping took {slowest} ms");
    assert_eq!(figure(&after, "slow_consumers_disconnected"), 0);
    drop(silent);
}

/// Attack 2: 300 connections each send a 1 MB `ping` line in two halves.
/// Before the ledger RSS went to 171 MB while they were half-sent, and
/// stayed at 322 MB once every line was answered: each connection kept its
/// line's buffer. Now the unfinished lines are charged: those that would
/// take the budget past its share are closed (counted), the rest are
/// answered, a newcomer is answered throughout, and the broker returns to
/// its idle footprint.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_big_lines_stay_within_the_budget_and_leave_nothing_behind() {
    let server = MistServer::start(&["--max-memory", "64MiB"]);
    let pid = server.pid();
    let start = rss_mib(pid);
    let watchdog = Watchdog::start(&server).await;
    let line = format!(
        "{{\"command\":\"ping\",\"data\":\"{}\"}}\n",
        "y".repeat(999_960)
    );
    let (first, second) = line.as_bytes().split_at(line.len() / 2);
    let mut connections = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(server.tcp()).await.expect("connect");
        stream.write_all(first).await.expect("first half");
        connections.push(stream);
    }
    let half_sent = until_who(&server, TIMEOUT, |w| {
        figure(w, "closed_for_memory") + figure(w, "queue_bytes") / 500_000 >= 100
    })
    .await;
    eprintln!(
        "figure: 300 half-sent 1 MB lines, 64 MiB budget, half sent: RSS {} MiB, {half_sent}",
        rss_mib(pid)
    );
    // The second halves; each connection is answered or told it is closed.
    let (mut answered, mut closed) = (0, 0);
    let mut open = Vec::new();
    for mut stream in connections {
        // A closed connection may refuse the rest: that is its answer.
        let _ = stream.write_all(second).await;
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        let read = tokio::time::timeout(TIMEOUT, reader.read_line(&mut reply))
            .await
            .expect("an answer in time");
        match read {
            Ok(n) if n > 0 && reply.contains("pong") => {
                answered += 1;
                open.push(reader);
            }
            Ok(n) if n > 0 => {
                assert!(reply.contains("no memory left"), "{reply}");
                closed += 1;
            }
            // Reset before the error line could be read: closed too.
            _ => closed += 1,
        }
    }
    let peak = peak_rss_mib(pid);
    let slowest = watchdog.finish().await;
    let who = until_who(&server, TIMEOUT, |w| figure(w, "queue_bytes") == 0).await;
    eprintln!("figure: 300 half-sent 1 MB lines, 64 MiB budget: {answered} answered, {closed} closed, peak RSS {peak} MiB, slowest ping {slowest} ms, {who}");
    assert_eq!(answered + closed, 300);
    assert!(
        closed > 0 && figure(&who, "closed_for_memory") >= closed,
        "{who}"
    );
    assert!(peak <= 64 + SLACK_MIB, "peak RSS {peak} MiB");
    assert!(slowest < 1000, "a newcomer's ping took {slowest} ms");
    // Idle now, the answered connections still open: back where it started.
    let idle = settle_rss(pid).await;
    eprintln!("figure: after the big lines, idle: RSS {idle} MiB (started at {start} MiB)");
    assert!(
        idle <= start + 32,
        "idle RSS {idle} MiB, started at {start} MiB"
    );
    drop(open);
}

/// RSS once the allocator has given back what it can: read until it stops
/// falling.
async fn settle_rss(pid: u32) -> u64 {
    let mut last = rss_mib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_mib(pid);
        if now >= last {
            return now;
        }
        last = now;
    }
    last
}

/// Attack 3: one connection pipelines 600,000 pings and never reads, under
/// a 4 MiB budget. Before the ledger its pongs took the budget, every
/// delivery to everyone was refused, and a subscriber that read all the
/// time got none of 30 publishes and was disconnected as a slow consumer.
#[tokio::test(flavor = "multi_thread")]
async fn unread_replies_cannot_starve_a_subscriber_that_reads() {
    let server = MistServer::start(&["--max-memory", "4MiB", "--slow-consumer-timeout", "1s"]);
    let pid = server.pid();
    let mut reader = Client::connect(&server.tcp()).await;
    reader.subscribe(&["news"]).await;
    let addr = server.tcp();
    let pinging = tokio::spawn(async move {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let pings = "{\"command\":\"ping\"}\n".repeat(600_000);
        // Blocks once the broker stops reading this client: that is the point.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(pings.as_bytes())).await;
        stream
    });
    let pinger = tokio::time::timeout(Duration::from_secs(30), pinging)
        .await
        .expect("the pinger gives up in time")
        .expect("pinger");
    let mut publisher = Client::connect(&server.tcp()).await;
    for i in 0..30 {
        publisher.publish(&["news"], &format!("m{i}")).await;
        // Past the slow-consumer timeout, spread over the publishes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.sync().await;
    for i in 0..30 {
        let got = reader.recv().await;
        assert_eq!(got, mist_e2e::client::delivery(&["news"], &format!("m{i}")));
    }
    // Still connected: its ping is answered.
    assert_eq!(
        reader.request(json!({"command": "ping"})).await["data"],
        "pong"
    );
    let who = web::who(&server).await;
    let peak = peak_rss_mib(pid);
    eprintln!("figure: 600,000 unread pings, 4 MiB budget: peak RSS {peak} MiB, {who}");
    assert_eq!(figure(&who, "slow_consumers_disconnected"), 0, "{who}");
    assert!(peak <= 4 + SLACK_MIB, "peak RSS {peak} MiB");
    drop(pinger);
}

/// Connections that come and go, many ways, over every listener. Run at
/// full size (200,000 cycles) by hand:
///
///     MIST_SOAK_CYCLES=200000 cargo test --release -p mist-e2e --test e2e -- --nocapture ledger::churn
#[tokio::test(flavor = "multi_thread")]
async fn churn_leaves_nothing_behind() {
    let cycles: usize = std::env::var("MIST_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000);
    let server = web::server_with_all_listeners(&["--max-queue-bytes", "256KiB"]);
    let pid = server.pid();
    // A first round grows the allocator's pools and tokio's to their working size.
    churn(&server, 300).await;
    let baseline = settle(&server).await;
    let start = settle_rss(pid).await;
    let began = Instant::now();
    churn(&server, cycles).await;
    let settled = settle(&server).await;
    // A task may still be finishing a closed connection (the previous `who`
    // connection's among them) when the count is read: wait for the count
    // to come back down. A leaked task never does.
    let base_tasks = figure(&baseline, "tasks");
    let after = until_who(&server, Duration::from_secs(10), |w| {
        figure(w, "connections") == 1 && figure(w, "tasks") <= base_tasks
    })
    .await;
    eprintln!("settled: {settled}");
    let end = settle_rss(pid).await;
    eprintln!(
        "figure: churn of {cycles} cycles in {:.1} s: RSS {start} -> {end} MiB, tasks {} -> {}, {after}",
        began.elapsed().as_secs_f64(),
        figure(&baseline, "tasks"),
        figure(&after, "tasks"),
    );
    // Only the asking connection is left, holding nothing.
    assert_eq!(figure(&after, "connections"), 1, "{after}");
    assert_eq!(figure(&after, "subscriptions"), 0, "{after}");
    assert_eq!(figure(&after, "queue_bytes"), 0, "{after}");
    assert!(
        figure(&after, "tasks") <= figure(&baseline, "tasks"),
        "tasks {} -> {}",
        figure(&baseline, "tasks"),
        figure(&after, "tasks")
    );
    assert!(end <= start + 16, "RSS {start} -> {end} MiB");
}

/// Waits until every connection but the asking one is gone and nothing is
/// held; returns `who` then.
async fn settle(server: &MistServer) -> Value {
    until_who(server, Duration::from_secs(30), |w| {
        figure(w, "connections") == 1 && figure(w, "queue_bytes") == 0
    })
    .await
}

/// `cycles` connect/subscribe/publish/close cycles, 16 at a time, each of
/// one of eight kinds in turn: TCP, TCP that never reads while a flood
/// comes, TCP reset abruptly, WebSocket, WebSocket gone without a close,
/// SSE, an HTTP publish, a half-sent line then a reset.
async fn churn(server: &MistServer, cycles: usize) {
    let tcp = server.tcp();
    let ws = format!("ws://{}/", server.addr("ws"));
    let http = server.addr("http");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (tcp, ws, http, next) = (tcp.clone(), ws.clone(), http.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= cycles {
                        return;
                    }
                    tokio::time::timeout(Duration::from_secs(30), cycle(i, &tcp, &ws, &http))
                        .await
                        .expect("a cycle ends in time");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
}

async fn cycle(i: usize, tcp: &str, ws: &str, http: &str) {
    let tag = format!("t{}", i % 64);
    let other = format!("t{}", (i + 1) % 64);
    match i % 8 {
        0 => {
            // (Other cycles publish on this tag meanwhile: deliveries may
            // come before the pong, which `sync` takes as they come.)
            let mut client = Client::connect(tcp).await;
            client
                .send(json!({"command": "subscribe", "tags": [tag]}))
                .await;
            client.publish(&[&other], "hello").await;
            client.sync().await;
            client.shutdown().await;
        }
        1 => {
            // A slow reader under a flood, then gone.
            let mut silent = silent_subscriber_at(tcp, &tag).await;
            let mut publisher = Client::connect(tcp).await;
            let flood = format!(
                "{{\"command\":\"publish\",\"tags\":[\"{tag}\"],\"data\":\"{}\"}}\n",
                "z".repeat(500)
            )
            .repeat(200);
            publisher.send_raw(flood.as_bytes()).await;
            publisher.sync().await;
            let _ = silent.shutdown().await;
        }
        2 => {
            // Reset abruptly (RST), subscribed, mid-conversation.
            let stream = TcpStream::connect(tcp).await.expect("connect");
            let mut client = BufReader::new(stream);
            client
                .write_all(
                    format!("{{\"command\":\"subscribe\",\"tags\":[\"{tag}\"]}}\n").as_bytes(),
                )
                .await
                .expect("write");
            let stream = client.into_inner();
            stream.set_zero_linger().expect("SO_LINGER");
            drop(stream);
        }
        3 => {
            let mut client = WsClient::connect(ws).await;
            client
                .send(json!({"command": "subscribe", "tags": [tag]}))
                .await;
            client
                .send(json!({"command": "publish", "tags": [other], "data": "hi"}))
                .await;
            client.sync().await;
            client.close().await;
        }
        4 => {
            let mut client = WsClient::connect(ws).await;
            client
                .send(json!({"command": "subscribe", "tags": [tag]}))
                .await;
            client.sync().await;
            client.vanish();
        }
        5 => {
            let mut events = EventStream::open(http, &format!("/subscribe?tags={tag}"), &[]).await;
            assert_eq!(events.next_line().await, ": subscribed");
            drop(events);
        }
        6 => {
            let response =
                web::http_publish(http, json!({"tags": [other], "data": "x"}), None).await;
            assert_eq!(response.status, 204);
        }
        _ => {
            // Half a line, then a reset.
            let mut stream = TcpStream::connect(tcp).await.expect("connect");
            stream
                .write_all(
                    format!(
                        "{{\"command\":\"publish\",\"tags\":[\"{tag}\"],\"data\":\"{}",
                        "q".repeat(20_000)
                    )
                    .as_bytes(),
                )
                .await
                .expect("write");
            stream.set_zero_linger().expect("SO_LINGER");
            drop(stream);
        }
    }
}

/// Attack 2 over WebSocket and HTTP, where the listener (not the broker)
/// holds a message while it arrives: 100 WebSockets (half of them under
/// `mist.lines`, whose frames are lines) each send half of a
/// 1 MB text frame, and 100 HTTP publishes half of a 1 MB body, under a
/// 32 MiB budget. What the listeners hold is charged: those that cannot
/// be held are closed (1013 "try again later", or `503`), memory stays
/// within the budget, and the rest are answered.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_big_messages_over_websocket_and_http_are_charged() {
    let server = web::server_with_all_listeners(&["--max-memory", "32MiB"]);
    let pid = server.pid();
    let watchdog = Watchdog::start(&server).await;
    let data = "w".repeat(999_900);
    // WebSocket: a ping whose data makes it 1 MB, in one masked frame.
    let message = format!("{{\"command\":\"ping\",\"data\":\"{data}\"}}");
    let frame = masked_frame(message.as_bytes());
    let (ws_first, ws_second) = frame.split_at(frame.len() / 2);
    // HTTP: a publish body of 1 MB.
    let body = format!("{{\"tags\":[\"nobody\"],\"data\":\"{data}\"}}");
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: mist\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (body_first, body_second) = body.as_bytes().split_at(body.len() / 2);
    let ws_addr = server.addr("ws");
    let http_addr = server.addr("http");
    let mut sockets = Vec::new();
    for i in 0..200 {
        let websocket = i % 2 == 0;
        let addr = if websocket { &ws_addr } else { &http_addr };
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if websocket {
            let lines = i % 4 == 0;
            let upgrade = format!(
                "GET / HTTP/1.1\r\nHost: mist\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
                if lines { "Sec-WebSocket-Protocol: mist.lines\r\n" } else { "" }
            );
            stream.write_all(upgrade.as_bytes()).await.expect("upgrade");
            let mut reader = BufReader::new(stream);
            let mut agreed = false;
            loop {
                let mut line = String::new();
                tokio::time::timeout(TIMEOUT, reader.read_line(&mut line))
                    .await
                    .expect("handshake in time")
                    .expect("read");
                agreed |= line.eq_ignore_ascii_case("sec-websocket-protocol: mist.lines\r\n");
                if line == "\r\n" {
                    break;
                }
            }
            assert_eq!(agreed, lines, "mist.lines agreed to exactly when asked for");
            stream = reader.into_inner();
            stream.write_all(ws_first).await.expect("first half");
        } else {
            stream.write_all(head.as_bytes()).await.expect("head");
            stream.write_all(body_first).await.expect("first half");
        }
        sockets.push((websocket, stream));
    }
    let who = until_who(&server, TIMEOUT, |w| {
        figure(w, "closed_for_memory") > 0 || figure(w, "queue_bytes") > 16 << 20
    })
    .await;
    eprintln!("figure: 100 half-sent 1 MB WebSocket frames and 100 half-sent 1 MB HTTP bodies, 32 MiB budget, half sent: RSS {} MiB, {who}", rss_mib(pid));
    let (mut answered, mut closed) = (0, 0);
    for (websocket, mut stream) in sockets {
        let rest = if websocket { ws_second } else { body_second };
        let _ = stream.write_all(rest).await;
        // Read until the answer tells: a pong or a `204`, or an error, a
        // `503`, a close.
        let mut reply = Vec::new();
        let answer = loop {
            let text = String::from_utf8_lossy(&reply).into_owned();
            if text.contains("\"pong\"") || text.contains(" 204 ") {
                break true;
            }
            if text.contains("error") || text.contains(" 503 ") {
                break false;
            }
            let mut buffer = [0u8; 4096];
            let read = tokio::time::timeout(
                TIMEOUT,
                tokio::io::AsyncReadExt::read(&mut stream, &mut buffer),
            )
            .await
            .unwrap_or_else(|_| panic!("no answer in time: {text:?}"));
            match read {
                Ok(0) | Err(_) => break false, // closed
                Ok(n) => reply.extend_from_slice(&buffer[..n]),
            }
        };
        if answer {
            answered += 1;
        } else {
            closed += 1;
        }
    }
    let peak = peak_rss_mib(pid);
    let slowest = watchdog.finish().await;
    let who = until_who(&server, TIMEOUT, |w| figure(w, "queue_bytes") == 0).await;
    eprintln!("figure: 100 + 100 half-sent 1 MB messages, 32 MiB budget: {answered} answered, {closed} closed, peak RSS {peak} MiB, slowest ping {slowest} ms, {who}");
    assert_eq!(answered + closed, 200);
    assert!(figure(&who, "closed_for_memory") > 0, "{who}");
    assert!(answered > 0, "some are answered");
    assert!(peak <= 32 + SLACK_MIB, "peak RSS {peak} MiB");
    assert!(slowest < 1000, "a newcomer's ping took {slowest} ms");
}

/// A client's masked text frame carrying `payload`, with a 64-bit length.
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&KEY);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}
