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

#[test]
fn conns_over_websocket_reaches_every_idle_connection() {
    // Only a WebSocket listener: a connection speaking lines over plain
    // TCP would never finish its handshake here.
    let server = MistServer::start_with(&["--listeners", "ws://127.0.0.1:0"], 1);
    let pid = server.pid().to_string();
    let report = bench_json(&[
        "conns",
        "--websocket",
        "--host",
        &server.addr("ws"),
        "--json",
        "--subscribers",
        "200",
        "--server-pid",
        &pid,
    ]);
    check_complete(&report, 1, 200);
    assert_eq!(report["transport"], "websocket", "{report}");
    assert_eq!(report["memory"]["connections"], 200, "{report}");
    assert!(
        report["memory"]["kib_per_connection"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn fanout_over_websocket_delivers_everything() {
    let server = MistServer::start_with(&["--listeners", "ws://127.0.0.1:0,http://127.0.0.1:0"], 2);
    let fanout = bench_json(&[
        "fanout",
        "--websocket",
        "--host",
        &server.addr("ws"),
        "--json",
        "-n",
        "300",
        "--subscribers",
        "5",
    ]);
    check_complete(&fanout, 300, 1500);
    assert_eq!(fanout["transport"], "websocket", "{fanout}");
    // A ws:// URL carries its path: the http listener's WebSocket endpoint.
    let url = format!("ws://{}/subscribe/websocket", server.addr("http"));
    let pubsub = bench_json(&[
        "pubsub",
        "--host",
        &url,
        "--json",
        "-n",
        "200",
        "--subscribers",
        "2",
        "--rate",
        "2000",
    ]);
    check_complete(&pubsub, 200, 400);
    assert_eq!(pubsub["transport"], "websocket", "{pubsub}");
}

#[test]
fn a_token_is_presented_on_every_connection_and_a_wrong_one_fails_clearly() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,ws://127.0.0.1:0",
            "--authenticator",
            "memory://",
            "--token",
            "bench-admin",
        ],
        2,
    );
    for (host, websocket) in [(server.tcp(), false), (server.addr("ws"), true)] {
        let mut args = vec![
            "fanout",
            "--host",
            &host,
            "--token",
            "bench-admin",
            "--json",
            "-n",
            "100",
            "--subscribers",
            "3",
        ];
        if websocket {
            args.push("--websocket");
        }
        check_complete(&bench_json(&args), 100, 300);

        args[4] = "not-the-token";
        let output = bench(&args);
        assert!(!output.status.success());
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains("the broker refused auth"), "{err}");
    }
}

#[test]
fn source_addrs_take_turns_opening_connections() {
    let server = MistServer::start(&["--log-level", "DEBUG"]);
    let report = bench_json(&[
        "conns",
        "--host",
        &server.tcp(),
        "--json",
        "--subscribers",
        "40",
        "--source-addrs",
        "127.0.0.2,127.0.0.3",
    ]);
    check_complete(&report, 1, 40);
    // The broker logs each session's peer: every connection, the
    // publisher's too, came from one of the two addresses.
    server.wait_for_log("peer=127.0.0.2:");
    server.wait_for_log("peer=127.0.0.3:");
    let opened: Vec<String> = server
        .log()
        .lines()
        .filter(|l| l.contains("session opened"))
        .map(str::to_owned)
        .collect();
    let from = |ip: &str| {
        opened
            .iter()
            .filter(|l| l.contains(&format!("peer={ip}:")))
            .count()
    };
    assert_eq!(opened.len(), 41, "{opened:#?}");
    assert_eq!(from("127.0.0.2") + from("127.0.0.3"), 41, "{opened:#?}");
    assert!(
        from("127.0.0.2") >= 20 && from("127.0.0.3") >= 20,
        "{opened:#?}"
    );
}

