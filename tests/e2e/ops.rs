//! Operating Mist (SPEC §9): `/metrics` checked by promtool and scraped by
//! a real Prometheus, `/healthz` and `/readyz` (with a real PostgreSQL
//! stopped and started under it), the metrics-only listener, JSON logs,
//! systemd's readiness notification, shell completions and the man page.
//! The dashboard is in `ops/dashboard.rs`.

mod dashboard;
mod readiness;

use std::time::{Duration, Instant};

use base64::Engine as _;
use mist_e2e::prometheus::{promtool, Prometheus};
use mist_e2e::web::{http, server_with_all_listeners, HttpResponse};
use mist_e2e::{artifacts, Client, MistServer, TIMEOUT};
use serde_json::{json, Value};

const ADMIN: &str = "ops-admin-5d1c";

/// `GET path` on `addr` with `headers`.
async fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http(addr, "GET", path, headers, b"").await
}

/// The value of the sample `series` (name with its labels, as written) in
/// a metrics body.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Scrapes `addr` until `series` satisfies `test`; panics with the last
/// body after the timeout.
async fn await_sample(
    addr: &str,
    headers: &[(&str, &str)],
    series: &str,
    test: impl Fn(f64) -> bool,
) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let body = get(addr, "/metrics", headers).await.text();
        if sample(&body, series).is_some_and(&test) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never got there; last scrape:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address after `needle` in the server's log (`... on http://ADDR`).
