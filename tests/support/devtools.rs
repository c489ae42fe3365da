//! Driving headless Chromium through the DevTools protocol: navigate, run
//! JavaScript in the page, collect console errors and uncaught exceptions,
//! take a screenshot. Every wait is bounded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::browser::{Chromium, BROWSER_TIMEOUT};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A headless Chromium with one page, driven over its DevTools socket.
pub struct DevTools {
    browser: Chromium,
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
}

impl DevTools {
    /// Starts Chromium on `about:blank` and attaches to its page, with the
    /// console, log and page domains enabled.
    pub async fn launch() -> DevTools {
        let browser = Chromium::open_with(
            "about:blank",
            &["--remote-debugging-port=0", "--window-size=1280,1000"],
        );
        let port_file = browser.profile().join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium opened no DevTools port; its log:\n{}",
                browser.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let page_url = loop {
            let targets = get_json(&addr, "/json/list").await;
            let page = targets.and_then(|list: Value| {
                list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(url) = page {
                break url;
            }
            assert!(Instant::now() < deadline, "Chromium shows no page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio::time::timeout(
            BROWSER_TIMEOUT,
            tokio_tungstenite::connect_async(page_url.as_str()),
        )
        .await
        .expect("DevTools connect timed out")
        .expect("DevTools connect");
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (answers, seen) = (pending.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                match value["id"].as_u64() {
                    Some(id) => {
                        if let Some(answer) = answers.lock().unwrap().remove(&id) {
                            let _ = answer.send(value);
                        }
                    }
                    None => seen.lock().unwrap().push(value),
                }
            }
        });
        let devtools = DevTools {
            browser,
            outgoing,
            pending,
            events,
            next_id: AtomicU64::new(1),
        };
        for domain in ["Runtime", "Log", "Page"] {
            devtools.call(&format!("{domain}.enable"), json!({})).await;
        }
        devtools
    }

    /// Sends one command and returns its `result`; panics on an error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let request = json!({"id": id, "method": method, "params": params});
        self.outgoing
            .send(Message::text(request.to_string()))
            .expect("the DevTools socket is closed");
        let answer = tokio::time::timeout(BROWSER_TIMEOUT, rx)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{method}: no answer in time; Chromium's log:\n{}",
                    self.browser.log()
                )
            })
            .expect("the DevTools socket closed");
        assert!(answer.get("error").is_none(), "{method} failed: {answer}");
        answer["result"].clone()
    }

    /// Opens `url` in the page (load events are waited for with
    /// [`DevTools::wait_for`]).
    pub async fn navigate(&self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            result.get("errorText").is_none(),
            "navigating to {url} failed: {result}"
        );
    }

    /// The value of JavaScript `expression` in the page (promises awaited);
    /// panics if it throws.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page; panics with `what`
    /// and the page's errors after `timeout`.
    pub async fn wait_for(&self, expression: &str, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let check = format!(
            "(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&check).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let page = self
                    .eval("location.href + '\\n' + (document.body ? document.body.innerText.slice(0, 500) : '')")
                    .await;
                panic!(
                    "{what}: not in time; page errors: {:?}\npage: {}",
                    self.errors(),
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The parameters of every `method` event seen so far (a domain's
    /// events arrive once it is enabled with [`DevTools::call`]).
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| event["method"] == method)
            .map(|event| event["params"].clone())
            .collect()
    }

    /// Console errors, failed loads and uncaught exceptions seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|event| {
                let params = &event["params"];
                match event["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(format!(
                        "uncaught: {}",
                        params["exceptionDetails"]["exception"]["description"]
                    )),
                    "Runtime.consoleAPICalled"
                        if matches!(params["type"].as_str(), Some("error" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", params["type"], params["args"]))
                    }
                    "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
                        "log: {} ({})",
                        params["entry"]["text"], params["entry"]["url"]
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }

    /// Chromium's own log, for failure messages.
    pub fn log(&self) -> String {
        self.browser.log()
    }
}

/// `GET path` from Chromium's DevTools HTTP endpoint, which keeps the
/// connection open: the body is read by its `Content-Length`.
async fn get_json(addr: &str, path: &str) -> Option<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let mut buf = [0; 8192];
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..n]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))?
                .trim()
                .parse()
                .ok()?;
            if raw.len() >= end + 4 + length {
                return serde_json::from_slice(&raw[end + 4..end + 4 + length]).ok();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}
