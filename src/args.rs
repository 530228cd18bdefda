//! Argument parsing for every command, on plain byte slices (no Redis types), so it is tested
//! without a server. Each parser checks the whole line before anything is read or written.

use std::num::NonZeroU64;

use crate::error::Error;
#[cfg(test)]
use crate::error::MAX_ECHOED_BYTES;
use crate::gcra::Quota;
use crate::lease::{MARKER, MAX_ID_BYTES, MAX_LEASES, MAX_LEASE_MS};

pub const CHECK_USAGE: &str = "RL.CHECK key limit window [COST cost] [BURST burst] [KEEP keep] [FORCE]";
pub const CHECKALL_USAGE: &str =
    "RL.CHECKALL numkeys key [key ...] limit window cost burst [keep] [limit window cost burst [keep] ...]";
pub const PEEK_USAGE: &str = "RL.PEEK key limit window [BURST burst]";
pub const REFUND_USAGE: &str = "RL.REFUND key limit window amount [BURST burst]";
pub const RESET_USAGE: &str = "RL.RESET key";
pub const ACQUIRE_USAGE: &str = "RL.ACQUIRE key max lease_ms ID id";
pub const RELEASE_USAGE: &str = "RL.RELEASE key id";
pub const RENEW_USAGE: &str = "RL.RENEW key id lease_ms";
pub const THROTTLE_USAGE: &str = "CL.THROTTLE key max_burst count_per_period period [quantity]";

/// Read access to a command line: `get(0)` is the command name, `get(1)` usually the key.
pub trait Args {
    fn count(&self) -> usize;
    fn get(&self, index: usize) -> Option<&[u8]>;
}

impl Args for [&[u8]] {
    fn count(&self) -> usize {
        self.len()
    }
    fn get(&self, index: usize) -> Option<&[u8]> {
        <[&[u8]]>::get(self, index).copied()
    }
}

/// A canonical decimal `i64`, as Redis's own integer arguments (`string2ll`) take them:
/// optional `-`, digits only, no leading zero (but `0` itself), no `-0`, no spaces or `+`.
/// So every number has exactly one spelling.
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if digits.first() == Some(&b'0') && (negative || digits.len() > 1) {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative { value.checked_sub(digit)? } else { value.checked_add(digit)? };
    }
    Some(value)
}

/// Whether `bytes` is a canonical positive decimal too large for an `i64` (so the error can
/// say that the number is out of range, not that it is no number).
fn too_large(bytes: Option<&[u8]>) -> bool {
    bytes.is_some_and(|b| b.first().is_some_and(|d| (b'1'..=b'9').contains(d)) && b.iter().all(u8::is_ascii_digit))
}

fn positive(bytes: Option<&[u8]>, name: &'static str) -> Result<NonZeroU64, Error> {
    match bytes.and_then(parse_i64) {
        None if too_large(bytes) => Err(Error::TooLarge { name }),
        parsed => {
            parsed.and_then(|v| u64::try_from(v).ok()).and_then(NonZeroU64::new).ok_or(Error::NotPositive { name })
        }
    }
}

fn non_negative(bytes: Option<&[u8]>, name: &'static str) -> Result<u64, Error> {
    match bytes.and_then(parse_i64) {
        None if too_large(bytes) => Err(Error::TooLarge { name }),
        parsed => parsed.and_then(|v| u64::try_from(v).ok()).ok_or(Error::Negative { name }),
    }
}

/// A request to take tokens (RL.CHECK, CL.THROTTLE, one spec of RL.CHECKALL): the quota and
/// the tokens asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckRequest {
    pub quota: Quota,
    pub cost: u64,
    /// Tokens that must remain after the request for it to be admitted (RL.CHECK's `KEEP`,
    /// RL.CHECKALL's fifth spec integer; [`crate::gcra::decide_keeping`]); 0 by default.
    pub keep: u64,
    /// RL.CHECK's `FORCE`: admit and charge even when the bucket is short
    /// ([`crate::gcra::decide_forced`]). Always false for the other commands.
    pub force: bool,
}

impl CheckRequest {
    /// A request that is admitted only when the bucket has the tokens.
    pub fn new(quota: Quota, cost: u64) -> Self {
        CheckRequest { quota, cost, keep: 0, force: false }
    }
}

