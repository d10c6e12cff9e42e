//! One module per run kind, each turning a plan into one attempt of a run:
//! [`backup`], [`restore`], [`download`], [`verify`], garbage collection ([`gc`]), [`copy`],
//! [`retention`], catalog [`rebuild`] and [`key_slots`]. Every kind runs its attempt
//! through [`run_attempt`].

pub mod backup;
pub mod copy;
pub mod download;
pub mod gc;
pub mod key_slots;
pub mod locks;
pub mod rebuild;
pub mod restore;
pub mod retention;
pub mod verify;

use tokio_util::sync::CancellationToken;

use crate::report::{sample_progress, Batcher, Reporter, RunFailure};

/// Runs one attempt of a run leased with `lease_token`: `execute` reports
/// through the attempt's [`Batcher`], whose live counters are sampled at
/// least twice a second meanwhile; the final progress is reported
/// whatever the outcome, and a failure once `cancel` fired is reported as
/// the cancellation (what failed then failed because the run was stopped).
pub(crate) async fn run_attempt<R, T>(
    reporter: &R,
    lease_token: i64,
    cancel: &CancellationToken,
    execute: impl AsyncFnOnce(&mut Batcher<'_, R>) -> Result<T, RunFailure>,
) -> Result<T, RunFailure>
where
    R: Reporter,
{
    let attempt = i32::try_from(lease_token).unwrap_or(i32::MAX);
    let mut batcher = Batcher::new(reporter, attempt);
    // On the heap: an attempt's future is large and nests deeply, and boxed
    // it neither bloats the caller's future nor exhausts the compiler's
    // layout depth limit.
    // The live counters are sampled beside the attempt, so that progress
    // moves while it is inside one large file.
    let live = std::sync::Arc::clone(batcher.live());
    let result = tokio::select! {
        result = Box::pin(execute(&mut batcher)) => result,
        never = sample_progress(reporter, &live) => match never {},
    };
    batcher.report_progress(true);
    match result {
        Err(_) if cancel.is_cancelled() => Err(RunFailure::cancelled()),
        other => other,
    }
}
