//! Publishers, subscribers and the run that ties them together.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memchr::memmem;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::conn::{self, Buffers, Line, Lines, Writer, REPLY_TIMEOUT};
use crate::net::{self, Endpoint, Sources};
use crate::report::{Latency, Memory, Report};
use crate::{BenchArgs, BenchError, Scenario};

/// `~t` + 20 digits of nanoseconds + `~`: the send time at the start of
/// every payload (the shared load tool's format too), as a [`Clock`]
/// stamp.
pub(crate) const STAMP_LEN: usize = 23;
const STAMP_DIGITS: usize = 20;

/// Connections opened at once while setting up.
const CONNECT_PARALLELISM: usize = 128;
/// A publisher writes once this much is buffered.
const WRITE_CHUNK: usize = 64 * 1024;
/// How long a subscriber of a run over several brokers waits, after its
/// `pong`, for one more delivery before it counts what it has.
const CLUSTER_SETTLE: Duration = Duration::from_secs(2);

/// Latencies a subscriber keeps as a list before it needs a histogram
/// (about 180 KiB each): 100,000 idle connections receive one message each.
const SAMPLES_BEFORE_HISTOGRAM: usize = 1024;

/// Who subscribes to what and what gets published.
struct Plan {
    /// One entry per subscriber: its tag set.
    subscriptions: Vec<Vec<String>>,
    /// Messages are published on these tag sets in turn.
    publish_tags: Vec<Vec<String>>,
    publishers: usize,
    messages: u64,
    /// Subscribers each message is meant for.
    fan: u64,
}

impl Plan {
    fn of(args: &BenchArgs) -> Plan {
        let one = |tag: &str| vec![vec![tag.to_owned()]];
        match args.scenario {
            Scenario::Pubsub | Scenario::Fanout => {
                let subscribers = args.subscribers.unwrap_or(match args.scenario {
                    Scenario::Pubsub => 1,
                    _ => 100,
                });
                Plan {
                    subscriptions: vec![vec!["bench".to_owned()]; subscribers],
                    publish_tags: one("bench"),
                    publishers: match args.scenario {
                        Scenario::Pubsub => args.publishers,
                        _ => 1,
                    },
                    messages: args.messages,
                    fan: subscribers as u64,
                }
            }
            Scenario::Routing => {
                let rooms = args.subscribers.unwrap_or(100).max(1);
                let room = |i: usize| format!("room:{i}");
                Plan {
                    subscriptions: (0..rooms).map(|i| vec![room(i), "app".into()]).collect(),
                    publish_tags: (0..rooms)
                        .map(|i| vec![room(i), "app".into(), "extra".into()])
                        .collect(),
                    publishers: 1,
                    messages: args.messages,
                    fan: 1,
                }
            }
            Scenario::Conns => {
                let conns = args.subscribers.unwrap_or(1000);
                Plan {
                    subscriptions: vec![vec!["bench".to_owned()]; conns],
                    publish_tags: one("bench"),
                    publishers: 1,
                    messages: 1,
                    fan: conns as u64,
                }
            }
        }
    }
}

/// The send stamps: nanoseconds since the Unix epoch, read as the wall
/// clock once, at the start of the run, plus the monotonic time since. In
/// one process they never go back (a wall clock stepped mid-run changes
/// nothing); across processes on one machine they agree to within the
/// wall clock's reading, so a message stamped by one bench process can be
/// timed by another (`conns --hold`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The monotonic start of the run; durations within it are from here.
    pub base: Instant,
    /// The wall clock at `base`, in nanoseconds since the epoch.
    epoch_ns: u64,
}

impl Clock {
    pub(crate) fn start() -> Clock {
        let base = Instant::now();
        let epoch_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Clock { base, epoch_ns }
    }

    /// The stamp of now.
    fn now(&self) -> u64 {
        self.at(self.base.elapsed())
    }

