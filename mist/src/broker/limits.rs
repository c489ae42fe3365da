//! What no client may exceed (SPEC §6–§7), with their defaults.

use std::time::Duration;

use mist_sdk::ListenerLimits;

/// Limits (SPEC §6–§7): what no client may exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted line or message, in bytes, without the newline.
    pub max_message_bytes: usize,
    /// Bytes of deliveries a subscriber's queue may hold before the newest
    /// messages for it are dropped.
    pub max_queue_bytes: usize,
    /// Bytes queued over all sessions together; over it, the largest queues
    /// drop first.
    pub max_memory: usize,
    /// Tags in one message or one subscription.
    pub max_tags: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Client connections over all listeners.
    pub max_connections: usize,
    /// A subscriber whose queue has been full this long is disconnected.
    pub slow_consumer_timeout: Duration,
    /// How long an HTTP request header may take to arrive.
    pub header_timeout: Duration,
    /// How long a WebSocket or TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a whole HTTP request/answer exchange may take.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_queue_bytes: 64 << 20,
            max_memory: default_max_memory(),
            max_tags: 1024,
            max_subscriptions: 10_000,
            max_connections: 200_000,
            slow_consumer_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A quarter of the machine's memory, at least 256 MiB: room for bursts on
/// a dedicated broker host without letting queues take the machine.
fn default_max_memory() -> usize {
    const FLOOR: usize = 256 << 20;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
        .unwrap_or(4 << 30);
    (total / 4).max(FLOOR)
}

impl Limits {
    /// The part listeners apply themselves.
    pub fn listener(&self) -> ListenerLimits {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ListenerLimits {
            max_message_bytes: self.max_message_bytes as u64,
            header_timeout_ms: ms(self.header_timeout),
            handshake_timeout_ms: ms(self.handshake_timeout),
            request_timeout_ms: ms(self.request_timeout),
        }
    }
}
