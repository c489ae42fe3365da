//! The broker's running figures, as the metrics endpoint and `who` read
//! them. Counting happens on the hot path with relaxed atomic adds, never a
//! lock; reading takes a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of every figure the broker keeps.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Figures {
    /// Open connections (sessions) by listener scheme.
    pub connections: BTreeMap<String, u64>,
    /// Subscriptions held, over all sessions.
    pub subscriptions: u64,
    /// Messages published (received from clients and plugins).
    pub messages_received: u64,
    /// Deliveries queued for subscribers.
    pub messages_delivered: u64,
    /// Deliveries dropped because a subscriber's queue (or the global
    /// memory budget) was full.
    pub messages_dropped: u64,
    /// Subscribers disconnected for staying full past the slow-consumer timeout.
    pub slow_consumers_disconnected: u64,
    /// Bytes waiting in all queues together.
    pub queue_bytes: u64,
    /// Failed `auth` commands and refused connect-time tokens.
    pub auth_failures: u64,
    /// Tokens the authenticator accepted.
    pub tokens_accepted: u64,
    /// Tokens it refused, by reason (`expired`, `bad_signature`, ...;
    /// every reason present, at zero when none was refused for it).
    pub tokens_refused: BTreeMap<String, u64>,
    /// Connections whose token expired while they were open.
    pub tokens_expired: u64,
    /// Errors and panics returned by plugin calls, by plugin name.
    pub plugin_errors: BTreeMap<String, u64>,
    /// Time from a publish being read to its deliveries being queued.
    pub publish_latency: HistogramSnapshot,
    /// This node's cluster traffic, when it is part of a cluster.
    pub cluster: Option<crate::cluster::ClusterFigures>,
}

/// Upper bounds of the publish-latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.1,
];

/// A histogram as Prometheus exposes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, cumulative,
    /// one per [`LATENCY_BUCKETS`] entry; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// A histogram of durations with fixed buckets, recorded with atomic adds.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_adds_up() {
        let h = Histogram::default();
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(30));
        h.record(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_005, 1));
        assert_eq!(s.buckets[3], (0.000_05, 2));
        assert_eq!(s.buckets.last(), Some(&(0.1, 2)), "1 s falls only in +Inf");
        assert!((s.sum - 1.000_033).abs() < 1e-9);
    }
}
