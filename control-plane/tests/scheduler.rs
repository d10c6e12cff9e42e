//! The job scheduler over real gRPC and real catalogs: exactly-once firing
//! with two control-plane replicas on one PostgreSQL, leader failover, the
//! missed-run and overlap policies, one-shot start times, and next run times
//! in the API.
//!
//! Ticks are driven without waiting for the wall clock: a test moves a job's
//! `next_run_time` into the past (`Catalog::set_next_run_time`), as if the tick
//! had come, and waits for the schedulers' published status, never sleeping.

use crate::support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_control_plane::catalog::Page;
use coffer_control_plane::model::job::scheduled_request_id;
use coffer_control_plane::model::run::{Run, RunFilter};
use coffer_control_plane::scheduler::cron::CronExpr;
use coffer_control_plane::scheduler::{SchedulerSettings, SchedulerStatus};
use coffer_control_plane::testing::scrape::scrape;
use coffer_proto::v1 as pb;
use coffer_proto::v1::run_service_client::RunServiceClient;
use coffer_proto::v1::{MissedRunPolicy, OverlapPolicy};
use support::{authed, violated_fields, Backend, TestServer};
use tonic::Code;
use uuid::Uuid;

/// How long any awaited scheduler event may take before the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Fast rounds; the lease outlives many of them, so a slow machine does not
/// make the leadership change hands by accident.
fn fast() -> SchedulerSettings {
    SchedulerSettings {
        enabled: true,
        poll_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(3),
        misfire_grace: Duration::from_secs(60),
    }
}

/// A server whose scheduler does not run, for API-only checks.
fn no_scheduler() -> SchedulerSettings {
    SchedulerSettings {
        enabled: false,
        ..SchedulerSettings::default()
    }
}

/// A daily job: its natural ticks are a day apart, so none comes by itself
/// while a test runs and every run a test sees is one it drove. Its missed-run
/// and overlap policies are left to the defaults.
fn daily_job(name: &str) -> pb::Job {
    daily_job_with(
        name,
        MissedRunPolicy::Unspecified,
        OverlapPolicy::Unspecified,
    )
}

