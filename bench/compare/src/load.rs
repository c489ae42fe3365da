//! One scenario against one target, through its protocol adapter, so Mist,
//! nats-server, redis-server and the raw relay are measured by the same
//! client code. Prints one JSON line.
//!
//! Every payload starts with `~t<20-digit ns since start>~`, so each
//! delivery carries its send time; all clients share one clock (one
//! process). Subscribers read line by line and take the clock per line:
//! the driver is the same for every target, so what differs between two
//! targets' figures is the target.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::proto::{routing_topic, Proto, TOPIC};

/// The scenarios of one load run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1 publisher, --subs subscribers on one topic.
    Fanout,
    /// 1 publisher, 1 subscriber.
    Pair,
    /// --subs idle subscribed connections; the broker's memory per connection.
    Conns,
    /// --subs subscribers, each on its own topic; message i goes to topic
    /// i % subs (one match each).
    Routing,
}

/// Flags of `mist-compare load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The target's protocol.
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// The target's address.
    #[arg(long, default_value = "127.0.0.1:1445")]
    pub addr: String,
    /// What to run.
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Subscribers (fanout, routing) or idle connections (conns).
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Messages published.
    #[arg(long, default_value_t = 100_000)]
    pub msgs: usize,
    /// Payload bytes (at least 23: the send time travels in the payload).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Wall-clock cap for the whole run, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// The target's process id, for the conns memory figure.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Publish at this many msgs/s instead of as fast as possible (for
    /// latency without a backlog).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// `~t` + 20 digits + `~`.
const STAMP_LEN: usize = 23;
/// One delivery in this many is timed.
const SAMPLE_EVERY: usize = 8;
/// A flooding publisher writes once this much is buffered.
const WRITE_CHUNK: usize = 64 * 1024;
/// Once the publisher is done, this long without a delivery means nothing
/// more is coming. (Not before: with 10,000 topics a subscriber's messages
/// are 10,000 publishes apart, which can take longer than this.)
const IDLE_END: Duration = Duration::from_secs(10);

/// The figures of a throughput run, as one JSON line.
#[derive(Debug, Serialize)]
struct Throughput {
    proto: Proto,
    scenario: Scenario,
    subs: usize,
    msgs: usize,
    size: usize,
    rate: u64,
    publish_per_s: f64,
    delivered: usize,
    delivered_fraction: f64,
    delivered_per_s: f64,
    lat_p50_us: Option<f64>,
    lat_p99_us: Option<f64>,
    lat_max_us: Option<f64>,
}

/// The figures of a conns run.
#[derive(Debug, Serialize)]
struct Conns {
    proto: Proto,
    scenario: Scenario,
    conns: usize,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    kib_per_conn: Option<f64>,
}

/// A live subscription. The write half is kept: dropping it would shut
/// the connection's sending side, which some targets take as a goodbye.
struct Subscriber {
    read: BufReader<OwnedReadHalf>,
    _write: OwnedWriteHalf,
}

struct Received {
    count: usize,
    last: Option<Instant>,
    lat_ns: Vec<u64>,
}