    /// The stamp of `elapsed` after the start of the run.
    fn at(&self, elapsed: Duration) -> u64 {
        self.epoch_ns
            .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Figures every task adds to as it goes, for the progress bar.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
}

pub(crate) async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let plan = Plan::of(args);
    let endpoints = Endpoint::resolve_all(&args.hosts, args.websocket, args.ca.as_deref()).await?;
    let sources = Arc::new(Sources::new(&args.source_addrs));
    // Held connections wait for another process's message: no publisher.
    let publishers = if args.hold { 0 } else { plan.publishers };
    let connections = plan.subscriptions.len() + publishers;
    sources.check(&endpoints, connections)?;
    net::raise_fd_limit(connections)?;
    let buffers = match args.scenario {
        Scenario::Conns => Buffers::Idle,
        _ => Buffers::Busy,
    };
    let clock = Clock::start();
    let counters = Arc::new(Counters::default());
    let (finish, finished) = watch::channel(false);
    // Over several brokers (a cluster), a subscriber's `pong` from its own
    // node does not wait for what is still crossing the backplane from the
    // publisher's node: such a subscriber reads on until it has been quiet
    // this long.
    let settle = (endpoints.len() > 1).then_some(CLUSTER_SETTLE);

    let memory_before = rss_kib_sum(&args.server_pid);
    let connect_started = Instant::now();
    let mut subscribers = JoinSet::new();
    let mut holds = JoinSet::new();
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut ready = JoinSet::new();
    for (i, tags) in plan.subscriptions.iter().cloned().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (sources, token, gate) = (sources.clone(), args.token.clone(), gate.clone());
        ready.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let (mut lines, mut writer) =
                conn::open(&endpoint, sources.next(), token.as_deref(), buffers).await?;
            conn::subscribe(&mut lines, &mut writer, &[tags]).await?;
            Ok::<_, BenchError>((lines, writer))
        });
    }
    while let Some(joined) = ready.join_next().await {
        let (lines, writer) = joined.map_err(join_error)??;
        if args.hold {
            // Nothing to write: the writer (and its half of the socket)
            // can go; the connection stays open while `lines` does.
            drop(writer);
            holds.spawn(hold(lines, clock, finished.clone()));
        } else {
            subscribers.spawn(subscriber(
                lines,
                writer,
                clock,
                counters.clone(),
                finished.clone(),
                settle,
            ));
        }
    }
    let connect_time = connect_started.elapsed();
    let memory = match (memory_before, rss_kib_sum(&args.server_pid)) {
        (Some(before), Some(after)) => Some(Memory {
            connections: plan.subscriptions.len(),
            kib_per_connection: after.saturating_sub(before) as f64
                / plan.subscriptions.len().max(1) as f64,
        }),
        _ => None,
    };
    if args.hold {
        let held = Held {
            endpoints: &endpoints,
            holds,
            connect_time,
            memory,
        };
        return held.wait(args, finish).await;
    }

    let mut publishers = JoinSet::new();
    for i in 0..plan.publishers {
        let endpoint = &endpoints[i % endpoints.len()];
        let (lines, writer) = conn::open(
            endpoint,
            sources.next(),
            args.token.as_deref(),
            Buffers::Busy,
        )
        .await?;
        let job = Publish {
            templates: templates(&plan.publish_tags, args.size),
            messages: plan.messages,
            rate: args.rate,
            duration: args.duration,
            clock,
            counters: counters.clone(),
        };
        publishers.spawn(job.run(lines, writer));
    }
    let progress = progress_bar(args, &plan, counters.clone());

    let mut sent = 0;
    let mut publish_window: Option<(Duration, Duration)> = None;
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = publishers.join_next().await {
        let done = joined.map_err(join_error)??;
        sent += done.sent;
        errors += done.errors;
        first_error = first_error.or(done.first_error);
        publish_window = Some(match publish_window {
            None => (done.started, done.ended),
            Some((s, e)) => (s.min(done.started), e.max(done.ended)),
        });
    }
    let _ = finish.send(true);

    let mut delivered = 0;
    let mut latency = histogram()?;
    let mut last_delivery = Duration::ZERO;
    while let Some(joined) = subscribers.join_next().await {
        let done = joined.map_err(join_error)??;
        delivered += done.received;
        errors += done.errors;
        first_error = first_error.or(done.first_error);
        last_delivery = last_delivery.max(done.last);
        done.latency.add_to(&mut latency);
    }
    progress.finish_and_clear();

    let (started, ended) = publish_window.unwrap_or_default();
    let expected = sent * plan.fan;
    Ok(Report {
        scenario: args.scenario.name(),
        host: args.hosts.join(","),
        transport: transport(&endpoints),
        publishers: plan.publishers,
        subscribers: plan.subscriptions.len(),
        payload_bytes: args.size,
        messages_sent: sent,
        deliveries_expected: expected,
        delivered,
        publish_seconds: (ended - started).as_secs_f64(),
        delivery_seconds: last_delivery.saturating_sub(started).as_secs_f64(),
        connect_seconds: connect_time.as_secs_f64(),
        latency: Latency::of(&latency),
        errors,
        first_error,
        memory,
        latency_histogram_us: None,
    })
}