/// A [`daily_job`] with the given missed-run and overlap policies.
fn daily_job_with(name: &str, missed: MissedRunPolicy, overlap: OverlapPolicy) -> pb::Job {
    pb::Job {
        name: name.into(),
        source_path: "/data".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath("/backups".into())),
        }),
        schedule: Some(pb::Schedule {
            cron: "0 3 * * *".into(),
            time_zone: "Europe/Berlin".into(),
            missed_run_policy: missed as i32,
            overlap_policy: overlap as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_job(server: &TestServer, token: &str, job: pb::Job) -> pb::Job {
    server
        .as_user(token)
        .create_job(job)
        .await
        .expect("create job")
}

async fn get_job(server: &TestServer, token: &str, id: &str) -> pb::Job {
    server
        .as_user(token)
        .get_job(pb::GetJobRequest { id: id.into() })
        .await
        .expect("get job")
}

async fn update_job(server: &TestServer, token: &str, job: pb::Job, paths: &[&str]) -> pb::Job {
    server
        .as_user(token)
        .update_job(pb::UpdateJobRequest {
            job: Some(job),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        })
        .await
        .expect("update job")
}

/// Replaces the schedule of job `id` (`None`: on demand only).
async fn set_schedule(
    server: &TestServer,
    token: &str,
    id: &str,
    schedule: Option<pb::Schedule>,
) -> pb::Job {
    let job = pb::Job {
        id: id.to_string(),
        schedule,
        ..Default::default()
    };
    update_job(server, token, job, &["schedule"]).await
}

/// Starts a run of `job` through the API, as a user would by hand.
async fn start_by_hand(server: &TestServer, token: &str, job: &pb::Job) -> pb::Run {
    server.as_user(token).start_backup(&job.id).await
}

fn job_id(job: &pb::Job) -> Uuid {
    Uuid::parse_str(&job.id).expect("job id is a UUID")
}

fn time_of(timestamp: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(
        timestamp.seconds,
        u32::try_from(timestamp.nanos).unwrap_or(0),
    )
    .expect("timestamp in range")
}

/// Every run of a job, newest first, as the catalog holds them.
async fn runs_of(server: &TestServer, job: Uuid) -> Vec<Run> {
    let filter = RunFilter {
        job_id: Some(job),
        ..RunFilter::default()
    };
    let page = Page {
        size: Page::MAX_SIZE,
        after: None,
    };
    let (runs, _) = server
        .catalog()
        .list_runs(None, &filter, page)
        .await
        .expect("list runs");
    runs
}

/// Makes a job's tick due `ago` before now (the catalog's clock) and returns it.
async fn make_due(server: &TestServer, job: Uuid, ago: chrono::Duration) -> DateTime<Utc> {
    let now = server.catalog().now().await.expect("catalog clock");
    // Whole milliseconds keep ticks distinct and exact on both backends.
    let tick = DateTime::from_timestamp_millis((now - ago).timestamp_millis()).expect("in range");
    server
        .catalog()
        .set_next_run_time(job, tick)
        .await
        .expect("set next run time");
    tick
}

/// Waits until `done` holds for the statuses of `servers`' schedulers, woken
/// by every status change (each scheduler publishes one per round).
async fn wait_for(
    servers: &[&TestServer],
    what: &str,
    done: impl Fn(&[SchedulerStatus]) -> bool,
) -> Vec<SchedulerStatus> {
    let mut receivers: Vec<_> = servers
        .iter()
        .map(|server| server.scheduler().subscribe())
        .collect();
    let waiting = async {
        loop {
            let statuses: Vec<SchedulerStatus> = receivers
                .iter_mut()
                .map(|receiver| receiver.borrow_and_update().clone())
                .collect();
            if done(&statuses) {
                return statuses;
            }
            let changes = receivers
                .iter_mut()
                .map(|receiver| Box::pin(receiver.changed()));
            let (changed, _, _) = futures::future::select_all(changes).await;
            changed.expect("scheduler status sender lives as long as the server");
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT, waiting)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until every server's scheduler has completed `n` more rounds, so
/// anything it was going to do about the current state is done.
async fn wait_rounds(servers: &[&TestServer], n: u64) {
    let start: Vec<u64> = servers
        .iter()
        .map(|server| server.scheduler().status().rounds)
        .collect();
    wait_for(servers, "more scheduler rounds", |statuses| {
        statuses
            .iter()
            .zip(&start)
            .all(|(status, start)| status.rounds >= start + n)
    })
    .await;
}

fn total(statuses: &[SchedulerStatus], field: impl Fn(&SchedulerStatus) -> u64) -> u64 {
    statuses.iter().map(field).sum()
}

/// The test: three control-plane replicas on one PostgreSQL database
/// fire each due tick exactly once, and the run belongs to the job's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_fire_each_tick_once() {
    let first = TestServer::start_with_scheduler(Backend::Postgres, fast()).await;
    let second = first.start_replica().await;
    let third = first.start_replica().await;
    let replicas = [&first, &second, &third];
    let (owner, token) = first.create_user("alice").await;
    let job = create_job(&first, &token, daily_job("nightly")).await;
    let id = job_id(&job);
    wait_for(&replicas, "a scheduler leader", |statuses| {
        statuses.iter().filter(|s| s.leading).count() == 1
    })
    .await;

    let ticks = 8;
    let mut expected_request_ids = Vec::new();
    for n in 1..=ticks {
        let tick = make_due(&second, id, chrono::Duration::milliseconds(500)).await;
        expected_request_ids.push(scheduled_request_id(id, tick));
        wait_for(&replicas, "the tick to be fired", |statuses| {
            total(statuses, |s| s.ticks) >= n
        })
        .await;
        // Cancel the run so the next tick does not overlap it.
        let runs = runs_of(&first, id).await;
        let mut client = RunServiceClient::new(first.channel().await);
        client
            .cancel_run(authed(
                &token,
                pb::CancelRunRequest {
                    id: runs[0].id.to_string(),
                },
            ))
            .await
            .expect("cancel the scheduled run");
    }
    // Give every replica time to do anything more it might (it must not).
    wait_rounds(&replicas, 3).await;

    let statuses = replicas.map(|replica| replica.scheduler().status());
    assert_eq!(total(&statuses, |s| s.ticks), ticks);
    assert_eq!(total(&statuses, |s| s.runs_created), ticks);
    let runs = runs_of(&first, id).await;
    assert_eq!(runs.len(), ticks as usize, "one run per tick");
    let mut request_ids: Vec<Uuid> = runs.iter().filter_map(|run| run.request_id).collect();
    request_ids.sort();
    expected_request_ids.sort();
    assert_eq!(request_ids, expected_request_ids);
    for run in &runs {
        assert_eq!(run.owner_id.to_string(), owner.id);
        assert_eq!(run.job_id, Some(id));
    }
    let job = get_job(&first, &token, &job.id).await;
    let next = time_of(job.next_run_time.as_ref().expect("next run time"));
    assert!(next > first.catalog().now().await.expect("clock"));
}

/// Exactly-once holds in the data even if two schedulers believe they lead:
/// both fire every tick at the same moment, and each tick still has one run.
async fn simultaneous_firing_creates_one_run_per_tick(backend: Backend) {
    let first = TestServer::start_with_scheduler(backend, no_scheduler()).await;
    let second = first.start_replica().await;
    let (_, token) = first.create_user("alice").await;
    let job = create_job(&first, &token, daily_job("raced")).await;
    let id = job_id(&job);
    let grace = Duration::from_secs(60);
    for n in 1..=10 {
        make_due(&first, id, chrono::Duration::seconds(n)).await;
        let now = first.catalog().now().await.expect("clock");
        let due = first.catalog().due_ticks(now, 10).await.expect("scan");
        assert_eq!(due.len(), 1);
        let tick = &due[0];
        let (a, b) = tokio::join!(
            first.catalog().fire_tick(tick, now, grace, 3),
            second.catalog().fire_tick(tick, now, grace, 3),
        );
        let fired: Vec<_> = [a.expect("fire"), b.expect("fire")]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(fired.len(), 1, "exactly one scheduler fires tick {n}");
        let run = fired[0].run_id.expect("run created");
        // Finish the run so the next tick is not an overlap.
        first
            .catalog()
            .cancel_run(run, "test")
            .await
            .expect("cancel");
    }
    assert_eq!(runs_of(&first, id).await.len(), 10);
}

/// When the leader stops it hands over at once; when a leader dies, its
/// lease expires (database clock) and another replica takes over and fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_fails_over_when_the_leader_stops_or_dies() {
    let first = TestServer::start_with_scheduler(Backend::Postgres, fast()).await;
    wait_for(&[&first], "the first replica to lead", |s| s[0].leading).await;
    let second = first.start_replica().await;
    wait_rounds(&[&second], 2).await;
    assert!(!second.scheduler().status().leading, "one leader at a time");
    let (_, token) = first.create_user("alice").await;
    let failover = daily_job_with(
        "failover",
        MissedRunPolicy::Unspecified,
        OverlapPolicy::Queue,
    );
    let job = create_job(&first, &token, failover).await;
    let id = job_id(&job);

    // A clean stop releases the lease: the other replica leads before the old
    // lease would have expired, and fires.
    let old_lease = first
        .catalog()
        .scheduler_leader()
        .await
        .expect("lease")
        .expect("lease row");
    assert_eq!(old_lease.holder, first.scheduler().holder());
    first.stop();
    wait_for(&[&second], "the second replica to lead", |s| s[0].leading).await;
    let new_lease = second
        .catalog()
        .scheduler_leader()
        .await
        .expect("lease")
        .expect("lease row");
    assert_eq!(new_lease.holder, second.scheduler().holder());
    assert_eq!(new_lease.term, old_lease.term + 1);
    assert!(
        new_lease.acquire_time < old_lease.expire_time,
        "taken over at {} although released before {}",
        new_lease.acquire_time,
        old_lease.expire_time
    );
    make_due(&second, id, chrono::Duration::milliseconds(200)).await;
    wait_for(&[&second], "the tick fired by the new leader", |s| {
        s[0].runs_created == 1
    })
    .await;
    assert_eq!(runs_of(&second, id).await.len(), 1);

    // A leader that died holds the lease until it expires; nobody fires meanwhile.
    let catalog = &second.catalog();
    let now = catalog.now().await.expect("clock");
    let dead_until = now + chrono::Duration::seconds(2);
    catalog
        .execute_raw(&format!(
            "UPDATE scheduler_leader SET holder = 'dead-replica', term = term + 1, \
             expire_time = '{}'",
            dead_until.to_rfc3339()
        ))
        .await
        .expect("simulate a dead leader");
    wait_for(
        &[&second],
        "the replica to see the dead leader's lease",
        |s| !s[0].leading,
    )
    .await;
    let runs = runs_of(&second, id).await;
    second
        .catalog()
        .cancel_run(runs[0].id, "test")
        .await
        .expect("cancel");
    make_due(&second, id, chrono::Duration::milliseconds(200)).await;
    let status = wait_for(
        &[&second],
        "the lease to expire and the tick to fire",
        |s| s[0].runs_created == 2,
    )
    .await;
    assert!(status[0].leading);
    let runs = runs_of(&second, id).await;
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0].create_time >= dead_until,
        "fired at {} while the dead leader's lease ran until {dead_until}",
        runs[0].create_time
    );
    let lease = catalog
        .scheduler_leader()
        .await
        .expect("lease")
        .expect("lease row");
    assert_eq!(lease.holder, second.scheduler().holder());
}

