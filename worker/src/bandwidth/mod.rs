//! Bandwidth limits: how fast a worker (all its runs together) and a run
//! (its job's limits) may upload to and download from storage.
//!
//! Every byte a store sends or receives is paid for first in the token
//! bucket of each limit that applies ([`Throttle::take`]): the worker's own
//! (shared by its runs, possibly by time of day, [`Timetable`]) and the
//! run's. A limit's bucket holds one second of its rate, so after a pause a
//! transfer may burst for a second, and over any longer stretch the rate
//! stays at the limit. The token buckets are `governor`'s.

mod timetable;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

pub use timetable::{Rate, Timetable, MAX_RATE, MIN_RATE};

/// Which way bytes move, seen from the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// To storage.
    Upload,
    /// From storage.
    Download,
}

/// One limit with its token buckets: one per timetable entry, so that a
/// change of rate at a time of day starts from a full bucket of the new
/// rate.
pub struct Limit {
    timetable: Timetable,
    buckets: Vec<Option<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Limit")
            .field(&self.timetable.to_string())
            .finish()
    }
}

impl Limit {
    /// A limit following `timetable`; `None` when it never limits.
    pub fn new(timetable: Timetable) -> Option<Arc<Limit>> {
        if timetable.is_unlimited() {
            return None;
        }
        let buckets = timetable
            .entries()
            .iter()
            .map(|(_, rate)| {
                rate.map(|rate| RateLimiter::direct(Quota::per_second(rate.as_non_zero())))
            })
            .collect();
        Some(Arc::new(Limit { timetable, buckets }))
    }

    /// A limit of one rate all day; `None` for 0 (no limit).
    pub fn constant(bytes_per_second: u64) -> Result<Option<Arc<Limit>>, String> {
        Ok(Limit::new(Timetable::constant(Rate::new(
            bytes_per_second,
        )?)))
    }

    /// The rate in force now and its bucket, if it limits now.
    fn now(&self) -> Option<(Rate, &DefaultDirectRateLimiter)> {
        let index = self.timetable.entry_at(chrono::Local::now().time())?;
        let rate = self.timetable.entries()[index].1?;
        let bucket = self.buckets[index].as_ref()?;
        Some((rate, bucket))
    }

    /// Bytes per second in force now; `None` when it does not limit now.
    pub fn rate_now(&self) -> Option<u64> {
        self.now().map(|(rate, _)| rate.bytes_per_second())
    }

    /// Waits until `bytes` may move under this limit; `false` if `cancel`
    /// fired first.
    async fn take(&self, mut bytes: u64, cancel: &CancellationToken) -> bool {
        while bytes > 0 {
            // The rate is looked up again for each bucketful: a long
            // transfer follows the timetable across a change of rate.
            let Some((rate, bucket)) = self.now() else {
                return true;
            };
            let piece = bytes.min(rate.bytes_per_second());
            let cells = std::num::NonZeroU32::new(
                u32::try_from(piece).expect("a piece is at most one second of a u32 rate"),
            )
            .expect("bytes > 0");
            tokio::select! {
                ready = bucket.until_n_ready(cells) => {
                    ready.expect("a piece never exceeds the bucket, which holds one second");
                }
                () = cancel.cancelled() => return false,
            }
            bytes -= piece;
        }
        true
    }
}

/// The limits of one run: the worker's and the run's own, each way, and
/// how long the run has waited for them.
#[derive(Debug, Default)]
pub struct Throttle {
    upload: Vec<Arc<Limit>>,
    download: Vec<Arc<Limit>>,
    waited_nanos: AtomicU64,
}

/// A worker's own limits, shared by all its runs.
#[derive(Clone, Debug, Default)]
pub struct WorkerLimits {
    /// Uploads of all runs together.
    pub upload: Option<Arc<Limit>>,
    /// Downloads of all runs together.
    pub download: Option<Arc<Limit>>,
}

