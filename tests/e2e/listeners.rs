//! What every listener does around the protocol (SPEC §6–§7): the message
//! limit on WebSocket messages and HTTP bodies, header and handshake
//! timeouts, the connection limit, typed refusals over HTTP, and graceful
//! shutdown. Each test bounds its time and asserts the bound.

use std::time::{Duration, Instant};

use mist_e2e::client::{delivery, error_of};
use mist_e2e::postgres::Postgres;
use mist_e2e::web::{http, http_publish, WsClient};
use mist_e2e::{Client, MistServer, TIMEOUT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn two_thousand_half_sent_http_requests_are_closed_after_the_header_timeout() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,http://127.0.0.1:0",
            "--header-timeout",
            "1s",
        ],
        2,
    );
    let addr = server.addr("http");
    let before = rss(server.pid());
    let mut streams = Vec::with_capacity(2000);
    let opened = Instant::now();
    for _ in 0..2000 {
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(&addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        streams.push(stream);
    }
    // The bound is on closing, counted from the last request sent: how long
    // 2,000 connects take depends on the machine's load, not on the broker.
    let sent = Instant::now();
    let peak = rss(server.pid());
    let mut waiting = tokio::task::JoinSet::new();
    for mut stream in streams {
        waiting.spawn(async move { closed_within(&mut stream, Duration::from_secs(8)).await });
    }
    let mut open = 0;
    while let Some(closed) = waiting.join_next().await {
        if !closed.unwrap() {
            open += 1;
        }
    }
    let took = opened.elapsed();
    eprintln!(
        "figure: 2,000 half-sent requests: +{} KiB RSS while open, all closed after {took:?}",
        peak.saturating_sub(before) >> 10
    );
    assert_eq!(
        open, 0,
        "{open} half-sent requests still open after {took:?}"
    );
    let closing = sent.elapsed();
    assert!(
        closing < Duration::from_secs(10),
        "closing took {closing:?} after the last request ({took:?} in all)"
    );
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "2,000 half-sent requests cost {} MiB",
        grown >> 20
    );
    // A complete request is still answered.
    let response = http(&addr, "GET", "/ping", &[], b"").await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn a_websocket_handshake_never_finished_is_closed_but_idle_sockets_stay() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,ws://127.0.0.1:0",
            "--handshake-timeout",
            "1s",
        ],
        2,
    );
    let mut ws = WsClient::connect(&format!("ws://{}/", server.addr("ws"))).await;
    let mut tcp = Client::connect(&server.tcp()).await;
    let started = Instant::now();
    let mut half = TcpStream::connect(server.addr("ws")).await.unwrap();
    half.write_all(b"GET /subscribe/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut half, TIMEOUT).await, "still open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Idle past the handshake timeout, finished handshakes are left alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ws.sync().await.is_empty());
    assert!(tcp.sync().await.is_empty());
}

#[tokio::test]
async fn an_oversized_websocket_message_gets_an_error_reply_and_the_connection_stays() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,ws://127.0.0.1:0",
            "--max-message-bytes",
            "24MB",
        ],
        2,
    );
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["big"]).await;
    let mut ws = WsClient::connect(&format!("ws://{}/", server.addr("ws"))).await;

    let data = "x".repeat(18_000_000);
    ws.send(json!({"command": "publish", "tags": ["big"], "data": data}))
        .await;
    assert!(ws.sync().await.is_empty(), "18 MB is within 24 MB");
    let got = subscriber.recv().await;
    assert_eq!(got["data"].as_str().map(str::len), Some(18_000_000));

    let before = rss(server.pid());
    let too_big = "y".repeat(25_000_000);
    ws.send_frame(Message::text(
        json!({"command": "publish", "tags": ["big"], "data": too_big}).to_string(),
    ))
    .await;
    let replies = ws.sync().await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let error = error_of(&replies[0]);
    assert!(error.contains("too large"), "{error}");
    let grown = rss(server.pid()).saturating_sub(before);
    assert!(grown < 24_000_000, "skipping 25 MB cost {grown} bytes");
    subscriber.expect_nothing().await;
    // The connection still answers.
    ws.send(json!({"command": "publish", "tags": ["big"], "data": "small"}))
        .await;
    assert!(ws.sync().await.is_empty());
    assert_eq!(subscriber.recv().await, delivery(&["big"], "small"));
}

