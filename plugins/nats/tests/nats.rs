//! The nats plugin against a real `nats-server` the test starts: the
//! backplane suite every plugin passes (`mist_e2e::backplane`).

use mist_e2e::backplane::{self, Open};
use mist_e2e::nats::Nats;
use mist_plugin_nats::NatsBackplane;
use mist_sdk::Backplane;

fn opener(uri: String) -> Open {
    Box::new(move |inbox| {
        let uri = uri.clone();
        Box::pin(async move {
            let backplane = NatsBackplane::open(&uri, inbox).await?;
            Ok(Box::new(backplane) as Box<dyn Backplane>)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    let nats = Nats::start();
    backplane::round_trip(&opener(nats.uri())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_what_is_queued() {
    let server = Nats::start();
    backplane::stop_sends_what_is_queued(&opener(server.uri())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_across_channels() {
    let nats = Nats::start();
    backplane::order_across_channels(&opener(nats.uri())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart() {
    let nats = Nats::start();
    backplane::server_restart(&opener(nats.uri()), &nats.service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_open() {
    let nats = Nats::start();
    backplane::server_down_at_open(&opener(nats.uri()), &nats.service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_refuses_without_waiting() {
    let nats = Nats::start();
    let (inbox, mut events) = backplane::inbox();
    let uri = format!("{}?buffer=4096", nats.uri());
    let a = NatsBackplane::open(&uri, inbox).await.unwrap();
    events.connection(true, mist_e2e::TIMEOUT).await;
    // Publishing never waits: a burst far faster than any server is
    // refused as soon as the 4 KiB queue is full, with OVERLOADED (the host
    // offers it again), not UNAVAILABLE (it is connected).
    let refused = (0..100_000).find_map(|_| a.publish(vec!["c".into()], vec![0; 3000]).err());
    let e = refused.expect("a 300 MB burst never filled a 4 KiB queue");
    assert_eq!(e.kind, mist_sdk::ErrorKind::OVERLOADED);
    assert!(e.message.contains("full"), "{}", e.message);
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_payload_and_bad_subjects_are_refused() {
    let nats = Nats::start();
    let (inbox, mut events) = backplane::inbox();
    let a = NatsBackplane::open(&nats.uri(), inbox).await.unwrap();
    events.connection(true, mist_e2e::TIMEOUT).await;
    // nats-server's default max_payload is 1 MiB.
    let e = a.publish(vec!["c".into()], vec![0; 1 << 20]).unwrap_err();
    assert_eq!(e.kind, mist_sdk::ErrorKind::TOO_LARGE);
    for bad in ["", "a b", "a.*", ">", "a..b"] {
        let e = a.publish(vec![bad.into()], b"x".to_vec()).unwrap_err();
        assert_eq!(e.kind, mist_sdk::ErrorKind::INVALID_INPUT, "{bad:?}");
        let e = a.subscribe(vec![bad.into()]).await.unwrap_err();
        assert_eq!(e.kind, mist_sdk::ErrorKind::INVALID_INPUT, "{bad:?}");
    }
    a.stop();
}

/// Someone else publishing on a Mist subject (no stamp) is dropped, and
/// does not disturb what the nodes send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_are_dropped() {
    let nats = Nats::start();
    let (inbox, mut events) = backplane::inbox();
    let b = NatsBackplane::open(&nats.uri(), inbox).await.unwrap();
    events.connection(true, mist_e2e::TIMEOUT).await;
    b.subscribe(vec!["m".into()]).await.unwrap();
    let (inbox, mut a_events) = backplane::inbox();
    let a = NatsBackplane::open(&nats.uri(), inbox).await.unwrap();
    a_events.connection(true, mist_e2e::TIMEOUT).await;
    // A stranger: a raw NATS client, sending a payload shorter than a stamp.
    let stranger = std::net::TcpStream::connect(("127.0.0.1", nats.service.port)).unwrap();
    {
        use std::io::{BufRead, BufReader, Write};
        let mut reader = BufReader::new(stranger.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap(); // INFO
        let mut w = &stranger;
        w.write_all(b"CONNECT {\"verbose\":false}\r\nPUB m 3\r\nabc\r\nPING\r\n")
            .unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "PONG");
    }
    a.publish(vec!["m".into()], b"from a node".to_vec())
        .unwrap();
    assert_eq!(
        events.message().await,
        ("m".into(), b"from a node".to_vec())
    );
    events.assert_empty();
    a.stop();
    b.stop();
}
