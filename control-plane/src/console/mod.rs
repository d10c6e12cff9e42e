//! The web console, served on the gRPC port: its static assets (built by
//! `scripts/build-console.sh` into `console/dist/` and embedded here, so the
//! binary needs no network and `cargo build` no Node) answer plain GET
//! requests, and everything else reaches the API, gRPC-Web translated to
//! gRPC. The console is a client of the same API with the same
//! authorization: the assets carry no data and need no token; every call the
//! page makes sends the user's token like any other client.

mod assets;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower_layer::Layer;
use tower_service::Service;

pub use assets::asset_response;

/// Serves the console's assets for GET and HEAD requests that are not gRPC,
/// and passes every other request to the API through gRPC-Web.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleLayer;

impl<S> Layer<S> for ConsoleLayer {
    type Service = ConsoleService<S>;

    fn layer(&self, inner: S) -> ConsoleService<S> {
        ConsoleService {
            api: GrpcWebLayer::new().layer(inner),
        }
    }
}

/// The service [`ConsoleLayer`] wraps around the API.
#[derive(Clone, Debug)]
pub struct ConsoleService<S> {
    api: GrpcWebService<S>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Whether a request is for a console page rather than the API: the API
/// only answers POSTs with a gRPC content type.
fn is_page_request<B>(request: &http::Request<B>) -> bool {
    let method = request.method();
    if method != http::Method::GET && method != http::Method::HEAD {
        return false;
    }
    !request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

impl<S> Service<http::Request<Body>> for ConsoleService<S>
where
    GrpcWebService<S>:
        Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    <GrpcWebService<S> as Service<http::Request<Body>>>::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.api.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_page_request(&request) {
            let response = asset_response(request.uri().path(), request.method());
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.api.call(request))
    }
}