fn logged_addr(server: &MistServer, needle: &str) -> String {
    let line = server.wait_for_log(needle);
    // Human or JSON lines: the address ends at a space or a quote.
    let uri = line.split(needle).nth(1).unwrap();
    let addr = uri.split_once("://").unwrap().1;
    addr.split(|c: char| c == '"' || c.is_whitespace())
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn metrics_count_what_happened_and_pass_promtool() {
    let server = server_with_all_listeners(&[]);
    let http_addr = server.addr("http");

    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber.subscribe(&["m"]).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    for i in 0..25 {
        publisher.publish(&["m", "x"], &format!("n{i}")).await;
    }
    for _ in 0..25 {
        subscriber.recv().await;
    }

    let response = get(&http_addr, "/metrics", &[]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = response.text();
    let (ok, out) = promtool(&["check", "metrics"], body.as_bytes());
    assert!(ok, "promtool check metrics failed:\n{out}\n{body}");

    assert_eq!(
        sample(&body, r#"mist_connections{listener="tcp"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, r#"mist_connections{listener="ws"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&body, "mist_subscriptions"), Some(1.0));
    assert_eq!(sample(&body, "mist_messages_received_total"), Some(25.0));
    assert_eq!(sample(&body, "mist_messages_delivered_total"), Some(25.0));
    assert_eq!(sample(&body, "mist_messages_dropped_total"), Some(0.0));
    for series in [
        "mist_slow_consumers_disconnected_total",
        "mist_queue_bytes",
        "mist_auth_failures_total",
        "mist_process_cpu_seconds_total",
        "mist_process_open_fds",
        "mist_process_max_fds",
        "mist_process_start_time_seconds",
    ] {
        assert!(sample(&body, series).is_some(), "no {series} in\n{body}");
    }
    assert!(body.contains("# TYPE mist_plugin_errors_total counter"));
    let rss = sample(&body, "mist_process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6, "resident memory {rss}");
    let latency = sample(&body, "mist_publish_latency_seconds_count").unwrap();
    assert!(latency >= 1.0, "no publish latency observed:\n{body}");
    assert_eq!(
        sample(&body, r#"mist_publish_latency_seconds_bucket{le="+Inf"}"#),
        Some(latency)
    );
}

#[tokio::test]
async fn under_an_authenticator_metrics_need_the_server_token() {
    let server = server_with_all_listeners(&["--authenticator", "memory://", "--token", ADMIN]);
    let addr = server.addr("http");
    let mut admin = Client::connect(&server.tcp()).await;
    admin.send(json!({"command": "auth", "data": ADMIN})).await;
    admin
        .send(json!({"command": "register", "tags": ["a"], "data": "user-token"}))
        .await;
    admin.sync().await;

    let basic = |user_and_token: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_and_token)
        )
    };
    let refused: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("X-AUTH-TOKEN", "wrong".into())],
        vec![("X-AUTH-TOKEN", "user-token".into())],
        vec![("Authorization", "Bearer wrong".into())],
        vec![("Authorization", basic("admin:wrong"))],
        vec![("Authorization", "Basic %%%not-base64".into())],
        vec![("Authorization", format!("Bearer {}", "x".repeat(60_000)))],
    ];
    for headers in &refused {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = get(&addr, "/metrics", &headers).await;
        assert!(
            matches!(response.status, 401 | 431),
            "{headers:?} → {} {}",
            response.status,
            response.text()
        );
        assert!(!response.text().contains("mist_"), "no figures leak");
        if response.status == 401 {
            assert!(response.json()["error"].as_str().is_some());
            assert!(!response.text().contains("wrong") && !response.text().contains("user-token"));
        }
    }
    let admin_basic = basic(&format!("prometheus:{ADMIN}"));
    let bearer = format!("Bearer {ADMIN}");
    for headers in [
        vec![("X-AUTH-TOKEN", ADMIN)],
        vec![("Authorization", bearer.as_str())],
        vec![("Authorization", admin_basic.as_str())],
    ] {
        let response = get(&addr, "/metrics", &headers).await;
        assert_eq!(response.status, 200, "{headers:?}: {}", response.text());
        assert!(sample(&response.text(), "mist_subscriptions").is_some());
    }
    // /healthz and /readyz are for probes that hold no token.
    assert_eq!(get(&addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(&addr, "/readyz", &[]).await.status, 200);
}

#[tokio::test]
async fn failed_auths_are_counted() {
    let server = server_with_all_listeners(&["--authenticator", "memory://", "--token", ADMIN]);
    let addr = server.addr("http");
    let mut stranger = Client::connect(&server.tcp()).await;
    let reply = stranger
        .request(json!({"command": "auth", "data": "not-a-token"}))
        .await;
    assert!(reply.get("error").is_some(), "{reply}");
    await_sample(
        &addr,
        &[("X-AUTH-TOKEN", ADMIN)],
        "mist_auth_failures_total",
        |n| n >= 1.0,
    )
    .await;
}

/// A subscriber that never reads, and 16 MiB published to it: more than
/// its queue and the kernel's socket buffers hold.
async fn flood_a_sleeper(server: &MistServer) -> Client {
    let mut sleeper = Client::connect(&server.tcp()).await;
    sleeper.subscribe(&["flood"]).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    let data = "x".repeat(4096);
    for _ in 0..4000 {
        publisher.publish(&["flood"], &data).await;
    }
    publisher.sync().await;
    sleeper
}

#[tokio::test]
async fn drops_and_queued_bytes_are_counted() {
    let server = server_with_all_listeners(&["--max-queue-bytes", "64KiB"]);
    let addr = server.addr("http");
    let _sleeper = flood_a_sleeper(&server).await;
    await_sample(&addr, &[], "mist_messages_dropped_total", |n| n > 0.0).await;
    // Once a flood stops, the kernel's socket buffers may take in what was
    // queued; while it goes on, the sleeper's queue holds bytes.
    let flood = keep_flooding(&server).await;
    await_sample(&addr, &[], "mist_queue_bytes", |b| b > 0.0).await;
    flood.abort();
}

/// Publishes 4 KiB messages to `["flood"]` until aborted.
async fn keep_flooding(server: &MistServer) -> tokio::task::JoinHandle<()> {
    let mut publisher = Client::connect(&server.tcp()).await;
    tokio::spawn(async move {
        let data = "x".repeat(4096);
        loop {
            for _ in 0..100 {
                publisher.publish(&["flood"], &data).await;
            }
            publisher.sync().await;
        }
    })
}

#[tokio::test]
async fn slow_consumers_are_counted() {
    let server = server_with_all_listeners(&[
        "--max-queue-bytes",
        "64KiB",
        "--slow-consumer-timeout",
        "1s",
    ]);
    let addr = server.addr("http");
    let _sleeper = flood_a_sleeper(&server).await;
    // A subscriber is slow while it keeps losing deliveries: a full queue
    // that nothing more is sent to costs no more than --max-queue-bytes and
    // loses nothing, so the flood goes on until the broker gives up on it.
    let flood = keep_flooding(&server).await;
    await_sample(&addr, &[], "mist_slow_consumers_disconnected_total", |n| {
        n >= 1.0
    })
    .await;
    flood.abort();
}

#[tokio::test]
async fn the_metrics_listener_serves_the_operators_endpoints_only() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0",
            "--metrics-listener",
            "http://127.0.0.1:0",
            "--header-timeout",
            "1s",
        ],
        1,
    );
    let addr = logged_addr(&server, "serving metrics and health on ");
    assert_eq!(server.listeners.len(), 1, "{:?}", server.listeners);
    let metrics = get(&addr, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        sample(&metrics.text(), r#"mist_connections{listener="tcp"}"#),
        Some(0.0)
    );
    assert_eq!(get(&addr, "/healthz", &[]).await.text(), "ok\n");
    let ready = get(&addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let report = ready.json();
    assert_eq!(report["ready"], true);
    assert!(
        report["checks"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("listener tcp://")),
        "{report}"
    );
    for path in ["/ping", "/subscribe?tags=a", "/subscribe/websocket"] {
        let response = get(&addr, path, &[]).await;
        assert_eq!(response.status, 404, "{path}: {}", response.text());
    }
    let publish = http(&addr, "POST", "/publish", &[], br#"{"tags":["a"]}"#).await;
    assert_eq!(publish.status, 404);
    assert_eq!(http(&addr, "POST", "/metrics", &[], b"").await.status, 405);

    // A client that sends half a request is closed after --header-timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a half-sent request is never closed");
}

#[test]
fn a_bad_metrics_listener_stops_the_start_with_a_clear_error() {
    let (status, log) = MistServer::run_to_exit(&[
        "--listeners",
        "tcp://127.0.0.1:0",
        "--metrics-listener",
        "tcp://127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(log.contains("--metrics-listener"), "{log}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let uri = format!("http://127.0.0.1:{port}");
    let (status, log) = MistServer::run_to_exit(&[
        "--listeners",
        "tcp://127.0.0.1:0",
        "--metrics-listener",
        &uri,
    ]);
    assert!(!status.success());
    assert!(log.contains(&uri) && log.contains("cannot"), "{log}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0,bogus://127.0.0.1:1",
            "--log-format",
            "json",
            "--log-level",
            "DEBUG",
        ],
        1,
    );
    // Find the TCP listener in the JSON log.
    let line = server.wait_for_log("listening on tcp://");
    let entry: Value = serde_json::from_str(&line).unwrap();
    let tcp = entry["message"]
        .as_str()
        .unwrap()
        .strip_prefix("listening on tcp://")
        .unwrap()
        .to_owned();
    let mut client = Client::connect(&tcp).await;
    client.request(json!({"command": "ping"})).await;
    drop(client);
    server.wait_for_log("skipping listener bogus://");
    assert!(server.terminate().success());

    let log = server.log();
    let mut levels = std::collections::BTreeSet::new();
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(entry[key].is_string(), "no {key} in {line}");
        }
        assert!(entry["fields"].is_object(), "no fields in {line}");
        levels.insert(entry["level"].as_str().unwrap().to_owned());
    }
    assert!(
        levels.contains("INFO") && levels.contains("ERROR"),
        "{levels:?}"
    );
    assert!(log.contains(r#""message":"shutting down"#), "{log}");
}

#[test]
fn the_default_log_stays_human_readable() {
    let server = MistServer::start(&[]);
    let line = server.wait_for_log("listening on tcp://");
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(line.contains("INFO"), "{line}");
}

#[test]
fn systemd_hears_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    // Generous: the whole suite may be starting servers at once.
    socket.set_read_timeout(Some(3 * TIMEOUT)).unwrap();
    let mut child = std::process::Command::new(artifacts().mist())
        .args(["--server", "--listeners", "tcp://127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let mut buf = [0; 256];
    let n = socket.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no READY=1 from mist ({e}; exited: {:?}); its log:\n{}",
            child.try_wait(),
            log()
        )
    });
    assert_eq!(&buf[..n], b"READY=1\n");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let n = socket.recv(&mut buf).expect("no STOPPING=1 from mist");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    assert!(child.wait().unwrap().success());
}

fn mist_output(args: &[&str]) -> String {
    let output = std::process::Command::new(artifacts().mist())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mist {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let bash = mist_output(&["completions", "bash"]);
    assert!(bash.contains("--metrics-listener") && bash.contains("--log-format"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mist.bash");
    std::fs::write(&script, &bash).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash rejects the completion script: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Sourced, it completes `mist --metr` to the flag.
    let completed = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=(mist --metr); COMP_CWORD=1; COMP_LINE='mist --metr'; \
             COMP_POINT=${{#COMP_LINE}}; _mist mist --metr mist; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&completed.stdout);
    assert!(words.lines().any(|w| w == "--metrics-listener"), "{words}");

    assert!(mist_output(&["completions", "zsh"]).starts_with("#compdef mist"));
    assert!(mist_output(&["completions", "fish"]).contains("metrics-listener"));
    let man = mist_output(&["manpage"]);
    assert!(man.contains(".TH mist 1"), "{}", &man[..man.len().min(300)]);
    assert!(man.contains("metrics\\-listener"));
    let status = std::process::Command::new(artifacts().mist())
        .args(["completions", "tcsh-ish"])
        .output()
        .unwrap();
    assert!(!status.status.success());
}

#[tokio::test]
async fn prometheus_scrapes_mist_and_loads_the_shipped_alert_rules() {
    let server = MistServer::start_with(
        &[
            "--listeners",
            "tcp://127.0.0.1:0",
            "--metrics-listener",
            "http://127.0.0.1:0",
            "--authenticator",
            "memory://",
            "--token",
            ADMIN,
        ],
        1,
    );
    let metrics = logged_addr(&server, "serving metrics and health on ");
    let _a = Client::connect(&server.tcp()).await;
    let _b = Client::connect(&server.tcp()).await;

    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/prometheus/mist-alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], b"");
    assert!(ok, "promtool rejects the shipped rules:\n{out}");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/prometheus/prometheus.yml");
    let (ok, out) = promtool(&["check", "config", example.to_str().unwrap()], b"");
    assert!(ok, "promtool rejects the shipped scrape config:\n{out}");

    let prometheus = Prometheus::start(&metrics, Some(ADMIN), &[rules]).await;
    let deadline = Instant::now() + mist_e2e::prometheus::PROMETHEUS_TIMEOUT;
    loop {
        let value = prometheus
            .value(r#"mist_connections{job="mist",listener="tcp"}"#)
            .await;
        if value == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never read mist_connections 2 (last {value:?}); targets: {}\nlog:\n{}",
            prometheus.api("/api/v1/targets").await,
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = prometheus.value(r#"up{job="mist"}"#).await;
    assert_eq!(up, Some(1.0));
    let groups = prometheus.api("/api/v1/rules").await;
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(rules.len() >= 4, "{groups}");
    for rule in rules {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    assert!(prometheus.dir().exists());
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[tokio::test]
async fn the_example_config_starts_a_server() {
    let config = repo_file("dist/mist.yaml");
    let server = MistServer::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listeners",
            "tcp://127.0.0.1:0",
            "--metrics-listener",
            "http://127.0.0.1:0",
        ],
        1,
    );
    let addr = logged_addr(&server, "serving metrics and health on ");
    assert_eq!(get(&addr, "/readyz", &[]).await.status, 200);
    // The example asks for JSON logs.
    let line = server.wait_for_log("serving metrics and health on ");
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["level"], "INFO");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze() {
    let unit = std::fs::read_to_string(repo_file("dist/mist.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("NoNewPrivileges=yes"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mist.service");
    let mist = artifacts().mist();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/mist", mist.to_str().unwrap()),
    )
    .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/test installs Debian's systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "systemd-analyze verify:\n{said}");
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("mist.service"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");

    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for mist.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{report}{}",
                String::from_utf8_lossy(&security.stderr)
            )
        });
    assert!(level <= 2.0, "exposure {level}:\n{report}");
}