#[test]
fn several_hosts_share_the_subscribers_and_publishers_in_turn() {
    // Two brokers that know nothing of each other: a subscriber hears only
    // the publisher on its own broker, so exactly half of the deliveries a
    // single broker would make arrive, which only round-robin gives.
    let (a, b) = (MistServer::start(&[]), MistServer::start(&[]));
    let hosts = format!("{},{}", a.tcp(), b.tcp());
    let report = bench_json(&[
        "pubsub",
        "--host",
        &hosts,
        "--json",
        "-n",
        "500",
        "--publishers",
        "2",
        "--subscribers",
        "4",
    ]);
    assert_eq!(report["host"], hosts.as_str(), "{report}");
    assert_eq!(report["messages_sent"], 1000, "{report}");
    assert_eq!(report["deliveries_expected"], 4000, "{report}");
    assert_eq!(report["delivered"], 2000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}

#[test]
fn connections_beyond_the_port_range_or_from_foreign_addresses_fail_before_dialling() {
    let server = MistServer::start(&[]);
    let output = bench(&["conns", "--host", &server.tcp(), "--subscribers", "100000"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--source-addrs"), "{err}");

    // 192.0.2.1 (TEST-NET) is no address of this machine: binding to it
    // fails at once and nothing is sent anywhere.
    let output = bench(&[
        "conns",
        "--host",
        &server.tcp(),
        "--subscribers",
        "2",
        "--source-addrs",
        "192.0.2.1",
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("from 192.0.2.1"), "{err}");

    for (host, needle) in [
        ("wss://127.0.0.1:1/", "not wss://"),
        ("127.0.0.1:1/x", "host:port"),
    ] {
        let output = bench(&["pubsub", "--host", host, "-n", "1"]);
        assert!(!output.status.success());
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(needle), "{host}: {err}");
    }
}

/// Runs `mist-compare run` against the debug `mist` with tiny sizes (one
/// round, 200 storm clients) and `extra`; returns its results.jsonl rows
/// and the table it printed. Panics if it fails or takes too long.
fn compare(extra: &[&str]) -> (Vec<Value>, String) {
    let out = tempfile::tempdir().unwrap();
    let mist = artifacts().mist();
    let child = Command::new(artifacts().dir.join("mist-compare"))
        .arg("run")
        .arg("--mist-bin")
        .arg(&mist)
        .args(["--runs", "1", "--fanout-msgs", "200", "--pair-msgs", "500"])
        .args(["--subs", "5", "--conns", "20", "--route-subs", "20"])
        .args(["--route-msgs", "200", "--paced-msgs", "100"])
        .args(["--storm-clients", "200", "--timeout", "20"])
        .args(extra)
        .arg("--out")
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mist-compare");
    let pid = child.id();
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let output = match wait.recv_timeout(TIMEOUT * 12) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("mist-compare {extra:?} did not finish in time");
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "mist-compare {extra:?} failed: {stderr}"
    );
    let rows: Vec<Value> = std::fs::read_to_string(out.path().join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(out.path().join("summary.md").is_file());
    (rows, String::from_utf8(output.stdout).unwrap())
}

/// The row of `target` and `scenario` (paced or not).
fn row_of<'a>(rows: &'a [Value], target: &str, scenario: &str, paced: bool) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["target"] == target && r["scenario"] == scenario && r.get("paced").is_some() == paced
        })
        .unwrap_or_else(|| panic!("no {target} {scenario} row in {rows:#?}"))
}

