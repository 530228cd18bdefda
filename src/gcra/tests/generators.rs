//! The inputs of the property tests: quotas (everyday, around one nanosecond per token, at
//! the 100-year edge), clock steps that land on exact boundaries, costs around the burst, and
//! stored states of every shape the decoder yields; and the player that runs generated calls
//! against one key.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// `cases` per property, with failure persistence off: these properties write no file under
/// `proptest-regressions/`, and a failure is reported with its shrunk input, to be kept as a
/// story named after the behaviour it breaks. (`proptest-regressions/state.txt` belongs to the
/// properties in `state.rs`, which keep proptest's default persistence.)
pub(super) fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any positive `u64`, often an edge.
pub(super) fn edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop_oneof![
            Just(1u64),
            Just(2u64),
            Just(3u64),
            Just(999_999_999u64),
            Just(1_000_000_000u64),
            Just(1_000_000_001u64),
            Just(CENTURY_SECS),
            Just(i64::MAX as u64 - 1),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(u64::MAX - 1),
            Just(u64::MAX),
        ],
        1..=u64::MAX,
    ]
}

/// `(limit, window, burst)` with the largest burst whose tolerance fits 100 years, or one more.
pub(super) fn at_the_tolerance_boundary() -> impl Strategy<Value = (u64, u64, u64)> {
    (edgy(), edgy(), 0u8..=1).prop_map(|(limit, window, extra)| {
        let largest = MAX_TOLERANCE_NANOS * u128::from(limit) / (u128::from(window) * NANOS_PER_SEC);
        (limit, window, clamp_u64(largest + u128::from(extra)).max(1))
    })
}

pub(super) fn edgy_or_zero() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 6 => edgy()]
}

/// Any positive `u64`, often an edge, mostly past `i64::MAX` (as a clock: after the year
/// 2262), often within 20 minutes' worth of nanoseconds of `u64::MAX`.
pub(super) fn past_i64() -> impl Strategy<Value = u64> {
    prop_oneof![1 => edgy(), 1 => i64::MAX as u64..=u64::MAX, 2 => u64::MAX - (1 << 40)..=u64::MAX]
}

/// Any clock reading within `i64`, often an edge.
pub(super) fn i64_instant() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop_oneof![Just(0u64), Just(1u64), Just(T0), Just(i64::MAX as u64 - 1), Just(i64::MAX as u64)],
        0..=i64::MAX as u64,
    ]
}

/// A stored state of the shape `state::decode` yields, or a plain TAT, or no key; with a
/// denominator that is often the quota's own limit.
pub(super) fn build_tat(q: &Quota, present: bool, nanos: u64, fraction: Option<(bool, u64, u64)>) -> Option<Tat> {
    let (own_limit, den_seed, num_seed) = match (present, fraction) {
        (false, _) => return None,
        (true, None) => return Some(Tat::from_nanos(nanos)),
        (true, Some(fraction)) => fraction,
    };
    let denominator = if own_limit && q.limit() > 1 { q.limit() } else { 2 + den_seed % (i64::MAX as u64 - 1) };
    Some(Tat { nanos, numerator: 1 + num_seed % (denominator - 1), denominator })
}

pub(super) fn fraction() -> impl Strategy<Value = Option<(bool, u64, u64)>> {
    proptest::option::of((any::<bool>(), any::<u64>(), any::<u64>()))
}

pub(super) fn clamp_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The quota nearest `(limit, window, burst)` whose tolerance fits 100 years: window and
/// burst wrap into range. Also checks that every such quota is accepted.
pub(super) fn fitted_quota(limit: u64, window: u64, burst: u64) -> Quota {
    let limit = limit.max(1);
    // burst × window × 10^9 ≤ MAX_TOLERANCE_NANOS × limit, exactly.
    let max_units = MAX_TOLERANCE_NANOS * u128::from(limit);
    let max_window = clamp_u64(max_units / NANOS_PER_SEC);
    let window = if (1..=max_window).contains(&window) { window } else { 1 + window % max_window };
    let max_burst = clamp_u64(max_units / (u128::from(window) * NANOS_PER_SEC));
    let burst = if (1..=max_burst).contains(&burst) { burst } else { 1 + burst % max_burst };
    quota(limit, window, burst)
}

/// Everyday limits, intervals around a nanosecond, and anything at all that fits.
pub(super) fn any_quota() -> impl Strategy<Value = Quota> {
    prop_oneof![
        4 => (1u64..=100, 1u64..=3_600, 1u64..=10),
        3 => (1u64..=3_000_000_000, 1u64..=2, 1u64..=6),
        2 => (edgy(), edgy(), edgy()),
    ]
    .prop_map(|(limit, window, burst)| fitted_quota(limit, window, burst))
}

