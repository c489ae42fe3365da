//! `mist-compare run`: starts the targets, runs the scenarios against each
//! in turn, collects the JSON lines and prints the summary.
//!
//! The order matters. Memory per connection is measured first, on each
//! target while it is fresh: after a flood the allocator keeps the pages
//! the queues used, and new connections then cost nothing visible. The
//! throughput runs then go target after target within each round, so a
//! round's figures share the machine's weather. A storm goes last in a
//! target's round, and the next target waits a second for its 10,000
//! connections to close.
//!
//! `--transport tls` makes one self-signed P-256 certificate (rcgen) for
//! `localhost` and 127.0.0.1 in the output directory, serves it from Mist's
//! `tls://` listener and `nats-server --tls`, and has the driver trust it
//! alone. `--transport ws` uses Mist's `ws://` listener and nats-server's
//! websocket listener (`no_tls`); `--transport ws-lines` the same, Mist's
//! clients asking for the `mist.lines` subprotocol (several lines per
//! frame). Redis and the raw relay have neither, so those runs are Mist and
//! nats-server only.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::conn::{Transport, TLS_NAME};
use crate::proto::Proto;
use crate::summary;

/// The brokers `run` can compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Target {
    Mist,
    Nats,
    Redis,
    Raw,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Mist => "mist",
            Target::Nats => "nats",
            Target::Redis => "redis",
            Target::Raw => "raw",
        }
    }

    fn proto(self) -> Proto {
        match self {
            Target::Mist => Proto::Mist,
            Target::Nats => Proto::Nats,
            Target::Redis => Proto::Redis,
            Target::Raw => Proto::Raw,
        }
    }
}

/// The scenarios `run` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// 1 publisher → --subs subscribers on one topic, flood.
    Fanout,
    /// 1 → 1, flood: throughput and latency under a backlog.
    Pair,
    /// 1 → 10 at 20,000 msgs/s: latency without a backlog.
    Paced,
    /// 1 → --route-subs subscribers each on its own topic; message i to
    /// topic i mod --route-subs (one match each). Not for the raw relay.
    Routing,
    /// --conns idle subscribed connections on a fresh target: its memory
    /// per connection. Not for the raw relay.
    Conns,
    /// A reconnect storm: --storm-clients connect at once and each
    /// subscribes to its own topic, while a pair connected before it runs
    /// at --storm-rate msgs/s. Time until all are subscribed, failures, the
    /// pair's latency during it. Not for the raw relay.
    Storm,
}

/// Flags of `mist-compare run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The `mist` binary to measure (a release build); without it only the
    /// peers run.
    #[arg(long)]
    pub mist_bin: Option<PathBuf>,
    /// Rounds of the throughput scenarios; the summary gives medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Targets, comma separated [default: all; mist needs --mist-bin].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Vec<Target>,
    /// Scenarios, comma separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Messages in a fanout run.
    #[arg(long, default_value_t = 20_000)]
    pub fanout_msgs: usize,
    /// Messages in a pair run.
    #[arg(long, default_value_t = 300_000)]
    pub pair_msgs: usize,
    /// Fanout subscribers.
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Idle connections of the conns scenario.
    #[arg(long, default_value_t = 2_000)]
    pub conns: usize,
    /// Routing subscribers, each on its own topic (10000 for the large case).
    #[arg(long, default_value_t = 1_000)]
    pub route_subs: usize,
    /// Messages in a routing run.
    #[arg(long, default_value_t = 200_000)]
    pub route_msgs: usize,
    /// Messages in a paced run (10 subscribers, 20,000 msgs/s).
    #[arg(long, default_value_t = 40_000)]
    pub paced_msgs: usize,
    /// Clients of the storm scenario (fewer if the open-files limit cannot
    /// hold them; the run says so and the results give the number used).
    #[arg(long, default_value_t = 10_000)]
    pub storm_clients: usize,
    /// The storm's paced pair, msgs/s.
    #[arg(long, default_value_t = 5_000)]
    pub storm_rate: u64,
    /// How every client reaches the targets: plain TCP, TLS, or WebSocket.
    /// With tls or ws only Mist and nats-server run.
    #[arg(long, value_enum, default_value = "plain")]
    pub transport: Transport,
    /// Wall-clock cap of one load run, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Where results.jsonl, summary.md and the targets' logs go
    /// [default: a new temporary directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The nats-server program.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// The redis-server program.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
}

