//! Downloads in flight on this replica: a `DownloadFile` caller's stream
//! waiting for the bytes a worker sends with `SendDownload`.
//!
//! A download run is leased only by this replica's coordinator (its spec
//! names the replica), so the worker that sends it is in session here and
//! its bytes can go straight from its call to the caller's stream through a
//! small bounded channel: a slow caller slows the worker down (HTTP/2 flow
//! control), and nothing is written anywhere in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use coffer_proto::v1 as pb;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

/// What a caller's stream receives.
pub type DownloadMessage = Result<pb::DownloadFileResponse, Status>;

/// The downloads of this replica. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Downloads {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<HashMap<Uuid, Arc<Transfer>>>,
    /// Wakes senders waiting for a download to be registered.
    registered: Notify,
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Transfer>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One download: the caller's stream and how it ends.
#[derive(Debug)]
pub struct Transfer {
    /// The caller's stream.
    pub caller: mpsc::Sender<DownloadMessage>,
    /// The file's size as the catalog records it.
    pub size_bytes: u64,
    /// Fires once the transfer is over, whichever side ended it.
    pub finished: CancellationToken,
    /// A worker's call took it (only one may).
    claimed: AtomicBool,
}

impl Transfer {
    /// Ends the caller's stream with `status` (unless it ended already).
    pub async fn fail(&self, status: Status) {
        if self.finished.is_cancelled() {
            return;
        }
        self.finished.cancel();
        let _ = self.caller.send(Err(status)).await;
    }
}

/// A registered download; dropping it forgets the download.
#[derive(Debug)]
pub struct Registration {
    run_id: Uuid,
    shared: Arc<Shared>,
    /// The transfer, for the caller's side.
    pub transfer: Arc<Transfer>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.transfer.finished.cancel();
        self.shared.waiting().remove(&self.run_id);
    }
}

impl Downloads {
    /// Registers the download run `run_id`, whose bytes go to `caller`.
    pub fn register(
        &self,
        run_id: Uuid,
        caller: mpsc::Sender<DownloadMessage>,
        size_bytes: u64,
    ) -> Registration {
        let transfer = Arc::new(Transfer {
            caller,
            size_bytes,
            finished: CancellationToken::new(),
            claimed: AtomicBool::new(false),
        });
        self.shared.waiting().insert(run_id, Arc::clone(&transfer));
        self.shared.registered.notify_waiters();
        Registration {
            run_id,
            shared: Arc::clone(&self.shared),
            transfer,
        }
    }

    /// Takes the download of `run_id` for a worker's call, waiting up to
    /// `wait` for the caller's side to register it (the run is created
    /// just before). `None` when no caller on this replica waits for it, or
    /// another call took it already.
    pub async fn claim(&self, run_id: Uuid, wait: Duration) -> Option<Arc<Transfer>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let registered = self.shared.registered.notified();
            if let Some(transfer) = self.shared.waiting().get(&run_id) {
                let first = !transfer.claimed.swap(true, Ordering::AcqRel);
                return first.then(|| Arc::clone(transfer));
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_download_is_claimed_once_and_forgotten_when_dropped() {
        let downloads = Downloads::default();
        let run_id = Uuid::now_v7();
        let (sender, _receiver) = mpsc::channel(1);
        let registration = downloads.register(run_id, sender, 10);
        let wait = Duration::from_millis(50);
        assert!(downloads.claim(run_id, wait).await.is_some());
        assert!(
            downloads.claim(run_id, wait).await.is_none(),
            "claimed twice"
        );
        drop(registration);
        assert!(downloads.claim(run_id, wait).await.is_none());
    }

    #[tokio::test]
    async fn a_claim_waits_for_the_registration() {
        let downloads = Downloads::default();
        let run_id = Uuid::now_v7();
        let claiming = {
            let downloads = downloads.clone();
            tokio::spawn(async move { downloads.claim(run_id, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        let (sender, _receiver) = mpsc::channel(1);
        let _registration = downloads.register(run_id, sender, 10);
        let claimed = claiming.await.expect("claim task");
        assert!(claimed.is_some());
    }
}
