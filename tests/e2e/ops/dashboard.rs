//! The dashboard at `GET /dashboard`, in headless Chromium: it loads with
//! no console error, its charts move when traffic flows, and its console's
//! publish reaches a TCP subscriber (and a TCP publish reaches its console);
//! no request it makes carries the token in its URL.

use std::time::Duration;

use base64::Engine as _;
use mist_e2e::browser::BROWSER_TIMEOUT;
use mist_e2e::client::delivery;
use mist_e2e::devtools::DevTools;
use mist_e2e::web::server_with_all_listeners;
use mist_e2e::Client;
use serde_json::json;

use super::{get, ADMIN};

#[tokio::test]
async fn the_dashboard_is_protected_like_the_metrics() {
    let server = server_with_all_listeners(&["--authenticator", "memory://", "--token", ADMIN]);
    let addr = server.addr("http");
    let refused = get(&addr, "/dashboard", &[]).await;
    assert_eq!(refused.status, 401);
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "a browser is asked for the token: {:?}",
        refused.headers
    );
    assert!(!refused.text().contains("<canvas"));
    let wrong = get(&addr, "/dashboard", &[("X-AUTH-TOKEN", "\"><script>")]).await;
    assert_eq!(wrong.status, 401);

    let page = get(&addr, "/dashboard", &[("X-AUTH-TOKEN", ADMIN)]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("default-src 'none'")));
    assert!(page.text().contains(&format!(r#"content="{ADMIN}""#)));

    let root = get(&addr, "/", &[]).await;
    assert_eq!(root.status, 303);
    assert_eq!(root.header("location"), Some("/dashboard"));
    let script = get(&addr, "/dashboard/app.js", &[]).await;
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/javascript")));
}

#[tokio::test]
async fn the_dashboard_shows_live_figures_and_its_console_publishes() {
    let server = server_with_all_listeners(&["--authenticator", "memory://", "--token", ADMIN]);
    let addr = server.addr("http");
    let browser = DevTools::launch().await;
    // A person types the token at the browser's prompt; credentials in
    // the URL answer that prompt the same way.
    browser
        .navigate(&format!("http://operator:{ADMIN}@{addr}/dashboard"))
        .await;
    browser
        .wait_for(
            "document.readyState === 'complete' && window.mist && window.mist.history.time.length >= 2",
            "the page polls the metrics",
            BROWSER_TIMEOUT,
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('ws-state').textContent === 'open'",
            "the console's WebSocket opens",
            BROWSER_TIMEOUT,
        )
        .await;
    let quiet_chart = browser
        .eval("document.getElementById('chart-messages').toDataURL()")
        .await;

    // Traffic: one subscriber, a burst of publishes.
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber
        .send(json!({"command": "auth", "data": ADMIN}))
        .await;
    subscriber.subscribe(&["load"]).await;
    let mut publisher = Client::connect(&server.tcp()).await;
    publisher
        .send(json!({"command": "auth", "data": ADMIN}))
        .await;
    for i in 0..500 {
        publisher.publish(&["load"], &format!("m{i}")).await;
    }
    publisher.sync().await;
    browser
        .wait_for(
            "Math.max(...window.mist.history.in) > 0 && Math.max(...window.mist.history.out) > 0",
            "the message rates rise",
            BROWSER_TIMEOUT,
        )
        .await;
    browser
        .wait_for(
            "window.mist.history.connections.tcp && window.mist.history.connections.tcp.at(-1) >= 2",
            "the TCP connections show",
            BROWSER_TIMEOUT,
        )
        .await;
    let busy_chart = browser
        .eval("document.getElementById('chart-messages').toDataURL()")
        .await;
    assert_ne!(quiet_chart, busy_chart, "the messages chart did not move");
    let shown = browser
        .eval("document.getElementById('connections').textContent")
        .await;
    assert!(
        shown.as_str().and_then(|s| s.parse::<u64>().ok()) >= Some(2),
        "{shown}"
    );

    // The console publishes to a TCP subscriber.
    assert_eq!(subscriber.sync().await.len(), 500, "the burst arrived");
    subscriber.subscribe(&["console"]).await;
    browser
        .eval(
            "document.getElementById('publish-tags').value = 'console,browser';
             document.getElementById('publish-data').value = 'from the browser';
             document.querySelector('#publish-form button').click(); true",
        )
        .await;
    let got = subscriber.recv().await;
    assert_eq!(got, delivery(&["console", "browser"], "from the browser"));

    // And subscribes: a TCP publish shows in its log.
    browser
        .eval(
            "document.getElementById('subscribe-tags').value = 'to-page';
             document.querySelector('#subscribe-form button').click(); true",
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('subscribed').textContent.includes('to-page')",
            "the console's subscription is live",
            BROWSER_TIMEOUT,
        )
        .await;
    publisher.publish(&["to-page", "x"], "hello page").await;
    browser
        .wait_for(
            "document.getElementById('log').textContent.includes('hello page')",
            "the console shows the delivery",
            BROWSER_TIMEOUT,
        )
        .await;

    tokio::time::sleep(Duration::from_millis(1200)).await; // one more poll, drawn
    let shot = mist_e2e::artifacts()
        .dir
        .join("test-artifacts")
        .join("dashboard.png");
    browser.screenshot(&shot).await;
    println!("dashboard screenshot: {}", shot.display());
    let errors = browser.errors();
    assert!(
        errors.is_empty(),
        "the page logged errors: {errors:#?}\nChromium's log:\n{}",
        browser.log()
    );
}

#[tokio::test]
async fn no_request_of_the_dashboard_carries_the_token_in_its_url() {
    let server = server_with_all_listeners(&["--authenticator", "memory://", "--token", ADMIN]);
    let addr = server.addr("http");
    let browser = DevTools::launch().await;
    // Every request and WebSocket the page opens, as Chromium reports them.
    browser.call("Network.enable", json!({})).await;
    // What a browser sends once a person has typed the token at its
    // prompt: a Basic `Authorization` header, the address as it was typed.
    // (Credentials typed into the address would be part of every URL the
    // page's relative links resolve to, the browser's doing.)
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("operator:{ADMIN}"));
    browser
        .call(
            "Network.setExtraHTTPHeaders",
            json!({"headers": {"Authorization": format!("Basic {basic}")}}),
        )
        .await;
    let page = format!("http://{addr}/dashboard");
    browser.navigate(&page).await;
    browser
        .wait_for(
            "document.getElementById('ws-state').textContent === 'open' \
             && window.mist && window.mist.history.time.length >= 2",
            "the console's WebSocket opens and the metrics are polled",
            BROWSER_TIMEOUT,
        )
        .await;

    // The console is authenticated all the same: under an authenticator,
    // only the server token may publish these tags.
    let mut subscriber = Client::connect(&server.tcp()).await;
    subscriber
        .send(json!({"command": "auth", "data": ADMIN}))
        .await;
    subscriber.subscribe(&["no-url"]).await;
    browser
        .eval(
            "document.getElementById('publish-tags').value = 'no-url';
             document.getElementById('publish-data').value = 'authenticated';
             document.querySelector('#publish-form button').click(); true",
        )
        .await;
    assert_eq!(
        subscriber.recv().await,
        delivery(&["no-url"], "authenticated")
    );

    let sockets: Vec<String> = browser
        .events("Network.webSocketCreated")
        .iter()
        .filter_map(|e| e["url"].as_str().map(str::to_owned))
        .collect();
    let requests: Vec<String> = browser
        .events("Network.requestWillBeSent")
        .iter()
        .filter_map(|e| e["request"]["url"].as_str().map(str::to_owned))
        .collect();
    assert!(
        sockets
            .iter()
            .any(|url| url.contains("/subscribe/websocket")),
        "the console's WebSocket was seen: {sockets:?}"
    );
    for path in ["/metrics", "/readyz", "/dashboard/app.js"] {
        assert!(
            requests.iter().any(|url| url.contains(path)),
            "{path} was seen: {requests:?}"
        );
    }
    for url in sockets.iter().chain(&requests) {
        assert!(!url.contains(ADMIN), "the token is in the URL {url}");
    }
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
}