fn join_error(e: tokio::task::JoinError) -> BenchError {
    BenchError::Io(std::io::Error::other(format!("a bench task failed: {e}")))
}

/// A publish line with room for the send time, and where that room is.
struct Template {
    line: Vec<u8>,
    stamp_at: usize,
}

fn templates(tag_sets: &[Vec<String>], size: usize) -> Vec<Template> {
    tag_sets
        .iter()
        .map(|tags| {
            let mut line = format!(
                r#"{{"command":"publish","tags":{},"data":""#,
                serde_json::Value::from(tags.clone())
            )
            .into_bytes();
            let stamp_at = line.len();
            line.extend_from_slice(b"~t");
            line.extend_from_slice(&[b'0'; STAMP_DIGITS]);
            line.push(b'~');
            line.resize(stamp_at + size, b'x');
            line.extend_from_slice(b"\"}\n");
            Template { line, stamp_at }
        })
        .collect()
}

fn write_stamp(at: &mut [u8], mut nanos: u64) {
    for digit in at.iter_mut().rev() {
        *digit = b'0' + (nanos % 10) as u8;
        nanos /= 10;
    }
}

struct Publish {
    templates: Vec<Template>,
    messages: u64,
    rate: u64,
    duration: Duration,
    clock: Clock,
    counters: Arc<Counters>,
}

struct Published {
    sent: u64,
    started: Duration,
    ended: Duration,
    errors: u64,
    first_error: Option<String>,
}

impl Publish {
    async fn run(self, lines: Lines, mut writer: Writer) -> Result<Published, BenchError> {
        // Replies are read while publishing: a broker refusing every
        // publish would otherwise fill this connection's queue and stall it.
        let replies = tokio::spawn(publisher_replies(lines));
        let clock = self.clock;
        let started = clock.base.elapsed();
        let mut out = Vec::with_capacity(WRITE_CHUNK + 4096);
        let mut sent = 0u64;
        let mut next = 0usize;
        while sent < self.messages && started + self.duration > clock.base.elapsed() {
            let due = if self.rate == 0 {
                self.messages
            } else {
                let elapsed = clock.base.elapsed().saturating_sub(started);
                let due = (elapsed.as_secs_f64() * self.rate as f64) as u64 + 1;
                if due <= sent {
                    let wait = Duration::from_secs_f64((sent + 1) as f64 / self.rate as f64);
                    tokio::time::sleep_until((clock.base + started + wait).into()).await;
                    continue;
                }
                due.min(self.messages)
            };
            let batch_start = sent;
            while sent < due && out.len() < WRITE_CHUNK {
                let template = &self.templates[next];
                next = (next + 1) % self.templates.len();
                let at = out.len() + template.stamp_at + 2;
                out.extend_from_slice(&template.line);
                write_stamp(&mut out[at..at + STAMP_DIGITS], clock.now());
                sent += 1;
            }
            if let Err(e) = writer.send(&out).await {
                return Err(why_closed(replies, e).await);
            }
            self.counters
                .published
                .fetch_add(sent - batch_start, Ordering::Relaxed);
            out.clear();
        }
        let ended = clock.base.elapsed();
        if let Err(e) = writer.send(b"{\"command\":\"ping\"}\n").await {
            return Err(why_closed(replies, e).await);
        }
        let (errors, first_error) = tokio::time::timeout(REPLY_TIMEOUT, replies)
            .await
            .map_err(|_| BenchError::Timeout(REPLY_TIMEOUT))?
            .map_err(join_error)??;
        Ok(Published {
            sent,
            started,
            ended,
            errors,
            first_error,
        })
    }
}

