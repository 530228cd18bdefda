//! The stored state of one limiter key: a plain Redis string holding its TAT.
//!
//! Format (ASCII, no spaces):
//! - `<nanos>`: the TAT in whole nanoseconds since the Unix epoch, e.g.
//!   `1764441600123456789`. This is the common case. The module writes it as a plain string;
//!   a replica applying the replicated `SET` may keep it int-encoded, which reads the same.
//! - `<nanos>+<numerator>/<denominator>`: the same plus an exact fraction of a nanosecond,
//!   written when the emission interval (`window / limit`) is not a whole number of
//!   nanoseconds; the denominator is the limit, e.g. `1764441600333333333+1/3`.
//!
//! Numbers are canonical decimals (no sign, no leading zeros); `nanos` is at least
//! [`MIN_TAT_NANOS`] and fits `i64`, the fraction's numbers fit `u64`, and
//! `0 < numerator < denominator`. Anything else is not limiter state and is refused, never
//! overwritten.

use crate::gcra::Tat;

/// The earliest TAT accepted as limiter state: 10^18 ns, in September 2001. Every TAT a
/// server clock can produce is later, while application counters (`INCR views`) are smaller:
/// the floor keeps RL.* commands from taking over, or RL.RESET from deleting, such a key.
pub const MIN_TAT_NANOS: u64 = 1_000_000_000_000_000_000;

/// Longest encoding: a 19-digit `nanos`, two 20-digit fraction numbers, two separators.
pub const MAX_ENCODED_LEN: usize = 19 + 2 * 20 + 2;

/// Parses a stored value; `None` if it is not limiter state.
pub fn decode(bytes: &[u8]) -> Option<Tat> {
    match parse_plain(bytes) {
        Some(nanos) => Some(Tat::from_nanos(nanos)),
        None => decode_with_fraction(bytes),
    }
}

/// The hot path: a canonical decimal of at most 19 digits, which cannot overflow `u64`, so
/// the loop needs no checked arithmetic and no early exit.
fn parse_plain(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 || (bytes.len() > 1 && bytes.first() == Some(&b'0')) {
        return None;
    }
    let mut value: u64 = 0;
    let mut all_digits = true;
    for &b in bytes {
        let digit = b.wrapping_sub(b'0');
        all_digits &= digit < 10;
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
    }
    (all_digits && (MIN_TAT_NANOS..=i64::MAX as u64).contains(&value)).then_some(value)
}

/// Everything else: `nanos+numerator/denominator`, or not limiter state.
fn decode_with_fraction(bytes: &[u8]) -> Option<Tat> {
    let (nanos, fraction) = match bytes.iter().position(|&b| b == b'+') {
        Some(plus) => (bytes.get(..plus)?, Some(bytes.get(plus + 1..)?)),
        None => (bytes, None),
    };
    let nanos = parse_canonical(nanos).filter(|n| (MIN_TAT_NANOS..=i64::MAX as u64).contains(n))?;
    let Some(fraction) = fraction else {
        return Some(Tat::from_nanos(nanos));
    };
    let slash = fraction.iter().position(|&b| b == b'/')?;
    let numerator = parse_canonical(fraction.get(..slash)?)?;
    let denominator = parse_canonical(fraction.get(slash + 1..)?)?;
    (numerator > 0 && numerator < denominator).then_some(Tat { nanos, numerator, denominator })
}

