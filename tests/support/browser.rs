//! A real browser for tests: Debian's Chromium, headless, pointed at a page
//! that a small test-owned HTTP server serves. The page reports what it saw
//! by fetching paths back from that server (`/ready`, `/got?…`), which the
//! test reads from a channel, each wait bounded.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Chromium needs a few seconds to start on a loaded two-core machine.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one HTML page at `/` and hands every other requested path
/// (with its query) to the test.
pub struct PageServer {
    pub addr: String,
    reports: mpsc::UnboundedReceiver<String>,
}

impl PageServer {
    pub async fn start(html: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (tx, reports) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let html = html.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(path) = read_request_path(&mut stream).await else {
                        return;
                    };
                    let response = if path == "/" {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                            html.len()
                        )
                    } else {
                        if path != "/favicon.ico" {
                            let _ = tx.send(path);
                        }
                        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned()
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        PageServer { addr, reports }
    }

    /// The next path the page fetched, e.g. `/ready` or `/got?data=…`.
    pub async fn next_report(&mut self, browser: &Chromium) -> String {
        match tokio::time::timeout(BROWSER_TIMEOUT, self.reports.recv()).await {
            Ok(Some(path)) => path,
            _ => panic!(
                "the page reported nothing in time; Chromium's log:\n{}",
                browser.log()
            ),
        }
    }
}

async fn read_request_path(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(BROWSER_TIMEOUT, stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ').nth(1).map(str::to_owned)
}

/// A headless Chromium showing one URL, killed (with its helper processes)
/// when dropped.
pub struct Chromium {
    child: Child,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chromium {
    pub fn open(url: &str) -> Chromium {
        Self::open_with(url, &[])
    }

    /// As [`Chromium::open`], with extra command-line flags.
    pub fn open_with(url: &str, flags: &[&str]) -> Chromium {
        let profile = tempfile::tempdir().expect("a profile directory");
        let log = profile.path().join("chromium.log");
        let log_file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(flags)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            // Its own process group, so that Drop ends the renderers too.
            .process_group(0)
            .spawn()
            .expect("starting chromium (scripts/test installs Debian's chromium)");
        Chromium {
            child,
            log,
            _profile: profile,
        }
    }

    /// The browser's profile directory (where `DevToolsActivePort` appears).
    pub fn profile(&self) -> &std::path::Path {
        self._profile.path()
    }

    /// What Chromium has printed so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes a `%XX`-escaped query value, as `encodeURIComponent` writes it.
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}
