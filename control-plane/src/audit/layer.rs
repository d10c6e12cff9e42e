//! The tower layer that records every audited call (see the module above).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::targets::AuditedMethod;
use super::{code_name, event, resolve_actor};
use crate::model::audit::RESULT_UNKNOWN;
use crate::state::AppState;
use crate::tls::ConnectionInfo;

/// The largest request or response body buffered to read ids from; larger
/// ones are refused (tonic's own message limit is 4 MiB).
const MAX_BUFFERED_BODY: usize = 8 << 20;

/// Records every mutating call in the audit log (see [`crate::audit`]).
#[derive(Clone, Debug)]
pub struct AuditLayer {
    state: AppState,
}

impl AuditLayer {
    /// A layer writing to the state's catalog.
    pub fn new(state: AppState) -> AuditLayer {
        AuditLayer { state }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> AuditService<S> {
        AuditService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`AuditLayer`] wraps around the API.
#[derive(Clone, Debug)]
pub struct AuditService<S> {
    inner: S,
    state: AppState,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for AuditService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(method) = AuditedMethod::of_path(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        // The service that was polled ready serves this call; a fresh clone
        // stays behind for the next one.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(audited_call(self.state.clone(), method, request, inner))
    }
}

async fn audited_call<S>(
    state: AppState,
    method: AuditedMethod,
    request: http::Request<Body>,
    mut inner: S,
) -> Result<http::Response<Body>, Infallible>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let mut record = event(&method.action, RESULT_UNKNOWN);
    record.peer = request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.remote_addr)
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let actor = resolve_actor(&state.catalog, &state.auth, header).await;
    record.actor_user_id = actor.user_id;
    record.actor_token_id = actor.token_id;

    let (parts, body) = request.into_parts();
    let Ok(collected) = Limited::new(body, MAX_BUFFERED_BODY).collect().await else {
        record.result = code_name(tonic::Code::ResourceExhausted).to_string();
        refuse_unrecorded(&state, &record).await;
        return Ok(tonic::Status::resource_exhausted("request too large").into_http());
    };
    let body = collected.to_bytes();
    record.target_ids = method.request_targets(&body);

    // Fail closed: a call that cannot be recorded is not carried out.
    if let Err(error) = state.catalog.record_audit_event(&record, None).await {
        tracing::error!(%error, action = %record.action, "audit log unwritable; call refused");
        return Ok(tonic::Status::unavailable(
            "the audit log cannot be written; the call was not run",
        )
        .into_http());
    }

    let request = http::Request::from_parts(parts, Body::new(Full::new(body)));
    let Ok(response) = inner.call(request).await;
    let (response, code, created) = outcome(&method, response).await;
    for id in created {
        if !record.target_ids.contains(&id) {
            record.target_ids.push(id);
        }
    }
    if let Err(error) = state
        .catalog
        .settle_audit_event(record.id, code_name(code), &record.target_ids)
        .await
    {
        tracing::error!(%error, event = %record.id, action = %record.action, "audit: the call ran but its outcome was not recorded (the event says UNKNOWN)");
    }
    Ok(response)
}

/// Records a call refused before it ran; a failure is logged only, the call
/// failing anyway.
async fn refuse_unrecorded(state: &AppState, record: &crate::model::audit::AuditEvent) {
    if let Err(error) = state.catalog.record_audit_event(record, None).await {
        tracing::error!(%error, action = %record.action, "audit log unwritable");
    }
}

/// The gRPC outcome of a response and the ids its message names. A
/// trailers-only response (every error) carries its status in the headers;
/// a unary success is buffered to read the status from its trailers.
async fn outcome(
    method: &AuditedMethod,
    response: http::Response<Body>,
) -> (http::Response<Body>, tonic::Code, Vec<uuid::Uuid>) {
    if let Some(code) = grpc_status(response.headers()) {
        return (response, code, Vec::new());
    }
    if !method.is_unary() {
        return (response, tonic::Code::Ok, Vec::new());
    }
    let (parts, body) = response.into_parts();
    let collected = match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
        Ok(collected) => collected,
        Err(error) => {
            tracing::warn!(%error, action = %method.action, "audit: response body unreadable");
            let status = tonic::Status::internal("response failed");
            return (status.into_http(), tonic::Code::Internal, Vec::new());
        }
    };
    let trailers = collected.trailers().cloned();
    let code = trailers
        .as_ref()
        .and_then(grpc_status)
        .unwrap_or(tonic::Code::Unknown);
    let data = collected.to_bytes();
    let created = if code == tonic::Code::Ok {
        method.response_targets(&data)
    } else {
        Vec::new()
    };
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![Ok(Frame::data(data))];
    if let Some(trailers) = trailers {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let body = Body::new(StreamBody::new(futures::stream::iter(frames)));
    (http::Response::from_parts(parts, body), code, created)
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(tonic::Code::from_i32)
}
