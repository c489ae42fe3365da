//! `GET /metrics`: the broker's figures in the Prometheus text exposition
//! format (version 0.0.4), through the `prometheus-client` crate.
//!
//! Nothing here is on the message path. The broker counts with relaxed
//! atomic adds as it works and hands over a snapshot ([`Figures`]); a scrape takes one
//! snapshot of those counters and of the process (`/proc/self`) and encodes
//! it with a [`Collector`] that the registry calls at encoding time. Every
//! name starts with `mist_`, the process figures included
//! (`mist_process_resident_memory_bytes`, ...), so that one prefix selects
//! everything this server exports.

use std::collections::BTreeMap;

use mist_sdk::SdkError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use subtle::ConstantTimeEq;

use crate::health::{Health, Report};

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
    /// Connections closed because their unfinished input could not be
    /// held within `--max-memory`.
    pub closed_for_memory: u64,
    /// Tasks alive on the host's runtime (the built-in plugins' included).
    pub tasks: u64,
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

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Whether a scrape may read the metrics: always without an authenticator,
/// only with the server token under one (SPEC §9). The comparison takes the
/// same time however much of a wrong token matches.
pub fn authorize(server_token: Option<&str>, given: Option<&str>) -> Result<(), SdkError> {
    let Some(server_token) = server_token else {
        return Ok(());
    };
    match given {
        None => Err(SdkError::unauthenticated(
            "the metrics need the server token (X-AUTH-TOKEN or Authorization: Bearer)",
        )),
        Some(given) if bool::from(given.as_bytes().ct_eq(server_token.as_bytes())) => Ok(()),
        Some(_) => Err(SdkError::permission_denied(
            "the metrics need the server token; this one is not it",
        )),
    }
}

/// The metrics text for `figures`, with the process's own figures and the
/// newest readiness answer of `health`. Each running listener's scheme gets
/// a `mist_connections` series, at zero when it has no connection, so that
/// a dashboard's sum never has a gap.
pub fn render(figures: Figures, health: &Health) -> String {
    let mut registry = Registry::with_prefix("mist");
    registry.register_collector(Box::new(Snapshot {
        figures,
        listeners: health.listener_schemes(),
        readiness: health.latest(),
        process: Process::read(),
    }));
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in
    // a name, caught by the tests.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::error!("encoding the metrics failed: {e}");
    }
    text
}

/// One scrape's worth of figures.
#[derive(Debug)]
struct Snapshot {
    figures: Figures,
    listeners: Vec<String>,
    readiness: Option<std::sync::Arc<Report>>,
    process: Option<Process>,
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

fn counter<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<N>: EncodeMetric,
{
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, unit, counter.metric_type())?)
}

