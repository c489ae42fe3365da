//! One scenario against one target, through its protocol adapter and
//! transport, so Mist, nats-server, redis-server and the raw relay are
//! measured by the same client code. Prints one JSON line.
//!
//! Every payload starts with `~t<20-digit ns since start>~`, so each
//! delivery carries its send time; all clients share one clock (one
//! process). Subscribers read line by line and take the clock per line:
//! the driver is the same for every target, so what differs between two
//! targets' figures is the target.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::watch;

use crate::conn::{Dialer, Reader, Transport, Writer};
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
    /// A reconnect storm: a publisher and a subscriber already connected,
    /// publishing at --rate; then --subs clients connect at once and each
    /// subscribes to its own topic. The time until every one is subscribed,
    /// the failures, and the paced pair's latency during the storm. The
    /// storming clients run in a process of their own (`storm-clients`),
    /// so the pair's latency is not the driver queueing it behind them.
    Storm,
    /// The storm's clients alone (run by `storm`): prints `started`, then
    /// one JSON line once every client is subscribed or has failed, and
    /// holds the connections until its stdin closes.
    StormClients,
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
    /// Subscribers (fanout, routing), idle connections (conns) or storm
    /// clients (storm).
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Messages published (not storm: its publisher runs until the storm
    /// is over).
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
    /// latency without a backlog); the storm's paced pair needs it.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How every connection reaches the target.
    #[arg(long, value_enum, default_value = "plain")]
    pub transport: Transport,
    /// The certificate (PEM) to trust, with --transport tls.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The WebSocket path, with --transport ws [default: Mist's
    /// /subscribe/websocket, / for nats-server].
    #[arg(long)]
    pub ws_path: Option<String>,
    /// Storm: how long the paced pair runs before the storm, milliseconds
    /// (its latency then is the baseline).
    #[arg(long, default_value_t = 500)]
    pub warmup_ms: u64,
}

/// `~t` + 20 digits + `~`.
const STAMP_LEN: usize = 23;
/// One delivery in this many is timed (floods; paced storm pairs time every one).
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
    transport: Transport,
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
    transport: Transport,
    scenario: Scenario,
    conns: usize,
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    kib_per_conn: Option<f64>,
}

/// The figures of a storm run.
#[derive(Debug, Serialize)]
struct Storm {
    proto: Proto,
    transport: Transport,
    scenario: Scenario,
    /// Clients that tried to connect and subscribe.
    clients: usize,
    /// Of them, the ones whose subscription was confirmed.
    subscribed: usize,
    /// The ones that failed (connect, handshake, subscribe, or the cap).
    errors: usize,
    first_error: Option<String>,
    /// From the storm's start until the last client was subscribed.
    storm_ms: f64,
    /// Each client's time from the storm's start until it was subscribed.
    subscribe_p50_ms: Option<f64>,
    subscribe_p99_ms: Option<f64>,
    /// The paced pair: its rate, what it published and what arrived.
    rate: u64,
    size: usize,
    msgs: usize,
    delivered: usize,
    delivered_fraction: f64,
    /// Latency of the paced messages sent during the storm.
    lat_samples: usize,
    lat_p50_us: Option<f64>,
    lat_p99_us: Option<f64>,
    lat_max_us: Option<f64>,
    /// Latency of the paced messages sent before it.
    base_p50_us: Option<f64>,
    base_p99_us: Option<f64>,
}

/// A live subscription. The write half is kept: dropping it would shut
/// the connection's sending side, which some targets take as a goodbye.
struct Subscriber {
    read: Reader,
    _write: Writer,
}

/// Which of the published messages a subscriber gets.
#[derive(Clone, Copy)]
enum Share {
    /// Every one (one topic).
    All,
    /// Routing subscriber `i` of `of`: messages i, i+of, ...
    Every { i: usize, of: usize },
}

impl Share {
    fn of(self, published: usize) -> usize {
        match self {
            Share::All => published,
            Share::Every { i, of } => published / of + usize::from(i < published % of),
        }
    }
}

struct Received {
    count: usize,
    last: Option<Instant>,
    /// (send time in ns since start, latency in ns) of the timed deliveries.
    samples: Vec<(u64, u64)>,
}

/// What a publisher sends, and when it stops.
#[derive(Clone)]
struct Plan {
    proto: Proto,
    size: usize,
    /// At most this many messages.
    msgs: usize,
    /// Msgs/s; 0 floods.
    rate: u64,
    topics: Arc<[String]>,
    start: Instant,
    cap: Instant,
    /// Set: stop after the current message.
    stop: Arc<AtomicBool>,
}

