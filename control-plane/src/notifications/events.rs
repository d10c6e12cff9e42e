//! Finding the events rules fire on, and recording one delivery per event
//! and channel. Every replica may run this at once: a delivery's identity
//! (channel, event, subject, episode) is a unique key in the catalog, so
//! the same event found twice is recorded once.
//!
//! A job is *stale* when its last successful backup (or its creation) is
//! older than the rule's threshold, by default twice its schedule interval.
//! The episode is the time of that last success: the stale notice is sent
//! once per episode, and when a newer success ends the episode a
//! *recovered* notice follows.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::catalog::notifications::{NewDelivery, RuleFlag, RunMatch, StaleCandidate};
use crate::catalog::{new_id, Catalog};
use crate::error::DomainResult;
use crate::model::job::Schedule;
use crate::model::notification::{Event, EventSet, DEFAULT_WAITING_AFTER_SECONDS};

/// How far back run ends are looked for: a control plane down longer than
/// this does not notify the runs that ended meanwhile.
const LOOKBACK_HOURS: i64 = 24;
/// Events handled per scan.
const BATCH: i64 = 200;

/// Records the deliveries of every event found now; returns how many are new.
pub async fn find(catalog: &Catalog, now: DateTime<Utc>) -> DomainResult<usize> {
    let mut recorded = 0;
    recorded += ended_runs(catalog, now).await?;
    if catalog
        .any_notification_rule_with(RuleFlag::RunWaiting)
        .await?
    {
        recorded += waiting_runs(catalog, now).await?;
    }
    if catalog
        .any_notification_rule_with(RuleFlag::JobStale)
        .await?
    {
        recorded += stale_jobs(catalog, now).await?;
    }
    Ok(recorded)
}

async fn ended_runs(catalog: &Catalog, now: DateTime<Utc>) -> DomainResult<usize> {
    let since = now - ChronoDuration::hours(LOOKBACK_HOURS);
    let mut recorded = 0;
    for found in catalog.ended_runs_to_notify(since, BATCH).await? {
        let flags = EventSet {
            run_failed: found.events.on_run_failed,
            run_succeeded: found.events.on_run_succeeded,
            run_cancelled: found.events.on_run_cancelled,
            ..EventSet::default()
        };
        let Some(event) = flags.fires_on_run_end(&found.state) else {
            continue;
        };
        recorded += record_run_event(catalog, &found, event, now).await?;
    }
    Ok(recorded)
}

async fn waiting_runs(catalog: &Catalog, now: DateTime<Utc>) -> DomainResult<usize> {
    // The shortest threshold a rule may set is 1 s; each rule's own is
    // applied below.
    let ready_before = now - ChronoDuration::seconds(1);
    let mut recorded = 0;
    for found in catalog.waiting_runs_to_notify(ready_before, BATCH).await? {
        let threshold = match found.waiting_after_seconds {
            0 => DEFAULT_WAITING_AFTER_SECONDS,
            seconds => seconds,
        };
        if now - found.not_before_time < ChronoDuration::seconds(threshold) {
            continue;
        }
        recorded += record_run_event(catalog, &found, Event::RunWaiting, now).await?;
    }
    Ok(recorded)
}

async fn record_run_event(
    catalog: &Catalog,
    found: &RunMatch,
    event: Event,
    now: DateTime<Utc>,
) -> DomainResult<usize> {
    let id = new_id();
    let payload = run_payload(id, event, found, now);
    let delivery = NewDelivery {
        id,
        channel_id: found.channel_id,
        rule_id: Some(found.rule_id),
        owner_id: found.rule_owner_id,
        event,
        subject_id: found.run_id,
        episode: String::new(),
        run_id: Some(found.run_id),
        job_id: found.job_id,
        payload: payload.to_string(),
    };
    let new = catalog
        .insert_notification_delivery(&delivery, now, None)
        .await?;
    Ok(usize::from(new))
}

async fn stale_jobs(catalog: &Catalog, now: DateTime<Utc>) -> DomainResult<usize> {
    let candidates = catalog.stale_candidates().await?;
    let mut recorded = 0;
    for candidate in &candidates {
        let Some(threshold) = stale_threshold(candidate, now) else {
            continue;
        };
        let reference = candidate.last_success.unwrap_or(candidate.job_create_time);
        if now - reference <= threshold {
            continue;
        }
        recorded += record_job_event(catalog, candidate, Event::JobStale, now, threshold).await?;
    }
    for open in catalog.open_stale_episodes().await? {
        let current = candidates
            .iter()
            .find(|c| c.channel_id == open.channel_id && c.job_id == open.subject_id);
        let Some(candidate) = current else {
            continue;
        };
        // A success newer than the one the episode began after ends it.
        let Some(last_success) = candidate.last_success else {
            continue;
        };
        if episode_of(last_success) == open.episode {
            continue;
        }
        let threshold = stale_threshold(candidate, now).unwrap_or_default();
        let recovered = NewDelivery {
            episode: open.episode.clone(),
            ..job_delivery(candidate, Event::JobRecovered, now, threshold)
        };
        recorded += usize::from(
            catalog
                .insert_notification_delivery(&recovered, now, None)
                .await?,
        );
    }
    Ok(recorded)
}