/// Ticks missed while no control plane was up: one run for all of them by
/// default (run once at start), none with the skip policy; either way the
/// next run time is in the future afterwards.
async fn missed_ticks_run_once_or_are_skipped(backend: Backend) {
    // The jobs are created on a control plane that does not schedule.
    let setup = TestServer::start_with_scheduler(backend, no_scheduler()).await;
    setup.serve_metrics().await;
    let (_, token) = setup.create_user("alice").await;
    let run_once = create_job(&setup, &token, daily_job("run-once")).await;
    let skipping = daily_job_with("skip", MissedRunPolicy::Skip, OverlapPolicy::Unspecified);
    let skip = create_job(&setup, &token, skipping).await;
    assert_eq!(
        run_once
            .schedule
            .as_ref()
            .expect("schedule")
            .missed_run_policy,
        MissedRunPolicy::RunOnce as i32,
        "the default policy is spelled out"
    );

    // No control plane was up for three days: the ticks passed unseen.
    setup.stop();
    for job in [&run_once, &skip] {
        make_due(&setup, job_id(job), chrono::Duration::days(3)).await;
    }
    // A control plane with a scheduler starts.
    let server = setup.start_replica_with(fast()).await;

    let statuses = wait_for(&[&server], "both missed ticks decided", |s| s[0].ticks >= 2).await;
    assert_eq!(statuses[0].ticks_skipped, 1);
    let counted = scrape(&server.serve_metrics().await).await;
    assert_eq!(counted.value("coffer_scheduler_ticks_fired_total"), 1.0);
    assert_eq!(counted.value("coffer_scheduler_ticks_missed_total"), 1.0);
    wait_rounds(&[&server], 2).await;
    assert_eq!(runs_of(&server, job_id(&run_once)).await.len(), 1);
    assert_eq!(runs_of(&server, job_id(&skip)).await.len(), 0);
    let now = server.catalog().now().await.expect("clock");
    for job in [&run_once, &skip] {
        let job = get_job(&server, &token, &job.id).await;
        let next = time_of(job.next_run_time.as_ref().expect("next run time"));
        assert!(next > now, "{} next run {next} is in the future", job.name);
    }
}

