//! WorkerService: the lease session and the list of workers.

use std::pin::Pin;

use coffer_proto::v1 as pb;
use coffer_proto::v1::worker_service_server::WorkerService;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use super::convert::timestamp;
use super::{respond, RpcResult};
use crate::catalog::from_json;
use crate::error::DomainResult;
use crate::leasing::session;
use crate::runs::downloads::Transfer;
use crate::state::AppState;
use crate::tls::{certificate_names, ConnectionInfo};

/// Handler of `coffer.v1.WorkerService`.
#[derive(Clone, Debug)]
pub struct WorkerApi {
    state: AppState,
}

impl WorkerApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        WorkerApi { state }
    }

    async fn list(&self, request: pb::ListWorkersRequest) -> DomainResult<pb::ListWorkersResponse> {
        let now = self.state.catalog.now().await?;
        let settings =
            crate::leasing::settings::current(&self.state.catalog, self.state.lease_settings).await;
        let fresh_since = crate::catalog::workers::fresh_since(now, settings.ttl);
        let since = if request.include_offline {
            None
        } else {
            Some(fresh_since)
        };
        let rows = self.state.catalog.list_workers(since).await?;
        let mut workers = Vec::with_capacity(rows.len());
        for row in rows {
            let leases = self
                .state
                .catalog
                .leases_of_worker(row.id)
                .await?
                .into_iter()
                .map(|(run_id, lease_token)| pb::LeaseRef {
                    run_id: run_id.to_string(),
                    lease_token,
                })
                .collect();
            workers.push(pb::Worker {
                id: row.id.to_string(),
                name: row.name,
                labels: from_json(&row.labels, "workers.labels")?,
                slots: row.slots,
                connected: row.connected && row.last_seen_time >= fresh_since,
                last_seen_time: Some(timestamp(row.last_seen_time)),
                leases,
                version: row.version,
                source_roots: from_json(&row.source_roots, "workers.source_roots")?,
            });
        }
        Ok(pb::ListWorkersResponse { workers })
    }
}

impl WorkerApi {
    /// The transfer a worker's `SendDownload` feeds: the lease must be the
    /// download run's current one, held by a worker of the caller's token,
    /// and its caller must wait on this replica.
    async fn download_of(
        &self,
        caller: &crate::auth::WorkerCaller,
        lease: Option<&pb::LeaseRef>,
    ) -> Result<std::sync::Arc<Transfer>, Status> {
        let lease = lease.ok_or_else(|| Status::invalid_argument("lease: required"))?;
        let run_id = uuid::Uuid::parse_str(&lease.run_id)
            .map_err(|_| Status::invalid_argument("lease.run_id: not a UUID"))?;
        let catalog = &self.state.catalog;
        let holder = catalog.lease_holder(run_id, lease.lease_token).await?;
        let Some(worker_id) = holder else {
            return Err(Status::failed_precondition(
                "the lease is no longer current",
            ));
        };
        if caller.token_id.is_some() && catalog.worker_token(worker_id).await? != caller.token_id {
            return Err(Status::permission_denied(
                "the lease is held by another worker",
            ));
        }
        self.state
            .downloads
            .claim(run_id, CLAIM_WAIT)
            .await
            .ok_or_else(|| {
                Status::failed_precondition(
                    "no caller waits for this download on this control-plane replica",
                )
            })
    }
}

/// How long a worker's call waits for the caller's side of its download
/// to be registered (it is, right after the run is created).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Passes a download's bytes from the worker's stream to the caller's, in
/// order, holding the worker back while the caller is slow. Ends after the
/// message marked last, once exactly the file's size went through.
async fn pass_on(
    transfer: &Transfer,
    first: pb::SendDownloadRequest,
    stream: &mut Streaming<pb::SendDownloadRequest>,
) -> Result<i64, Status> {
    let mut sent: u64 = 0;
    let mut next = Some(first);
    loop {
        let message = match next.take() {
            Some(message) => message,
            None => tokio::select! {
                message = stream.message() => message?.ok_or_else(|| {
                    Status::aborted("the stream ended before the last message")
                })?,
                () = transfer.finished.cancelled() => {
                    return Err(Status::aborted("the download ended on the caller's side"));
                }
            },
        };
        if !message.data.is_empty() {
            sent += message.data.len() as u64;
            if sent > transfer.size_bytes {
                return Err(Status::data_loss(format!(
                    "more bytes than the file's {}",
                    transfer.size_bytes
                )));
            }
            let piece = pb::DownloadFileResponse {
                part: Some(pb::download_file_response::Part::Data(message.data)),
            };
            tokio::select! {
                delivered = transfer.caller.send(Ok(piece)) => delivered
                    .map_err(|_| Status::cancelled("the caller went away"))?,
                () = transfer.finished.cancelled() => {
                    return Err(Status::aborted("the download ended on the caller's side"));
                }
            }
        }
        if message.last {
            if sent != transfer.size_bytes {
                return Err(Status::data_loss(format!(
                    "{sent} bytes sent of the file's {}",
                    transfer.size_bytes
                )));
            }
            transfer.finished.cancel();
            return Ok(i64::try_from(sent).unwrap_or(i64::MAX));
        }
    }
}

/// The names of the client certificate the connection was made with (mTLS),
/// `None` without one. A certificate whose names cannot be read is refused
/// rather than treated as absent.
fn client_certificate_names<T>(request: &Request<T>) -> Result<Option<Vec<String>>, Status> {
    let Some(leaf) = request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.client_certificates.as_ref())
        .and_then(|chain| chain.first())
    else {
        return Ok(None);
    };
    certificate_names(leaf)
        .map(Some)
        .map_err(Status::permission_denied)
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type LeaseSessionStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseSessionResponse, tonic::Status>> + Send>>;

    async fn lease_session(
        &self,
        request: Request<Streaming<pb::LeaseSessionRequest>>,
    ) -> RpcResult<Self::LeaseSessionStream> {
        let caller = self.state.auth.worker(request.metadata()).await?;
        let certificate_names = client_certificate_names(&request)?;
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(session::serve(
            self.state.clone(),
            self.state.lease_settings,
            caller,
            certificate_names,
            request.into_inner(),
            sender,
        ));
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(
            receiver,
        ))))
    }

    async fn send_download(
        &self,
        request: Request<Streaming<pb::SendDownloadRequest>>,
    ) -> RpcResult<pb::SendDownloadResponse> {
        let caller = self.state.auth.worker(request.metadata()).await?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("lease: the stream is empty"))?;
        let transfer = self.download_of(&caller, first.lease.as_ref()).await?;
        let sent = pass_on(&transfer, first, &mut stream).await;
        if let Err(status) = &sent {
            transfer
                .fail(Status::aborted(format!(
                    "the worker stopped sending the file: {}",
                    status.message()
                )))
                .await;
        }
        sent.map(|bytes_sent| tonic::Response::new(pb::SendDownloadResponse { bytes_sent }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> RpcResult<pb::ListWorkersResponse> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        caller.require_admin("listing workers")?;
        respond(self.list(request.into_inner()).await)
    }
}