/// Runs the scenario and prints its JSON line.
pub async fn run(a: &LoadArgs) -> anyhow::Result<()> {
    if a.size < STAMP_LEN {
        bail!("--size must be at least {STAMP_LEN}: the send time travels in the payload");
    }
    let subs = if a.scenario == Scenario::Pair {
        1
    } else {
        a.subs
    };
    if subs == 0 {
        bail!("--subs must be at least 1");
    }
    crate::raise_fd_limit(subs + 64)?;
    let start = Instant::now();
    let cap = start + Duration::from_secs(a.timeout);

    if a.scenario == Scenario::Conns {
        let before = a.broker_pid.and_then(rss_kib);
        let mut held = Vec::with_capacity(subs);
        for _ in 0..subs {
            held.push(subscribe(a.proto, &a.addr, TOPIC).await?);
        }
        // Let the target settle what each connection cost it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = a.broker_pid.and_then(rss_kib);
        let line = Conns {
            proto: a.proto,
            scenario: a.scenario,
            conns: subs,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_conn: before
                .zip(after)
                .map(|(b, x)| round2((x as f64 - b as f64) / subs as f64)),
        };
        println!("{}", serde_json::to_string(&line)?);
        return Ok(());
    }

    let routing = a.scenario == Scenario::Routing;
    if routing && a.proto == Proto::Raw {
        bail!("the raw relay cannot route");
    }
    let topics: Vec<String> = if routing {
        (0..subs).map(routing_topic).collect()
    } else {
        vec![TOPIC.to_owned()]
    };
    let mut subscribers = Vec::with_capacity(subs);
    for i in 0..subs {
        subscribers.push(subscribe(a.proto, &a.addr, &topics[i % topics.len()]).await?);
    }
    // Routing: subscriber i gets messages i, i+subs, ...; otherwise every one.
    let want = |i: usize| {
        if routing {
            a.msgs / subs + usize::from(i < a.msgs % subs)
        } else {
            a.msgs
        }
    };
    let (published, publishing) = watch::channel(false);
    let receivers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(receive(s, want(i), start, cap, publishing.clone())))
        .collect();

    // The publisher's connection stays open until the deliveries are in:
    // a target may drop what a closed connection published.
    let (publish_secs, t0, _publisher) = publish(a, &topics, start, cap).await?;
    let _ = published.send(true);

    let mut delivered = 0usize;
    let mut last = t0;
    let mut lat = Vec::new();
    for receiver in receivers {
        let r = receiver
            .await
            .map_err(|e| anyhow!("a subscriber failed: {e}"))?;
        delivered += r.count;
        if let Some(l) = r.last {
            last = last.max(l);
        }
        lat.extend(r.lat_ns);
    }
    lat.sort_unstable();
    let secs = (last - t0).as_secs_f64().max(1e-9);
    let expected = if routing { a.msgs } else { a.msgs * subs };
    let line = Throughput {
        proto: a.proto,
        scenario: a.scenario,
        subs,
        msgs: a.msgs,
        size: a.size,
        rate: a.rate,
        publish_per_s: (a.msgs as f64 / publish_secs).round(),
        delivered,
        delivered_fraction: delivered as f64 / expected.max(1) as f64,
        delivered_per_s: (delivered as f64 / secs).round(),
        lat_p50_us: percentile_us(&lat, 0.5),
        lat_p99_us: percentile_us(&lat, 0.99),
        lat_max_us: percentile_us(&lat, 1.0),
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// Publishes every message; returns the seconds it took, when it began
/// and the connection, still open.
async fn publish(
    a: &LoadArgs,
    topics: &[String],
    start: Instant,
    cap: Instant,
) -> anyhow::Result<(f64, Instant, OwnedWriteHalf)> {
    let sock = TcpStream::connect(&a.addr)
        .await
        .with_context(|| format!("connecting the publisher to {}", a.addr))?;
    sock.set_nodelay(true)?;
    let (read, mut write) = sock.into_split();
    let mut read = BufReader::new(read);
    if a.proto.greets() {
        let mut greeting = Vec::new();
        read.read_until(b'\n', &mut greeting).await?;
    }
    write.write_all(a.proto.publisher_hello()).await?;
    // Drain whatever the target answers the publisher (redis sends a
    // count per PUBLISH): unread, it would fill and stall the connection.
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(n) = read.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    let pad = "x".repeat(a.size - STAMP_LEN);
    let t0 = Instant::now();
    let mut out = String::with_capacity(WRITE_CHUNK * 2);
    let mut payload = String::with_capacity(a.size + 32);
    for i in 0..a.msgs {
        payload.clear();
        let _ = write!(
            payload,
            "~t{:020}~{pad}",
            (Instant::now() - start).as_nanos()
        );
        a.proto
            .encode_publish(&topics[i % topics.len()], &payload, &mut out);
        // Paced: message i is due at i / rate seconds.
        if let Some(due_ns) = (i as u64 * 1_000_000_000).checked_div(a.rate) {
            write.write_all(out.as_bytes()).await?;
            out.clear();
            let due = t0 + Duration::from_nanos(due_ns);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep(due - now).await;
            }
        } else if out.len() >= WRITE_CHUNK {
            write.write_all(out.as_bytes()).await?;
            out.clear();
        }
        if Instant::now() >= cap {
            break;
        }
    }
    write.write_all(out.as_bytes()).await?;
    write.flush().await?;
    Ok((t0.elapsed().as_secs_f64(), t0, write))
}

