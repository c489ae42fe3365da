//! Debian's Prometheus for tests: `promtool` to check what Mist exposes and
//! the rules it ships, and a real Prometheus server scraping a test's Mist.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::web::http;

/// Prometheus needs a while to start on a loaded two-core machine.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// `promtool ARGS` with `stdin`; its exit status and everything it printed.
pub fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (scripts/test installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("writing to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A Prometheus server of the test's own, killed when dropped.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:port` of its HTTP API.
    pub addr: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second, with
    /// `token` as a bearer token when given, and loading `rule_files`.
    pub async fn start(target: &str, token: Option<&str>, rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let authorization = match token {
            Some(token) => {
                let file = dir.path().join("token");
                std::fs::write(&file, token).unwrap();
                format!(
                    "    authorization:\n      credentials_file: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let rules: String = rule_files
            .iter()
            .map(|f| format!("  - {}\n", f.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: mist\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             {authorization}    static_configs:\n      - targets: ['{target}']\n",
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, &config).unwrap();
        let (ok, out) = promtool(&["check", "config", config_file.to_str().unwrap()], b"");
        assert!(
            ok,
            "promtool rejects the test's own config:\n{config}\n{out}"
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (scripts/test installs Debian's prometheus package)");
        let server = Prometheus { child, dir, addr };
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            if server.ready().await {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not get ready; its log:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(&self.addr).await;
        if connect.is_err() {
            return false;
        }
        http(&self.addr, "GET", "/-/ready", &[], b"").await.status == 200
    }

    /// `GET /api/v1/...` as JSON; panics unless Prometheus says `success`.
    pub async fn api(&self, path_and_query: &str) -> Value {
        let mut response = http(&self.addr, "GET", path_and_query, &[], b"").await;
        if response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            response.body = dechunk(&response.body);
        }
        let body = response.json();
        assert_eq!(
            body["status"], "success",
            "Prometheus answered {path_and_query} with {body}"
        );
        body["data"].clone()
    }

    /// The value of an instant `query` with one series, if there is one.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let encoded: String =
            percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let data = self.api(&format!("/api/v1/query?query={encoded}")).await;
        data["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("a hexadecimal chunk size");
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}
