//! The S3 client's Prometheus metrics (names in `coffer_telemetry::names`):
//! each request's duration and failure, counted where the store sends it,
//! and the SDK's own retries, counted by an interceptor on every attempt
//! after the first.

use std::time::Instant;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use coffer_telemetry::names;

/// Records one request of `operation` that started at `started`.
pub(super) fn request_done(operation: &'static str, started: Instant, failed: bool) {
    metrics::histogram!(names::S3_REQUEST_DURATION, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if failed {
        metrics::counter!(names::S3_REQUEST_ERRORS, "operation" => operation).increment(1);
    }
}

/// Counts the attempts of a request beyond the first, by the SDK's name of
/// the operation.
#[derive(Debug)]
pub(super) struct RetryCounter;

impl Intercept for RetryCounter {
    fn name(&self) -> &'static str {
        "CofferRetryCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempts = cfg.load::<RequestAttempts>().map_or(0, |a| a.attempts());
        if attempts > 1 {
            let operation = cfg
                .load::<Metadata>()
                .map_or_else(|| "unknown".to_owned(), |m| m.name().to_owned());
            metrics::counter!(names::S3_REQUEST_RETRIES, "operation" => operation).increment(1);
        }
        Ok(())
    }
}
