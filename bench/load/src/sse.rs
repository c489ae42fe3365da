//! `conns --sse`: idle Server-Sent-Events subscriptions (`GET
//! /subscribe?tags=bench` on an HTTP listener), for the broker's memory per
//! open event stream. Only `conns`: the other scenarios need a publisher
//! and subscribers that speak the line protocol.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::net::{self, Endpoint, Sources};
use crate::report::{Latency, Memory, Report};
use crate::{BenchArgs, BenchError, Scenario};

/// Connections opened at once.
const PARALLEL: usize = 64;

pub(crate) async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.scenario != Scenario::Conns {
        return Err(BenchError::Usage(
            "--sse only measures idle event streams: use it with `conns`".into(),
        ));
    }
    if args.websocket {
        return Err(BenchError::Usage(
            "--sse and --websocket exclude each other".into(),
        ));
    }
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|h| {
            h.strip_prefix("http://")
                .unwrap_or(h)
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    if let Some(bad) = hosts.iter().find(|h| h.contains("://") || h.contains('/')) {
        return Err(BenchError::Usage(format!(
            "{bad}: --sse takes host:port or http://host:port"
        )));
    }
    let endpoints = Endpoint::resolve_all(&hosts, false, None).await?;
    let conns = args.subscribers.unwrap_or(1000);
    let sources = std::sync::Arc::new(Sources::new(&args.source_addrs));
    net::raise_fd_limit(conns)?;
    let memory_before = crate::load::rss_kib_sum(&args.server_pid);
    let started = Instant::now();
    let gate = std::sync::Arc::new(Semaphore::new(PARALLEL));
    let mut opening = JoinSet::new();
    for i in 0..conns {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let token = args.token.clone();
        let (gate, sources) = (gate.clone(), sources.clone());
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            open(&endpoint, sources.next(), token.as_deref()).await
        });
    }
    let mut streams = Vec::with_capacity(conns);
    let (mut errors, mut first_error) = (0, None);
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let memory = match (memory_before, crate::load::rss_kib_sum(&args.server_pid)) {
        (Some(before), Some(after)) => Some(Memory {
            connections: streams.len(),
            kib_per_connection: after.saturating_sub(before) as f64 / streams.len().max(1) as f64,
        }),
        _ => None,
    };
    let subscribers = streams.len();
    drop(streams);
    Ok(Report {
        scenario: args.scenario.name(),
        host: args.hosts.join(","),
        transport: "sse",
        publishers: 0,
        subscribers,
        payload_bytes: 0,
        messages_sent: 0,
        deliveries_expected: 0,
        delivered: 0,
        publish_seconds: 0.0,
        delivery_seconds: 0.0,
        connect_seconds,
        latency: Latency::default(),
        errors,
        first_error,
        memory,
        latency_histogram_us: None,
    })
}

/// Opens one event stream and waits for its `: subscribed` comment.
async fn open(
    endpoint: &Endpoint,
    from: Option<std::net::IpAddr>,
    token: Option<&str>,
) -> Result<TcpStream, BenchError> {
    let authority = endpoint.name.as_str();
    let mut stream = net::dial(endpoint, from).await?;
    let token = token
        .map(|t| format!("X-AUTH-TOKEN: {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET /subscribe?tags=bench HTTP/1.1\r\nHost: {authority}\r\n{token}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + crate::conn::REPLY_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .map_err(|_| BenchError::Timeout(crate::conn::REPLY_TIMEOUT))??;
        if n == 0 {
            return Err(BenchError::Closed);
        }
        seen.extend_from_slice(&buffer[..n]);
        if memchr::memmem::find(&seen, b": subscribed").is_some() {
            return Ok(stream);
        }
        if seen.starts_with(b"HTTP/1.1 ") && !seen.starts_with(b"HTTP/1.1 200") {
            let status = String::from_utf8_lossy(&seen[..seen.len().min(40)]).into_owned();
            return Err(BenchError::Usage(format!("{authority}: {status}")));
        }
    }
}
