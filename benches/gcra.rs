//! The pure GCRA decision and the state encoding, without Redis: what one RL.CHECK costs in
//! our own code. Target (issue 5): under 20 ns per decision.
//!
//! `cargo bench --bench gcra`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU64;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rl::gcra::{decide, Quota, Tat};
use rl::state::{decode, encode};

/// 2024-01-01T00:00:00Z plus change, in nanoseconds.
const NOW: u64 = 1_704_067_200_123_456_789;

fn quota(limit: u64, window: u64, burst: u64) -> Quota {
    let nz = |v: u64| NonZeroU64::new(v).unwrap();
    Quota::new(nz(limit), nz(window), nz(burst)).unwrap()
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    // 100 per 60 s: the interval is a whole 600 ms, the stored TAT a plain integer.
    let whole = quota(100, 60, 100);
    // 3 per second: an exact fraction (333 333 333 + 1/3 ns) on every step.
    let fraction = quota(3, 1, 3);

    group.bench_function("new_key", |b| {
        b.iter(|| decide(black_box(&whole), black_box(None), black_box(NOW), black_box(1)))
    });
    // An existing key half-way through its burst: admitted, writes a new TAT.
    let half = Some(Tat::from_nanos(NOW + 30_000_000_000));
    group.bench_function("existing_admitted", |b| {
        b.iter(|| decide(black_box(&whole), black_box(half), black_box(NOW), black_box(1)))
    });
    // An exhausted key: refused, computes retry_after.
    let full = Some(Tat::from_nanos(NOW + 60_000_000_000));
    group.bench_function("existing_limited", |b| {
        b.iter(|| decide(black_box(&whole), black_box(full), black_box(NOW), black_box(1)))
    });
    // Fraction stored under the same limit (the common case for non-integer intervals).
    let frac_tat = Some(Tat { nanos: NOW + 333_333_333, numerator: 1, denominator: 3 });
    group.bench_function("existing_fraction", |b| {
        b.iter(|| decide(black_box(&fraction), black_box(frac_tat), black_box(NOW), black_box(1)))
    });
    group.finish();
}

fn bench_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state");
    let plain = Tat::from_nanos(NOW);
    let exact = Tat { nanos: NOW, numerator: 1, denominator: 3 };
    group.bench_function("encode_plain", |b| b.iter(|| encode(black_box(&plain)).as_bytes().len()));
    group.bench_function("encode_fraction", |b| b.iter(|| encode(black_box(&exact)).as_bytes().len()));
    let plain_bytes = encode(&plain).as_bytes().to_vec();
    let exact_bytes = encode(&exact).as_bytes().to_vec();
    group.bench_function("decode_plain", |b| b.iter(|| decode(black_box(&plain_bytes))));
    group.bench_function("decode_fraction", |b| b.iter(|| decode(black_box(&exact_bytes))));
    // The whole pure part of one RL.CHECK on an existing key: decode, decide, encode.
    group.bench_function("decode_decide_encode", |b| {
        let q = quota(100, 60, 100);
        let stored = encode(&Tat::from_nanos(NOW + 30_000_000_000)).as_bytes().to_vec();
        b.iter(|| {
            let tat = decode(black_box(&stored));
            let d = decide(&q, tat, black_box(NOW), 1).unwrap();
            d.new_tat.map(|t| encode(&t).as_bytes().len())
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decide, bench_state
}
criterion_main!(benches);
