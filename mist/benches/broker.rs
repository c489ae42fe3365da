//! The broker's hot path in-process, without sockets: a publisher session
//! is fed a 64 KiB chunk of publish lines (what the TCP listener hands over
//! per read) and every subscriber's output is drained (what its writer does
//! before each write). Sessions are opened through the same ABI handle a
//! listener plugin uses.
//!
//!     cargo bench -p mist --bench broker
//!
//! Reported per published message, so `pair` is the cost of one delivery
//! and `fanout/100` of one hundred.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mist::broker::{Broker, Limits};
use mist_sdk::abi::{OutputWakerApi, OutputWakerApi_TO, SessionBox};
use mist_sdk::abi_stable::sabi_trait::TD_Opaque;
use mist_sdk::abi_stable::std_types::RVec;
use mist_sdk::SessionInfo;

struct NoWake;

impl OutputWakerApi for NoWake {
    fn wake(&self) {}

    fn closed(&self) {}
}

fn open(broker: &Broker) -> SessionBox {
    broker.handle().open_session(
        SessionInfo::new("bench", "-"),
        OutputWakerApi_TO::from_value(NoWake, TD_Opaque),
    )
}

fn feed(session: &SessionBox, bytes: &[u8]) {
    assert!(
        session.feed(bytes.into()).is_none(),
        "no authenticator: nothing waits"
    );
}

/// A chunk of whole publish lines of about 64 KiB, as in the load tool:
/// 128-byte payloads on `tags`.
fn chunk(tags: &[&str], count: usize) -> (Vec<u8>, usize) {
    let tags = serde_json::to_string(tags).expect("tags");
    let mut out = Vec::new();
    let mut n = 0;
    while out.len() < 64 * 1024 - 256 && n < count {
        let data = format!("~t{:020}~{}", n, "x".repeat(128 - 23));
        out.extend_from_slice(
            format!(r#"{{"command":"publish","tags":{tags},"data":"{data}"}}"#).as_bytes(),
        );
        out.push(b'\n');
        n += 1;
    }
    (out, n)
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for subscribers in [1usize, 100] {
        let broker = Broker::new(Limits::default());
        let publisher = open(&broker);
        let subs: Vec<SessionBox> = (0..subscribers).map(|_| open(&broker)).collect();
        for s in &subs {
            feed(s, br#"{"command":"subscribe","tags":["bench"]}"#);
            feed(s, b"\n");
        }
        let (bytes, messages) = chunk(&["bench"], usize::MAX);
        let mut out = RVec::new();
        group.throughput(Throughput::Elements(messages as u64));
        let name = if subscribers == 1 { "pair" } else { "fanout" };
        group.bench_with_input(BenchmarkId::new(name, subscribers), &subscribers, |b, _| {
            b.iter(|| {
                feed(&publisher, &bytes);
                for s in &subs {
                    out.clear();
                    s.drain(&mut out);
                }
            })
        });
    }

    // Routing: 1,000 subscribers on distinct [room:i, app]; each message is
    // tagged [room:i, app, extra] for a different i, so each reaches one.
    let broker = Broker::new(Limits::default());
    let publisher = open(&broker);
    let subs: Vec<SessionBox> = (0..1000).map(|_| open(&broker)).collect();
    for (i, s) in subs.iter().enumerate() {
        feed(
            s,
            format!("{{\"command\":\"subscribe\",\"tags\":[\"room:{i}\",\"app\"]}}\n").as_bytes(),
        );
    }
    let mut bytes = Vec::new();
    let mut messages = 0;
    while bytes.len() < 64 * 1024 - 256 {
        let i = (messages * 7919) % 1000;
        bytes.extend_from_slice(
            format!("{{\"command\":\"publish\",\"tags\":[\"room:{i}\",\"app\",\"extra\"],\"data\":\"{}\"}}\n", "x".repeat(128))
                .as_bytes(),
        );
        messages += 1;
    }
    let mut out = RVec::new();
    group.throughput(Throughput::Elements(messages as u64));
    group.bench_function("routing/1000", |b| {
        b.iter(|| {
            feed(&publisher, &bytes);
            for s in &subs {
                out.clear();
                s.drain(&mut out);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
