//! The replies of the `ratelimit` module's commands as typed values, decoded in one place.
//!
//! The gateway and every test read replies through these types (`redis::FromRedisValue`), so
//! the order of the integers in a reply is written down once, here. A reply of the wrong shape
//! (a missing field, a negative count) is a decoding error, never a silently wrong value.

use redis::{FromRedisValue, ParsingError, Value};

/// `RL.CHECK` and `RL.PEEK`: `[allowed, remaining, retry_after_ms, reset_after_ms, burst]`,
/// and one row of `RL.CHECKALL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckReply {
    pub allowed: bool,
    /// Whole tokens left after this request (never negative).
    pub remaining: u64,
    /// Milliseconds until this request would be admitted: `Some(0)` when allowed, `None` when
    /// it never can be (its cost is larger than the burst).
    pub retry_after_ms: Option<u64>,
    /// Milliseconds until the bucket is full again.
    pub reset_after_ms: u64,
    /// The bucket size the decision was made with.
    pub burst: u64,
}

/// `RL.CHECKALL`: `[allowed, retry_after_ms, [row per key]]`; all limits were charged when
/// `allowed`, none otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckAllReply {
    pub allowed: bool,
    /// The longest wait of the refusing limits (`Some(0)` when allowed, `None` when one of them
    /// can never admit).
    pub retry_after_ms: Option<u64>,
    /// One row per key, in the order of the keys.
    pub limits: Vec<CheckReply>,
}

/// `RL.REFUND`: `[remaining, reset_after_ms]` after the refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundReply {
    pub remaining: u64,
    pub reset_after_ms: u64,
}

/// `CL.THROTTLE` (redis-cell's shape): `[limited, limit, remaining, retry_after_s, reset_after_s]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleReply {
    pub limited: bool,
    /// `max_burst + 1`.
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until a retry can pass, rounded up; `None` (`-1` on the wire) when allowed or
    /// when the quantity can never pass.
    pub retry_after_secs: Option<u64>,
    pub reset_after_secs: u64,
}

/// `RL.ACQUIRE`: `[acquired, in_flight, max, retry_after_ms]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireReply {
    /// The lease is held now (taken, or renewed when the id already held one).
    pub acquired: bool,
    /// Live leases after the call, this one included when acquired.
    pub in_flight: u64,
    /// The `max` the call was made with.
    pub max: u64,
    /// 0 when acquired; else milliseconds until enough live leases end for a slot to free
    /// (the earliest one, unless `max` was lowered below the leases in flight; an upper bound
    /// on the wait, as holders may release earlier).
    pub retry_after_ms: u64,
}

fn bad(what: &str, value: &dyn std::fmt::Debug) -> ParsingError {
    ParsingError::from(format!("not an {what} reply: {value:?}"))
}

fn ints(what: &str, value: Value) -> Result<Vec<i64>, ParsingError> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Int(i) => Ok(i),
                other => Err(bad(what, &other)),
            })
            .collect(),
        other => Err(bad(what, &other)),
    }
}

fn flag(what: &str, value: i64) -> Result<bool, ParsingError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(bad(what, &other)),
    }
}

fn count(what: &str, value: i64) -> Result<u64, ParsingError> {
    u64::try_from(value).map_err(|_| bad(what, &value))
}

/// `-1` means "never" (or "not applicable"); any other negative value is malformed.
fn wait(what: &str, value: i64) -> Result<Option<u64>, ParsingError> {
    if value == -1 {
        Ok(None)
    } else {
        count(what, value).map(Some)
    }
}

impl CheckReply {
    fn from_ints(ints: &[i64]) -> Result<Self, ParsingError> {
        const WHAT: &str = "RL.CHECK";
        match *ints {
            [allowed, remaining, retry, reset, burst] => Ok(CheckReply {
                allowed: flag(WHAT, allowed)?,
                remaining: count(WHAT, remaining)?,
                retry_after_ms: wait(WHAT, retry)?,
                reset_after_ms: count(WHAT, reset)?,
                burst: count(WHAT, burst)?,
            }),
            _ => Err(bad(WHAT, &ints)),
        }
    }

    /// Whole tokens in the bucket before this request, as RL.PEEK sees them: `remaining`
    /// counts the tokens after a cost-1 request, so it is one less when that request passes.
    pub fn tokens(&self) -> u64 {
        self.remaining + u64::from(self.allowed)
    }
}

impl FromRedisValue for CheckReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        Self::from_ints(&ints("RL.CHECK", v)?)
    }
}

