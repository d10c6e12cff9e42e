//! Run events in the audit log: one when a run is created and one when it
//! reaches a final state, recorded from the catalog's run announcements so
//! that every way of creating a run (API, scheduler, retention after a
//! backup) is covered. Each event has a deduplication key, so replicas
//! hearing the same announcement, or one announcement heard twice, add one row.
//!
//! Not covered: announcements lost while no replica was running or when the
//! broadcast overflowed (logged); the call events of the API still name the
//! runs they created or cancelled.

use std::collections::HashSet;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::event;
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::audit::{RUN_CREATED, RUN_FINISHED};
use crate::model::run::Run;

/// How many run ids are remembered as already recorded before the memory
/// is dropped (the database's deduplication key stays authoritative).
const REMEMBERED_RUNS: usize = 10_000;

/// Records run events until `cancel` fires.
pub async fn record_run_events(catalog: Catalog, cancel: CancellationToken) {
    let mut announcements = catalog.subscribe_runs();
    let mut seen = Seen::default();
    loop {
        let id = tokio::select! {
            () = cancel.cancelled() => return,
            received = announcements.recv() => match received {
                Ok(id) => id,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "audit: run announcements overflowed; some run events may be missing");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        if seen.created.len() > REMEMBERED_RUNS {
            seen = Seen::default();
        }
        if seen.finished.contains(&id) {
            continue;
        }
        match record_run(&catalog, id, &mut seen).await {
            Ok(()) | Err(DomainError::NotFound(_)) => {}
            Err(error) => tracing::error!(%error, run = %id, "audit: run event not recorded"),
        }
    }
}

/// Runs whose events this replica has recorded (or found recorded).
#[derive(Default)]
struct Seen {
    created: HashSet<Uuid>,
    finished: HashSet<Uuid>,
}

async fn record_run(catalog: &Catalog, id: Uuid, seen: &mut Seen) -> DomainResult<()> {
    let run = catalog.get_run(id).await?;
    if !seen.created.contains(&id) {
        let mut record = run_event(&run, RUN_CREATED, "QUEUED");
        record.time = run.create_time;
        catalog
            .record_audit_event(&record, Some(&format!("{RUN_CREATED}:{id}")))
            .await?;
        seen.created.insert(id);
    }
    if run.state.is_final() {
        let mut record = run_event(&run, RUN_FINISHED, &run.state.as_str().to_uppercase());
        if let Some(finish) = run.finish_time {
            record.time = finish;
        }
        catalog
            .record_audit_event(&record, Some(&format!("{RUN_FINISHED}:{id}")))
            .await?;
        seen.finished.insert(id);
    }
    Ok(())
}

/// A run's event: acted by its owner, naming the run, its job and its bucket.
fn run_event(run: &Run, action: &str, result: &str) -> crate::model::audit::AuditEvent {
    let mut record = event(action, result);
    record.actor_user_id = Some(run.owner_id);
    record.target_ids = [Some(run.id), run.job_id, run.target_bucket_id]
        .into_iter()
        .flatten()
        .collect();
    record.detail = run.kind.as_str().to_string();
    record
}