async fn record_job_event(
    catalog: &Catalog,
    candidate: &StaleCandidate,
    event: Event,
    now: DateTime<Utc>,
    threshold: ChronoDuration,
) -> DomainResult<usize> {
    let delivery = job_delivery(candidate, event, now, threshold);
    let new = catalog
        .insert_notification_delivery(&delivery, now, None)
        .await?;
    Ok(usize::from(new))
}

fn job_delivery(
    candidate: &StaleCandidate,
    event: Event,
    now: DateTime<Utc>,
    threshold: ChronoDuration,
) -> NewDelivery {
    let id = new_id();
    let reference = candidate.last_success.unwrap_or(candidate.job_create_time);
    let text = match event {
        Event::JobRecovered => format!(
            "Job {} backed up successfully again (last success {}).",
            candidate.job_name,
            candidate
                .last_success
                .map_or_else(String::new, |t| t.to_rfc3339())
        ),
        _ => format!(
            "Job {} is stale: no successful backup for {} (threshold {}).",
            candidate.job_name,
            human(now - reference),
            human(threshold)
        ),
    };
    let payload = json!({
        "id": id,
        "event": event.as_str(),
        "time": now.to_rfc3339(),
        "text": text,
        "owner_id": candidate.job_owner_id,
        "job": {
            "id": candidate.job_id,
            "name": candidate.job_name,
            "last_success_time": candidate.last_success.map(|t| t.to_rfc3339()),
            "stale_after_seconds": threshold.num_seconds(),
        },
        "run": Value::Null,
    });
    NewDelivery {
        id,
        channel_id: candidate.channel_id,
        rule_id: Some(candidate.rule_id),
        owner_id: candidate.rule_owner_id,
        event,
        subject_id: candidate.job_id,
        episode: episode_of(reference),
        run_id: None,
        job_id: Some(candidate.job_id),
        payload: payload.to_string(),
    }
}

/// The stale threshold of `candidate`: the rule's, or twice the job's
/// schedule interval (None when the schedule has no next ticks).
fn stale_threshold(candidate: &StaleCandidate, now: DateTime<Utc>) -> Option<ChronoDuration> {
    if candidate.stale_after_seconds > 0 {
        return Some(ChronoDuration::seconds(candidate.stale_after_seconds));
    }
    let schedule = Schedule {
        cron: candidate.schedule_cron.clone(),
        time_zone: candidate.schedule_time_zone.clone(),
        ..Schedule::default()
    };
    let first = schedule.next_fire_after(now).ok().flatten()?;
    let second = schedule.next_fire_after(first).ok().flatten()?;
    Some((second - first) * 2)
}

/// A stale episode's name: the time of the success it began after.
fn episode_of(reference: DateTime<Utc>) -> String {
    reference.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn human(duration: ChronoDuration) -> String {
    let seconds = duration.num_seconds().max(0);
    match seconds {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The JSON body of a run event: only what the rule's owner may see (the
/// rule's scope holds runs of its owner, or everyone's for an admin's).
fn run_payload(id: Uuid, event: Event, found: &RunMatch, now: DateTime<Utc>) -> Value {
    let what = match &found.job_name {
        Some(name) => format!("{} run {} of job {name}", found.kind, found.run_id),
        None => format!("{} run {}", found.kind, found.run_id),
    };
    let text = match event {
        Event::RunFailed => format!("Coffer: {what} failed: {}", found.error),
        Event::RunSucceeded => format!("Coffer: {what} succeeded."),
        Event::RunCancelled => format!("Coffer: {what} was cancelled."),
        Event::RunWaiting => format!(
            "Coffer: {what} has waited {} for a worker.",
            human(now - found.not_before_time)
        ),
        _ => format!("Coffer: {what}: {}", event.as_str()),
    };
    json!({
        "id": id,
        "event": event.as_str(),
        "time": now.to_rfc3339(),
        "text": text,
        "owner_id": found.run_owner_id,
        "run": {
            "id": found.run_id,
            "kind": found.kind,
            "state": found.state,
            "error": found.error,
            "create_time": found.create_time.to_rfc3339(),
            "finish_time": found.finish_time.map(|t| t.to_rfc3339()),
        },
        "job": found.job_id.map(|job_id| json!({
            "id": job_id,
            "name": found.job_name,
        })),
    })
}

/// The JSON body of a test notice.
pub fn test_payload(id: Uuid, owner_id: Uuid, now: DateTime<Utc>) -> Value {
    json!({
        "id": id,
        "event": Event::Test.as_str(),
        "time": now.to_rfc3339(),
        "text": "Coffer: a test notice. This channel works.",
        "owner_id": owner_id,
        "run": Value::Null,
        "job": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human(ChronoDuration::seconds(42)), "42s");
        assert_eq!(human(ChronoDuration::seconds(3 * 3600 + 120)), "3h 2m");
        assert_eq!(human(ChronoDuration::seconds(2 * 86_400 + 3600)), "2d 1h");
    }
}
