//! What becomes of one tick: the missed-run and overlap policies as a pure
//! decision, so the catalog's firing transaction only carries it out.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::job::{MissedRunPolicy, OverlapPolicy, Schedule};

/// What the scheduler does with a due tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickOutcome {
    /// A run is created for it.
    Run,
    /// It waits for the job's active run to end (overlap policy queue).
    Queue,
    /// It was reached too late and the missed-run policy is skip.
    SkipMissed,
    /// A run of the job is still active and the overlap policy is skip.
    SkipOverlap,
    /// The job's owner already has as many queued runs as allowed
    /// (`max_queued_runs_per_owner`); the tick is skipped, not deferred.
    SkipQueueLimit,
}

impl TickOutcome {
    /// A short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TickOutcome::Run => "run created",
            TickOutcome::Queue => "waiting for the active run",
            TickOutcome::SkipMissed => "skipped: missed",
            TickOutcome::SkipOverlap => "skipped: a run is still active",
            TickOutcome::SkipQueueLimit => "skipped: the owner's queued-run limit is reached",
        }
    }
}

/// Decides a tick due at `due`, reached at `now`. A tick reached more than
/// `misfire_grace` after its time counts as missed (no scheduler was up or
/// leading when it was due); `active_run` says whether a run of the job is
/// still queued or running.
pub fn decide(
    schedule: &Schedule,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    misfire_grace: Duration,
    active_run: bool,
) -> TickOutcome {
    let grace = chrono::Duration::from_std(misfire_grace).unwrap_or(chrono::Duration::MAX);
    let missed = now.signed_duration_since(due) > grace;
    if missed && schedule.missed_runs == MissedRunPolicy::Skip {
        return TickOutcome::SkipMissed;
    }
    if !active_run {
        return TickOutcome::Run;
    }
    match schedule.overlap {
        OverlapPolicy::Skip => TickOutcome::SkipOverlap,
        OverlapPolicy::Queue => TickOutcome::Queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(missed_runs: MissedRunPolicy, overlap: OverlapPolicy) -> Schedule {
        Schedule {
            cron: "*/5 * * * *".into(),
            missed_runs,
            overlap,
            ..Default::default()
        }
    }

    #[test]
    fn policies_decide_each_tick() {
        use MissedRunPolicy::{RunOnce, Skip as SkipMissed};
        use OverlapPolicy::{Queue, Skip as SkipOverlap};
        let due = DateTime::from_timestamp(1_714_536_000, 0).expect("valid time");
        let grace = Duration::from_secs(120);
        let on_time = due + chrono::Duration::seconds(3);
        let late = due + chrono::Duration::hours(5);
        // (missed policy, overlap policy, reached at, active run, outcome)
        let cases = [
            (RunOnce, SkipOverlap, on_time, false, TickOutcome::Run),
            (SkipMissed, SkipOverlap, on_time, false, TickOutcome::Run),
            (RunOnce, SkipOverlap, late, false, TickOutcome::Run),
            (
                SkipMissed,
                SkipOverlap,
                late,
                false,
                TickOutcome::SkipMissed,
            ),
            (SkipMissed, Queue, late, true, TickOutcome::SkipMissed),
            (
                RunOnce,
                SkipOverlap,
                on_time,
                true,
                TickOutcome::SkipOverlap,
            ),
            (RunOnce, Queue, on_time, true, TickOutcome::Queue),
            (RunOnce, Queue, late, true, TickOutcome::Queue),
            (RunOnce, Queue, on_time, false, TickOutcome::Run),
        ];
        for (missed, overlap, now, active, expected) in cases {
            assert_eq!(
                decide(&schedule(missed, overlap), due, now, grace, active),
                expected,
                "{missed:?} {overlap:?} at {now} active={active}"
            );
        }
    }

    #[test]
    fn a_tick_exactly_at_the_end_of_the_grace_is_on_time() {
        let due = DateTime::from_timestamp(1_714_536_000, 0).expect("valid time");
        let grace = Duration::from_secs(120);
        let skip = schedule(MissedRunPolicy::Skip, OverlapPolicy::Skip);
        let edge = due + chrono::Duration::seconds(120);
        assert_eq!(decide(&skip, due, edge, grace, false), TickOutcome::Run);
        let after = edge + chrono::Duration::milliseconds(1);
        assert_eq!(
            decide(&skip, due, after, grace, false),
            TickOutcome::SkipMissed
        );
    }
}
