//! The matcher's worst case a client can build (SPEC §7), beside the
//! matcher benchmarks of `matcher.rs`:
//!
//!     cargo bench -p mist --bench worst_case

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mist::tags::{Index, MatchScratch};

/// The worst case a client can build (SPEC §7): one session holding
/// 100,000 one-tag subscriptions, and a message naming all 100,000 tags.
/// Every subscription is a candidate, so the cost is the candidates times
/// the subset test; a linear subset test makes it quadratic.
fn worst_case(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut index = Index::new();
    let tags: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
    for tag in &tags {
        index.subscribe(1, &[tag]);
    }
    let mut group = c.benchmark_group("matcher-worst-case");
    group.sample_size(10);
    group.bench_function("100k tags x 100k one-tag subscriptions", |b| {
        let (mut scratch, mut out) = (MatchScratch::default(), Vec::new());
        b.iter(|| {
            out.clear();
            index.matches(black_box(&tags), None, &mut scratch, &mut out);
            assert_eq!(out, [1]);
        })
    });
    group.finish();
}

criterion_group!(benches, worst_case);
criterion_main!(benches);