/// Why a publisher's connection broke under a write (`error`): the error
/// line the broker sent before closing it, when it sent one (a broker out
/// of room refuses a connection so), else `error`.
async fn why_closed(
    replies: tokio::task::JoinHandle<Result<(u64, Option<String>), BenchError>>,
    error: BenchError,
) -> BenchError {
    match tokio::time::timeout(Duration::from_secs(1), replies).await {
        Ok(Ok(Err(refused @ BenchError::Refused { .. }))) => refused,
        _ => error,
    }
}

/// Counts a publisher's error replies until the `pong` that ends its run.
/// A connection closed before it is refused with its first error reply.
async fn publisher_replies(mut lines: Lines) -> Result<(u64, Option<String>), BenchError> {
    let mut errors = 0;
    let mut first = None;
    loop {
        while let Some(line) = lines.next_line() {
            match line {
                Line::Pong => {
                    let first = first.map(|(command, error)| format!("{command}: {error}"));
                    return Ok((errors, first));
                }
                Line::Error { command, error } => {
                    errors += 1;
                    first.get_or_insert((command, error));
                }
                Line::Delivery(_) | Line::Other => {}
            }
        }
        match lines.fill().await {
            Ok(true) => {}
            // Closed or reset: after an error reply, that was the reason.
            ended => {
                return Err(match (first, ended) {
                    (Some((command, error)), _) => BenchError::Refused { command, error },
                    (None, Err(e)) => e,
                    (None, Ok(_)) => BenchError::Closed,
                })
            }
        }
    }
}

/// A subscriber's latencies in microseconds: a short list, and a histogram
/// once the list has grown.
struct Latencies {
    samples: Vec<u64>,
    histogram: Option<Histogram<u64>>,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            samples: Vec::new(),
            histogram: None,
        }
    }

    fn record(&mut self, micros: u64) -> Result<(), BenchError> {
        self.samples.push(micros.max(1));
        if self.samples.len() >= SAMPLES_BEFORE_HISTOGRAM {
            if self.histogram.is_none() {
                self.histogram = Some(histogram()?);
            }
            if let Some(histogram) = &mut self.histogram {
                for sample in self.samples.drain(..) {
                    histogram.saturating_record(sample);
                }
            }
        }
        Ok(())
    }

    fn add_to(&self, total: &mut Histogram<u64>) {
        if let Some(histogram) = &self.histogram {
            // Same bounds on both sides: adding cannot fail.
            let _ = total.add(histogram);
        }
        for &sample in &self.samples {
            total.saturating_record(sample);
        }
    }
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| BenchError::Usage(format!("histogram: {e}")))
}

struct Received {
    received: u64,
    latency: Latencies,
    last: Duration,
    errors: u64,
    first_error: Option<String>,
}