/// Quotas whose interval is short enough that dozens of them fit comfortably in `i64`.
pub(super) fn modest_quota() -> impl Strategy<Value = Quota> {
    prop_oneof![
        4 => (1u64..=100, 1u64..=3_600, 1u64..=10),
        3 => (1u64..=3_000_000_000, 1u64..=2, 1u64..=6),
        1 => (edgy(), Just(1u64), 1u64..=8),
    ]
    .prop_map(|(limit, window, burst)| fitted_quota(limit, window, burst))
}

/// Quotas whose spare burst covers the 1 ns rounding of the grid: `(burst - 1) × interval
/// ≥ 1 ns`, i.e. `limit ≤ (burst - 1) × window × 10^9`, with a burst of 2 to 8.
pub(super) fn paced_quota() -> impl Strategy<Value = Quota> {
    (1u64..=3_600, 0u8..3, any::<u64>(), 2u64..=8).prop_map(|(window, kind, seed, burst)| {
        let densest = (burst - 1) * window * SEC;
        let limit = match kind {
            0 => 1 + seed % 1_000,
            1 => densest - seed % 3,
            _ => 1 + seed % densest,
        };
        quota(limit, window, burst)
    })
}

pub(super) fn start() -> impl Strategy<Value = u64> {
    prop_oneof![Just(T0), Just(0u64), 0..=LATEST_START]
}

/// How far one generated call moves the clock: none, a nanosecond or two (landing on exact
/// boundaries), up to two intervals, a whole number of rounded-up intervals, or up to a
/// full refill.
pub(super) fn clock_step(q: &Quota, kind: u8, seed: u64) -> u64 {
    let units = interval_units(q);
    let limit = u128::from(q.limit());
    let ns = match kind % 5 {
        0 => 0,
        1 => u128::from(seed % 3),
        2 => units * u128::from(seed % 2_001) / (1_000 * limit),
        3 => (units * u128::from(seed % 4)).div_ceil(limit),
        _ => tolerance_ns(q) * u128::from(seed % 1_001) / 1_000,
    };
    clamp_u64(ns.min(MAX_STEP))
}

/// A cost (or refund amount): 0, 1, the burst, one over, anything up to two over, or small.
pub(super) fn amount(q: &Quota, kind: u8, seed: u64) -> u64 {
    let burst = q.burst();
    match kind % 7 {
        0 => 0,
        1 => 1,
        2 => burst,
        3 => burst.saturating_add(1),
        4 => seed % burst.saturating_add(2),
        5 => u64::MAX,
        _ => 1 + seed % burst.min(3),
    }
}

/// One generated call: clock step (kind, seed), whether it steps backwards, cost (kind, seed).
pub(super) type Gen = (u8, u64, bool, u8, u64);

pub(super) fn gens() -> impl Strategy<Value = Vec<Gen>> {
    vec((0u8..5, any::<u64>(), any::<bool>(), 0u8..7, any::<u64>()), 1..24)
}

/// One played call: the state it saw, when, what it asked, and the reply.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call {
    pub(super) stored: Option<Tat>,
    pub(super) now: u64,
    pub(super) cost: u64,
    pub(super) reply: Decision,
}

impl Call {
    /// The state after the call.
    pub(super) fn after(&self) -> Option<Tat> {
        self.reply.new_tat.or(self.stored)
    }
}

/// Plays generated calls against one fresh key from `t0`; the clock only steps backwards
/// when `backwards` allows it.
pub(super) fn play_gens(q: &Quota, t0: u64, gens: &[Gen], backwards: bool) -> Vec<Call> {
    let mut now = t0;
    let mut stored = None;
    let mut calls = Vec::with_capacity(gens.len());
    for &(step_kind, step_seed, back, cost_kind, cost_seed) in gens {
        let step = clock_step(q, step_kind, step_seed);
        now = if back && backwards { now.saturating_sub(step) } else { now + step };
        let cost = amount(q, cost_kind, cost_seed);
        let reply = check(q, stored, now, cost);
        calls.push(Call { stored, now, cost, reply });
        stored = reply.new_tat.or(stored);
    }
    calls
}

/// The state and clock after playing `gens` forwards, then stepping once more.
pub(super) fn state_after(q: &Quota, t0: u64, gens: &[Gen], step: (u8, u64)) -> (Option<Tat>, u64) {
    let calls = play_gens(q, t0, gens, false);
    let (stored, last) = calls.last().map_or((None, t0), |c| (c.after(), c.now));
    (stored, last + clock_step(q, step.0, step.1))
}