/// Connects and subscribes; returns once the target has confirmed the
/// subscription.
async fn subscribe(proto: Proto, addr: &str, topic: &str) -> anyhow::Result<Subscriber> {
    let sock = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting a subscriber to {addr}"))?;
    sock.set_nodelay(true)?;
    let (read, mut write) = sock.into_split();
    let mut read = BufReader::with_capacity(256 * 1024, read);
    let mut line = Vec::new();
    if proto.greets() {
        read_line(&mut read, &mut line).await?;
    }
    write
        .write_all(proto.subscribe_request(topic).as_bytes())
        .await?;
    loop {
        if read_line(&mut read, &mut line).await? == 0 {
            bail!("{addr} closed the connection during subscribe");
        }
        if proto.subscribed(&line) {
            return Ok(Subscriber {
                read,
                _write: write,
            });
        }
    }
}

async fn read_line(r: &mut BufReader<OwnedReadHalf>, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    r.read_until(b'\n', line).await
}

async fn receive(
    mut sub: Subscriber,
    want: usize,
    start: Instant,
    cap: Instant,
    mut publishing: watch::Receiver<bool>,
) -> Received {
    let mut res = Received {
        count: 0,
        last: None,
        lat_ns: Vec::with_capacity(want / SAMPLE_EVERY + 1),
    };
    let mut line = Vec::with_capacity(512);
    let mut published = false;
    let mut deadline = cap;
    while res.count < want {
        // `read_until` keeps a partial line in `line` when another branch
        // wins, and goes on with it on the next call.
        tokio::select! {
            read = sub.read.read_until(b'\n', &mut line) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                let at = Instant::now();
                if let Some(sent) = stamp(&line) {
                    if res.count % SAMPLE_EVERY == 0 {
                        let since = u64::try_from((at - start).as_nanos()).unwrap_or(u64::MAX);
                        res.lat_ns.push(since.saturating_sub(sent));
                    }
                    res.count += 1;
                    res.last = Some(at);
                }
                line.clear();
                if published {
                    deadline = (at + IDLE_END).min(cap);
                }
            }
            _ = publishing.changed(), if !published => {
                published = true;
                deadline = (Instant::now() + IDLE_END).min(cap);
            }
            () = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    res
}

/// The send time in a delivered line.
fn stamp(line: &[u8]) -> Option<u64> {
    let i = line.windows(2).position(|w| w == b"~t")?;
    let digits = line.get(i + 2..i + 22)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The resident memory of a process, from `/proc` (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The nearest-rank percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted: &[u64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * p).round() as usize;
    Some(round2(sorted[i.min(last)] as f64 / 1000.0))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_back() {
        assert_eq!(stamp(b"PUB x 5\r\n~t00000000000000001234~xx"), Some(1234));
        assert_eq!(stamp(b"~t0012~"), None);
        assert_eq!(stamp(b"no stamp"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&ns, 0.5), Some(51.0));
        assert_eq!(percentile_us(&ns, 0.99), Some(99.0));
        assert_eq!(percentile_us(&ns, 1.0), Some(100.0));
        assert_eq!(percentile_us(&[], 0.5), None);
    }
}