async fn subscriber(
    mut lines: Lines,
    mut writer: Writer,
    clock: Clock,
    counters: Arc<Counters>,
    mut finished: watch::Receiver<bool>,
    settle: Option<Duration>,
) -> Result<Received, BenchError> {
    let stamp = memmem::Finder::new(br#""data":"~t"#);
    let mut done = Received {
        received: 0,
        latency: Latencies::new(),
        last: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    let mut asked = false;
    let mut answered = false;
    loop {
        // Every message in one read arrived at about the same time.
        let elapsed = clock.base.elapsed();
        let now = clock.at(elapsed);
        let mut batch = 0;
        while let Some(line) = lines.next_line() {
            match line {
                Line::Delivery(line) => {
                    batch += 1;
                    if let Some(sent) = stamp.find(line).and_then(|at| read_stamp(&line[at + 10..]))
                    {
                        done.latency.record(now.saturating_sub(sent) / 1000)?;
                    }
                }
                Line::Pong if asked && settle.is_none() => {
                    done.received += batch;
                    counters.delivered.fetch_add(batch, Ordering::Relaxed);
                    return Ok(done);
                }
                Line::Pong if asked => answered = true,
                Line::Error { command, error } => {
                    done.errors += 1;
                    done.first_error
                        .get_or_insert_with(|| format!("{command}: {error}"));
                }
                Line::Pong | Line::Other => {}
            }
        }
        if batch > 0 {
            done.received += batch;
            done.last = elapsed;
            counters.delivered.fetch_add(batch, Ordering::Relaxed);
        }
        if let (true, Some(quiet)) = (answered, settle) {
            match tokio::time::timeout(quiet, lines.fill()).await {
                Err(_) => return Ok(done),
                Ok(more) => {
                    if !more? {
                        return Err(BenchError::Closed);
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            more = lines.fill() => {
                if !more? {
                    return Err(BenchError::Closed);
                }
            }
            changed = finished.changed(), if !asked => {
                if changed.is_err() || *finished.borrow() {
                    // Answered after every delivery already queued for us.
                    writer.send(b"{\"command\":\"ping\"}\n").await?;
                    asked = true;
                }
            }
        }
    }
}

/// `conns --hold`: the subscribed connections, waiting for one message
/// that another process publishes.
struct Held<'a> {
    endpoints: &'a [Endpoint],
    holds: JoinSet<(Lines, Result<Arrived, BenchError>)>,
    connect_time: Duration,
    memory: Option<Memory>,
}

impl Held<'_> {
    /// Says the connections are ready, then waits until each has had a
    /// delivery or `--duration` has passed, and reports what arrived.
    async fn wait(
        mut self,
        args: &BenchArgs,
        finish: watch::Sender<bool>,
    ) -> Result<Report, BenchError> {
        let held = self.holds.len();
        if let Some(path) = &args.ready_file {
            write_ready_file(path, held)?;
        }
        eprintln!("ready {held}");
        let duration = args.duration;
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = finish.send(true);
        });
        let mut delivered = 0;
        let mut errors = 0;
        let mut first_error = None;
        let mut latency = histogram()?;
        // A connection that has had its message stays open until every
        // other has too: closing it would make its broker handle the close
        // while it still delivers to the others.
        let mut done = Vec::with_capacity(held);
        while let Some(joined) = self.holds.join_next().await {
            let (lines, arrived) = joined.map_err(join_error)?;
            done.push(lines);
            match arrived {
                Ok(Arrived::After(micros)) => {
                    delivered += 1;
                    latency.saturating_record(micros.max(1));
                }
                Ok(Arrived::Unstamped) => delivered += 1,
                Ok(Arrived::Nothing) => {}
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let latency_summary = Latency::of(&latency);
        Ok(Report {
            scenario: args.scenario.name(),
            host: args.hosts.join(","),
            transport: transport(self.endpoints),
            publishers: 0,
            subscribers: held,
            payload_bytes: args.size,
            messages_sent: 0,
            deliveries_expected: held as u64,
            delivered,
            publish_seconds: 0.0,
            // One message: from its send stamp to the last arrival.
            delivery_seconds: latency_summary.max_us as f64 / 1e6,
            connect_seconds: self.connect_time.as_secs_f64(),
            latency: latency_summary,
            errors,
            first_error,
            memory: self.memory,
            latency_histogram_us: Some(
                latency
                    .iter_recorded()
                    .map(|v| [v.value_iterated_to(), v.count_at_value()])
                    .collect(),
            ),
        })
    }
}

/// Creates `path` saying `ready HELD`, whole or not at all (written
/// beside it, then renamed), for a script waiting on it.
fn write_ready_file(path: &Path, held: usize) -> Result<(), BenchError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("ready {held}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| {
            BenchError::Usage(format!("cannot write --ready-file {}: {e}", path.display()))
        })
}

/// What one held connection got.
enum Arrived {
    /// A delivery, this many microseconds after its send stamp.
    After(u64),
    /// A delivery without a stamp (not a bench's message).
    Unstamped,
    /// Nothing before `--duration` was up.
    Nothing,
}

/// A held connection: reads until its first delivery, or until `finished`;
/// gives the connection back, still open.
async fn hold(
    mut lines: Lines,
    clock: Clock,
    finished: watch::Receiver<bool>,
) -> (Lines, Result<Arrived, BenchError>) {
    let arrived = first_delivery(&mut lines, clock, finished).await;
    (lines, arrived)
}

async fn first_delivery(
    lines: &mut Lines,
    clock: Clock,
    mut finished: watch::Receiver<bool>,
) -> Result<Arrived, BenchError> {
    let stamp = memmem::Finder::new(br#""data":"~t"#);
    loop {
        let now = clock.now();
        while let Some(line) = lines.next_line() {
            match line {
                Line::Delivery(line) => {
                    return Ok(
                        match stamp.find(line).and_then(|at| read_stamp(&line[at + 10..])) {
                            Some(sent) => Arrived::After(now.saturating_sub(sent) / 1000),
                            None => Arrived::Unstamped,
                        },
                    );
                }
                Line::Error { command, error } => {
                    return Err(BenchError::Refused { command, error })
                }
                Line::Pong | Line::Other => {}
            }
        }
        tokio::select! {
            more = lines.fill() => {
                if !more? {
                    return Err(BenchError::Closed);
                }
            }
            changed = finished.changed() => {
                if changed.is_err() || *finished.borrow() {
                    return Ok(Arrived::Nothing);
                }
            }
        }
    }
}

fn transport(endpoints: &[Endpoint]) -> &'static str {
    if endpoints.iter().any(|e| e.ws_url.is_some()) {
        "websocket"
    } else {
        "tcp"
    }
}

fn read_stamp(digits: &[u8]) -> Option<u64> {
    let digits = digits.get(..STAMP_DIGITS)?;
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
    })
}

