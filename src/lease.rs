//! Concurrency leases (RL.ACQUIRE, RL.RELEASE, RL.RENEW), pure: what the lease set holds at
//! `now` in, the decision out. No Redis types, no clock reads.
//!
//! Vocabulary:
//! - a **lease** is one of `max` slots, held by a caller-chosen `id` until its **deadline**
//!   (milliseconds since the Unix epoch): taken or renewed at `now`, it ends at
//!   `now + lease_ms`;
//! - a lease is **live** while `now < deadline`; at its deadline it has ended by itself and
//!   is **expired** (purged by the next call on the key);
//! - **in flight**: the live leases.
//!
//! The set is stored as a Redis sorted set (member = id, score = deadline), so the store tells
//! this code only the few numbers a decision needs ([`LeaseView`]).

/// The bounds of the lease commands' arguments (in `rl_protocol::bounds`, shared with the
/// gateway): a lease (and a renewal) lasts at most [`MAX_LEASE_MS`], one day (holders of
/// longer work renew); `max` is at most [`MAX_LEASES`] (a set only grows through an acquire
/// that finds fewer than `max` live leases after purging the expired ones, so a lease set never
/// holds more than this many members, and one call never purges more than this many); an id
/// has at most [`MAX_ID_BYTES`] bytes.
pub use rl_protocol::bounds::{MAX_ID_BYTES, MAX_LEASES, MAX_LEASE_MS};

/// The member that marks a sorted set as lease state, scored [`MARKER_SCORE`]. It starts with
/// a NUL byte, which no text id holds, and is the one id refused; any other bytes (a binary
/// UUID that starts with NUL, say) are a valid id. It is never a lease: never counted, never
/// purged (purges remove scores from 1 up), never waited for.
pub const MARKER: &[u8] = b"\x00rl-leases";

/// The marker's score: below every deadline, outside every purge's range.
pub const MARKER_SCORE: f64 = 0.0;

/// What the lease set holds at `now`, as read before anything is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// Live leases (deadline after `now`).
    pub live: u64,
    /// Expired leases still stored (deadline at or before `now`); the call purges them.
    pub expired: u64,
    /// The deadline of the caller's `id`, if the set holds it (live or expired).
    pub held: Option<u64>,
    /// The highest deadline stored (live or expired), which the key's expiry is set to.
    pub last: Option<u64>,
}

impl LeaseView {
    /// Whether the caller's id holds a live lease at `now`.
    fn holds(&self, now_ms: u64) -> bool {
        self.held.is_some_and(|deadline| deadline > now_ms)
    }
}

/// The outcome of RL.ACQUIRE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquire {
    pub acquired: bool,
    /// Live leases after the call.
    pub in_flight: u64,
    /// 0 when acquired, else milliseconds until enough live leases end for a slot to free (at
    /// least 1).
    pub retry_after_ms: u64,
    /// The deadline to store for the caller's id, when acquired.
    pub deadline: Option<u64>,
}

/// When RL.ACQUIRE will be refused (`max` or more live leases, none the caller's), the rank
/// `n` of the live lease (1 = the earliest deadline) whose end frees a slot: `live - max + 1`,
/// as `max` may have been lowered below the leases in flight. At most [`MAX_LEASES`].
pub fn rank_to_wait_for(view: &LeaseView, now_ms: u64, max: u64) -> Option<u64> {
    (!view.holds(now_ms) && view.live >= max).then(|| view.live - max + 1)
}

/// Takes a slot for the caller's id if fewer than `max` leases are live; an id that already
/// holds a live lease renews it and is counted once (so a retried call is safe). `frees_at`
/// is the deadline of the live lease of rank [`rank_to_wait_for`], when there is one.
pub fn acquire(view: &LeaseView, frees_at: Option<u64>, now_ms: u64, max: u64, lease_ms: u64) -> Acquire {
    let deadline = now_ms.saturating_add(lease_ms);
    if view.holds(now_ms) {
        return Acquire { acquired: true, in_flight: view.live, retry_after_ms: 0, deadline: Some(deadline) };
    }
    if view.live < max {
        return Acquire { acquired: true, in_flight: view.live + 1, retry_after_ms: 0, deadline: Some(deadline) };
    }
    // Refused: every live lease has a deadline after now, so the wait is at least 1 ms. With
    // `max >= 1` and `live >= max` the lease of that rank exists.
    let retry_after_ms = frees_at.map_or(1, |deadline| deadline.saturating_sub(now_ms).max(1));
    Acquire { acquired: false, in_flight: view.live, retry_after_ms, deadline: None }
}

/// RL.RELEASE: whether the caller's id held a live lease (which is then removed).
pub fn release(view: &LeaseView, now_ms: u64) -> bool {
    view.holds(now_ms)
}