/// A family with one label, one series per entry.
fn labelled(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, metric_type): (&str, &str, MetricType),
    label: &'static str,
    series: &BTreeMap<String, u64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (value, n) in series {
        let labels = [(label, value.as_str())];
        let sample = family.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(*n).encode(sample)?,
            _ => ConstGauge::new(*n).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = &self.figures;
        let e = &mut encoder;

        let mut connections = f.connections.clone();
        for scheme in &self.listeners {
            connections.entry(scheme.clone()).or_insert(0);
        }
        labelled(
            e,
            (
                "connections",
                "Open client connections, by listener",
                MetricType::Gauge,
            ),
            "listener",
            &connections,
        )?;
        gauge(
            e,
            "subscriptions",
            "Subscriptions held over all connections",
            None,
            f.subscriptions,
        )?;
        counter(
            e,
            "messages_received",
            "Messages published to the broker",
            None,
            f.messages_received,
        )?;
        counter(
            e,
            "messages_delivered",
            "Deliveries queued for subscribers",
            None,
            f.messages_delivered,
        )?;
        counter(
            e,
            "messages_dropped",
            "Deliveries dropped because a subscriber's queue or the memory budget was full",
            None,
            f.messages_dropped,
        )?;
        counter(
            e,
            "slow_consumers_disconnected",
            "Subscribers disconnected for staying full past the slow-consumer timeout",
            None,
            f.slow_consumers_disconnected,
        )?;
        counter(
            e,
            "connections_closed_for_memory",
            "Connections closed because their unfinished input could not be held within --max-memory",
            None,
            f.closed_for_memory,
        )?;
        gauge(
            e,
            "tokio_tasks",
            "Tasks alive on the host's runtime, built-in plugins' included",
            None,
            f.tasks,
        )?;
        gauge(
            e,
            "queue",
            "Bytes held for clients (queued output, writers' copies, unfinished input), against --max-memory",
            Some(&Unit::Bytes),
            f.queue_bytes,
        )?;
        counter(
            e,
            "auth_failures",
            "Failed auth commands and refused connect-time tokens",
            None,
            f.auth_failures,
        )?;
        counter(
            e,
            "tokens_accepted",
            "Tokens the authenticator accepted (auth, at connect, refreshes)",
            None,
            f.tokens_accepted,
        )?;
        labelled(
            e,
            (
                "tokens_refused",
                "Tokens the authenticator refused, by reason",
                MetricType::Counter,
            ),
            "reason",
            &f.tokens_refused,
        )?;
        counter(
            e,
            "tokens_expired",
            "Connections whose token expired while they were open",
            None,
            f.tokens_expired,
        )?;
        labelled(
            e,
            (
                "plugin_errors",
                "Errors and panics returned by plugin calls, by plugin",
                MetricType::Counter,
            ),
            "plugin",
            &f.plugin_errors,
        )?;

        let latency = &f.publish_latency;
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = latency
            .buckets
            .iter()
            .map(|&(bound, cumulative)| {
                // The snapshot is cumulative; the encoder wants each
                // bucket's own count and adds them up itself.
                let own = cumulative.saturating_sub(previous);
                previous = cumulative;
                (bound, own)
            })
            .collect();
        encoder
            .encode_descriptor(
                "publish_latency",
                "Time from a publish being read to its deliveries being queued",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                latency.sum,
                latency.count,
                &buckets,
                None,
            )?;

        let e = &mut encoder;
        if let Some(c) = &f.cluster {
            encode_cluster(e, c)?;
        }
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1).encode(
            e.encode_descriptor(
                "build_info",
                "The running version of mist; always 1",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&version)?,
        )?;
        if let Some(report) = &self.readiness {
            gauge(
                e,
                "ready",
                "1 when /readyz answers 200: every listener, the token store and the backplane are up",
                None,
                i64::from(report.ready),
            )?;
            let checks: BTreeMap<String, u64> = report
                .parts
                .iter()
                .map(|(name, error)| (name.clone(), u64::from(error.is_none())))
                .collect();
            labelled(
                e,
                (
                    "check_ready",
                    "1 while the part named by the label is up, as of the last readiness check",
                    MetricType::Gauge,
                ),
                "check",
                &checks,
            )?;
        }
        if let Some(p) = &self.process {
            p.encode(e)?;
        }
        Ok(())
    }
}

