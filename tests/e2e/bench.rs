//! `mist bench` run briefly against a real server: the figures it reports
//! must add up to what the scenario sent. No timing is asserted.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use mist_e2e::{artifacts, MistServer, TIMEOUT};
use serde_json::Value;

/// Runs `mist bench ARGS`; panics if it takes longer than the test timeout.
fn bench(args: &[&str]) -> Output {
    let child = Command::new(artifacts().mist())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mist bench");
    let pid = child.id();
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match wait.recv_timeout(TIMEOUT * 3) {
        Ok(output) => output.expect("mist bench output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("mist bench {args:?} did not finish in time");
        }
    }
}

fn bench_json(args: &[&str]) -> Value {
    let output = bench(args);
    assert!(
        output.status.success(),
        "mist bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn check_complete(report: &Value, sent: u64, deliveries: u64) {
    assert_eq!(report["messages_sent"], sent, "{report}");
    assert_eq!(report["deliveries_expected"], deliveries, "{report}");
    // Subscribers that keep up lose nothing: the queues are far larger
    // than these runs.
    assert_eq!(report["delivered"], deliveries, "{report}");
    assert_eq!(report["delivered_fraction"], 1.0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let latency = &report["latency"];
    let (p50, p99, max) = (
        latency["p50_us"].as_u64().unwrap(),
        latency["p99_us"].as_u64().unwrap(),
        latency["max_us"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{report}");
    assert!(
        report["delivered_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn pubsub_counts_every_delivery_of_every_publisher() {
    let server = MistServer::start(&[]);
    let report = bench_json(&[
        "pubsub",
        "--host",
        &server.tcp(),
        "--json",
        "-n",
        "2000",
        "--publishers",
        "2",
        "--subscribers",
        "3",
        "--size",
        "64",
    ]);
    assert_eq!(report["scenario"], "pubsub");
    assert_eq!(report["payload_bytes"], 64);
    check_complete(&report, 4000, 12_000);
}

#[test]
fn fanout_and_routing_deliver_what_their_tags_match() {
    let server = MistServer::start(&[]);
    let fanout = bench_json(&[
        "fanout",
        "--host",
        &server.tcp(),
        "--json",
        "-n",
        "500",
        "--subscribers",
        "20",
    ]);
    check_complete(&fanout, 500, 10_000);
    // Each message matches exactly one room's subscriber.
    let routing = bench_json(&[
        "routing",
        "--host",
        &server.tcp(),
        "--json",
        "-n",
        "1000",
        "--subscribers",
        "50",
    ]);
    check_complete(&routing, 1000, 1000);
}

#[test]
fn paced_publishing_still_delivers_everything() {
    let server = MistServer::start(&[]);
    let report = bench_json(&[
        "fanout",
        "--host",
        &server.tcp(),
        "--json",
        "-n",
        "200",
        "--subscribers",
        "2",
        "--rate",
        "2000",
    ]);
    check_complete(&report, 200, 400);
}

#[test]
fn conns_reaches_every_idle_connection_and_reads_broker_memory() {
    let server = MistServer::start(&[]);
    let pid = server.pid().to_string();
    let report = bench_json(&[
        "conns",
        "--host",
        &server.tcp(),
        "--json",
        "--subscribers",
        "300",
        "--server-pid",
        &pid,
    ]);
    check_complete(&report, 1, 300);
    assert_eq!(report["memory"]["connections"], 300, "{report}");
    assert!(
        report["memory"]["kib_per_connection"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn the_text_report_names_the_figures() {
    let server = MistServer::start(&[]);
    let output = bench(&[
        "fanout",
        "--host",
        &server.tcp(),
        "-n",
        "100",
        "--subscribers",
        "3",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "mist bench fanout",
        "published",
        "delivered",
        "300 of 300 (100.00%)",
        "p99",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}

#[test]
fn an_unreachable_broker_or_bad_flags_fail_clearly() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = bench(&["pubsub", "--host", &format!("127.0.0.1:{port}"), "-n", "1"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");

    let server = MistServer::start(&[]);
    let output = bench(&["pubsub", "--host", &server.tcp(), "--size", "8"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--size must be at least"), "{err}");
}