/// A tick that fires while a run of the job is active: dropped under the
/// default overlap policy; under queue it waits (visible in the API) and its
/// run is created once the active run ends.
async fn overlapping_ticks_are_skipped_or_queued(backend: Backend) {
    let server = TestServer::start_with_scheduler(backend, fast()).await;
    let (_, token) = server.create_user("alice").await;
    let skip = create_job(&server, &token, daily_job("overlap-skip")).await;
    let manual = start_by_hand(&server, &token, &skip).await;
    make_due(&server, job_id(&skip), chrono::Duration::milliseconds(200)).await;
    wait_for(&[&server], "the overlapping tick", |s| {
        s[0].ticks_skipped == 1
    })
    .await;
    let runs = runs_of(&server, job_id(&skip)).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id.to_string(), manual.id);
    let fetched = get_job(&server, &token, &skip.id).await;
    assert!(fetched.pending_fire_time.is_none());

    let queued = daily_job_with(
        "overlap-queue",
        MissedRunPolicy::Unspecified,
        OverlapPolicy::Queue,
    );
    let queue = create_job(&server, &token, queued).await;
    let manual = start_by_hand(&server, &token, &queue).await;
    let tick = make_due(&server, job_id(&queue), chrono::Duration::milliseconds(200)).await;
    wait_for(&[&server], "the queued tick", |s| s[0].ticks == 2).await;
    wait_rounds(&[&server], 2).await;
    assert_eq!(
        runs_of(&server, job_id(&queue)).await.len(),
        1,
        "still waiting"
    );
    let fetched = get_job(&server, &token, &queue.id).await;
    let pending = time_of(fetched.pending_fire_time.as_ref().expect("a tick waits"));
    assert_eq!(pending, tick);

    RunServiceClient::new(server.channel().await)
        .cancel_run(authed(&token, pb::CancelRunRequest { id: manual.id }))
        .await
        .expect("end the active run");
    wait_for(&[&server], "the waiting tick's run", |s| {
        s[0].runs_created == 1
    })
    .await;
    let runs = runs_of(&server, job_id(&queue)).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[0].request_id,
        Some(scheduled_request_id(job_id(&queue), tick))
    );
    let fetched = get_job(&server, &token, &queue.id).await;
    assert!(fetched.pending_fire_time.is_none());
}