impl FromRedisValue for CheckAllReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        const WHAT: &str = "RL.CHECKALL";
        let Value::Array(items) = v else { return Err(bad(WHAT, &v)) };
        let mut items = items.into_iter();
        match (items.next(), items.next(), items.next(), items.next()) {
            (Some(Value::Int(allowed)), Some(Value::Int(retry)), Some(rows @ Value::Array(_)), None) => {
                let Value::Array(rows) = rows else { return Err(bad(WHAT, &rows)) };
                let limits = rows
                    .into_iter()
                    .map(|row| CheckReply::from_ints(&ints(WHAT, row)?))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(CheckAllReply { allowed: flag(WHAT, allowed)?, retry_after_ms: wait(WHAT, retry)?, limits })
            }
            other => Err(bad(WHAT, &other)),
        }
    }
}

impl FromRedisValue for RefundReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        const WHAT: &str = "RL.REFUND";
        match *ints(WHAT, v)? {
            [remaining, reset] => {
                Ok(RefundReply { remaining: count(WHAT, remaining)?, reset_after_ms: count(WHAT, reset)? })
            }
            ref other => Err(bad(WHAT, &other)),
        }
    }
}

impl FromRedisValue for ThrottleReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        const WHAT: &str = "CL.THROTTLE";
        match *ints(WHAT, v)? {
            [limited, limit, remaining, retry, reset] => Ok(ThrottleReply {
                limited: flag(WHAT, limited)?,
                limit: count(WHAT, limit)?,
                remaining: count(WHAT, remaining)?,
                retry_after_secs: wait(WHAT, retry)?,
                reset_after_secs: count(WHAT, reset)?,
            }),
            ref other => Err(bad(WHAT, &other)),
        }
    }
}

impl FromRedisValue for AcquireReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        const WHAT: &str = "RL.ACQUIRE";
        match *ints(WHAT, v)? {
            [acquired, in_flight, max, retry] => Ok(AcquireReply {
                acquired: flag(WHAT, acquired)?,
                in_flight: count(WHAT, in_flight)?,
                max: count(WHAT, max)?,
                retry_after_ms: count(WHAT, retry)?,
            }),
            ref other => Err(bad(WHAT, &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(values: &[i64]) -> Value {
        Value::Array(values.iter().map(|&v| Value::Int(v)).collect())
    }

    #[test]
    fn check_replies_decode_by_name() {
        let reply = CheckReply::from_redis_value(array(&[1, 4, 0, 1000, 5])).unwrap();
        assert_eq!(
            reply,
            CheckReply { allowed: true, remaining: 4, retry_after_ms: Some(0), reset_after_ms: 1000, burst: 5 }
        );
        assert_eq!(reply.tokens(), 5);
        let never = CheckReply::from_redis_value(array(&[0, 2, -1, 300, 3])).unwrap();
        assert_eq!(never.retry_after_ms, None);
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [vec![1, 4, 0, 1000], vec![2, 4, 0, 1000, 5], vec![1, -4, 0, 1000, 5], vec![0, 1, -2, 1, 1]] {
            assert!(CheckReply::from_redis_value(array(&bad)).is_err(), "{bad:?}");
        }
        assert!(CheckReply::from_redis_value(Value::SimpleString("OK".into())).is_err());
        assert!(RefundReply::from_redis_value(array(&[1, 2, 3])).is_err());
    }

    #[test]
    fn checkall_replies_carry_a_row_per_key() {
        let v = Value::Array(vec![
            Value::Int(0),
            Value::Int(250),
            Value::Array(vec![array(&[1, 9, 0, 10, 10]), array(&[0, 0, 250, 900, 5])]),
        ]);
        let reply = CheckAllReply::from_redis_value(v).unwrap();
        assert!(!reply.allowed);
        assert_eq!(reply.retry_after_ms, Some(250));
        assert_eq!(reply.limits.len(), 2);
        assert_eq!(reply.limits[1].retry_after_ms, Some(250));
        assert!(CheckAllReply::from_redis_value(array(&[1, 0])).is_err());
    }

    #[test]
    fn refund_and_throttle_replies() {
        assert_eq!(
            RefundReply::from_redis_value(array(&[3, 700])).unwrap(),
            RefundReply { remaining: 3, reset_after_ms: 700 }
        );
        let t = ThrottleReply::from_redis_value(array(&[0, 5, 4, -1, 1])).unwrap();
        assert_eq!(
            t,
            ThrottleReply { limited: false, limit: 5, remaining: 4, retry_after_secs: None, reset_after_secs: 1 }
        );
    }

    #[test]
    fn acquire_replies() {
        assert_eq!(
            AcquireReply::from_redis_value(array(&[0, 3, 3, 250])).unwrap(),
            AcquireReply { acquired: false, in_flight: 3, max: 3, retry_after_ms: 250 }
        );
        for bad in [vec![1, 1, 3], vec![2, 1, 3, 0], vec![1, -1, 3, 0], vec![0, 3, 3, -1]] {
            assert!(AcquireReply::from_redis_value(array(&bad)).is_err(), "{bad:?}");
        }
    }
}