/// Paced runs: subscribers and rate.
const PACED: (usize, u64) = (10, 20_000);
/// How long a target may take to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A target process, killed when dropped.
struct Running {
    target: Target,
    child: Child,
    /// Where clients connect (the websocket listener, with ws).
    addr: SocketAddr,
}

/// How the targets are reached, for the load runs.
struct Reach {
    transport: Transport,
    /// The certificate the targets serve (tls).
    cert: Option<Cert>,
}

/// A certificate and its key, as PEM files.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

/// nats-server's TLS and WebSocket handshake timeout: Mist's default
/// `--handshake-timeout`.
const HANDSHAKE_SECS: u64 = 10;

/// Sockets a driver or target needs besides its clients'.
const FD_MARGIN: usize = 1024;

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let targets = chosen_targets(args)?;
    let scenarios: BTreeSet<Scenario> = if args.scenarios.is_empty() {
        Scenario::value_variants().iter().copied().collect()
    } else {
        args.scenarios.iter().copied().collect()
    };
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("mist-compare-{}", std::process::id())),
    };
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // The targets inherit the limit: 10,000 routing subscribers are
    // 10,000 descriptors in the driver and as many in the target.
    let mut most = args.conns.max(args.route_subs).max(args.subs);
    crate::raise_fd_limit(most + FD_MARGIN)?;
    let storm_clients = if scenarios.contains(&Scenario::Storm) {
        let limit = crate::fd_limit_toward(args.storm_clients + FD_MARGIN)?;
        let fits = args
            .storm_clients
            .min(limit.saturating_sub(FD_MARGIN))
            .max(1);
        if fits < args.storm_clients {
            eprintln!(
                "mist-compare: the open-files limit is {limit}: the storm uses {fits} clients, \
                 not {} (raise the hard limit with `ulimit -Hn` as root for more)",
                args.storm_clients
            );
        }
        most = most.max(fits);
        fits
    } else {
        0
    };
    let me = std::env::current_exe().context("finding mist-compare's own path")?;
    let reach = Reach {
        transport: args.transport,
        cert: match args.transport {
            Transport::Tls => Some(make_cert(&out)?),
            Transport::Plain | Transport::Ws | Transport::WsLines => None,
        },
    };

    let mut running = Vec::new();
    for &target in &targets {
        running.push(start(target, args, &reach, &me, &out, most)?);
    }
    let results_path = out.join("results.jsonl");
    let mut results = File::create(&results_path)?;
    let mut record = |target: Target, paced: bool, line: Value| -> anyhow::Result<()> {
        let mut row = serde_json::Map::new();
        row.insert("target".into(), target.name().into());
        if paced {
            row.insert("paced".into(), true.into());
        }
        if let Value::Object(fields) = line {
            row.extend(fields);
        }
        let row = Value::Object(row);
        eprintln!("{row}");
        writeln!(results, "{row}")?;
        Ok(())
    };

    if scenarios.contains(&Scenario::Conns) {
        for r in running.iter().filter(|r| r.target != Target::Raw) {
            let pid = r.child.id().to_string();
            let conns = args.conns.to_string();
            let line = load(
                &me,
                r,
                args,
                &reach,
                &[
                    "--scenario",
                    "conns",
                    "--subs",
                    &conns,
                    "--broker-pid",
                    &pid,
                ],
            )?;
            record(r.target, false, line)?;
        }
        // Let the connections close before the floods.
        std::thread::sleep(Duration::from_secs(1));
    }
    let (fanout_msgs, pair_msgs, subs) = (
        args.fanout_msgs.to_string(),
        args.pair_msgs.to_string(),
        args.subs.to_string(),
    );
    let (route_subs, route_msgs) = (args.route_subs.to_string(), args.route_msgs.to_string());
    let storm = (storm_clients.to_string(), args.storm_rate.to_string());
    let paced = (
        PACED.0.to_string(),
        args.paced_msgs.to_string(),
        PACED.1.to_string(),
    );
    for round in 1..=args.runs {
        eprintln!("mist-compare: round {round} of {}", args.runs);
        for r in &running {
            if scenarios.contains(&Scenario::Fanout) {
                let line = load(
                    &me,
                    r,
                    args,
                    &reach,
                    &[
                        "--scenario",
                        "fanout",
                        "--subs",
                        &subs,
                        "--msgs",
                        &fanout_msgs,
                    ],
                )?;
                record(r.target, false, line)?;
            }
            if scenarios.contains(&Scenario::Pair) {
                let line = load(
                    &me,
                    r,
                    args,
                    &reach,
                    &["--scenario", "pair", "--msgs", &pair_msgs],
                )?;
                record(r.target, false, line)?;
            }
            if scenarios.contains(&Scenario::Paced) {
                let line = load(
                    &me,
                    r,
                    args,
                    &reach,
                    &[
                        "--scenario",
                        "fanout",
                        "--subs",
                        &paced.0,
                        "--msgs",
                        &paced.1,
                        "--rate",
                        &paced.2,
                    ],
                )?;
                record(r.target, true, line)?;
            }
            if scenarios.contains(&Scenario::Routing) && r.target != Target::Raw {
                let line = load(
                    &me,
                    r,
                    args,
                    &reach,
                    &[
                        "--scenario",
                        "routing",
                        "--subs",
                        &route_subs,
                        "--msgs",
                        &route_msgs,
                    ],
                )?;
                record(r.target, false, line)?;
            }
            if scenarios.contains(&Scenario::Storm) && r.target != Target::Raw {
                let line = load(
                    &me,
                    r,
                    args,
                    &reach,
                    &[
                        "--scenario",
                        "storm",
                        "--subs",
                        &storm.0,
                        "--rate",
                        &storm.1,
                    ],
                )?;
                record(r.target, false, line)?;
                // Let its connections close before the next target's runs.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    drop(running);
    let table = summary::table(&summary::read(&results_path)?);
    println!("{table}");
    fs::write(out.join("summary.md"), &table)?;
    println!("results: {}", results_path.display());
    Ok(())
}

fn chosen_targets(args: &RunArgs) -> anyhow::Result<Vec<Target>> {
    let mut targets: BTreeSet<Target> = args.targets.iter().copied().collect();
    if targets.is_empty() {
        targets = Target::value_variants().iter().copied().collect();
        if args.mist_bin.is_none() {
            targets.remove(&Target::Mist);
        }
        if args.transport != Transport::Plain {
            targets.remove(&Target::Redis);
            targets.remove(&Target::Raw);
        }
    }
    if args.transport != Transport::Plain {
        if let Some(t) = targets
            .iter()
            .find(|t| matches!(t, Target::Redis | Target::Raw))
        {
            bail!(
                "--transport {} is for mist and nats only, not {}",
                args.transport.name(),
                t.name()
            );
        }
    }
    if targets.contains(&Target::Mist) && args.mist_bin.is_none() {
        bail!(
            "--targets mist needs --mist-bin (cargo build --release -p mist: target/release/mist)"
        );
    }
    for (target, program) in [
        (Target::Nats, &args.nats_server),
        (Target::Redis, &args.redis_server),
    ] {
        if targets.contains(&target) && !on_path(program) {
            bail!(
                "{} not found: apt-get install -y nats-server redis-server (scripts/compare does)",
                program.display()
            );
        }
    }
    Ok(targets.into_iter().collect())
}

fn on_path(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// A loopback port nobody listens on now.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Makes a self-signed P-256 certificate for `localhost` and 127.0.0.1
/// (no CA: the driver trusts this one certificate) in `dir`.
fn make_cert(dir: &Path) -> anyhow::Result<Cert> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(vec![TLS_NAME.to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, TLS_NAME);
    let cert = params.self_signed(&key)?;
    let files = Cert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    fs::write(&files.cert, cert.pem())?;
    fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

fn start(
    target: Target,
    args: &RunArgs,
    reach: &Reach,
    me: &Path,
    out: &Path,
    clients: usize,
) -> anyhow::Result<Running> {
    let addr = free_port()?;
    let port = addr.port().to_string();
    let mut command = match target {
        Target::Nats => {
            let mut c = Command::new(&args.nats_server);
            // Over TLS and WebSocket nats-server gets Mist's default
            // handshake timeout (10 s; its own is 2 s): a storm of 10,000
            // TLS handshakes on two cores takes longer than 2 s, and the
            // storm would measure the timeout instead of the broker.
            match (&reach.transport, &reach.cert) {
                (Transport::Tls, Some(cert)) => {
                    let conf = out.join("nats-tls.conf");
                    fs::write(
                        &conf,
                        format!(
                            "listen: \"{addr}\"\ntls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: {HANDSHAKE_SECS}\n}}\n",
                            cert.cert.display().to_string(),
                            cert.key.display().to_string()
                        ),
                    )?;
                    c.arg("-c").arg(conf);
                }
                (Transport::Ws | Transport::WsLines, _) => {
                    // Clients come in on the websocket listener; the plain
                    // one is required and unused.
                    let conf = out.join("nats-ws.conf");
                    fs::write(
                        &conf,
                        format!(
                            "listen: \"127.0.0.1:{}\"\nwebsocket {{\n  listen: \"{addr}\"\n  no_tls: true\n  handshake_timeout: \"{HANDSHAKE_SECS}s\"\n}}\n",
                            free_port()?.port()
                        ),
                    )?;
                    c.arg("-c").arg(conf);
                }
                _ => {
                    c.args(["-a", "127.0.0.1", "-p", &port]);
                }
            }
            c
        }
        Target::Redis => {
            let mut c = Command::new(&args.redis_server);
            // No persistence and no pub/sub output limit: a flood must not
            // disconnect a subscriber that is behind. Enough clients for
            // the largest run (redis's default is 10,000).
            c.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--client-output-buffer-limit", "pubsub 0 0 0"])
            .args(["--maxclients", &(clients + 1024).max(10_000).to_string()]);
            c
        }
        Target::Raw => {
            let mut c = Command::new(me);
            c.args(["relay", &addr.to_string()]);
            c
        }
        Target::Mist => {
            let Some(bin) = &args.mist_bin else {
                bail!("no --mist-bin");
            };
            let scheme = match reach.transport {
                Transport::Plain => "tcp",
                Transport::Tls => "tls",
                Transport::Ws | Transport::WsLines => "ws",
            };
            let mut c = Command::new(bin);
            c.args([
                "--server",
                "--listeners",
                &format!("{scheme}://{addr}"),
                "--log-level",
                "ERROR",
            ]);
            if let Some(cert) = &reach.cert {
                c.arg("--tls-cert")
                    .arg(&cert.cert)
                    .arg("--tls-key")
                    .arg(&cert.key);
            }
            c
        }
    };
    let log = File::create(out.join(format!("{}.log", target.name())))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", target.name()))?;
    let mut running = Running {
        target,
        child,
        addr,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = running.child.try_wait()? {
            bail!(
                "{} exited ({status}) before listening; see {}/{}.log",
                target.name(),
                out.display(),
                target.name()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not open {addr} within {START_TIMEOUT:?}",
                target.name()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(running)
}

/// Runs `mist-compare load` against `r` in a fresh process and returns its
/// JSON line.
fn load(
    me: &Path,
    r: &Running,
    args: &RunArgs,
    reach: &Reach,
    extra: &[&str],
) -> anyhow::Result<Value> {
    let mut command = Command::new(me);
    command
        .args([
            "load",
            "--proto",
            r.target.proto().name(),
            "--addr",
            &r.addr.to_string(),
        ])
        .args(["--timeout", &args.timeout.to_string()])
        .args(["--transport", reach.transport.name()]);
    if let Some(cert) = &reach.cert {
        command.arg("--tls-ca").arg(&cert.cert);
    }
    let mut child = command
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a load run")?;
    // Read while it runs: a full pipe would stall it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    // The driver stops itself at --timeout; this is the backstop.
    let deadline = Instant::now() + Duration::from_secs(args.timeout * 2 + 30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "a load run against {} did not end: {extra:?}",
                r.target.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "a load run against {} failed ({status}) {extra:?}: {}",
            r.target.name(),
            stderr.trim()
        );
    }
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("the load run printed no JSON: {stdout}"))
}
