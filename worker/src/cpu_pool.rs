//! A fixed set of threads for CPU-bound work (chunking, hashing,
//! compression), one per core.
//!
//! Tokio's blocking pool grows a thread per concurrent blocking call, and
//! glibc gives each allocating thread its own malloc arena; chunk buffers
//! spread over dozens of arenas cost far more resident memory than the same
//! buffers on a few threads. Running the heavy work here keeps it on as many
//! threads as there are cores, in submission order.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run submitted closures in order; they stop when the pool is
/// dropped and their queue is empty.
pub struct CpuPool {
    jobs: mpsc::Sender<Job>,
}

impl CpuPool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("coffer-cpu-{index}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match next {
                        Ok(job) => job(),
                        Err(mpsc::RecvError) => return,
                    }
                })?;
        }
        Ok(CpuPool { jobs })
    }

    /// Runs `work` on the pool; `None` if the pool's threads are gone or
    /// `work` panicked.
    pub async fn run<T, F>(&self, work: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic is the caller's failure (its receiver sees the sender
            // dropped), not the end of the thread.
            if let Ok(value) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                // The receiver may be gone (its task was dropped); nothing to do then.
                let _ = done.send(value);
            }
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_pool_threads_and_returns_its_result() {
        let pool = CpuPool::new(2).expect("threads start");
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .flatten();
        assert!(name.is_some_and(|n| n.starts_with("coffer-cpu-")));
        let sums = futures::future::join_all((0..10u64).map(|i| pool.run(move || i * 2))).await;
        assert_eq!(sums.into_iter().flatten().sum::<u64>(), 90);
    }

    #[tokio::test]
    async fn a_panicking_job_gives_none_and_the_pool_keeps_working() {
        let pool = CpuPool::new(1).expect("threads start");
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, None);
        assert_eq!(pool.run(|| 7).await, Some(7));
    }
}
