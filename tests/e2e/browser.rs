//! The seed's JavaScript example, run by a real browser: headless Chromium
//! opens a page whose script connects with the browser's own `WebSocket` to
//! `ws://…/subscribe/websocket?x-auth-token=token` on mist's *HTTP* port,
//! exactly as the seed's README does, and reports what it receives.

use mist_e2e::browser::{percent_decode, Chromium, PageServer};
use mist_e2e::client::delivery;
use mist_e2e::web::server_with_all_listeners as server;
use mist_e2e::Client;
use serde_json::Value;

/// The seed's snippet, made to run unattended: it subscribes, uses a ping as
/// the barrier that the subscription is live, lists, and fetches `/ready`;
/// every later message is fetched back as `/got?data=<the frame>`.
pub(crate) const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>mist</title></head><body><script>
// connect the websocket
var ws = new WebSocket("ws://MIST_HTTP/subscribe/websocket?x-auth-token=token");
var ready = false;
// One report at a time, so that they arrive in the order they were made.
var reports = Promise.resolve();
var report = function (path, text) {
  reports = reports.then(function () {
    return fetch(path + "?data=" + encodeURIComponent(text));
  });
};
ws.onopen = function () {
  // subscribe
  ws.send(JSON.stringify({"command": "subscribe", "tags": ["hello", "world"]}));
  // ping
  ws.send(JSON.stringify({"command": "ping"}));
};
// handle responses from the server
ws.onmessage = function (me) {
  console.log("Response!", me.data);
  var message = JSON.parse(me.data);
  if (!ready && message.command === "ping") {
    // list
    ws.send(JSON.stringify({"command": "list"}));
  } else if (!ready && message.command === "list") {
    ready = true;
    report("/ready", me.data);
  } else {
    report("/got", me.data);
  }
};
ws.onerror = function () { report("/error", "WebSocket error"); };
ws.onclose = function (e) { report("/closed", String(e.code)); };
</script></body></html>
"#;

pub(crate) fn data_of(report: &str, path: &str) -> Value {
    let query = report
        .strip_prefix(path)
        .and_then(|rest| rest.strip_prefix("?data="))
        .unwrap_or_else(|| panic!("expected {path}, the page reported {report}"));
    let text = percent_decode(query);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn the_seed_javascript_example_receives_a_tcp_publish_in_chromium() {
    let server = server(&[]);
    let page = PAGE.replace("MIST_HTTP", &server.addr("http"));
    let mut pages = PageServer::start(page).await;
    let browser = Chromium::open(&format!("http://{}/", pages.addr));

    let ready = pages.next_report(&browser).await;
    assert_eq!(
        data_of(&ready, "/ready"),
        serde_json::json!({"command": "list", "data": "[[\"hello\",\"world\"]]"}),
        "the browser's subscription"
    );

    let mut publisher = Client::connect(&server.tcp()).await;
    publisher
        .publish(&["world", "hello", "extra"], "hi from tcp, \"quoted\" é")
        .await;
    publisher.publish(&["hello"], "not for the page").await;
    publisher.publish(&["hello", "world"], "second").await;
    assert!(publisher.sync().await.is_empty());

    let got = pages.next_report(&browser).await;
    assert_eq!(
        data_of(&got, "/got"),
        delivery(&["world", "hello", "extra"], "hi from tcp, \"quoted\" é")
    );
    let got = pages.next_report(&browser).await;
    assert_eq!(
        data_of(&got, "/got"),
        delivery(&["hello", "world"], "second")
    );
}