/// `next_run_time` is computed on create, kept by unrelated edits, recomputed
/// when the schedule changes or resumes, and cleared when paused or removed;
/// GetJob and ListJobs show it.
async fn next_run_time_follows_the_schedule(backend: Backend) {
    let server = TestServer::start_with_scheduler(backend, no_scheduler()).await;
    let (_, token) = server.create_user("alice").await;
    let before = server.catalog().now().await.expect("clock");
    let created = create_job(&server, &token, daily_job("nightly")).await;
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().expect("zone");
    let nightly = CronExpr::parse("0 3 * * *").expect("cron");
    let expected = nightly.next_after(before, berlin).expect("fires");
    let next = time_of(created.next_run_time.as_ref().expect("next run time"));
    assert_eq!(next, expected);

    let listed = server
        .as_user(&token)
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(listed[0].next_run_time, created.next_run_time);

    // An edit that leaves the schedule alone keeps the tick, even a due one.
    let id = job_id(&created);
    let marker = make_due(&server, id, chrono::Duration::minutes(1)).await;
    let edited = update_job(
        &server,
        &token,
        pb::Job {
            id: created.id.clone(),
            description: "edited".into(),
            ..Default::default()
        },
        &["description"],
    )
    .await;
    assert_eq!(
        time_of(edited.next_run_time.as_ref().expect("kept")),
        marker
    );

    // Pausing clears it; resuming computes it from now.
    let mut schedule = created.schedule.clone().expect("schedule");
    schedule.paused = true;
    let paused = set_schedule(&server, &token, &created.id, Some(schedule.clone())).await;
    assert!(paused.next_run_time.is_none());
    assert!(get_job(&server, &token, &created.id)
        .await
        .next_run_time
        .is_none());

    schedule.paused = false;
    let resumed_at = server.catalog().now().await.expect("clock");
    let resumed = set_schedule(&server, &token, &created.id, Some(schedule.clone())).await;
    let expected = nightly.next_after(resumed_at, berlin).expect("fires");
    assert_eq!(
        time_of(resumed.next_run_time.as_ref().expect("set")),
        expected
    );

    // A new expression and zone move it.
    schedule.cron = "30 12 * * 1-5".into();
    schedule.time_zone = "America/New_York".into();
    let changed_at = server.catalog().now().await.expect("clock");
    let changed = set_schedule(&server, &token, &created.id, Some(schedule.clone())).await;
    let weekdays = CronExpr::parse("30 12 * * 1-5").expect("cron");
    let new_york: chrono_tz::Tz = "America/New_York".parse().expect("zone");
    let expected = weekdays.next_after(changed_at, new_york).expect("fires");
    assert_eq!(
        time_of(changed.next_run_time.as_ref().expect("set")),
        expected
    );

    // No expression: on demand only.
    let unscheduled = set_schedule(&server, &token, &created.id, None).await;
    assert!(unscheduled.next_run_time.is_none());
    assert_eq!(unscheduled.schedule.expect("schedule").cron, "");
}