/// RL.RENEW: the new deadline, if the caller's id holds a live lease.
pub fn renew(view: &LeaseView, now_ms: u64, lease_ms: u64) -> Option<u64> {
    view.holds(now_ms).then(|| now_ms.saturating_add(lease_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_441_600_000;

    fn view(live: u64, held: Option<u64>) -> LeaseView {
        LeaseView { live, expired: 0, held, last: None }
    }

    #[test]
    #[rustfmt::skip]
    fn acquire_takes_a_free_slot_renews_a_held_one_and_otherwise_says_when_one_frees() {
        /// `(acquired, in_flight, retry_after_ms, deadline)`.
        type Want = (bool, u64, u64, Option<u64>);
        /// `(view, frees_at, max, rank, want)`; `frees_at`: the deadline of the live lease of
        /// rank `live - max + 1`.
        type Row = (LeaseView, Option<u64>, u64, Option<u64>, Want);
        let cases: &[Row] = &[
            // view                       frees_at       max  rank     (acquired, in_flight, retry, deadline)
            (view(0, None),               None,          1,   None,    (true, 1, 0, Some(T0 + 500))),
            (view(2, None),               None,          3,   None,    (true, 3, 0, Some(T0 + 500))),
            (view(3, None),               Some(T0 + 10), 3,   Some(1), (false, 3, 10, None)),
            (view(3, Some(T0 + 10)),      None,          3,   None,    (true, 3, 0, Some(T0 + 500))), // a retry renews, counted once
            (view(3, Some(T0)),           Some(T0 + 10), 3,   Some(1), (false, 3, 10, None)),          // its lease ended at T0
            // max lowered below in flight: 4 of 5 must end before a slot frees for max 2.
            (view(5, None),               Some(T0 + 40), 2,   Some(4), (false, 5, 40, None)),
            (view(3, None),               Some(T0 + 30), 1,   Some(3), (false, 3, 30, None)),
        ];
        for (i, &(v, frees_at, max, rank, want)) in cases.iter().enumerate() {
            assert_eq!(rank_to_wait_for(&v, T0, max), rank, "case {i}");
            let a = acquire(&v, frees_at, T0, max, 500);
            assert_eq!((a.acquired, a.in_flight, a.retry_after_ms, a.deadline), want, "case {i}");
        }
    }

    #[test]
    fn release_and_renew_act_only_on_a_live_lease() {
        assert!(release(&view(1, Some(T0 + 1)), T0));
        assert!(!release(&view(1, Some(T0)), T0), "ended at its deadline");
        assert!(!release(&view(1, None), T0));
        assert_eq!(renew(&view(1, Some(T0 + 1)), T0, 300), Some(T0 + 300));
        assert_eq!(renew(&view(1, Some(T0 - 1)), T0, 300), None);
    }

    proptest::proptest! {
        /// Over random live deadlines: a refusal waits until exactly `live - max + 1` of them
        /// have ended, which leaves `max - 1` live, so a slot is free then and not a ms before.
        #[test]
        fn acquire_never_exceeds_max_and_a_refusal_waits_until_a_slot_frees(
            ahead in proptest::collection::vec(1u64..100, 0..20), max in 1u64..20,
            held_ahead in proptest::option::of(-5i64..50), lease_ms in 1u64..=MAX_LEASE_MS,
        ) {
            let mut deadlines: Vec<u64> = ahead.iter().map(|a| T0 + a).collect();
            let held = held_ahead.map(|a| T0.saturating_add_signed(a));
            // A live lease of the caller's is one of the live ones.
            if let Some(d) = held.filter(|&d| d > T0) {
                deadlines.push(d);
            }
            deadlines.sort_unstable();
            let live_at = |t: u64| deadlines.iter().filter(|&&d| d > t).count() as u64;
            let v = view(deadlines.len() as u64, held);
            let rank = rank_to_wait_for(&v, T0, max);
            let frees_at = rank.and_then(|n| deadlines.get(n as usize - 1).copied());
            let a = acquire(&v, frees_at, T0, max, lease_ms);
            if a.acquired {
                proptest::prop_assert!(rank.is_none());
                proptest::prop_assert!(a.in_flight <= max.max(v.live), "{v:?} {a:?}");
                proptest::prop_assert_eq!(a.in_flight, if v.holds(T0) { v.live } else { v.live + 1 });
                proptest::prop_assert_eq!(a.deadline, Some(T0 + lease_ms));
            } else {
                proptest::prop_assert!(v.live >= max && !v.holds(T0));
                proptest::prop_assert_eq!(a.in_flight, v.live);
                let at = T0 + a.retry_after_ms;
                proptest::prop_assert!(live_at(at) < max, "a slot is free after the wait: {a:?} {deadlines:?}");
                proptest::prop_assert!(live_at(at - 1) >= max, "not a ms earlier: {a:?} {deadlines:?}");
            }
        }
    }
}
