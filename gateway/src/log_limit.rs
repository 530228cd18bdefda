//! Log lines that can repeat once per request (Redis down, the model down, connections
//! refused) are written at most once per second per place, with how many were left out since:
//! an outage must not turn into a million identical log lines, nor hide how often it struck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// How often one place may log.
pub const EVERY: Duration = Duration::from_secs(1);

/// One place's budget: `let Some(left_out) = THROTTLE.allow() else { return }`.
pub struct Throttle {
    /// Milliseconds since [`start`] before which this place stays quiet.
    quiet_until_ms: AtomicU64,
    left_out: AtomicU64,
}

/// The instant milliseconds are counted from (the first use).
fn start() -> Instant {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    *START
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle { quiet_until_ms: AtomicU64::new(0), left_out: AtomicU64::new(0) }
    }

    /// `Some(n)` when this place may log now (`n` lines were left out since it last did),
    /// `None` (and one more left out) otherwise.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let until = self.quiet_until_ms.load(Ordering::Relaxed);
        let next = now_ms.saturating_add(u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX));
        // Of the threads arriving together after the quiet time, one logs.
        if now_ms >= until
            && self.quiet_until_ms.compare_exchange(until, next, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// `tracing::warn!` at most once a second from this place, with `left_out`: how many were
/// not written since. Same arguments as `tracing::warn!` (fields, then the message).
macro_rules! warn_every {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::log_limit::Throttle = $crate::log_limit::Throttle::new();
        if let Some(left_out) = THROTTLE.allow() {
            tracing::warn!(left_out, $($arg)+);
        }
    }};
}

/// `tracing::error!` at most once a second from this place (see [`warn_every`]).
macro_rules! error_every {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::log_limit::Throttle = $crate::log_limit::Throttle::new();
        if let Some(left_out) = THROTTLE.allow() {
            tracing::error!(left_out, $($arg)+);
        }
    }};
}

/// `tracing::info!` at most once a second from this place (see [`warn_every`]).
macro_rules! info_every {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::log_limit::Throttle = $crate::log_limit::Throttle::new();
        if let Some(left_out) = THROTTLE.allow() {
            tracing::info!(left_out, $($arg)+);
        }
    }};
}

pub(crate) use {error_every, info_every, warn_every};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_of_those_left_out() {
        let throttle = Throttle::new();
        assert_eq!(throttle.allow_at(5), Some(0));
        for ms in 6..1005 {
            assert_eq!(throttle.allow_at(ms), None, "{ms}");
        }
        assert_eq!(throttle.allow_at(1005), Some(999));
        assert_eq!(throttle.allow_at(1006), None);
        assert_eq!(throttle.allow_at(60_000), Some(1), "after a quiet minute");
    }
}