/// Bad expressions, zones and policies are INVALID_ARGUMENT naming each field,
/// on create and on update.
async fn bad_schedules_name_the_field(backend: Backend) {
    let server = TestServer::start_with_scheduler(backend, no_scheduler()).await;
    let (_, token) = server.create_user("alice").await;
    let mut bad = daily_job("bad");
    bad.schedule = Some(pb::Schedule {
        cron: "0 0 30 2 *".into(),
        time_zone: "Mars/Olympus_Mons".into(),
        paused: false,
        missed_run_policy: 9,
        overlap_policy: 9,
    });
    let status = server
        .as_user(&token)
        .create_job(bad)
        .await
        .expect_err("bad schedule");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    for field in [
        "job.schedule.cron",
        "job.schedule.time_zone",
        "job.schedule.missed_run_policy",
        "job.schedule.overlap_policy",
    ] {
        assert!(fields.contains(&field.to_string()), "{field} in {fields:?}");
    }
    assert!(
        status.message().contains("never fires"),
        "{}",
        status.message()
    );

    let created = create_job(&server, &token, daily_job("good")).await;
    for (schedule, field) in [
        (
            pb::Schedule {
                cron: "0 3 * *".into(),
                ..Default::default()
            },
            "job.schedule.cron",
        ),
        (
            pb::Schedule {
                cron: "0 3 * * *".into(),
                time_zone: "Europe/Berlinn".into(),
                ..Default::default()
            },
            "job.schedule.time_zone",
        ),
        (
            pb::Schedule {
                cron: "0 3 * * *".into(),
                overlap_policy: 3,
                ..Default::default()
            },
            "job.schedule.overlap_policy",
        ),
    ] {
        let status = server
            .as_user(&token)
            .update_job(pb::UpdateJobRequest {
                job: Some(pb::Job {
                    id: created.id.clone(),
                    schedule: Some(schedule),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["schedule".into()],
                }),
            })
            .await
            .expect_err("bad schedule update");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), vec![field.to_string()]);
    }
    let unchanged = get_job(&server, &token, &created.id).await;
    assert_eq!(unchanged.schedule, created.schedule);
    assert_eq!(unchanged.next_run_time, created.next_run_time);
}

/// A one-shot job (seed 2's `start_time`): `pb::Job` with a start time and
/// no schedule, writing to the filesystem.
fn one_shot_job(name: &str, start: DateTime<Utc>) -> pb::Job {
    pb::Job {
        schedule: None,
        start_time: Some(prost_types::Timestamp {
            seconds: start.timestamp(),
            nanos: 0,
        }),
        ..daily_job(name)
    }
}

/// The catalog's clock, in whole seconds (a start time's resolution here).
async fn now_seconds(server: &TestServer) -> DateTime<Utc> {
    let now = server.catalog().now().await.expect("catalog clock");
    DateTime::from_timestamp(now.timestamp(), 0).expect("in range")
}

