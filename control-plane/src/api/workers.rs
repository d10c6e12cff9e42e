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

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> RpcResult<pb::ListWorkersResponse> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        caller.require_admin("listing workers")?;
        respond(self.list(request.into_inner()).await)
    }
}