/// The options after `key limit window`, shared by the commands that take them.
#[derive(Default)]
struct Options {
    cost: Option<u64>,
    burst: Option<NonZeroU64>,
    keep: Option<u64>,
    force: bool,
}

/// Parses `[COST n] [BURST b] [KEEP k] [FORCE]` (any order, case-insensitive, each at most
/// once) from `first` on; `allow_cost` is false for commands that take only BURST, and only
/// commands that take COST take KEEP and the flag FORCE (which has no value). KEEP and FORCE
/// exclude each other.
fn parse_options<A: Args + ?Sized>(
    args: &A,
    first: usize,
    allow_cost: bool,
    usage: &'static str,
) -> Result<Options, Error> {
    let mut options = Options::default();
    let mut i = first;
    while let Some(word) = args.get(i) {
        let value = args.get(i + 1);
        if word.eq_ignore_ascii_case(b"COST") && allow_cost {
            if options.cost.is_some() {
                return Err(Error::RepeatedOption { option: "COST" });
            }
            options.cost = Some(non_negative(Some(value.ok_or(Error::MissingValue { option: "COST" })?), "cost")?);
        } else if word.eq_ignore_ascii_case(b"BURST") {
            if options.burst.is_some() {
                return Err(Error::RepeatedOption { option: "BURST" });
            }
            options.burst = Some(positive(Some(value.ok_or(Error::MissingValue { option: "BURST" })?), "burst")?);
        } else if word.eq_ignore_ascii_case(b"KEEP") && allow_cost {
            if options.keep.is_some() {
                return Err(Error::RepeatedOption { option: "KEEP" });
            }
            options.keep = Some(non_negative(Some(value.ok_or(Error::MissingValue { option: "KEEP" })?), "keep")?);
        } else if word.eq_ignore_ascii_case(b"FORCE") && allow_cost {
            if options.force {
                return Err(Error::RepeatedOption { option: "FORCE" });
            }
            options.force = true;
            i += 1;
            continue;
        } else {
            return Err(Error::unknown_option(word, usage));
        }
        i += 2;
    }
    if options.force && options.keep.is_some() {
        return Err(Error::KeepWithForce);
    }
    Ok(options)
}

/// `key limit window <fixed> [options]`, shared by RL.CHECK, RL.PEEK and RL.REFUND: `fixed`
/// positional arguments follow the window, then the options; BURST defaults to the limit.
fn parse_keyed_quota<A: Args + ?Sized>(
    args: &A,
    fixed: usize,
    allow_cost: bool,
    usage: &'static str,
) -> Result<(Quota, Options), Error> {
    if args.count() < 4 + fixed {
        return Err(Error::Arity { usage });
    }
    let limit = positive(args.get(2), "limit")?;
    let window = positive(args.get(3), "window")?;
    let options = parse_options(args, 4 + fixed, allow_cost, usage)?;
    Ok((Quota::new(limit, window, options.burst.unwrap_or(limit))?, options))
}

/// `RL.CHECK key limit window [COST cost] [BURST burst] [KEEP keep] [FORCE]`.
pub fn parse_check<A: Args + ?Sized>(args: &A) -> Result<CheckRequest, Error> {
    let (quota, options) = parse_keyed_quota(args, 0, true, CHECK_USAGE)?;
    Ok(CheckRequest { quota, cost: options.cost.unwrap_or(1), keep: options.keep.unwrap_or(0), force: options.force })
}

/// `RL.PEEK key limit window [BURST burst]`: a cost-1 check that writes nothing.
pub fn parse_peek<A: Args + ?Sized>(args: &A) -> Result<Quota, Error> {
    Ok(parse_keyed_quota(args, 0, false, PEEK_USAGE)?.0)
}

/// `RL.REFUND key limit window amount [BURST burst]`: the quota and the amount.
pub fn parse_refund<A: Args + ?Sized>(args: &A) -> Result<(Quota, u64), Error> {
    let (quota, _) = parse_keyed_quota(args, 1, false, REFUND_USAGE)?;
    Ok((quota, non_negative(args.get(4), "amount")?))
}

