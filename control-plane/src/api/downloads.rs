//! DownloadService: one file of a snapshot, streamed from a worker through
//! this replica (`runs/downloads.rs` holds the transfers in flight).

use std::pin::Pin;
use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::download_service_server::DownloadService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};
use uuid::Uuid;

use super::convert::timestamp;
use super::RpcResult;
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::object::mtime_of;
use crate::model::path::check_normalised_relative;
use crate::model::run::{RunSpec, RunState};
use crate::model::{check_len, parse_id};
use crate::runs::admission::{DownloadRequest, RunRequest};
use crate::runs::downloads::{DownloadMessage, Registration, Transfer};
use crate::state::AppState;

/// How long a download waits for a worker of this replica to lease it.
const LEASE_WAIT: Duration = Duration::from_secs(30);
/// Messages buffered between the worker's call and the caller's stream.
const BUFFER: usize = 8;

/// Handler of `coffer.v1.DownloadService`.
#[derive(Clone, Debug)]
pub struct DownloadApi {
    state: AppState,
}

impl DownloadApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        DownloadApi { state }
    }
}

/// The checked request: the snapshot and the file's path.
fn parse(request: &pb::DownloadFileRequest) -> DomainResult<(Uuid, String)> {
    let snapshot_run_id = parse_id("snapshot_run_id", &request.snapshot_run_id)?;
    let path = request.path.trim_end_matches('/');
    check_len("path", path, 1, 4096)?;
    check_normalised_relative("path", path)?;
    Ok((snapshot_run_id, path.to_owned()))
}

type DownloadStream = Pin<Box<dyn Stream<Item = DownloadMessage> + Send>>;

#[tonic::async_trait]
impl DownloadService for DownloadApi {
    type DownloadFileStream = DownloadStream;

    async fn download_file(
        &self,
        request: Request<pb::DownloadFileRequest>,
    ) -> RpcResult<Self::DownloadFileStream> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        let (snapshot_run_id, path) = parse(request.get_ref())?;
        // Subscribed before the run exists, so no change of it is missed.
        let events = self.state.catalog.subscribe_runs();
        let run = self
            .state
            .runs
            .create(
                &caller,
                RunRequest::Download(DownloadRequest {
                    snapshot_run_id,
                    path,
                    replica: self.state.dispatch.replica(),
                }),
                None,
            )
            .await?;
        let RunSpec::Download(spec) = &run.spec else {
            return Err(DomainError::Internal("a download request made another run".into()).into());
        };
        let (sender, receiver) = mpsc::channel(BUFFER);
        let header = pb::DownloadedFile {
            path: spec.path.clone(),
            size_bytes: spec.size_bytes,
            mode: 0,
            mtime: None,
            run_id: run.id.to_string(),
        };
        let header = self.describe(header, spec.snapshot.run_id).await;
        // Room for the header: the channel is new.
        let _ = sender.try_send(Ok(pb::DownloadFileResponse {
            part: Some(pb::download_file_response::Part::File(header)),
        }));
        let size = u64::try_from(spec.size_bytes).unwrap_or(0);
        let registration = self.state.downloads.register(run.id, sender, size);
        tokio::spawn(watch(
            self.state.catalog.clone(),
            run.id,
            registration,
            events,
        ));
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(
            receiver,
        ))))
    }
}

impl DownloadApi {
    /// Fills in the file's mode and time from the catalog (the size is the
    /// run's); left unset if the catalog cannot say.
    async fn describe(&self, mut header: pb::DownloadedFile, snapshot: Uuid) -> pb::DownloadedFile {
        let page = crate::catalog::Page {
            size: 1,
            after: None,
        };
        if let Ok((files, _)) = self
            .state
            .catalog
            .list_snapshot_files(snapshot, None, &header.path, page)
            .await
        {
            if let Some(file) = files.into_iter().find(|f| f.path_text == header.path) {
                header.mode = file.version.attributes.mode;
                header.mtime = Some(timestamp(mtime_of(&file.version.attributes)));
            }
        }
        header
    }
}

/// Follows a download run until its bytes are through or it ends: fails
/// the caller's stream when no worker leases it in time or the run ends
/// without having sent everything, and cancels the run when the caller
/// goes away.
async fn watch(
    catalog: Catalog,
    run_id: Uuid,
    registration: Registration,
    mut events: broadcast::Receiver<Uuid>,
) {
    let transfer = std::sync::Arc::clone(&registration.transfer);
    let lease_wait = tokio::time::sleep(LEASE_WAIT);
    tokio::pin!(lease_wait);
    let mut leased = false;
    loop {
        tokio::select! {
            () = transfer.finished.cancelled() => return,
            () = transfer.caller.closed() => {
                transfer.finished.cancel();
                let _ = catalog.cancel_run(run_id, "the download's caller").await;
                return;
            }
            () = &mut lease_wait, if !leased => {
                if let Ok(run) = catalog.get_run(run_id).await {
                    if run.state == RunState::Queued {
                        let _ = catalog.cancel_run(run_id, "the download's wait for a worker").await;
                        transfer.fail(Status::unavailable(
                            "no worker connected to this control-plane replica can read the \
                             snapshot's repository; try again, or restore the file instead",
                        )).await;
                        return;
                    }
                }
                leased = true;
            }
            event = events.recv() => {
                let changed = match event {
                    Ok(id) => id == run_id,
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if changed && run_ended(&catalog, run_id, &transfer, &mut leased).await {
                    return;
                }
            }
        }
    }
}

/// Looks at the run after a change; true once it is final (the caller's
/// stream failed unless all bytes went through first).
async fn run_ended(
    catalog: &Catalog,
    run_id: Uuid,
    transfer: &Transfer,
    leased: &mut bool,
) -> bool {
    let Ok(run) = catalog.get_run(run_id).await else {
        return false;
    };
    if run.state == RunState::Running {
        *leased = true;
    }
    if !run.state.is_final() {
        return false;
    }
    // A run can only succeed after its worker's call delivered the last
    // byte, which finished the transfer; anything else reaching here failed.
    let status = match run.state {
        RunState::Cancelled => Status::cancelled(format!("the download was {}", run.error)),
        _ => Status::aborted(format!("the download failed: {}", run.error)),
    };
    transfer.fail(status).await;
    true
}