/// What a publisher did; its connection, still open.
struct Published {
    count: usize,
    secs: f64,
    t0: Instant,
    _writer: Writer,
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
    let dialer = Dialer::new(
        a.transport,
        a.proto,
        a.tls_ca.as_deref(),
        a.ws_path.as_deref(),
    )?;
    let start = Instant::now();
    let cap = start + Duration::from_secs(a.timeout);

    match a.scenario {
        Scenario::Conns => return conns(a, &dialer, subs).await,
        Scenario::Storm => return storm(a, &dialer, subs, start, cap).await,
        Scenario::StormClients => return storm_clients(a, &dialer, subs, cap).await,
        _ => {}
    }

    let routing = a.scenario == Scenario::Routing;
    if routing && a.proto == Proto::Raw {
        bail!("the raw relay cannot route");
    }
    let topics: Arc<[String]> = if routing {
        (0..subs).map(routing_topic).collect()
    } else {
        Arc::from([TOPIC.to_owned()])
    };
    let mut subscribers = Vec::with_capacity(subs);
    for i in 0..subs {
        subscribers.push(subscribe(a.proto, &dialer, &a.addr, &topics[i % topics.len()]).await?);
    }
    let (published, publishing) = watch::channel(None);
    let receivers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let share = if routing {
                Share::Every { i, of: subs }
            } else {
                Share::All
            };
            tokio::spawn(receive(
                s,
                share,
                SAMPLE_EVERY,
                start,
                cap,
                publishing.clone(),
            ))
        })
        .collect();

    // The publisher's connection stays open until the deliveries are in:
    // a target may drop what a closed connection published.
    let plan = Plan {
        proto: a.proto,
        size: a.size,
        msgs: a.msgs,
        rate: a.rate,
        topics,
        start,
        cap,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let done = publish(plan, &dialer, &a.addr).await?;
    let _ = published.send(Some(done.count));

    let mut delivered = 0usize;
    let mut last = done.t0;
    let mut lat = Vec::new();
    for receiver in receivers {
        let r = receiver
            .await
            .map_err(|e| anyhow!("a subscriber failed: {e}"))?;
        delivered += r.count;
        if let Some(l) = r.last {
            last = last.max(l);
        }
        lat.extend(r.samples.into_iter().map(|(_, ns)| ns));
    }
    lat.sort_unstable();
    let secs = (last - done.t0).as_secs_f64().max(1e-9);
    let expected = if routing {
        done.count
    } else {
        done.count * subs
    };
    let line = Throughput {
        proto: a.proto,
        transport: a.transport,
        scenario: a.scenario,
        subs,
        msgs: a.msgs,
        size: a.size,
        rate: a.rate,
        publish_per_s: (done.count as f64 / done.secs).round(),
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

/// The conns scenario: `subs` idle subscribed connections, the target's
/// memory before and after.
async fn conns(a: &LoadArgs, dialer: &Dialer, subs: usize) -> anyhow::Result<()> {
    let before = a.broker_pid.and_then(rss_kib);
    let mut held = Vec::with_capacity(subs);
    for _ in 0..subs {
        held.push(subscribe(a.proto, dialer, &a.addr, TOPIC).await?);
    }
    // Let the target settle what each connection cost it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = a.broker_pid.and_then(rss_kib);
    let line = Conns {
        proto: a.proto,
        transport: a.transport,
        scenario: a.scenario,
        conns: subs,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_conn: before
            .zip(after)
            .map(|(b, x)| round2((x as f64 - b as f64) / subs as f64)),
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// What the storm's clients did: the figures `storm-clients` prints.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Stormed {
    /// Clients that tried to connect and subscribe.
    clients: usize,
    /// Of them, the ones whose subscription was confirmed.
    subscribed: usize,
    /// The ones that failed (connect, handshake, subscribe, or the cap).
    errors: usize,
    first_error: Option<String>,
    /// From the storm's start until the last client was subscribed.
    storm_ms: f64,
    /// Each client's time from the storm's start until it was subscribed.
    subscribe_p50_ms: Option<f64>,
    subscribe_p99_ms: Option<f64>,
}

/// The storm's clients (see [`Scenario::StormClients`]).
async fn storm_clients(
    a: &LoadArgs,
    dialer: &Dialer,
    clients: usize,
    cap: Instant,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    println!("started");
    std::io::stdout().flush()?;
    // Everyone at once: each client is its own task from the start.
    let storm_start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (dialer, addr, proto) = (dialer.clone(), a.addr.clone(), a.proto);
            tokio::spawn(async move {
                let topic = routing_topic(i);
                let subscribed = subscribe(proto, &dialer, &addr, &topic);
                match tokio::time::timeout_at(cap.into(), subscribed).await {
                    Ok(Ok(sub)) => Ok((Instant::now(), sub)),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err("not subscribed within --timeout".to_owned()),
                }
            })
        })
        .collect();
    let mut held = Vec::with_capacity(clients);
    let mut took = Vec::with_capacity(clients);
    let (mut errors, mut first_error) = (0, None);
    for task in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((at, sub)) => {
                took.push(u64::try_from((at - storm_start).as_nanos()).unwrap_or(u64::MAX));
                held.push(sub);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    took.sort_unstable();
    let ms = |us: Option<f64>| us.map(|us| round2(us / 1000.0));
    let line = Stormed {
        clients,
        subscribed: took.len(),
        errors,
        first_error,
        storm_ms: round2(took.last().copied().unwrap_or(0) as f64 / 1e6),
        subscribe_p50_ms: ms(percentile_us(&took, 0.5)),
        subscribe_p99_ms: ms(percentile_us(&took, 0.99)),
    };
    println!("{}", serde_json::to_string(&line)?);
    std::io::stdout().flush()?;
    // Hold the connections until the pair is done.
    let _ =
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await;
    drop(held);
    Ok(())
}

/// What the `storm-clients` process says, and when this process heard it.
enum Heard {
    Started(Instant),
    Done(String),
}

/// The storm scenario (see [`Scenario::Storm`]).
async fn storm(
    a: &LoadArgs,
    dialer: &Dialer,
    clients: usize,
    start: Instant,
    cap: Instant,
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    if a.rate == 0 {
        bail!("the storm's paced pair needs --rate");
    }
    let paced = subscribe(a.proto, dialer, &a.addr, TOPIC).await?;
    let (published, publishing) = watch::channel(None);
    let receiver = tokio::spawn(receive(paced, Share::All, 1, start, cap, publishing));
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Plan {
        proto: a.proto,
        size: a.size,
        msgs: usize::MAX,
        rate: a.rate,
        topics: Arc::from([TOPIC.to_owned()]),
        start,
        cap,
        stop: stop.clone(),
    };
    let publisher = {
        let (dialer, addr) = (dialer.clone(), a.addr.clone());
        tokio::spawn(async move { publish(plan, &dialer, &addr).await })
    };
    tokio::time::sleep(Duration::from_millis(a.warmup_ms)).await;

    let mut command = Command::new(std::env::current_exe()?);
    command
        .args([
            "load",
            "--scenario",
            "storm-clients",
            "--proto",
            a.proto.name(),
        ])
        .args(["--addr", &a.addr, "--subs", &clients.to_string()])
        .args(["--transport", a.transport.name()])
        .args(["--timeout", &a.timeout.to_string()]);
    if let Some(ca) = &a.tls_ca {
        command.arg("--tls-ca").arg(ca);
    }
    if let Some(path) = &a.ws_path {
        command.args(["--ws-path", path]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the storm's clients")?;
    let stdout = child.stdout.take().context("the storm's stdout")?;
    let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let said = if line.trim() == "started" {
                Heard::Started(at)
            } else {
                Heard::Done(line)
            };
            if heard.send(said).is_err() {
                break;
            }
        }
    });
    let (mut storm_start, mut stormed) = (None, None);
    while let Some(said) = hearing.recv().await {
        match said {
            Heard::Started(at) => storm_start = Some(at),
            Heard::Done(line) => {
                stormed = Some(line);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let done = publisher
        .await
        .map_err(|e| anyhow!("the publisher failed: {e}"))?;
    let r = receiver_result(done, &published, receiver).await;
    // Closing its stdin lets the storm's clients go.
    drop(child.stdin.take());
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let (done, r) = r?;
    let (Some(storm_start), Some(stormed)) = (storm_start, stormed) else {
        bail!("the storm's clients ended ({status}) without their figures");
    };
    let stormed: Stormed = serde_json::from_str(&stormed)
        .with_context(|| format!("the storm's clients said {stormed:?}"))?;

    let since = |t: Instant| u64::try_from((t - start).as_nanos()).unwrap_or(u64::MAX);
    let from = since(storm_start);
    let to = from + (stormed.storm_ms * 1e6) as u64;
    let pick = |keep: &dyn Fn(u64) -> bool| {
        let mut ns: Vec<u64> = r
            .samples
            .iter()
            .filter(|(sent, _)| keep(*sent))
            .map(|&(_, ns)| ns)
            .collect();
        ns.sort_unstable();
        ns
    };
    let during = pick(&|sent| (from..=to).contains(&sent));
    let before = pick(&|sent| sent < from);
    let line = Storm {
        proto: a.proto,
        transport: a.transport,
        scenario: a.scenario,
        clients: stormed.clients,
        subscribed: stormed.subscribed,
        errors: stormed.errors,
        first_error: stormed.first_error,
        storm_ms: stormed.storm_ms,
        subscribe_p50_ms: stormed.subscribe_p50_ms,
        subscribe_p99_ms: stormed.subscribe_p99_ms,
        rate: a.rate,
        size: a.size,
        msgs: done.count,
        delivered: r.count,
        delivered_fraction: r.count as f64 / done.count.max(1) as f64,
        lat_samples: during.len(),
        lat_p50_us: percentile_us(&during, 0.5),
        lat_p99_us: percentile_us(&during, 0.99),
        lat_max_us: percentile_us(&during, 1.0),
        base_p50_us: percentile_us(&before, 0.5),
        base_p99_us: percentile_us(&before, 0.99),
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// Tells the receiver how many were published and waits for it.
async fn receiver_result(
    done: anyhow::Result<Published>,
    published: &watch::Sender<Option<usize>>,
    receiver: tokio::task::JoinHandle<Received>,
) -> anyhow::Result<(Published, Received)> {
    let done = done?;
    let _ = published.send(Some(done.count));
    let r = receiver
        .await
        .map_err(|e| anyhow!("the paced subscriber failed: {e}"))?;
    Ok((done, r))
}

/// Connects a publisher and publishes as `plan` says.
async fn publish(plan: Plan, dialer: &Dialer, addr: &str) -> anyhow::Result<Published> {
    let (read, mut write) = dialer
        .dial(plan.proto, addr)
        .await
        .context("connecting the publisher")?;
    write.write_all(plan.proto.publisher_hello()).await?;
    // Drain whatever the target answers the publisher (redis sends a
    // count per PUBLISH): unread, it would fill and stall the connection.
    tokio::spawn(read.drain());
    let pad = "x".repeat(plan.size - STAMP_LEN);
    let t0 = Instant::now();
    let mut out = String::with_capacity(WRITE_CHUNK * 2);
    let mut payload = String::with_capacity(plan.size + 32);
    let mut count = 0;
    while count < plan.msgs && !plan.stop.load(Ordering::Relaxed) {
        payload.clear();
        let _ = write!(
            payload,
            "~t{:020}~{pad}",
            (Instant::now() - plan.start).as_nanos()
        );
        let topic = &plan.topics[count % plan.topics.len()];
        plan.proto.encode_publish(topic, &payload, &mut out);
        // Paced: message i is due at i / rate seconds.
        if let Some(due_ns) = (count as u64 * 1_000_000_000).checked_div(plan.rate) {
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
        count += 1;
        if Instant::now() >= plan.cap {
            break;
        }
    }
    write.write_all(out.as_bytes()).await?;
    Ok(Published {
        count,
        secs: t0.elapsed().as_secs_f64().max(1e-9),
        t0,
        _writer: write,
    })
}

/// Connects and subscribes; returns once the target has confirmed the
/// subscription.
async fn subscribe(
    proto: Proto,
    dialer: &Dialer,
    addr: &str,
    topic: &str,
) -> anyhow::Result<Subscriber> {
    let (mut read, mut write) = dialer
        .dial(proto, addr)
        .await
        .context("connecting a subscriber")?;
    write
        .write_all(proto.subscribe_request(topic).as_bytes())
        .await
        .context("sending the subscribe")?;
    let mut line = Vec::new();
    loop {
        if read.read_line(&mut line).await? == 0 {
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

/// Counts (and times one in `sample_every` of) the deliveries until the
/// subscriber has its share of what was published (`published` says how
/// many once the publisher is done), nothing came for [`IDLE_END`], or the
/// cap.
async fn receive(
    mut sub: Subscriber,
    share: Share,
    sample_every: usize,
    start: Instant,
    cap: Instant,
    mut published: watch::Receiver<Option<usize>>,
) -> Received {
    let mut res = Received {
        count: 0,
        last: None,
        samples: Vec::new(),
    };
    let mut line = Vec::with_capacity(512);
    let mut want = None;
    let mut deadline = cap;
    while want.is_none_or(|w| res.count < w) {
        // A partial line stays in `line` when another branch wins, and the
        // next read goes on with it.
        tokio::select! {
            read = sub.read.read_until_newline(&mut line) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                let at = Instant::now();
                if let Some(sent) = stamp(&line) {
                    if res.count % sample_every == 0 {
                        let since = u64::try_from((at - start).as_nanos()).unwrap_or(u64::MAX);
                        res.samples.push((sent, since.saturating_sub(sent)));
                    }
                    res.count += 1;
                    res.last = Some(at);
                }
                line.clear();
                if want.is_some() {
                    deadline = (at + IDLE_END).min(cap);
                }
            }
            changed = published.changed(), if want.is_none() => {
                // A publisher that died without a count: stop at what came.
                let total = match changed {
                    Ok(()) => *published.borrow_and_update(),
                    Err(_) => None,
                };
                let total = total.unwrap_or(0);
                want = Some(share.of(total));
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