/// `RL.RESET key`.
pub fn parse_reset<A: Args + ?Sized>(args: &A) -> Result<(), Error> {
    if args.count() == 2 {
        Ok(())
    } else {
        Err(Error::Arity { usage: RESET_USAGE })
    }
}

/// The most keys one RL.CHECKALL may name. Real uses combine a handful of limits (requests,
/// tokens, an organisation budget); the cap keeps the command `fast` and its duplicate check
/// (quadratic, but allocation-free) bounded. (In `rl_protocol::bounds`, shared with the
/// gateway, which refuses a policy of more limits.)
pub use rl_protocol::bounds::MAX_CHECKALL_KEYS;

/// RL.CHECKALL's `numkeys` and spec width, when `numkeys` is within `1..=MAX_CHECKALL_KEYS`
/// and matches the line: each key takes one argument and a spec of four integers (`limit
/// window cost burst`) or five (`... keep`), the same width for every spec, so
/// `argc == 2 + 5 * numkeys` or `argc == 2 + 6 * numkeys`.
pub fn parse_checkall_shape<A: Args + ?Sized>(args: &A) -> Option<(usize, usize)> {
    let numkeys = args
        .get(1)
        .and_then(parse_i64)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_CHECKALL_KEYS).contains(n))?;
    let per_key = args.count().checked_sub(2)? / numkeys;
    // The key itself, then 4 or 5 spec integers.
    let width = match per_key {
        5 => 4,
        6 => 5,
        _ => return None,
    };
    (args.count() == 2 + per_key * numkeys).then_some((numkeys, width))
}

/// RL.CHECKALL's `numkeys`, when the line is well formed ([`parse_checkall_shape`]).
pub fn parse_checkall_numkeys<A: Args + ?Sized>(args: &A) -> Option<usize> {
    parse_checkall_shape(args).map(|(numkeys, _)| numkeys)
}

/// `RL.CHECKALL numkeys key... spec...`: the number of keys (at `2..2 + numkeys`) and one
/// request per key, from the integers `limit window cost burst [keep]` after the keys.
pub fn parse_checkall<A: Args + ?Sized>(args: &A) -> Result<(usize, Vec<CheckRequest>), Error> {
    if args.count() < 7 {
        return Err(Error::Arity { usage: CHECKALL_USAGE });
    }
    let (numkeys, width) = parse_checkall_shape(args).ok_or(Error::KeyCount { usage: CHECKALL_USAGE })?;
    // The same key twice would be charged once while reporting two charges.
    for i in 2..2 + numkeys {
        if (i + 1..2 + numkeys).any(|j| args.get(i) == args.get(j)) {
            return Err(Error::DuplicateKey);
        }
    }
    let mut requests = Vec::with_capacity(numkeys);
    for k in 0..numkeys {
        let at = 2 + numkeys + width * k;
        let limit = positive(args.get(at), "limit")?;
        let window = positive(args.get(at + 1), "window")?;
        let cost = non_negative(args.get(at + 2), "cost")?;
        let burst = positive(args.get(at + 3), "burst")?;
        let keep = if width == 5 { non_negative(args.get(at + 4), "keep")? } else { 0 };
        requests.push(CheckRequest { keep, ..CheckRequest::new(Quota::new(limit, window, burst)?, cost) });
    }
    Ok((numkeys, requests))
}

/// `CL.THROTTLE key max_burst count_per_period period [quantity]`, redis-cell's arguments:
/// the bucket holds `max_burst + 1` tokens and refills `count_per_period` per `period` seconds.
pub fn parse_throttle<A: Args + ?Sized>(args: &A) -> Result<CheckRequest, Error> {
    if !(5..=6).contains(&args.count()) {
        return Err(Error::Arity { usage: THROTTLE_USAGE });
    }
    let max_burst = non_negative(args.get(2), "max_burst")?;
    let burst =
        max_burst.checked_add(1).and_then(NonZeroU64::new).ok_or(Error::NotPositive { name: "max_burst + 1" })?;
    let count = positive(args.get(3), "count_per_period")?;
    let period = positive(args.get(4), "period")?;
    let cost = if args.count() == 6 { non_negative(args.get(5), "quantity")? } else { 1 };
    Ok(CheckRequest::new(Quota::new(count, period, burst)?, cost))
}

