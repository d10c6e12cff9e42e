//! Coffer's Prometheus metrics, shared by the control plane and the worker:
//! the table of what is exported ([`names`]), the process-wide recorder the
//! `metrics` macros write to, and the `/metrics` endpoint, served on a
//! listener of its own (never on the gRPC port).
//!
//! Metrics are recorded only once the recorder is installed, which the
//! binaries do when a metrics listener is configured; until then the
//! `metrics` macros cost next to nothing.

pub mod names;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use names::Kind;

/// Bucket bounds of every histogram, in seconds: from a quick catalog
/// query to a day-long backup.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0,
];
/// A gauge not set again for this long is dropped: gauges computed at
/// scrape time (queues, jobs) disappear with what they describe.
const GAUGE_IDLE: Duration = Duration::from_secs(60);
/// Longest a scrape waits for the gauges computed when it comes.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn recorder() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty")
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder was installed first; /metrics stays empty"
                );
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    for metric in names::METRICS {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => {
                metrics::describe_histogram!(metric.name, metrics::Unit::Seconds, metric.help);
            }
        }
    }
}

/// Sets the gauges that are computed when a scrape comes (from the
/// catalog, say) rather than as events happen.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Scrape {
    handle: PrometheusHandle,
    refresh: Option<Refresh>,
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires; every scrape
/// first runs `refresh`, if given.
pub async fn serve(
    listener: TcpListener,
    refresh: Option<Refresh>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let scrape = Arc::new(Scrape {
        handle: recorder(),
        refresh,
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(scrape);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn render(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    if let Some(refresh) = &scrape.refresh {
        if tokio::time::timeout(REFRESH_TIMEOUT, refresh())
            .await
            .is_err()
        {
            tracing::warn!("computing the metrics' gauges took too long; they may be stale");
        }
    }
    scrape.handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape.handle.render(),
    )
}