#[tokio::test]
async fn an_18_mb_publish_body_is_taken_and_one_over_the_limit_gets_413() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,http://127.0.0.1:0",
            "--max-message-bytes",
            "24MB",
        ],
        2,
    );
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["big"]).await;
    let data = "z".repeat(18_000_000);
    let response = http_publish(
        &server.addr("http"),
        json!({"tags": ["big"], "data": data}),
        None,
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.text());
    let got = subscriber.recv().await;
    assert_eq!(got["data"].as_str().map(str::len), Some(18_000_000));

    // Over the limit: refused from its Content-Length, before its bytes.
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream
        .write_all(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 25000000\r\n\r\n{\"tags\":[\"big\"],\"data\":\"",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("no answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(r#"{"error":"message too large"#), "{text}");
    subscriber.expect_nothing().await;
}

#[tokio::test]
async fn the_fourth_connection_is_refused_on_every_listener() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,ws://127.0.0.1:0,http://127.0.0.1:0",
            "--max-connections",
            "3",
        ],
        3,
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&server.tcp()).await;
        assert!(client.sync().await.is_empty());
        held.push(client);
    }

    let mut fourth = Client::connect(&server.tcp()).await;
    let refusal = fourth.recv().await;
    assert_eq!(refusal["command"], "");
    assert!(
        error_of(&refusal).contains("too many connections"),
        "{refusal}"
    );
    assert!(fourth.closed().await, "the refused client is closed");

    let response = http(&server.addr("http"), "GET", "/ping", &[], b"").await;
    assert_eq!(response.status, 503);
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many connections"));

    let ws = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr("ws"))).await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = response.body().as_deref().unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert!(body["error"].as_str().unwrap().contains("too many"));
        }
        other => panic!("expected a 503, got {other:?}"),
    }

    // A place given back is a place for the next client.
    held.pop().unwrap().shutdown().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let response = http(&server.addr("http"), "GET", "/ping", &[], b"").await;
        if response.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was never given");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_http_publish_with_an_unreachable_store_gets_503() {
    let database = Postgres::start_owned();
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,http://127.0.0.1:0",
            "--authenticator",
            &database.database(),
            "--token",
            "admin-token",
        ],
        2,
    );
    let mut admin = Client::connect(&server.tcp()).await;
    admin
        .send(json!({"command": "auth", "data": "admin-token"}))
        .await;
    admin
        .send(json!({"command": "register", "tags": ["a"], "data": "user"}))
        .await;
    assert!(admin.sync().await.is_empty());
    let ok = http_publish(
        &server.addr("http"),
        json!({"tags": ["a"], "data": "up"}),
        Some("user"),
    )
    .await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    let forbidden = http_publish(
        &server.addr("http"),
        json!({"tags": ["b"], "data": "not mine"}),
        Some("user"),
    )
    .await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.text());

    database.stop();
    let started = Instant::now();
    let down = http_publish(
        &server.addr("http"),
        json!({"tags": ["a"], "data": "down"}),
        Some("user"),
    )
    .await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.json()["error"].is_string());
    assert!(started.elapsed() < TIMEOUT);
}

