//! What the attack tests share: the broker's memory read from
//! `/proc/PID/status`, a watchdog client whose pings must stay quick while
//! an attack runs, and a subscriber that never reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Client, MistServer, TIMEOUT};

/// A line of `/proc/PID/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Peak resident memory so far.
pub fn peak_rss_mib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") / 1024
}

pub fn rss_mib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") / 1024
}

/// Pings the broker every 50 ms on a connection of its own and keeps the
/// slowest answer, until stopped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    slowest_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    pub async fn start(server: &MistServer) -> Watchdog {
        let mut client = Client::connect(&server.tcp()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, slowest_ms) = (stop.clone(), slowest_ms.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let pong = client.request(json!({"command": "ping"})).await;
                    assert_eq!(pong["data"], "pong");
                    let ms = start.elapsed().as_millis() as u64;
                    slowest_ms.fetch_max(ms, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Watchdog {
            stop,
            slowest_ms,
            task,
        }
    }

    /// Stops, and returns the slowest ping in milliseconds.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("the watchdog's last ping is answered")
            .expect("watchdog");
        self.slowest_ms.load(Ordering::Relaxed)
    }
}

/// A subscriber that never reads, with a small receive buffer so that the
/// kernel holds little of what the broker sends it: the broker's own queue
/// fills quickly.
pub async fn silent_subscriber(server: &MistServer, tag: &str) -> TcpStream {
    silent_subscriber_at(&server.tcp(), tag).await
}

/// [`silent_subscriber`] of the broker at `addr` (`host:port`).
pub async fn silent_subscriber_at(addr: &str, tag: &str) -> TcpStream {
    let addr = addr.parse().expect("address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .write_all(
            format!(
                "{{\"command\":\"subscribe\",\"tags\":[\"{tag}\"]}}\n{{\"command\":\"ping\"}}\n"
            )
            .as_bytes(),
        )
        .await
        .expect("subscribe");
    // Deliveries may come before the pong (others publish on the tag).
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(TIMEOUT, stream.read_line(&mut line))
            .await
            .expect("pong in time")
            .expect("read");
        assert!(read > 0, "closed before the pong");
        if line.contains("\"pong\"") {
            break;
        }
    }
    stream.into_inner()
}
