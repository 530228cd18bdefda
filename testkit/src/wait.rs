//! Polling for a condition with a deadline: the one poll loop every wait in the kit uses.

use std::thread::sleep;
use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_PAUSE`], so a condition that
/// holds soon is seen soon and a slow one (a cluster converging) is not polled in a busy loop.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Polls `condition` until it holds (`true`) or `deadline` passes (`false`). The condition is
/// always asked at least once, and once more at the deadline, so a condition that holds by
/// then is never reported as timed out.
///
/// ```no_run
/// # use std::time::{Duration, Instant};
/// # let ready = || true;
/// assert!(testkit::wait_until(Instant::now() + Duration::from_secs(5), ready), "never ready");
/// ```
pub fn wait_until(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    let mut pause = FIRST_PAUSE;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_once_or_after_some_polls_or_times_out() {
        assert!(wait_until(Instant::now(), || true), "asked at least once, even past the deadline");
        let mut polls = 0;
        assert!(wait_until(Instant::now() + Duration::from_secs(5), || {
            polls += 1;
            polls == 4
        }));
        assert_eq!(polls, 4);
        let started = Instant::now();
        assert!(!wait_until(started + Duration::from_millis(60), || false));
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