/// Every throughput scenario delivered all of it, with a rate and a
/// latency; the conns figure is there; every storm client subscribed.
fn check_target(rows: &[Value], target: &str, transport: &str) {
    for (scenario, paced, delivered) in [
        ("fanout", false, 1000),
        ("pair", false, 500),
        ("fanout", true, 1000),
        ("routing", false, 200),
    ] {
        if target == "raw" && scenario == "routing" {
            continue;
        }
        let row = row_of(rows, target, scenario, paced);
        assert_eq!(row["transport"], transport, "{row}");
        assert_eq!(row["delivered"], delivered, "{row}");
        assert_eq!(row["delivered_fraction"], 1.0, "{row}");
        assert!(row["delivered_per_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["lat_p99_us"].as_f64().unwrap() > 0.0, "{row}");
    }
    if target == "raw" {
        return;
    }
    let row = row_of(rows, target, "conns", false);
    assert_eq!(row["conns"], 20, "{row}");
    assert!(row["kib_per_conn"].as_f64().is_some(), "{row}");

    let row = row_of(rows, target, "storm", false);
    assert_eq!(row["transport"], transport, "{row}");
    assert_eq!(row["clients"], 200, "{row}");
    assert_eq!(row["subscribed"], 200, "{row}");
    assert_eq!(row["errors"], 0, "{row}");
    assert!(row["storm_ms"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["subscribe_p99_ms"].as_f64().unwrap() > 0.0, "{row}");
    // The pair published throughout (at 5,000 msgs/s, 500 ms before the
    // storm alone) and every message arrived.
    assert!(row["msgs"].as_u64().unwrap() >= 2000, "{row}");
    assert_eq!(row["delivered"], row["msgs"], "{row}");
    assert_eq!(row["delivered_fraction"], 1.0, "{row}");
    assert!(row["lat_samples"].as_u64().unwrap() > 0, "{row}");
    for key in ["lat_p50_us", "lat_p99_us", "base_p50_us", "base_p99_us"] {
        assert!(row[key].as_f64().unwrap() > 0.0, "{key}: {row}");
    }
}

/// `mist-compare run` with tiny sizes: every target it starts (Mist,
/// nats-server, redis-server, the raw relay) answers every scenario, all of
/// it delivered, every storm client subscribed, and the table names every
/// figure.
#[test]
fn the_comparison_harness_drives_every_target_through_every_scenario() {
    let (rows, table) = compare(&[]);
    for target in ["mist", "nats", "redis", "raw"] {
        check_target(&rows, target, "plain");
    }
    assert!(rows
        .iter()
        .all(|r| r["target"] != "raw"
            || !matches!(r["scenario"].as_str(), Some("routing" | "storm"))));
    for needle in [
        "| scenario | mist | nats-server | redis-server | raw relay | mist / nats |",
        "| fanout 1→5, flood, delivered msgs/s |",
        "| routing 1→20 topics, flood, delivered msgs/s |",
        "| idle subscribed connection, broker RSS (20 on a fresh broker) |",
        "| storm: 200 clients connect and subscribe at once, ms until all are subscribed |",
        "| storm: the same pair, latency p50 / p99 during the storm |",
        "Every run delivered 100% of its messages.",
        "Every storm client connected and subscribed.",
    ] {
        assert!(table.contains(needle), "no {needle:?} in:\n{table}");
    }
}

/// Checks a `--transport tls` or `ws` run: Mist and nats-server only,
/// every scenario over that transport, all of it delivered.
fn check_transport(transport: &str, heading: &str) {
    let (rows, table) = compare(&["--transport", transport]);
    for target in ["mist", "nats"] {
        check_target(&rows, target, transport);
    }
    assert!(
        rows.iter()
            .all(|r| r["target"] == "mist" || r["target"] == "nats"),
        "{rows:#?}"
    );
    for needle in [
        heading,
        "| scenario | mist | nats-server | mist / nats |",
        "| storm: 200 clients connect and subscribe at once, ms until all are subscribed |",
        "Every run delivered 100% of its messages.",
        "Every storm client connected and subscribed.",
    ] {
        assert!(
            table.contains(needle),
            "{transport}: no {needle:?} in:\n{table}"
        );
    }
}

/// `mist-compare run --transport tls`: Mist's tls:// listener beside
/// nats-server --tls, one certificate the harness made.
#[test]
fn the_comparison_harness_runs_over_tls() {
    check_transport("tls", "Over TLS:");
}

/// `mist-compare run --transport ws`: Mist's ws:// listener beside
/// nats-server's websocket listener.
#[test]
fn the_comparison_harness_runs_over_websocket() {
    check_transport("ws", "Over WebSocket:");
}

/// Starts `mist bench ARGS` in the background (a holder).
fn bench_child(args: &[&str]) -> std::process::Child {
    Command::new(artifacts().mist())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mist bench")
}

/// Waits for a holder's report; panics if it takes longer than the test
/// timeout.
fn report_of(child: std::process::Child) -> Value {
    let pid = child.id();
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let output = match wait.recv_timeout(TIMEOUT * 3) {
        Ok(output) => output.expect("mist bench output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("mist bench --hold did not finish in time");
        }
    };
    assert!(
        output.status.success(),
        "mist bench --hold failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until `path` exists; panics after the test timeout.
fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT * 3;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path:?} never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Two processes hold connections, a third publishes one message: each
/// holder times it from the publisher's send stamp (one wall clock) and
/// reports its arrivals whole, as a histogram a script can merge.
#[test]
fn held_connections_in_several_processes_time_one_message_from_another() {
    let server = MistServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut holders = Vec::new();
    for (i, (count, from)) in [("30", "127.0.0.2"), ("20", "127.0.0.3")]
        .iter()
        .enumerate()
    {
        let ready = dir.path().join(format!("ready-{i}"));
        let child = bench_child(&[
            "conns",
            "--hold",
            "--host",
            &server.tcp(),
            "--subscribers",
            count,
            "--source-addrs",
            from,
            "--ready-file",
            ready.to_str().unwrap(),
            "--duration",
            "30",
            "--json",
        ]);
        holders.push((child, ready, count.parse::<u64>().unwrap()));
    }
    for (_, ready, count) in &holders {
        assert_eq!(wait_for_file(ready), format!("ready {count}\n"));
    }
    let publisher = bench_json(&[
        "conns",
        "--host",
        &server.tcp(),
        "--subscribers",
        "0",
        "--json",
    ]);
    assert_eq!(publisher["messages_sent"], 1, "{publisher}");
    for (child, _, count) in holders {
        let report = report_of(child);
        assert_eq!(report["subscribers"], count, "{report}");
        assert_eq!(report["deliveries_expected"], count, "{report}");
        assert_eq!(report["delivered"], count, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        // Timed from the other process's stamp: positive, and well under
        // the run (a clock not shared would give nonsense either way).
        let max = report["latency"]["max_us"].as_u64().unwrap();
        assert!(max > 0 && max < 30_000_000, "{report}");
        assert!(
            (report["delivery_seconds"].as_f64().unwrap() * 1e6 - max as f64).abs() < 1.0,
            "{report}"
        );
        let histogram = report["latency_histogram_us"].as_array().unwrap();
        let total: u64 = histogram.iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(total, count, "{report}");
    }
}

/// A holder whose message never comes gives up after `--duration` and
/// says how many got nothing.
#[test]
fn held_connections_give_up_after_the_duration() {
    let server = MistServer::start(&[]);
    let child = bench_child(&[
        "conns",
        "--hold",
        "--host",
        &server.tcp(),
        "--subscribers",
        "5",
        "--duration",
        "0.3",
        "--json",
    ]);
    let report = report_of(child);
    assert_eq!(report["deliveries_expected"], 5, "{report}");
    assert_eq!(report["delivered"], 0, "{report}");

    let output = bench(&["pubsub", "--hold", "--host", &server.tcp()]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("use it with `conns`"), "{err}");
}
