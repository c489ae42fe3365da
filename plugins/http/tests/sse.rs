//! What a hostile or odd client can do to an event stream now that the
//! listener reads a connection's first request head itself, against the
//! real `mist` binary: heads split into single bytes, heads over the
//! limit, heads never finished, garbage pipelined after a subscription,
//! and a subscription later on a kept-alive connection (hyper's).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use mist_e2e::client::delivery;
use mist_e2e::web::await_sessions;
use mist_e2e::{Client, MistServer, TIMEOUT};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn server(extra: &[&str]) -> MistServer {
    let mut args = vec!["--listeners", "tcp://127.0.0.1:0,http://127.0.0.1:0"];
    args.extend_from_slice(extra);
    MistServer::start_with(&args, 2)
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Reads from `stream` into `seen` until `needle` is in it.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !String::from_utf8_lossy(seen).contains(needle) {
        let mut buffer = [0; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} in time; got {:?}",
                    String::from_utf8_lossy(seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
}

/// Whether the server closes `stream` within `within`, what it sent
/// before that dropped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0; 4096];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Publishes `data` on `tags` over TCP, done once this returns.
async fn publish(server: &MistServer, tags: &[&str], data: &str) {
    let mut publisher = Client::connect(&server.tcp()).await;
    publisher.publish(tags, data).await;
    assert!(publisher.sync().await.is_empty());
}

/// The JSON of the first `data:` line in `seen`.
fn first_event(seen: &[u8]) -> Value {
    let text = String::from_utf8_lossy(seen);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no event in {text:?}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn a_subscription_head_sent_a_byte_at_a_time_opens_the_stream() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let head =
        b"GET /subscribe?tags=bytes HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    for byte in head {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, ": subscribed\n\n").await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    for header in [
        "content-type: text/event-stream\r\n",
        "cache-control: no-cache\r\n",
        "transfer-encoding: chunked\r\n",
        "\r\ndate: ",
    ] {
        assert!(text.contains(header), "no {header:?} in {text}");
    }

    publish(&server, &["bytes", "more"], "one by one").await;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "\n\n\r\n").await;
    assert_eq!(
        first_event(&seen),
        delivery(&["bytes", "more"], "one by one")
    );
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_still_reaches_hyper() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "pong").await;
    assert!(seen.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // Kept alive, as hyper keeps it: a second request on it is answered.
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "pong").await;
}

#[tokio::test]
async fn garbage_pipelined_after_a_subscription_is_dropped_without_growing_the_broker() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream
        .write_all(
            b"GET /subscribe?tags=junk HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\n\r\n\0\xff",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, ": subscribed\n\n").await;
    assert!(
        String::from_utf8_lossy(&seen).contains("\r\nconnection: close\r\n"),
        "the stream's connection takes no more requests"
    );
    let (mut reader, mut writer) = stream.into_split();
    let before = rss_kib(server.pid());
    let flood = tokio::spawn(async move {
        let garbage = vec![0xA5_u8; 64 * 1024];
        for _ in 0..(64 * 1024 * 1024 / garbage.len()) {
            writer.write_all(&garbage).await.unwrap();
        }
        writer
    });
    let writer = tokio::time::timeout(TIMEOUT * 3, flood)
        .await
        .expect("64 MiB of garbage was not taken in time")
        .unwrap();
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "64 MiB of garbage grew the broker by {grown} KiB"
    );

    publish(&server, &["junk"], "still here").await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !String::from_utf8_lossy(&seen).contains("\n\n\r\n") {
        let mut buffer = [0; 4096];
        let n = tokio::time::timeout_at(deadline, reader.read(&mut buffer))
            .await
            .expect("no event in time")
            .unwrap();
        assert!(n > 0, "closed");
        seen.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        !text.contains("pong"),
        "the pipelined request was answered: {text}"
    );
    assert_eq!(first_event(&seen), delivery(&["junk"], "still here"));
    drop(writer);
}

#[tokio::test]
async fn a_subscription_head_over_the_limit_gets_431() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    let mut head = b"GET /subscribe?tags=big HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(600 * 1024, b'b');
    let (mut reader, mut writer) = stream.split();
    // The server may stop reading (and close) before all of it is sent.
    let (_, answer) = tokio::join!(writer.write_all(&head), async {
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, reader.read_to_end(&mut raw)).await;
        raw
    });
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
}

#[tokio::test]
async fn half_sent_subscription_heads_are_closed_after_the_header_timeout() {
    let server = server(&["--header-timeout", "1s"]);
    let started = Instant::now();
    let mut halves = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
        stream
            .write_all(b"GET /subscribe?tags=half HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        halves.push(stream);
    }
    let mut silent = TcpStream::connect(server.addr("http")).await.unwrap();
    for stream in halves.iter_mut().chain([&mut silent]) {
        assert!(closed_within(stream, TIMEOUT).await, "still open");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    await_sessions(&server, "http", 0).await;
}

#[tokio::test]
async fn a_refused_subscription_is_answered_and_its_connection_closed() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream
        .write_all(b"GET /subscribe?tags= HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("not closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("missing tags"));
}

#[tokio::test]
async fn a_subscription_later_on_a_kept_alive_connection_is_served_by_hyper() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "pong").await;
    stream
        .write_all(b"GET /subscribe?tags=later HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, ": subscribed\n\n").await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    publish(&server, &["later"], "via hyper").await;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "\n\n\r\n").await;
    assert_eq!(first_event(&seen), delivery(&["later"], "via hyper"));
}

#[tokio::test]
async fn an_event_stream_whose_client_leaves_leaves_no_session() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr("http")).await.unwrap();
    stream
        .write_all(b"GET /subscribe?tags=leaving HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, ": subscribed\n\n").await;
    await_sessions(&server, "http", 1).await;
    // Only the client's end of the connection: nothing is written to it.
    drop(stream);
    await_sessions(&server, "http", 0).await;
}