impl WorkerLimits {
    /// Limits following the two timetables.
    pub fn new(upload: Timetable, download: Timetable) -> Self {
        WorkerLimits {
            upload: Limit::new(upload),
            download: Limit::new(download),
        }
    }
}

impl Throttle {
    /// No limit either way.
    pub fn unlimited() -> Arc<Throttle> {
        Arc::new(Throttle::default())
    }

    /// The worker's limits and a run's own (bytes per second, 0 for none).
    pub fn for_run(
        worker: &WorkerLimits,
        run_upload: u64,
        run_download: u64,
    ) -> Result<Arc<Throttle>, String> {
        let combine = |worker: &Option<Arc<Limit>>, run: u64| -> Result<Vec<Arc<Limit>>, String> {
            Ok(worker
                .iter()
                .cloned()
                .chain(Limit::constant(run)?)
                .collect())
        };
        let upload = combine(&worker.upload, run_upload)?;
        let download = combine(&worker.download, run_download)?;
        Ok(Arc::new(Throttle {
            upload,
            download,
            waited_nanos: AtomicU64::new(0),
        }))
    }

    fn limits_of(&self, direction: Direction) -> &[Arc<Limit>] {
        match direction {
            Direction::Upload => &self.upload,
            Direction::Download => &self.download,
        }
    }

    /// Waits until `bytes` may move `direction` under every limit; `false`
    /// if `cancel` fired first.
    pub async fn take(&self, direction: Direction, bytes: u64, cancel: &CancellationToken) -> bool {
        let limits = self.limits_of(direction);
        if limits.is_empty() || bytes == 0 {
            return true;
        }
        let started = Instant::now();
        let mut allowed = true;
        for limit in limits {
            if !limit.take(bytes, cancel).await {
                allowed = false;
                break;
            }
        }
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_nanos.fetch_add(waited, Ordering::Relaxed);
        allowed
    }

    /// Whether any limit applies `direction` (when none does, nothing
    /// need be measured).
    pub fn limits(&self, direction: Direction) -> bool {
        !self.limits_of(direction).is_empty()
    }

    /// The tightest limit in force now `direction`, in bytes per second;
    /// 0 when nothing limits it.
    pub fn limit_now(&self, direction: Direction) -> u64 {
        self.limits_of(direction)
            .iter()
            .filter_map(|limit| limit.rate_now())
            .min()
            .unwrap_or(0)
    }

    /// How long transfers have waited for the limits so far.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transfer_waits_for_the_tightest_limit_and_counts_the_wait() {
        let worker = WorkerLimits::new("4MiB".parse().expect("parses"), Timetable::default());
        let throttle = Throttle::for_run(&worker, 64 * 1024, 0).expect("valid");
        assert_eq!(throttle.limit_now(Direction::Upload), 64 * 1024);
        assert_eq!(throttle.limit_now(Direction::Download), 0);
        let cancel = CancellationToken::new();
        // The first second's bucket is full; the next 64 KiB must wait for
        // it to refill, which at 64 KiB/s takes a second.
        assert!(throttle.take(Direction::Upload, 128 * 1024, &cancel).await);
        assert!(
            throttle.waited() >= Duration::from_millis(900),
            "waited {:?}",
            throttle.waited()
        );
        // Downloads are not limited at all.
        let before = throttle.waited();
        assert!(throttle.take(Direction::Download, 1 << 30, &cancel).await);
        assert_eq!(throttle.waited(), before);
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_up() {
        let throttle = Throttle::for_run(&WorkerLimits::default(), 2048, 0).expect("valid");
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!throttle.take(Direction::Upload, 1 << 20, &cancel).await);
    }

    #[test]
    fn a_run_limit_out_of_range_is_refused() {
        let error = Throttle::for_run(&WorkerLimits::default(), 10, 0).expect_err("too slow");
        assert!(error.contains("between 1024"), "{error}");
    }
}
