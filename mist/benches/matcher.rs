//! Matcher benchmarks: subscribe, unsubscribe and match against 10k, 100k
//! and 1M subscriptions.
//!
//! Workload: subscriptions of 1–4 tags and messages of 4–8 tags, every tag
//! drawn from a 10,000-tag vocabulary with Zipf popularity (exponent 1.0: the
//! most popular tag is in about a tenth of all draws). Subscriptions are
//! spread over sessions, four per session, so 1M subscriptions are 250k
//! sessions. Seeded: every run sees the same data.
//!
//! Besides criterion's timings it prints, per size, the index's heap bytes
//! per subscription and the mean number of sessions a message matches.
//!
//!     cargo bench -p mist --bench matcher

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use mist::tags::{Index, MatchScratch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCABULARY: usize = 10_000;
const SUBSCRIPTIONS_PER_SESSION: usize = 4;
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// Draws tags with Zipf popularity.
struct Zipf {
    cdf: Vec<f64>,
    names: Vec<String>,
}

impl Zipf {
    fn new(n: usize, exponent: f64) -> Self {
        let weights: Vec<f64> = (1..=n)
            .map(|rank| 1.0 / (rank as f64).powf(exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let names = (0..n).map(|i| format!("tag:{i}")).collect();
        Zipf { cdf, names }
    }

    fn tag(&self, rng: &mut StdRng) -> &str {
        let u: f64 = rng.gen();
        let i = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.names.len() - 1);
        &self.names[i]
    }

    fn set(&self, rng: &mut StdRng, min: usize, max: usize) -> Vec<String> {
        let n = rng.gen_range(min..=max);
        (0..n).map(|_| self.tag(rng).to_string()).collect()
    }
}

struct Fixture {
    index: Index,
    sessions: u32,
    messages4: Vec<Vec<String>>,
    messages4to8: Vec<Vec<String>>,
    fresh: Vec<Vec<String>>,
}

fn fixture(zipf: &Zipf, subscriptions: usize) -> Fixture {
    let mut rng = StdRng::seed_from_u64(subscriptions as u64);
    let mut index = Index::new();
    let sessions = (subscriptions / SUBSCRIPTIONS_PER_SESSION) as u32;
    let mut added = 0;
    while added < subscriptions {
        let session = (added / SUBSCRIPTIONS_PER_SESSION) as u32;
        if index.subscribe(session, &zipf.set(&mut rng, 1, 4)) {
            added += 1;
        }
    }
    let messages4 = (0..1000).map(|_| zipf.set(&mut rng, 4, 4)).collect();
    let messages4to8 = (0..1000).map(|_| zipf.set(&mut rng, 4, 8)).collect();
    let fresh = (0..10_000).map(|_| zipf.set(&mut rng, 1, 4)).collect();
    Fixture {
        index,
        sessions,
        messages4,
        messages4to8,
        fresh,
    }
}

fn report(size: usize, f: &Fixture) {
    let mut scratch = MatchScratch::default();
    let mut out = Vec::new();
    let (mut sets, mut sessions) = (0, 0);
    for m in &f.messages4 {
        out.clear();
        sets += f.index.matching_tag_sets(m, &mut scratch);
        f.index.matches(m, None, &mut scratch, &mut out);
        sessions += out.len();
    }
    let n = f.messages4.len() as f64;
    eprintln!(
        "matcher {size} subscriptions ({} sessions): {:.0} heap bytes per subscription; a 4-tag message matches {:.1} tag sets and {:.0} sessions on average",
        f.sessions,
        f.index.heap_bytes() as f64 / f.index.len() as f64,
        sets as f64 / n,
        sessions as f64 / n
    );
}

fn matcher(c: &mut Criterion) {
    let zipf = Zipf::new(VOCABULARY, 1.0);
    let mut group = c.benchmark_group("matcher");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in SIZES {
        let mut f = fixture(&zipf, size);
        report(size, &f);
        let mut scratch = MatchScratch::default();
        let mut out = Vec::with_capacity(1 << 16);

        // The matching proper: which subscribed tag sets does a message satisfy?
        let mut next = 0;
        group.bench_with_input(
            BenchmarkId::new("match 4 tags: tag sets", size),
            &size,
            |b, _| {
                b.iter(|| {
                    next += 1;
                    black_box(
                        f.index.matching_tag_sets(
                            &f.messages4[next % f.messages4.len()],
                            &mut scratch,
                        ),
                    )
                })
            },
        );
        // Matching and expanding to the (deduplicated) sessions to deliver to.
        for (name, messages) in [
            ("match 4 tags: sessions", &f.messages4),
            ("match 4-8 tags: sessions", &f.messages4to8),
        ] {
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    f.index.matches(
                        &messages[next % messages.len()],
                        None,
                        &mut scratch,
                        &mut out,
                    );
                    next += 1;
                    black_box(out.len())
                })
            });
        }

        // New subscriptions by new sessions, timed one by one; each batch is
        // undone untimed so the index stays the size being measured.
        let session = f.sessions + 1;
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("subscribe", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let sets: Vec<&Vec<String>> = (0..iters)
                    .map(|i| &f.fresh[(next + i as usize) % f.fresh.len()])
                    .collect();
                next += iters as usize;
                let start = Instant::now();
                for (i, set) in sets.iter().enumerate() {
                    black_box(f.index.subscribe(session + i as u32 % 64, set));
                }
                let took = start.elapsed();
                for s in 0..64 {
                    f.index.remove_session(session + s);
                }
                took
            })
        });
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("unsubscribe", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let sets: Vec<&Vec<String>> = (0..iters)
                    .map(|i| &f.fresh[(next + i as usize) % f.fresh.len()])
                    .collect();
                next += iters as usize;
                for (i, set) in sets.iter().enumerate() {
                    f.index.subscribe(session + i as u32, set);
                }
                let start = Instant::now();
                for (i, set) in sets.iter().enumerate() {
                    black_box(f.index.unsubscribe(session + i as u32, set));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matcher);
criterion_main!(benches);