/// A job created with a start time shows it as its next run time, fires once
/// at it with two replicas scheduling, and never again; one whose start time
/// is a few seconds past (a client's clock behind) fires at once.
async fn a_start_time_runs_the_job_once(backend: Backend) {
    let first = TestServer::start_with_scheduler(backend, fast()).await;
    let second = first.start_replica().await;
    let replicas = [&first, &second];
    let (owner, token) = first.create_user("alice").await;
    let start = now_seconds(&first).await + chrono::Duration::hours(1);
    let job = create_job(&first, &token, one_shot_job("once", start)).await;
    let id = job_id(&job);
    assert_eq!(job.start_time.as_ref().map(time_of), Some(start));
    assert_eq!(job.next_run_time.as_ref().map(time_of), Some(start));
    let listed = first
        .as_user(&token)
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(listed[0].next_run_time.as_ref().map(time_of), Some(start));

    // Its time comes (driven as the other tests drive ticks).
    let tick = make_due(&first, id, chrono::Duration::milliseconds(200)).await;
    wait_for(&replicas, "the one-shot to fire", |statuses| {
        total(statuses, |s| s.runs_created) >= 1
    })
    .await;
    let runs = runs_of(&first, id).await;
    first
        .catalog()
        .cancel_run(runs[0].id, "test")
        .await
        .expect("cancel");
    wait_rounds(&replicas, 3).await;
    let statuses = replicas.map(|replica| replica.scheduler().status());
    assert_eq!(total(&statuses, |s| s.runs_created), 1, "fired once");
    let runs = runs_of(&first, id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].request_id, Some(scheduled_request_id(id, tick)));
    assert_eq!(runs[0].owner_id.to_string(), owner.id);
    let fired = get_job(&first, &token, &job.id).await;
    assert!(fired.next_run_time.is_none(), "a one-shot has no next tick");
    assert_eq!(fired.start_time.as_ref().map(time_of), Some(start));

    // Editing the fired job (its start time now past) does not re-arm it.
    let edited = update_job(
        &first,
        &token,
        pb::Job {
            id: job.id.clone(),
            description: "ran once".into(),
            start_time: fired.start_time,
            ..Default::default()
        },
        &["description", "start_time"],
    )
    .await;
    assert!(edited.next_run_time.is_none());

    // A start time just behind the control plane's clock fires at once.
    let behind = now_seconds(&first).await - chrono::Duration::seconds(5);
    let late = create_job(&first, &token, one_shot_job("late", behind)).await;
    wait_for(&replicas, "the late one-shot to fire", |statuses| {
        total(statuses, |s| s.runs_created) >= 2
    })
    .await;
    assert_eq!(runs_of(&first, job_id(&late)).await.len(), 1);
    assert!(get_job(&first, &token, &late.id)
        .await
        .next_run_time
        .is_none());
}

/// A start time far in the past, beside a cron expression, or on a paused
/// schedule is INVALID_ARGUMENT naming the field; clearing it cancels the
/// one-shot, and setting a new one arms it again.
async fn bad_start_times_name_the_field(backend: Backend) {
    let server = TestServer::start_with_scheduler(backend, no_scheduler()).await;
    let (_, token) = server.create_user("alice").await;
    let now = now_seconds(&server).await;
    let past = one_shot_job("past", now - chrono::Duration::hours(1));
    let with_cron = pb::Job {
        schedule: daily_job("x").schedule,
        ..one_shot_job("with-cron", now + chrono::Duration::hours(1))
    };
    let paused = pb::Job {
        schedule: Some(pb::Schedule {
            paused: true,
            ..Default::default()
        }),
        ..one_shot_job("paused", now + chrono::Duration::hours(1))
    };
    for (job, field) in [
        (past, "job.start_time"),
        (with_cron, "job.start_time"),
        (paused, "job.schedule.paused"),
    ] {
        let name = job.name.clone();
        let status = server
            .as_user(&token)
            .create_job(job)
            .await
            .expect_err("bad start time");
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert_eq!(violated_fields(&status), vec![field.to_string()], "{name}");
    }

    let start = now + chrono::Duration::hours(2);
    let job = create_job(&server, &token, one_shot_job("good", start)).await;
    let to_past = pb::Job {
        id: job.id.clone(),
        ..one_shot_job("good", now - chrono::Duration::days(1))
    };
    let status = server
        .as_user(&token)
        .update_job(pb::UpdateJobRequest {
            job: Some(to_past),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["start_time".into()],
            }),
        })
        .await
        .expect_err("a start time moved into the past");
    assert_eq!(violated_fields(&status), vec!["job.start_time".to_string()]);

    let cleared = pb::Job {
        id: job.id.clone(),
        ..Default::default()
    };
    let cancelled = update_job(&server, &token, cleared, &["start_time"]).await;
    assert!(cancelled.start_time.is_none());
    assert!(
        cancelled.next_run_time.is_none(),
        "the one-shot is cancelled"
    );
    let later = start + chrono::Duration::hours(1);
    let rearmed = pb::Job {
        id: job.id.clone(),
        ..one_shot_job("good", later)
    };
    let rearmed = update_job(&server, &token, rearmed, &["start_time"]).await;
    assert_eq!(rearmed.next_run_time.as_ref().map(time_of), Some(later));
}

both_backends!(
    a_start_time_runs_the_job_once,
    bad_start_times_name_the_field,
    simultaneous_firing_creates_one_run_per_tick,
    missed_ticks_run_once_or_are_skipped,
    overlapping_ticks_are_skipped_or_queued,
    next_run_time_follows_the_schedule,
    bad_schedules_name_the_field,
);