/// A canonical non-negative decimal that fits `u64`.
fn parse_canonical(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || (digits.len() > 1 && digits.first() == Some(&b'0')) {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// An encoded state in a stack buffer: the hot path formats without allocating.
pub struct Encoded {
    buf: [u8; MAX_ENCODED_LEN],
    len: usize,
}

impl Encoded {
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

pub fn encode(tat: &Tat) -> Encoded {
    let mut out = Encoded { buf: [0; MAX_ENCODED_LEN], len: 0 };
    push_decimal(&mut out, tat.nanos);
    if tat.numerator > 0 {
        push_byte(&mut out, b'+');
        push_decimal(&mut out, tat.numerator);
        push_byte(&mut out, b'/');
        push_decimal(&mut out, tat.denominator);
    }
    out
}

/// A plain decimal, e.g. an expiry to replicate, formatted like the state.
pub fn decimal(value: u64) -> Encoded {
    let mut out = Encoded { buf: [0; MAX_ENCODED_LEN], len: 0 };
    push_decimal(&mut out, value);
    out
}

fn push_byte(out: &mut Encoded, byte: u8) {
    if let Some(slot) = out.buf.get_mut(out.len) {
        *slot = byte;
        out.len += 1;
    }
}

/// Two decimal digits for each value below 100: halves the divisions of a naive loop.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

fn push_decimal(out: &mut Encoded, mut value: u64) {
    // u64::MAX has 20 digits; they are written backwards from the end of `digits`.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        start -= 2;
        if let (Some(slot), Some(pair)) = (digits.get_mut(start..start + 2), DIGIT_PAIRS.get(pair..pair + 2)) {
            slot.copy_from_slice(pair);
        }
        if value == 0 {
            break;
        }
    }
    // A value with an odd number of digits leaves one leading zero.
    if digits.get(start) == Some(&b'0') && start < digits.len() - 1 {
        start += 1;
    }
    let digits = digits.get(start..).unwrap_or(&[]);
    if let Some(slot) = out.buf.get_mut(out.len..out.len + digits.len()) {
        slot.copy_from_slice(digits);
        out.len += digits.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_nanoseconds_round_trip_as_a_plain_integer() {
        let tat = Tat::from_nanos(1_764_441_600_123_456_789);
        assert_eq!(encode(&tat).as_bytes(), b"1764441600123456789");
        assert_eq!(decode(b"1764441600123456789"), Some(tat));
        assert_eq!(decode(b"1000000000000000000"), Some(Tat::from_nanos(MIN_TAT_NANOS)));
    }

    #[test]
    fn fractions_round_trip() {
        let tat = Tat { nanos: 1_764_441_600_333_333_333, numerator: 1, denominator: 3 };
        assert_eq!(encode(&tat).as_bytes(), b"1764441600333333333+1/3");
        assert_eq!(decode(b"1764441600333333333+1/3"), Some(tat));
        let widest = Tat { nanos: i64::MAX as u64, numerator: u64::MAX - 1, denominator: u64::MAX };
        assert_eq!(encode(&widest).as_bytes().len(), MAX_ENCODED_LEN);
        assert_eq!(decode(encode(&widest).as_bytes()), Some(widest));
    }

    #[test]
    fn every_digit_count_encodes_canonically() {
        let mut value: u64 = 0;
        for digits in 1..=19 {
            for candidate in [value, value + 1, value * 9 + 9] {
                let text = candidate.to_string();
                if text.len() <= 19 && candidate <= i64::MAX as u64 {
                    assert_eq!(encode(&Tat::from_nanos(candidate)).as_bytes(), text.as_bytes(), "{digits} digits");
                    let state = (candidate >= MIN_TAT_NANOS).then_some(Tat::from_nanos(candidate));
                    assert_eq!(decode(text.as_bytes()), state);
                }
            }
            value = value * 10 + 9;
        }
        for small in 0..1000u64 {
            assert_eq!(encode(&Tat::from_nanos(small)).as_bytes(), small.to_string().as_bytes());
        }
        let fraction = Tat { nanos: 7, numerator: 99, denominator: u64::MAX };
        assert_eq!(encode(&fraction).as_bytes(), format!("7+99/{}", u64::MAX).as_bytes());
    }

    #[test]
    fn foreign_values_are_not_state() {
        for bad in [
            &b""[..],
            b"hello",
            b"-1",
            b"0", // a counter, not a TAT: before MIN_TAT_NANOS
            b"42",
            b"999999999999999999",
            b"42+1/3",
            b"+1",
            b"01",
            b"1.5",
            b" 1",
            b"1 ",
            b"9223372036854775808", // i64::MAX + 1
            b"99999999999999999999",
            b"1+1/99999999999999999999", // over u64::MAX
            b"1+",
            b"1+1",
            b"1+1/",
            b"1+/3",
            b"1+0/3",
            b"1+3/3",
            b"1+4/3",
            b"1+1/3+1",
            b"1+1/3/3",
            b"1+01/3",
        ] {
            assert_eq!(decode(bad), None, "{:?} must not decode", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn every_tat_round_trips(nanos in MIN_TAT_NANOS..=i64::MAX as u64, den in 2..=u64::MAX, num_seed: u64) {
            let plain = Tat::from_nanos(nanos);
            proptest::prop_assert_eq!(decode(encode(&plain).as_bytes()), Some(plain));
            let numerator = 1 + num_seed % (den - 1);
            let exact = Tat { nanos, numerator, denominator: den };
            proptest::prop_assert_eq!(decode(encode(&exact).as_bytes()), Some(exact));
        }

        #[test]
        fn decoding_never_panics(bytes: Vec<u8>) {
            let _ = decode(&bytes);
        }
    }
}
