//! What a bench run measured, as text for a person or JSON for a script.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The figures of one `mist bench` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The `--host` values, comma separated.
    pub host: String,
    /// `tcp` or `websocket`.
    pub transport: &'static str,
    pub publishers: usize,
    pub subscribers: usize,
    pub payload_bytes: usize,
    /// Messages written by all publishers.
    pub messages_sent: u64,
    /// Deliveries there would be if no subscriber fell behind.
    pub deliveries_expected: u64,
    /// Deliveries the subscribers received.
    pub delivered: u64,
    /// From the first publish to the last publisher's last write.
    pub publish_seconds: f64,
    /// From the first publish to the last delivery.
    pub delivery_seconds: f64,
    /// Opening and subscribing every subscriber.
    pub connect_seconds: f64,
    /// Send-to-arrival, in microseconds.
    pub latency: Latency,
    /// Error replies received (a refused token, say).
    pub errors: u64,
    pub first_error: Option<String>,
    /// The broker's memory growth while the subscribers connected, when
    /// its process id was given.
    pub memory: Option<Memory>,
    /// `conns --hold`: every recorded latency, as `[microseconds, count]`
    /// pairs in increasing order (3 significant digits), so that several
    /// holding processes' figures can be merged into one distribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_histogram_us: Option<Vec<[u64; 2]>>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The broker's resident memory per subscribed connection.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub connections: usize,
    pub kib_per_connection: f64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

impl Report {
    /// Messages published per second.
    pub fn publish_rate(&self) -> f64 {
        per_second(self.messages_sent, self.publish_seconds)
    }

    /// Deliveries received per second, summed over subscribers.
    pub fn delivery_rate(&self) -> f64 {
        per_second(self.delivered, self.delivery_seconds)
    }

    /// The share of expected deliveries that arrived, 0 to 1.
    pub fn delivered_fraction(&self) -> f64 {
        if self.deliveries_expected == 0 {
            return 1.0;
        }
        self.delivered as f64 / self.deliveries_expected as f64
    }

    /// The report as one JSON object, rates included.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("publish_per_s".into(), self.publish_rate().round().into());
            object.insert(
                "delivered_per_s".into(),
                self.delivery_rate().round().into(),
            );
            object.insert(
                "delivered_fraction".into(),
                self.delivered_fraction().into(),
            );
        }
        value
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

impl Report {
    /// The text of a `conns --hold` run: connections held, one message.
    fn fmt_held(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mist bench conns --hold against {}{}: {} idle subscriber(s) held for one message",
            self.host,
            if self.transport == "websocket" {
                " over WebSocket"
            } else {
                ""
            },
            grouped(self.subscribers as u64),
        )?;
        writeln!(
            f,
            "  delivered  {:>14} of {} ({:.2}%), the last {:.3} s after it was sent",
            grouped(self.delivered),
            grouped(self.deliveries_expected),
            self.delivered_fraction() * 100.0,
            self.delivery_seconds,
        )?;
        self.fmt_tail(f, "connection(s) failed")
    }

    /// The lines every report ends with: latency, connections, errors
    /// (`errors` says what they were).
    fn fmt_tail(&self, f: &mut fmt::Formatter<'_>, errors: &str) -> fmt::Result {
        writeln!(
            f,
            "  latency    p50 {}  p90 {}  p99 {}  max {}",
            micros(self.latency.p50_us),
            micros(self.latency.p90_us),
            micros(self.latency.p99_us),
            micros(self.latency.max_us)
        )?;
        write!(
            f,
            "  connected  {} subscribers in {:.3} s",
            grouped(self.subscribers as u64),
            self.connect_seconds
        )?;
        if let Some(memory) = self.memory {
            write!(
                f,
                "; broker memory {:.2} KiB per connection",
                memory.kib_per_connection
            )?;
        }
        if self.errors > 0 {
            write!(
                f,
                "\n  errors     {} {errors}, the first: {}",
                grouped(self.errors),
                self.first_error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.latency_histogram_us.is_some() {
            return self.fmt_held(f);
        }
        writeln!(
            f,
            "mist bench {} against {}{}: {} publisher(s) → {} subscriber(s), {} B payloads",
            self.scenario,
            self.host,
            if self.transport == "websocket" {
                " over WebSocket"
            } else {
                ""
            },
            self.publishers,
            self.subscribers,
            self.payload_bytes
        )?;
        writeln!(
            f,
            "  published  {:>14} msgs in {:.3} s  {:>12} msgs/s",
            grouped(self.messages_sent),
            self.publish_seconds,
            grouped(self.publish_rate().round() as u64)
        )?;
        writeln!(
            f,
            "  delivered  {:>14} of {} ({:.2}%) in {:.3} s  {:>12} msgs/s",
            grouped(self.delivered),
            grouped(self.deliveries_expected),
            self.delivered_fraction() * 100.0,
            self.delivery_seconds,
            grouped(self.delivery_rate().round() as u64)
        )?;
        self.fmt_tail(f, "error replies")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
