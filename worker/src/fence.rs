//! The worker's own fence on its leases, on its monotonic clock.
//!
//! The control plane fences every catalog write on the lease token, and
//! storage keys are unique per attempt; this is the third line: a worker
//! that cannot be sure its lease is still current stops writing. Two
//! things make it unsure. A lease's deadline passes (counted from when the
//! heartbeat that last extended it was sent, so the control plane's own
//! count started later). Or the process notices a pause it cannot account
//! for — it was stopped (`SIGSTOP`, a frozen VM) or starved for longer than
//! a lease lives — after which every lease it holds may belong to someone
//! else, and every assignment waiting in its socket was pushed to a worker
//! that was not there to refuse it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Notices gaps in the process's own execution.
#[derive(Debug)]
pub struct PauseClock {
    last: Mutex<Instant>,
    epoch: AtomicU64,
}

impl Default for PauseClock {
    fn default() -> Self {
        PauseClock {
            last: Mutex::new(Instant::now()),
            epoch: AtomicU64::new(0),
        }
    }
}

impl PauseClock {
    /// Records that the process runs now. Returns true, and starts a new
    /// epoch, when more than `limit` passed since the previous call: the
    /// process did not run in between. Called often (a watchdog ticks a
    /// few times a second) and before acting on anything received, so the
    /// first observer after a pause, whoever it is, sees the gap.
    pub fn observe(&self, limit: Duration) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let gap = now.saturating_duration_since(*last);
        *last = now;
        drop(last);
        if gap <= limit {
            return false;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// How many pauses were noticed so far.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Where a newly received lease's local deadline lies: two thirds of a TTL
/// ahead. The grant happened before the assignment arrived, by a latency
/// this side cannot measure, so the full TTL could overshoot; the first
/// heartbeat answer (a third of a TTL later) sets an exact bound.
pub fn initial_deadline(received: Instant, ttl: Duration) -> Instant {
    received + ttl * 2 / 3
}

/// The deadline a heartbeat answer gives: a TTL after the heartbeat was
/// sent (the control plane extended the lease after it arrived).
pub fn extended_deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_longer_than_the_limit_is_a_pause() {
        let clock = PauseClock::default();
        assert!(!clock.observe(Duration::from_secs(60)));
        assert_eq!(clock.epoch(), 0);
        std::thread::sleep(Duration::from_millis(30));
        assert!(clock.observe(Duration::from_millis(10)));
        assert_eq!(clock.epoch(), 1);
        // The gap was consumed by the first observer.
        assert!(!clock.observe(Duration::from_millis(10)));
        assert_eq!(clock.epoch(), 1);
    }

    #[test]
    fn deadlines_count_from_the_local_clock() {
        let now = Instant::now();
        let ttl = Duration::from_secs(30);
        assert_eq!(initial_deadline(now, ttl), now + Duration::from_secs(20));
        assert_eq!(extended_deadline(now, ttl), now + ttl);
    }
}
