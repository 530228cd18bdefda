//! The bodies of the fuzz targets (`fuzz/`, `make fuzz`), here so that the stable test suite
//! runs them too (`tests/fuzz_smoke.rs`: the seed corpus and a bounded number of generated
//! inputs). Each takes arbitrary bytes and panics only when an invariant breaks: a panic in
//! the module's parsers or math would abort Redis.

use std::num::NonZeroU64;

use crate::args;
use crate::gcra::{self, Quota, RetryAfter, Tat};
use crate::state;

/// Reads fixed-size numbers off the front of the input, zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let n = self.0.len().min(8);
        let (head, rest) = self.0.split_at(n);
        for (slot, byte) in word.iter_mut().zip(head) {
            *slot = *byte;
        }
        self.0 = rest;
        u64::from_le_bytes(word)
    }

    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
}

/// Every command's parser on one argument line: the input split at `\n` (the first word is
/// the command's name, as Redis hands it over). None may panic, whatever the words.
pub fn command_args(data: &[u8]) {
    let words: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let line: &[&[u8]] = &words;
    let _ = args::parse_check(line);
    let _ = args::parse_peek(line);
    let _ = args::parse_refund(line);
    let _ = args::parse_reset(line);
    let _ = args::parse_checkall_shape(line);
    let _ = args::parse_checkall_numkeys(line);
    if let Ok((keys, requests)) = args::parse_checkall(line) {
        assert_eq!(keys, requests.len(), "one request per key");
    }
    let _ = args::parse_throttle(line);
    let _ = args::parse_acquire(line);
    let _ = args::parse_release(line);
    let _ = args::parse_renew(line);
}

/// The stored-state decoder: never panics; what it accepts encodes back to the same bytes
/// (one spelling per state), and decodes again to the same state.
pub fn stored_state(data: &[u8]) {
    let Some(tat) = state::decode(data) else { return };
    let encoded = state::encode(&tat);
    assert_eq!(encoded.as_bytes(), data, "a state has one spelling");
    assert_eq!(state::decode(encoded.as_bytes()), Some(tat));
}

/// The GCRA decision with arbitrary parameters, state, clock and costs. Never panics; the
/// remaining count stays within the burst; a run of admitted requests at one instant never
/// takes more than the bucket holds; a refused request waiting its `retry_after` is admitted
/// then (never early); a refund never fills the bucket past its burst.
pub fn gcra_decision(data: &[u8]) {
    let mut input = Bytes(data);
    // Mostly small numbers, sometimes anything: both reach the interesting paths.
    let number = |input: &mut Bytes| {
        let raw = input.u64();
        match input.byte() % 4 {
            0 => raw,
            1 => raw % 1_000_000,
            _ => raw % 1000,
        }
    };
    let (limit, window, burst) = (number(&mut input), number(&mut input), number(&mut input));
    let (Some(limit), Some(window), Some(burst)) =
        (NonZeroU64::new(limit), NonZeroU64::new(window), NonZeroU64::new(burst))
    else {
        return;
    };
    let Ok(quota) = Quota::new(limit, window, burst) else { return };
    let now = state::MIN_TAT_NANOS + input.u64() % (1u64 << 62);
    let stored = match input.byte() % 3 {
        0 => None,
        1 => Some(Tat::from_nanos(now.saturating_sub(input.u64() % 1_000_000_000_000))),
        _ => Some(Tat::from_nanos(now.saturating_add(input.u64() % quota_tolerance_nanos(&quota).max(1)))),
    };

    // A run of requests at one instant.
    let mut tat = stored;
    let mut taken: u128 = 0;
    for _ in 0..4 {
        let cost = number(&mut input) % (burst.get().saturating_mul(2).max(1));
        let Ok(decision) = gcra::decide(&quota, tat, now, cost) else { return };
        assert!(decision.remaining <= burst.get(), "remaining {} above the burst", decision.remaining);
        if decision.allowed {
            taken += u128::from(cost);
            if let Some(next) = decision.new_tat {
                tat = Some(next);
            }
        } else if let RetryAfter::Millis(ms) = decision.retry_after {
            let later = now.saturating_add(ms.saturating_mul(1_000_000));
            if let Ok(then) = gcra::decide(&quota, tat, later, cost) {
                assert!(then.allowed, "told to wait {ms} ms, and refused after waiting it");
            }
        } else {
            assert!(cost > burst.get(), "never admitted only when above the burst");
        }
    }
    if stored.is_none() {
        assert!(taken <= u128::from(burst.get()), "a full bucket gave {taken} of {burst} at once");
    }

    // A refund, then a forced charge, on whatever state the run left.
    let amount = number(&mut input);
    if let Ok(back) = gcra::refund(&quota, tat, now, amount) {
        assert!(back.remaining <= burst.get());
    }
    let forced = number(&mut input);
    if let Ok(decision) = gcra::decide_forced(&quota, tat, now, forced) {
        assert!(decision.allowed && decision.remaining <= burst.get());
    }
}

/// The tolerance in whole nanoseconds (rounded down), for placing a stored TAT inside it.
fn quota_tolerance_nanos(quota: &Quota) -> u64 {
    let nanos = u128::from(quota.burst()) * u128::from(quota.window_secs()) * 1_000_000_000 / u128::from(quota.limit());
    u64::try_from(nanos).unwrap_or(u64::MAX)
}
