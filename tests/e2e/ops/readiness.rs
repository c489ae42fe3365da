//! `/readyz` while the token store comes and goes: a real PostgreSQL server
//! of the test's own, stopped and started under a running mist; a scribble
//! directory removed and put back.

use std::time::{Duration, Instant};

use mist_e2e::postgres::Postgres;
use mist_e2e::web::server_with_all_listeners;
use serde_json::Value;

use super::{get, ADMIN};

/// Polls `/readyz` until its status is `status`, within `within`; returns
/// the body and how long it took.
async fn await_readyz(addr: &str, status: u16, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let response = get(addr, "/readyz", &[]).await;
        if response.status == status {
            return (response.json(), started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "/readyz stayed {} ({}) for {within:?}, expected {status}",
            response.status,
            response.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_turns_503_while_postgres_is_down_and_back_to_200() {
    let database = Postgres::start_owned();
    let uri = database.database();
    let password = uri
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .and_then(|userinfo| userinfo.split(':').nth(1))
        .unwrap()
        .to_owned();
    let server = server_with_all_listeners(&["--authenticator", &uri, "--token", ADMIN]);
    let addr = server.addr("http");

    let (report, _) = await_readyz(&addr, 200, Duration::from_secs(10)).await;
    assert_eq!(report["ready"], true);
    assert_eq!(report["checks"]["authenticator"]["ready"], true, "{report}");

    database.stop();
    let (report, took) = await_readyz(&addr, 503, Duration::from_secs(5)).await;
    assert_eq!(report["ready"], false);
    assert_eq!(report["not_ready"], serde_json::json!(["authenticator"]));
    let error = report["checks"]["authenticator"]["error"].as_str().unwrap();
    assert!(error.contains("PostgreSQL"), "{error}");
    assert!(
        !report.to_string().contains(&password) && !report.to_string().contains(ADMIN),
        "no password or token in {report}"
    );
    println!("503 after {took:?}");
    // /healthz: the process still serves.
    assert_eq!(get(&addr, "/healthz", &[]).await.status, 200);
    // Probes hammering /readyz while the database is down are answered
    // without waiting on it each time (the answer is kept for a second).
    let started = Instant::now();
    let probes: Vec<_> = (0..50)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { get(&addr, "/readyz", &[]).await.status })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 503);
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    database.start();
    let (report, took) = await_readyz(&addr, 200, Duration::from_secs(15)).await;
    assert_eq!(report["not_ready"], serde_json::json!([]));
    println!("200 again after {took:?}");
}

#[tokio::test]
async fn readyz_names_a_scribble_directory_that_went_away() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("scribble://?db={}", dir.path().display());
    let server = server_with_all_listeners(&["--authenticator", &uri, "--token", ADMIN]);
    let addr = server.addr("http");
    await_readyz(&addr, 200, Duration::from_secs(10)).await;

    let tokens = dir.path().join("tokens");
    std::fs::remove_dir_all(&tokens).unwrap();
    let (report, _) = await_readyz(&addr, 503, Duration::from_secs(5)).await;
    assert!(
        report["checks"]["authenticator"]["error"]
            .as_str()
            .unwrap()
            .contains("tokens"),
        "{report}"
    );
    std::fs::create_dir(&tokens).unwrap();
    await_readyz(&addr, 200, Duration::from_secs(5)).await;
}