fn signal(server: &MistServer, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn on_sigterm_queued_deliveries_are_written_and_the_process_exits_0() {
    let mut server = MistServer::start(&["--shutdown-timeout", "5s"]);
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["queued"]).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    // Far more than the sockets hold: most of it waits in the broker.
    let data = "q".repeat(10_000);
    for i in 0..2000 {
        publisher.publish(&["queued"], &format!("{i} {data}")).await;
    }
    assert!(publisher.sync().await.is_empty(), "all published");

    let signalled = Instant::now();
    signal(&server, "-TERM");
    for i in 0..2000 {
        let got = subscriber.recv().await;
        assert_eq!(
            got["data"].as_str().and_then(|d| d.split(' ').next()),
            Some(i.to_string().as_str()),
            "delivery {i}"
        );
    }
    assert!(subscriber.closed().await, "closed once written");
    let status = server.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

#[tokio::test]
async fn on_sigterm_a_subscriber_that_reads_nothing_holds_shutdown_only_until_the_timeout() {
    let mut server = MistServer::start(&["--shutdown-timeout", "1s"]);
    let mut stuck = Client::connect(&server.tcp()).await;
    stuck.subscribe(&["stuck"]).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    let data = "s".repeat(10_000);
    for _ in 0..3000 {
        publisher.publish(&["stuck"], &data).await;
    }
    assert!(publisher.sync().await.is_empty());

    let signalled = Instant::now();
    signal(&server, "-TERM");
    let status = server.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exit took {took:?}\n{}",
        server.log()
    );
    assert!(server.log().contains("still writing"), "{}", server.log());
    drop(stuck);
}

/// Connects, sends `request` in one write, and returns what the server
/// sends until it closes the connection (or, for a served connection, the
/// first line). A refused client may see a reset after its refusal: the
/// bytes before it count.
async fn first_answer(addr: &str, request: &[u8]) -> String {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !got.contains(&b'\n') || got.starts_with(b"HTTP/") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer in time; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The user and system CPU time of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A broker out of file descriptors (accept failing with EMFILE) keeps
/// serving the connections it has, refuses the ones beyond in the
/// listener's protocol instead of leaving them unanswered in the kernel's
/// queue, does not spin, and serves new connections once descriptors are
/// free again.
#[tokio::test]
async fn out_of_file_descriptors_the_open_connections_are_served_and_new_ones_refused() {
    let server = MistServer::start_with_fd_limit(
        &["--listeners", "tcp://127.0.0.1:0,http://127.0.0.1:0"],
        2,
        64,
    );
    let (tcp, http_addr) = (server.tcp(), server.addr("http"));
    let hello = b"{\"command\":\"subscribe\",\"tags\":[\"fd\"]}\n{\"command\":\"ping\"}\n";

    // Connections until the first refusal: the descriptors the broker has
    // left after its own (listeners, pollers, standard streams).
    let mut held = Vec::new();
    let refusal = loop {
        assert!(held.len() < 64, "no refusal within the limit of 64 files");
        let mut client = Client::connect(&tcp).await;
        client.send_raw(hello).await;
        match client.next_line().await {
            Some(line) if line.contains("\"pong\"") => held.push(client),
            other => break other.unwrap_or_default(),
        }
    };
    assert!(held.len() >= 20, "only {} connections served", held.len());
    assert!(refusal.contains("out of file descriptors"), "{refusal:?}");

    // Every client beyond is refused at once, in its listener's protocol.
    for _ in 0..20 {
        let answer = first_answer(&tcp, hello).await;
        let reply: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
        assert_eq!(reply["command"], "", "{answer}");
        assert!(
            error_of(&reply).contains("out of file descriptors"),
            "{answer}"
        );
    }
    let answer = first_answer(
        &http_addr,
        b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("out of file descriptors"), "{answer}");

    // At the limit with nobody waiting, the broker is idle: the one wait
    // in this test that is a measurement (a spinning accept loop would
    // take a core, 100 ticks a second).
    let before = cpu_ticks(server.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(server.pid()) - before;
    assert!(spent < 30, "{spent} ticks of CPU in 1 s at the limit");

    // The connections it has are served.
    held[0].publish(&["fd"], "still here").await;
    assert!(held[0].sync().await.is_empty());
    for client in &mut held[1..] {
        assert_eq!(client.sync().await, [delivery(&["fd"], "still here")]);
    }
    let warnings = server
        .log()
        .lines()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings:\n{}",
        server.log()
    );

    // Descriptors given back are places for new clients.
    for mut client in held.drain(..5) {
        client.shutdown().await;
        assert!(client.closed().await);
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if first_answer(&tcp, hello).await.contains("\"pong\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after freeing five"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