/// A cluster node's figures (`docs/cluster.md`), only when it is one.
fn encode_cluster(
    e: &mut DescriptorEncoder<'_>,
    c: &crate::cluster::ClusterFigures,
) -> Result<(), std::fmt::Error> {
    gauge(
        e,
        "cluster_up",
        "1 while the cluster backplane is connected",
        None,
        i64::from(c.up),
    )?;
    gauge(
        e,
        "cluster_nodes",
        "Cluster nodes this one currently sees, itself included",
        None,
        c.nodes,
    )?;
    gauge(
        e,
        "cluster_channels",
        "Backplane channels this node holds",
        None,
        c.channels,
    )?;
    let counters = [
        (
            "cluster_messages_sent",
            "Messages handed to the backplane for other nodes",
            c.messages_sent,
        ),
        (
            "cluster_payloads_sent",
            "Backplane payloads (batches of messages) sent",
            c.payloads_sent,
        ),
        (
            "cluster_messages_received",
            "Messages from other nodes delivered to local matching",
            c.messages_received,
        ),
        (
            "cluster_payloads_received",
            "Backplane payloads received from other nodes, copies included",
            c.payloads_received,
        ),
        (
            "cluster_duplicates",
            "Payload copies dropped because they arrived through a second channel (or were replayed within the window)",
            c.duplicates,
        ),
        (
            "cluster_dropped",
            "Messages for other nodes dropped: the backplane was down, or more than 64 MiB waited for it",
            c.dropped,
        ),
        (
            "cluster_congestions",
            "Times the backplane fell behind this node's publishers, which were then read more slowly",
            c.congestions,
        ),
        (
            "cluster_malformed",
            "Backplane payloads refused (malformed; with a cluster key also unsigned, forged, altered, stale or replayed) and messages over this node's limits",
            c.malformed,
        ),
    ];
    for (name, help, value) in counters {
        counter(e, name, help, None, value)?;
    }
    Ok(())
}

/// What the kernel says about this process.
#[derive(Debug)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    threads: i64,
    start_time_seconds: Option<f64>,
}