/// An integer in `1..=max`.
fn bounded(bytes: Option<&[u8]>, name: &'static str, max: u64) -> Result<u64, Error> {
    bytes
        .and_then(parse_i64)
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| (1..=max).contains(v))
        .ok_or(Error::OutOfRange { name, max })
}

/// A lease id: any bytes, 1 to [`MAX_ID_BYTES`] of them, except the lease sets' [`MARKER`].
fn lease_id(bytes: Option<&[u8]>) -> Result<(), Error> {
    match bytes {
        Some(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES && id != MARKER => Ok(()),
        _ => Err(Error::BadLeaseId),
    }
}

/// Where a lease command's id is on its line.
pub const ACQUIRE_ID: usize = 5;
pub const RELEASE_ID: usize = 2;
pub const RENEW_ID: usize = 2;

/// `RL.ACQUIRE key max lease_ms ID id`: `(max, lease_ms)`; the id is argument [`ACQUIRE_ID`].
pub fn parse_acquire<A: Args + ?Sized>(args: &A) -> Result<(u64, u64), Error> {
    if args.count() != 6 {
        return Err(Error::Arity { usage: ACQUIRE_USAGE });
    }
    let max = bounded(args.get(2), "max", MAX_LEASES)?;
    let lease_ms = bounded(args.get(3), "lease_ms", MAX_LEASE_MS)?;
    match args.get(4) {
        Some(word) if word.eq_ignore_ascii_case(b"ID") => {}
        word => return Err(Error::unknown_option(word.unwrap_or_default(), ACQUIRE_USAGE)),
    }
    lease_id(args.get(ACQUIRE_ID))?;
    Ok((max, lease_ms))
}

/// `RL.RELEASE key id`; the id is argument [`RELEASE_ID`].
pub fn parse_release<A: Args + ?Sized>(args: &A) -> Result<(), Error> {
    if args.count() != 3 {
        return Err(Error::Arity { usage: RELEASE_USAGE });
    }
    lease_id(args.get(RELEASE_ID))
}

/// `RL.RENEW key id lease_ms`: the lease; the id is argument [`RENEW_ID`].
pub fn parse_renew<A: Args + ?Sized>(args: &A) -> Result<u64, Error> {
    if args.count() != 4 {
        return Err(Error::Arity { usage: RENEW_USAGE });
    }
    lease_id(args.get(RENEW_ID))?;
    bounded(args.get(3), "lease_ms", MAX_LEASE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(words: &str) -> Vec<&[u8]> {
        words.split(' ').map(str::as_bytes).collect()
    }

    fn check(words: &str) -> Result<CheckRequest, Error> {
        parse_check(line(words).as_slice())
    }

    fn quota(limit: u64, window: u64, burst: u64) -> Quota {
        let nz = |v| NonZeroU64::new(v).ok_or(Error::Internal);
        match (nz(limit), nz(window), nz(burst)) {
            (Ok(l), Ok(w), Ok(b)) => Quota::new(l, w, b).unwrap_or_else(|e| panic!("{e:?}")),
            _ => panic!("zero in test quota"),
        }
    }

    #[test]
    fn check_defaults_cost_one_and_burst_limit() {
        assert_eq!(check("RL.CHECK k 10 60"), Ok(CheckRequest::new(quota(10, 60, 10), 1)));
    }

    #[test]
    fn check_options_in_any_order_and_any_case() {
        let want = Ok(CheckRequest::new(quota(10, 60, 20), 3));
        assert_eq!(check("RL.CHECK k 10 60 COST 3 BURST 20"), want);
        assert_eq!(check("RL.CHECK k 10 60 burst 20 cost 3"), want);
        assert_eq!(check("RL.CHECK k 10 60 BuRsT 20 CoSt 3"), want);
        assert_eq!(check("RL.CHECK k 10 60 COST 0"), Ok(CheckRequest::new(quota(10, 60, 10), 0)));
    }

    #[test]
    fn check_takes_force_as_a_flag_in_any_position() {
        let forced = |cost| Ok(CheckRequest { quota: quota(10, 60, 20), cost, keep: 0, force: true });
        assert_eq!(check("RL.CHECK k 10 60 COST 3 BURST 20 FORCE"), forced(3));
        assert_eq!(check("RL.CHECK k 10 60 force COST 3 BURST 20"), forced(3));
        assert_eq!(check("RL.CHECK k 10 60 BURST 20 FoRcE COST 3"), forced(3));
        assert_eq!(check("RL.CHECK k 10 60 BURST 20 FORCE"), forced(1));
        assert_eq!(check("RL.CHECK k 10 60 COST 0 BURST 20 FORCE"), forced(0));
        assert_eq!(check("RL.CHECK k 10 60").map(|r| r.force), Ok(false));
    }

    #[test]
    fn check_takes_keep_with_a_value_but_not_with_force() {
        let keeping = |cost, keep| Ok(CheckRequest { keep, ..CheckRequest::new(quota(10, 60, 10), cost) });
        assert_eq!(check("RL.CHECK k 10 60 KEEP 3"), keeping(1, 3));
        assert_eq!(check("RL.CHECK k 10 60 cost 2 keep 0"), keeping(2, 0));
        assert_eq!(check("RL.CHECK k 10 60 KEEP 1 KEEP 2").err(), Some(Error::RepeatedOption { option: "KEEP" }));
        assert_eq!(check("RL.CHECK k 10 60 KEEP").err(), Some(Error::MissingValue { option: "KEEP" }));
        assert_eq!(check("RL.CHECK k 10 60 KEEP -1").err(), Some(Error::Negative { name: "keep" }));
        assert_eq!(check("RL.CHECK k 10 60 KEEP 1 FORCE").err(), Some(Error::KeepWithForce));
        assert!(matches!(parse_peek(line("RL.PEEK k 5 10 KEEP 1").as_slice()), Err(Error::UnknownOption { .. })));
    }

    #[test]
    fn checkall_shape_of_short_lines_is_none_not_a_panic() {
        assert_eq!(parse_checkall_shape(line("RL.CHECKALL 1").as_slice()), None);
        assert_eq!(parse_checkall_shape(line("RL.CHECKALL 2 a").as_slice()), None);
        assert_eq!(parse_checkall_shape(line("RL.CHECKALL 64 a b c d e f g").as_slice()), None);
    }

    #[test]
    fn checkall_specs_take_an_optional_fifth_integer_keep() {
        let (n, reqs) = parse_checkall(line("RL.CHECKALL 2 a b 10 60 1 10 2 1000 60 250 2000 500").as_slice()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            reqs,
            vec![
                CheckRequest { keep: 2, ..CheckRequest::new(quota(10, 60, 10), 1) },
                CheckRequest { keep: 500, ..CheckRequest::new(quota(1000, 60, 2000), 250) }
            ]
        );
        // One key: 4 or 5 integers; widths are never mixed.
        assert_eq!(parse_checkall(line("RL.CHECKALL 1 a 10 60 1 10 3").as_slice()).map(|(_, r)| r[0].keep), Ok(3));
        assert_eq!(
            parse_checkall(line("RL.CHECKALL 2 a b 10 60 1 10 2 10 60 1 10").as_slice()).err(),
            Some(Error::KeyCount { usage: CHECKALL_USAGE })
        );
        assert_eq!(
            parse_checkall(line("RL.CHECKALL 1 a 10 60 1 10 -1").as_slice()).err(),
            Some(Error::Negative { name: "keep" })
        );
    }

    #[test]
    fn force_is_refused_twice_with_a_value_or_outside_rl_check() {
        assert_eq!(check("RL.CHECK k 10 60 FORCE FORCE").err(), Some(Error::RepeatedOption { option: "FORCE" }));
        assert_eq!(check("RL.CHECK k 10 60 FORCE COST 2 force").err(), Some(Error::RepeatedOption { option: "FORCE" }));
        // A value after FORCE is read as the next option.
        assert_eq!(
            check("RL.CHECK k 10 60 FORCE 1").err(),
            Some(Error::UnknownOption { option: "1".into(), usage: CHECK_USAGE })
        );
        assert!(matches!(parse_peek(line("RL.PEEK k 5 10 FORCE").as_slice()), Err(Error::UnknownOption { .. })));
        assert!(matches!(parse_refund(line("RL.REFUND k 5 10 1 FORCE").as_slice()), Err(Error::UnknownOption { .. })));
        assert_eq!(
            parse_throttle(line("CL.THROTTLE k 4 1 1 FORCE").as_slice()).err(),
            Some(Error::Negative { name: "quantity" })
        );
    }

    #[test]
    fn check_rejects_bad_lines() {
        let cases: &[(&str, Error)] = &[
            ("RL.CHECK k 10", Error::Arity { usage: CHECK_USAGE }),
            ("RL.CHECK k 0 60", Error::NotPositive { name: "limit" }),
            ("RL.CHECK k -1 60", Error::NotPositive { name: "limit" }),
            ("RL.CHECK k ten 60", Error::NotPositive { name: "limit" }),
            ("RL.CHECK k 1.5 60", Error::NotPositive { name: "limit" }),
            ("RL.CHECK k +5 60", Error::NotPositive { name: "limit" }),
            ("RL.CHECK k 99999999999999999999 60", Error::TooLarge { name: "limit" }),
            ("RL.CHECK k 9223372036854775808 60", Error::TooLarge { name: "limit" }),
            ("RL.CHECK k -99999999999999999999 60", Error::NotPositive { name: "limit" }),
            ("RL.CHECK k 5 60 COST 99999999999999999999", Error::TooLarge { name: "cost" }),
            ("RL.CHECK k 10 0", Error::NotPositive { name: "window" }),
            ("RL.CHECK k 10 60 BURST 0", Error::NotPositive { name: "burst" }),
            ("RL.CHECK k 10 60 BURST -3", Error::NotPositive { name: "burst" }),
            ("RL.CHECK k 10 60 COST -1", Error::Negative { name: "cost" }),
            ("RL.CHECK k 10 60 COST", Error::MissingValue { option: "COST" }),
            ("RL.CHECK k 10 60 BURST", Error::MissingValue { option: "BURST" }),
            ("RL.CHECK k 10 60 COST 1 COST 2", Error::RepeatedOption { option: "COST" }),
            ("RL.CHECK k 10 60 BURST 1 burst 2", Error::RepeatedOption { option: "BURST" }),
            ("RL.CHECK k 10 60 SPEED 2", Error::UnknownOption { option: "SPEED".into(), usage: CHECK_USAGE }),
            ("RL.CHECK k 1 9223372036854775807", Error::Math(crate::gcra::MathError::ToleranceTooLarge)),
        ];
        for (words, want) in cases {
            assert_eq!(check(words).as_ref().err(), Some(want), "{words}");
        }
    }

    #[test]
    fn integers_are_canonical_decimals_as_redis_takes_them() {
        for (text, want) in [("0", Some(0)), ("7", Some(7)), ("-7", Some(-7)), ("10", Some(10))] {
            assert_eq!(parse_i64(text.as_bytes()), want, "{text}");
        }
        for text in ["-0", "007", "00", "-01", "+5", " 5", "5 ", "0x10", "1e3", "5.0", "--5"] {
            assert_eq!(parse_i64(text.as_bytes()), None, "{text}");
        }
        assert_eq!(check("RL.CHECK k 010 60").err(), Some(Error::NotPositive { name: "limit" }));
        assert_eq!(check("RL.CHECK k 10 60 COST -0").err(), Some(Error::Negative { name: "cost" }));
    }

    #[test]
    fn an_unknown_option_is_echoed_only_as_a_short_prefix() {
        let long = "X".repeat(10_000);
        let error = check(&format!("RL.CHECK k 10 60 {long} 1")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with(&format!("ERR unknown option '{}...'", "X".repeat(MAX_ECHOED_BYTES))), "{error}");
        assert!(error.len() < MAX_ECHOED_BYTES + CHECK_USAGE.len() + 64, "{} bytes", error.len());
        let exact = "Y".repeat(MAX_ECHOED_BYTES);
        let error = check(&format!("RL.CHECK k 10 60 {exact} 1")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with(&format!("ERR unknown option '{exact}', usage")), "{error}");
    }

    #[test]
    fn extreme_integers_parse_without_overflow() {
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b""), None);
        let huge = check("RL.CHECK k 9223372036854775807 1 BURST 9223372036854775807 COST 9223372036854775807");
        assert!(huge.is_ok(), "{huge:?}");
    }

    #[test]
    fn peek_takes_only_burst() {
        assert_eq!(parse_peek(line("RL.PEEK k 5 10 BURST 7").as_slice()), Ok(quota(5, 10, 7)));
        assert!(matches!(parse_peek(line("RL.PEEK k 5 10 COST 2").as_slice()), Err(Error::UnknownOption { .. })));
    }

    #[test]
    fn refund_needs_an_amount() {
        assert_eq!(parse_refund(line("RL.REFUND k 5 10 3").as_slice()), Ok((quota(5, 10, 5), 3)));
        assert_eq!(parse_refund(line("RL.REFUND k 5 10 3 BURST 9").as_slice()), Ok((quota(5, 10, 9), 3)));
        assert_eq!(parse_refund(line("RL.REFUND k 5 10").as_slice()), Err(Error::Arity { usage: REFUND_USAGE }));
        assert_eq!(parse_refund(line("RL.REFUND k 5 10 -2").as_slice()), Err(Error::Negative { name: "amount" }));
    }

    #[test]
    fn checkall_pairs_keys_with_specs() {
        let (n, reqs) = parse_checkall(line("RL.CHECKALL 2 a b 10 60 1 10 1000 60 250 2000").as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 2);
        assert_eq!(reqs, vec![CheckRequest::new(quota(10, 60, 10), 1), CheckRequest::new(quota(1000, 60, 2000), 250)]);
        for bad in [
            "RL.CHECKALL 0 a 1 1 1 1",
            "RL.CHECKALL 2 a 1 1 1 1",
            "RL.CHECKALL -1 a 1 1 1 1",
            "RL.CHECKALL x a 1 1 1 1",
            "RL.CHECKALL 1 a 1 1 1 1 1 extra",
            "RL.CHECKALL 9223372036854775807 a 1 1 1 1",
        ] {
            assert_eq!(
                parse_checkall(line(bad).as_slice()).err(),
                Some(Error::KeyCount { usage: CHECKALL_USAGE }),
                "{bad}"
            );
        }
        assert_eq!(
            parse_checkall(line("RL.CHECKALL 2 a a 1 1 1 1 1 1 1 1").as_slice()).err(),
            Some(Error::DuplicateKey)
        );
        assert_eq!(
            parse_checkall(line("RL.CHECKALL 1 a 1 1 -1 1").as_slice()).err(),
            Some(Error::Negative { name: "cost" })
        );
    }

    #[test]
    fn checkall_takes_at_most_max_keys() {
        let line_for = |n: usize| {
            let mut words = vec!["RL.CHECKALL".to_string(), n.to_string()];
            words.extend((0..n).map(|i| format!("k{i}")));
            words.extend((0..n).flat_map(|_| ["5", "60", "1", "5"].map(String::from)));
            words
        };
        let at_cap = line_for(MAX_CHECKALL_KEYS);
        let at_cap: Vec<&[u8]> = at_cap.iter().map(|w| w.as_bytes()).collect();
        assert_eq!(parse_checkall(at_cap.as_slice()).map(|(n, _)| n), Ok(MAX_CHECKALL_KEYS));
        let over = line_for(MAX_CHECKALL_KEYS + 1);
        let over: Vec<&[u8]> = over.iter().map(|w| w.as_bytes()).collect();
        assert_eq!(parse_checkall(over.as_slice()).err(), Some(Error::KeyCount { usage: CHECKALL_USAGE }));
    }

    #[test]
    fn throttle_uses_redis_cell_arguments() {
        assert_eq!(parse_throttle(line("CL.THROTTLE k 4 1 1").as_slice()), Ok(CheckRequest::new(quota(1, 1, 5), 1)));
        assert_eq!(
            parse_throttle(line("CL.THROTTLE k 0 30 60 3").as_slice()),
            Ok(CheckRequest::new(quota(30, 60, 1), 3))
        );
        assert_eq!(
            parse_throttle(line("CL.THROTTLE k 9223372036854775807 1 1").as_slice()).err(),
            Some(Error::Math(crate::gcra::MathError::ToleranceTooLarge))
        );
        assert_eq!(parse_throttle(line("CL.THROTTLE k 4 1").as_slice()), Err(Error::Arity { usage: THROTTLE_USAGE }));
        assert_eq!(parse_throttle(line("CL.THROTTLE k -1 1 1").as_slice()), Err(Error::Negative { name: "max_burst" }));
    }

    #[test]
    fn lease_commands_take_bounded_integers_and_an_id() {
        let acquire = |words: &str| parse_acquire(line(words).as_slice());
        assert_eq!(acquire("RL.ACQUIRE k 3 30000 ID req-1"), Ok((3, 30_000)));
        assert_eq!(acquire("RL.ACQUIRE k 10000 86400000 id x"), Ok((10_000, 86_400_000)));
        let cases: &[(&str, Error)] = &[
            ("RL.ACQUIRE k 3 30000 ID", Error::Arity { usage: ACQUIRE_USAGE }),
            ("RL.ACQUIRE k 3 30000 ID a b", Error::Arity { usage: ACQUIRE_USAGE }),
            ("RL.ACQUIRE k 0 30000 ID a", Error::OutOfRange { name: "max", max: 10_000 }),
            ("RL.ACQUIRE k 10001 30000 ID a", Error::OutOfRange { name: "max", max: 10_000 }),
            ("RL.ACQUIRE k -1 30000 ID a", Error::OutOfRange { name: "max", max: 10_000 }),
            ("RL.ACQUIRE k 3 0 ID a", Error::OutOfRange { name: "lease_ms", max: 86_400_000 }),
            ("RL.ACQUIRE k 3 86400001 ID a", Error::OutOfRange { name: "lease_ms", max: 86_400_000 }),
            ("RL.ACQUIRE k 3 1.5 ID a", Error::OutOfRange { name: "lease_ms", max: 86_400_000 }),
            ("RL.ACQUIRE k 3 100 AS a", Error::UnknownOption { option: "AS".into(), usage: ACQUIRE_USAGE }),
            ("RL.ACQUIRE k 3 100 ID ", Error::BadLeaseId),
        ];
        for (words, want) in cases {
            assert_eq!(acquire(words).as_ref().err(), Some(want), "{words}");
        }
        let long = format!("RL.ACQUIRE k 3 100 ID {}", "x".repeat(MAX_ID_BYTES + 1));
        assert_eq!(acquire(&long), Err(Error::BadLeaseId));
        let mut marker = b"RL.ACQUIRE k 3 100 ID ".to_vec();
        marker.extend_from_slice(MARKER);
        assert_eq!(
            parse_acquire(marker.as_slice().split(|&b| b == b' ').collect::<Vec<_>>().as_slice()),
            Err(Error::BadLeaseId),
            "the marker is reserved"
        );
        assert_eq!(
            parse_release([&b"RL.RELEASE"[..], b"k", b"\x00binary-uuid"].as_slice()),
            Ok(()),
            "other NUL-led ids are fine"
        );
        assert_eq!(parse_release(line("RL.RELEASE k a").as_slice()), Ok(()));
        assert_eq!(parse_release(line("RL.RELEASE k").as_slice()), Err(Error::Arity { usage: RELEASE_USAGE }));
        assert_eq!(parse_release(line("RL.RELEASE k ").as_slice()), Err(Error::BadLeaseId));
        assert_eq!(parse_renew(line("RL.RENEW k a 500").as_slice()), Ok(500));
        assert_eq!(
            parse_renew(line("RL.RENEW k a 0").as_slice()),
            Err(Error::OutOfRange { name: "lease_ms", max: 86_400_000 })
        );
        assert_eq!(parse_renew(line("RL.RENEW k a").as_slice()), Err(Error::Arity { usage: RENEW_USAGE }));
    }

    proptest::proptest! {
        #[test]
        fn no_command_line_panics(words in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..8), 0..12)) {
            let line: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            let _ = parse_check(line.as_slice());
            let _ = parse_peek(line.as_slice());
            let _ = parse_refund(line.as_slice());
            let _ = parse_checkall(line.as_slice());
            let _ = parse_throttle(line.as_slice());
            let _ = parse_acquire(line.as_slice());
            let _ = parse_release(line.as_slice());
            let _ = parse_renew(line.as_slice());
        }
    }
}