fn progress_bar(args: &BenchArgs, plan: &Plan, counters: Arc<Counters>) -> ProgressBar {
    let total = plan.messages * plan.publishers as u64;
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        // Draws only when stderr is a terminal.
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:30} {pos}/{len} published {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticker = bar.clone();
    tokio::spawn(async move {
        while !ticker.is_finished() {
            ticker.set_position(counters.published.load(Ordering::Relaxed));
            ticker.set_message(format!(
                "· {} delivered",
                counters.delivered.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    bar
}

/// The resident memory of the processes together; `None` without any or
/// when one cannot be read.
pub(crate) fn rss_kib_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| rss_kib(pid)).sum()
}

/// The resident memory of a process, from `/proc` (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_the_wall_clock_and_never_go_back() {
        let wall = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        let before = wall();
        let clock = Clock::start();
        let first = clock.now();
        let after = wall();
        assert!(
            before <= first && first <= after,
            "{before} {first} {after}"
        );
        // Two clocks started in one process (or two processes on one
        // machine) agree to within the wall clock's reading.
        let other = Clock::start();
        assert!(other.now().abs_diff(clock.now()) < 1_000_000_000);
        let mut last = first;
        for _ in 0..1000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
        // Still 20 digits (the format) for centuries.
        assert!(last.to_string().len() <= STAMP_DIGITS);
        assert_eq!(clock.at(Duration::from_nanos(5)), clock.epoch_ns + 5);
    }

    #[test]
    fn stamps_round_trip_inside_a_valid_line() {
        let t = &templates(&[vec!["a".into(), "b\"".into()]], 40)[0];
        let mut line = t.line.clone();
        write_stamp(
            &mut line[t.stamp_at + 2..t.stamp_at + 2 + STAMP_DIGITS],
            1_234_567,
        );
        let value: serde_json::Value = serde_json::from_slice(&line).expect("json");
        let data = value["data"].as_str().expect("data");
        assert_eq!(data.len(), 40);
        assert!(data.starts_with("~t00000000000001234567~x"));
        assert_eq!(value["tags"], serde_json::json!(["a", "b\""]));
        let at = memmem::find(&line, br#""data":"~t"#).expect("stamp");
        assert_eq!(read_stamp(&line[at + 10..]), Some(1_234_567));
        assert_eq!(read_stamp(b"12x"), None);
    }
}