impl Process {
    #[cfg(target_os = "linux")]
    fn read() -> Option<Process> {
        let me = procfs::process::Process::myself().ok()?;
        let stat = me.stat().ok()?;
        let ticks = procfs::ticks_per_second() as f64;
        let page = procfs::page_size();
        let max_fds = me
            .limits()
            .ok()
            .and_then(|l| match l.max_open_files.soft_limit {
                procfs::process::LimitValue::Value(n) => Some(n),
                procfs::process::LimitValue::Unlimited => None,
            });
        let start_time_seconds = procfs::boot_time_secs()
            .ok()
            .map(|boot| boot as f64 + stat.starttime as f64 / ticks);
        Some(Process {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss.saturating_mul(page),
            virtual_bytes: stat.vsize,
            open_fds: me.fd_count().ok().map(|n| n as u64),
            max_fds,
            threads: stat.num_threads,
            start_time_seconds,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Process> {
        None
    }

    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        counter(
            e,
            "process_cpu_seconds",
            "CPU time (user and system) this process has used",
            None,
            self.cpu_seconds,
        )?;
        gauge(
            e,
            "process_resident_memory",
            "Resident memory of this process",
            Some(&Unit::Bytes),
            self.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory",
            "Virtual memory of this process",
            Some(&Unit::Bytes),
            self.virtual_bytes,
        )?;
        if let Some(n) = self.open_fds {
            gauge(e, "process_open_fds", "Open file descriptors", None, n)?;
        }
        if let Some(n) = self.max_fds {
            gauge(
                e,
                "process_max_fds",
                "The limit on open file descriptors",
                None,
                n,
            )?;
        }
        gauge(
            e,
            "process_threads",
            "Threads of this process",
            None,
            self.threads,
        )?;
        if let Some(t) = self.start_time_seconds {
            gauge(
                e,
                "process_start_time",
                "When this process started, in seconds since the Unix epoch",
                Some(&Unit::Seconds),
                t,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mist_sdk::ErrorKind;

    #[test]
    fn without_an_authenticator_anyone_may_scrape() {
        assert!(authorize(None, None).is_ok());
        assert!(authorize(None, Some("anything")).is_ok());
    }

    #[test]
    fn under_an_authenticator_only_the_server_token_may() {
        let none = authorize(Some("secret"), None).expect_err("no token");
        assert_eq!(none.kind, ErrorKind::UNAUTHENTICATED);
        let wrong = authorize(Some("secret"), Some("secre")).expect_err("wrong token");
        assert_eq!(wrong.kind, ErrorKind::PERMISSION_DENIED);
        assert!(!wrong.message.contains("secre"), "{}", wrong.message);
        assert!(authorize(Some("secret"), Some("secret")).is_ok());
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_every_figure_with_its_type() {
        let mut figures = Figures::default();
        figures.connections.insert("tcp".into(), 3);
        figures.subscriptions = 7;
        figures.messages_received = 11;
        figures.messages_delivered = 22;
        figures.messages_dropped = 1;
        figures.plugin_errors.insert("postgres".into(), 2);
        figures.tokens_accepted = 9;
        figures.tokens_refused.insert("expired".into(), 4);
        figures.tokens_refused.insert("bad_signature".into(), 0);
        figures.tokens_expired = 6;
        figures.publish_latency.buckets = LATENCY_BUCKETS
            .iter()
            .map(|&b| (b, if b >= 0.001 { 4 } else { 1 }))
            .collect();
        figures.publish_latency.count = 5;
        figures.publish_latency.sum = 0.25;
        let health = Health::default();
        for uri in ["tcp://127.0.0.1:1", "http://127.0.0.1:2"] {
            health.add_listener_scheme(uri);
        }
        let text = render(figures, &health);

        assert_eq!(
            sample(&text, r#"mist_connections{listener="tcp"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, r#"mist_connections{listener="http"}"#),
            Some(0.0)
        );
        assert_eq!(sample(&text, "mist_subscriptions"), Some(7.0));
        assert_eq!(sample(&text, "mist_messages_received_total"), Some(11.0));
        assert_eq!(sample(&text, "mist_messages_delivered_total"), Some(22.0));
        assert_eq!(sample(&text, "mist_messages_dropped_total"), Some(1.0));
        assert_eq!(sample(&text, "mist_tokens_accepted_total"), Some(9.0));
        assert_eq!(
            sample(&text, r#"mist_tokens_refused_total{reason="expired"}"#),
            Some(4.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"mist_tokens_refused_total{reason="bad_signature"}"#
            ),
            Some(0.0)
        );
        assert_eq!(sample(&text, "mist_tokens_expired_total"), Some(6.0));
        assert_eq!(
            sample(&text, "mist_slow_consumers_disconnected_total"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "mist_queue_bytes"), Some(0.0));
        assert_eq!(sample(&text, "mist_auth_failures_total"), Some(0.0));
        assert_eq!(
            sample(&text, r#"mist_plugin_errors_total{plugin="postgres"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"mist_publish_latency_seconds_bucket{le="0.0005"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"mist_publish_latency_seconds_bucket{le="0.001"}"#),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, r#"mist_publish_latency_seconds_bucket{le="+Inf"}"#),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "mist_publish_latency_seconds_count"),
            Some(5.0)
        );
        assert!(text.contains("# TYPE mist_messages_received_total counter\n"));
        assert!(text.contains("# TYPE mist_connections gauge\n"));
        assert!(text.contains("# TYPE mist_publish_latency_seconds histogram\n"));
        assert!(sample(&text, "mist_process_resident_memory_bytes").is_some_and(|b| b > 0.0));
        assert!(sample(&text, "mist_process_open_fds").is_some_and(|n| n > 0.0));
        assert!(sample(&text, "mist_process_cpu_seconds_total").is_some());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("mist_"), "{line}");
        }
        assert!(!text.contains("# EOF"), "0.0.4, not OpenMetrics");
    }

    #[tokio::test]
    async fn readiness_is_exported_once_checked() {
        let health = Health::default();
        assert!(!render(Figures::default(), &health).contains("mist_ready"));
        health.readiness().await;
        let text = render(Figures::default(), &health);
        assert_eq!(sample(&text, "mist_ready"), Some(1.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut figures = Figures::default();
        figures
            .plugin_errors
            .insert("evil\"} 1\nmist_fake 2".into(), 1);
        let text = render(figures, &Health::default());
        assert!(!text.lines().any(|l| l.starts_with("mist_fake")), "{text}");
    }
}
