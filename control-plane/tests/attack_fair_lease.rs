//! Attacks on fair leasing, as a tenant would make them, over real gRPC on
//! both catalog backends: floods of runs no worker can take, one owner
//! queueing far more than another, every per-owner limit pushed past its
//! value, and runs that wait for a worker that never comes. Each test
//! asserts the refusal and that nothing beyond it was created or leased.

use crate::support;
use crate::support::fair_lease;

use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::scheduler::SchedulerSettings;
use coffer_control_plane::testing::Api;
use coffer_proto::v1 as pb;
use fair_lease::{backup, runs_in_state, LeaseClient, WorkerShape};
use futures::StreamExt;
use support::{assert_code, Backend, TestServer};
use tonic::Code;

/// Leases that end within seconds, a reaper that runs every second, and a
/// backoff long enough to be seen.
fn quick_reaper() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(3),
        backoff_base: Duration::from_secs(120),
        backoff_max: Duration::from_secs(120),
        attempt_deadline: Duration::from_secs(600),
    }
}

fn gpu_worker() -> WorkerShape {
    WorkerShape {
        labels: vec![("gpu", "yes")],
        slots: 4,
        ..WorkerShape::default()
    }
}

fn plain_worker(slots: i32) -> WorkerShape {
    WorkerShape {
        labels: vec![("zone", "eu")],
        slots,
        ..WorkerShape::default()
    }
}

/// Queues `count` copies of `spec` as the holder of `token`, 16 at a time.
async fn flood(
    server: &TestServer,
    token: &str,
    spec: pb::create_run_request::Spec,
    count: usize,
) -> Vec<String> {
    let api = server.as_user(token);
    futures::stream::iter(0..count)
        .map(|_| {
            let api = api.clone();
            let spec = spec.clone();
            async move { api.queue_run(spec).await }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

fn reason(run: &pb::Run) -> pb::WaitingReason {
    pb::WaitingReason::try_from(run.waiting_reason).expect("a known waiting reason")
}

/// The scenario: tenant A floods the queue with 200 runs whose
/// selector no worker has; tenant B's one run is still leased at once, A's
/// flood stays queued, and each of A's runs says why.
async fn unmatchable_flood_does_not_block_another_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, attacker) = server.create_user("attacker").await;
    let (_, victim) = server.create_user("victim").await;
    let flooded = flood(
        &server,
        &attacker,
        backup("/data/a", &[("gpu", "yes")]),
        200,
    )
    .await;
    assert_eq!(flooded.len(), 200);
    let victims_run = server
        .as_user(&victim)
        .queue_run(backup("/data/b", &[]))
        .await;

    let mut worker = LeaseClient::open(&server, "eu-1", &plain_worker(1)).await;
    worker.credit(1).await;
    let assignment = worker.assignment_within(Duration::from_secs(5)).await;
    let lease = assignment
        .and_then(|a| a.lease)
        .expect("the victim's run is leased within 5 s despite the flood");
    assert_eq!(lease.run_id, victims_run);
    assert!(worker.succeed(&lease).await.accepted);
    let done = server
        .wait_until_final(&victims_run, Duration::from_secs(20))
        .await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{done:?}");

    // The flood is untouched: all queued, never leased, each explained, and
    // the attacker sees only its own runs.
    let queued = runs_in_state(&server.as_user(&attacker), pb::RunState::Queued).await;
    assert_eq!(queued.len(), 200);
    for run in &queued {
        assert!(flooded.contains(&run.id), "a foreign run leaked: {run:?}");
        assert_eq!(run.attempt, 0, "a flooded run was leased: {run:?}");
        assert_eq!(reason(run), pb::WaitingReason::NoMatchingWorker);
        assert_eq!(
            run.waiting_message,
            "no connected worker has labels {gpu=yes}"
        );
    }
    let fetched = server.as_user(&attacker).get_run(&flooded[0]).await;
    let fetched = fetched.expect("own run");
    assert_eq!(reason(&fetched), pb::WaitingReason::NoMatchingWorker);
}

/// One owner with 1,000 queued runs, all takeable, does not starve another
/// owner's single run queued after them: it is among the first leases.
async fn a_busy_owner_does_not_starve_another(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, busy) = server.create_user("busy").await;
    let (_, quiet) = server.create_user("quiet").await;
    let busy_runs = flood(&server, &busy, backup("/data/busy", &[]), 1000).await;
    assert_eq!(busy_runs.len(), 1000);
    let quiet_run = server
        .as_user(&quiet)
        .queue_run(backup("/data/quiet", &[]))
        .await;

    let mut worker = LeaseClient::open(&server, "eu-1", &plain_worker(2)).await;
    worker.credit(2).await;
    let first = worker.assignment().await.lease.expect("lease");
    let second = worker.assignment().await.lease.expect("lease");
    let leased = [first.run_id.clone(), second.run_id.clone()];
    assert!(
        leased.contains(&quiet_run),
        "the quiet owner's run waited behind the busy owner's: {leased:?}"
    );
    let busy_leased = leased.iter().filter(|id| busy_runs.contains(id)).count();
    assert_eq!(busy_leased, 1, "the busy owner got one lease of two");
    let queued = runs_in_state(&server.as_user(&busy), pb::RunState::Queued).await;
    assert_eq!(queued.len(), 999);
}

/// Past `max_queued_runs_per_owner`, CreateRun is RESOURCE_EXHAUSTED and no
/// run is created; another tenant and the admin are not held back.
async fn queued_run_limit_is_enforced_per_owner(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.configure("max_queued_runs_per_owner", "3").await;
    let (_, tenant) = server.create_user("tenant").await;
    let (_, other) = server.create_user("other").await;
    let api = server.as_user(&tenant);
    let request_id = uuid::Uuid::now_v7().to_string();
    let create_with_key = || {
        let mut runs = api.runs.clone();
        let request = pb::CreateRunRequest {
            spec: Some(backup("/data/t", &[])),
            request_id: request_id.clone(),
        };
        async move { runs.create_run(request).await.map(|r| r.into_inner().run) }
    };
    let keyed = create_with_key().await.expect("first run").expect("run");
    flood(&server, &tenant, backup("/data/t", &[]), 2).await;
    let retried = create_with_key()
        .await
        .expect("a retried request is answered");
    assert_eq!(
        retried.expect("run").id,
        keyed.id,
        "the retry names the first run"
    );
    let refused = api.create_run(backup("/data/t", &[])).await;
    match refused {
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("max_queued_runs_per_owner"),
                "{status:?}"
            );
        }
        Ok(run) => panic!("a fourth queued run was accepted: {run:?}"),
    }
    assert_eq!(runs_in_state(&api, pb::RunState::Queued).await.len(), 3);
    api.create_run(backup("/data/o", &[]))
        .await
        .expect_err("still refused");
    server
        .as_user(&other)
        .create_run(backup("/data/o", &[]))
        .await
        .expect("another owner has a queue of its own");
    for _ in 0..4 {
        server
            .admin()
            .create_run(backup("/data/admin", &[]))
            .await
            .expect("admins are exempt");
    }
}

fn fast_scheduler() -> SchedulerSettings {
    SchedulerSettings {
        enabled: true,
        poll_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(3),
        misfire_grace: Duration::from_secs(60),
    }
}

/// A daily job (no tick comes by itself during a test) whose ticks wait for
/// its active run.
fn scheduled_job() -> pb::Job {
    pb::Job {
        name: "nightly".into(),
        source_path: "/data".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath("/backups".into())),
        }),
        schedule: Some(pb::Schedule {
            cron: "0 3 * * *".into(),
            time_zone: "UTC".into(),
            overlap_policy: pb::OverlapPolicy::Queue as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Moves the job's next tick a second into the past.
async fn make_tick_due(server: &TestServer, job_id: &str) {
    let job_id = job_id.parse().expect("job id");
    let now = server.catalog().now().await.expect("clock");
    server
        .catalog()
        .set_next_run_time(job_id, now - chrono::Duration::seconds(1))
        .await
        .expect("make the tick due");
}

async fn read_job(api: &Api, id: &str) -> pb::Job {
    let request = pb::GetJobRequest { id: id.into() };
    api.get_job(request).await.expect("job")
}

/// Reads the job after every scheduler round until `done` holds; panics
/// after 20 s.
async fn wait_for_job(
    server: &TestServer,
    api: &Api,
    id: &str,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let mut status = server.scheduler().subscribe();
    let reading = async {
        loop {
            let job = read_job(api, id).await;
            if done(&job) {
                return job;
            }
            status.changed().await.expect("scheduler running");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .expect("the job reached the expected state within 20 s")
}

/// The scheduler's fire of a job whose owner is at the limit is skipped and
/// counted, never queued past the limit.
async fn scheduled_fire_over_the_limit_is_skipped(backend: Backend) {
    let server = TestServer::start_with_scheduler(backend, fast_scheduler()).await;
    server.configure("max_queued_runs_per_owner", "1").await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let job = api.create_job(scheduled_job()).await.expect("job");
    api.create_run(backup("/data/other", &[]))
        .await
        .expect("the one allowed queued run");
    let skipped_before = server.scheduler().status().ticks_skipped;
    make_tick_due(&server, &job.id).await;
    let mut status = server.scheduler().subscribe();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.ticks_skipped > skipped_before),
    )
    .await
    .expect("the tick was decided within 20 s")
    .expect("scheduler running");
    let queued = runs_in_state(&api, pb::RunState::Queued).await;
    assert_eq!(queued.len(), 1, "no scheduled run past the limit");
    assert!(queued.iter().all(|run| run.job_id.is_empty()));
}

/// A waiting tick (overlap policy queue) of a job whose owner is at the
/// limit keeps waiting, and starts once the owner's queue drains.
async fn waiting_tick_over_the_limit_waits(backend: Backend) {
    let server = TestServer::start_with_scheduler(backend, fast_scheduler()).await;
    let limit = server
        .admin()
        .create_configuration(pb::Configuration {
            key: "max_queued_runs_per_owner".into(),
            value: "2".into(),
            ..Default::default()
        })
        .await
        .expect("limit");
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let job = api.create_job(scheduled_job()).await.expect("job");
    let job_run = api.start_backup(&job.id).await;
    let ad_hoc = api.queue_run(backup("/data/other", &[])).await;
    make_tick_due(&server, &job.id).await;
    wait_for_job(&server, &api, &job.id, |job| {
        job.pending_fire_time.is_some()
    })
    .await;

    // The job's run ends, but the owner is now at a lowered limit of one.
    let mut configurations = server.admin().configurations;
    configurations
        .update_configuration(pb::UpdateConfigurationRequest {
            configuration: Some(pb::Configuration {
                value: "1".into(),
                ..limit
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["value".into()],
            }),
        })
        .await
        .expect("lower the limit");
    api.cancel_run(&job_run.id)
        .await
        .expect("cancel the job's run");
    let rounds = server.scheduler().status().rounds;
    let mut status = server.scheduler().subscribe();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.rounds >= rounds + 3),
    )
    .await
    .expect("three scheduler rounds within 20 s")
    .expect("scheduler running");
    let waiting = read_job(&api, &job.id).await;
    assert!(waiting.pending_fire_time.is_some(), "the tick still waits");
    let queued = runs_in_state(&api, pb::RunState::Queued).await;
    assert_eq!(queued.len(), 1, "nothing queued past the limit: {queued:?}");

    api.cancel_run(&ad_hoc)
        .await
        .expect("cancel the ad-hoc run");
    let started = wait_for_job(&server, &api, &job.id, |job| {
        job.pending_fire_time.is_none()
    })
    .await;
    assert!(started.pending_fire_time.is_none());
    let queued = runs_in_state(&api, pb::RunState::Queued).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].job_id, job.id, "the waiting tick's run");
}

/// Jobs and API tokens past their limits are RESOURCE_EXHAUSTED and not created.
async fn job_and_token_limits_are_enforced(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.configure("max_jobs_per_owner", "2").await;
    server.configure("max_api_tokens_per_owner", "2").await;
    let (user, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let job = |name: &str| pb::Job {
        name: name.into(),
        source_path: "/data".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath("/backups".into())),
        }),
        ..Default::default()
    };
    api.create_job(job("one")).await.expect("first job");
    api.create_job(job("two")).await.expect("second job");
    assert_code(
        api.create_job(job("three")).await,
        Code::ResourceExhausted,
        "third job",
    );
    let jobs = api.all_jobs(pb::ListJobsRequest::default()).await;
    assert_eq!(jobs.len(), 2, "the refused job was not created");

    let token = |name: &str| pb::CreateApiTokenRequest {
        display_name: name.into(),
        ..Default::default()
    };
    let mut users = api.users.clone();
    // create_user made the first token.
    users
        .create_api_token(token("second"))
        .await
        .expect("second token");
    let refused = users.create_api_token(token("third")).await;
    assert_code(refused, Code::ResourceExhausted, "third token");
    let listed = users
        .list_api_tokens(pb::ListApiTokensRequest {
            user_id: user.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list tokens")
        .into_inner();
    assert_eq!(listed.tokens.len(), 2, "the refused token was not created");
    server
        .admin()
        .users
        .create_api_token(token("admin-own"))
        .await
        .expect("admins are exempt");
}

/// Past `max_watch_streams_per_owner` open streams WatchRun is
/// RESOURCE_EXHAUSTED; closing one gives its slot back.
async fn watch_stream_limit_is_enforced(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.configure("max_watch_streams_per_owner", "2").await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let run_id = api.queue_run(backup("/data/w", &[])).await;
    let watch = || {
        let mut runs = api.runs.clone();
        let id = run_id.clone();
        async move { runs.watch_run(pb::WatchRunRequest { id }).await }
    };
    let first = watch().await.expect("first watch").into_inner();
    let mut second = watch().await.expect("second watch").into_inner();
    let refused = watch().await.map(|_| ());
    assert_code(refused, Code::ResourceExhausted, "third watch");
    let seen = second.message().await.expect("stream").expect("a run");
    assert_eq!(seen.run.expect("run").id, run_id);
    drop(first);
    let reopened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch().await {
                Ok(stream) => return stream,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::task::yield_now().await;
                }
                Err(status) => panic!("unexpected refusal: {status:?}"),
            }
        }
    })
    .await;
    assert!(reopened.is_ok(), "a closed watch gives its slot back");
    let mut admin_runs = server.admin().runs;
    let mut held = Vec::new();
    for _ in 0..3 {
        let stream = admin_runs
            .watch_run(pb::WatchRunRequest { id: run_id.clone() })
            .await
            .expect("admins are exempt");
        held.push(stream);
    }
}

/// Every waiting reason, as the run's owner reads it; no message names
/// anything but the run's own selector or path.
async fn each_waiting_reason_is_reported(backend: Backend) {
    let server = TestServer::start_with_leases(backend, quick_reaper()).await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let read = |id: String| {
        let api = api.clone();
        async move { api.get_run(&id).await.expect("own run") }
    };

    let lonely = api.queue_run(backup("/data/x", &[("gpu", "yes")])).await;
    let run = read(lonely.clone()).await;
    assert_eq!(reason(&run), pb::WaitingReason::NoMatchingWorker);
    assert_eq!(run.waiting_message, "no worker is connected");

    // A connected worker with other labels.
    let mut eu = LeaseClient::open(&server, "eu-1", &plain_worker(1)).await;
    let run = read(lonely.clone()).await;
    assert_eq!(reason(&run), pb::WaitingReason::NoMatchingWorker);
    assert_eq!(
        run.waiting_message,
        "no connected worker has labels {gpu=yes}"
    );

    // A worker with the labels whose roots do not hold the path.
    let rooted = WorkerShape {
        source_roots: vec!["/srv/secret-root"],
        ..gpu_worker()
    };
    let _gpu = LeaseClient::open(&server, "gpu-1", &rooted).await;
    let run = read(lonely.clone()).await;
    assert_eq!(reason(&run), pb::WaitingReason::PathOutsideWorkerRoots);
    assert!(run.waiting_message.contains("/data/x"), "{run:?}");
    assert!(
        !run.waiting_message.contains("/srv/secret-root"),
        "a worker's roots leaked: {}",
        run.waiting_message
    );

    // A worker that could take it but has given no credit yet: ready.
    let ready = api.queue_run(backup("/data/y", &[("zone", "eu")])).await;
    let run = read(ready.clone()).await;
    assert_eq!(reason(&run), pb::WaitingReason::Ready, "{run:?}");

    // The worker takes it; a second run then finds every slot busy.
    eu.credit(1).await;
    let lease = eu.assignment().await.lease.expect("lease");
    assert_eq!(lease.run_id, ready);
    eu.credit(0).await;
    let busy = api.queue_run(backup("/data/z", &[("zone", "eu")])).await;
    let run = read(busy.clone()).await;
    assert_eq!(reason(&run), pb::WaitingReason::AllSlotsBusy, "{run:?}");
    let listed = runs_in_state(&api, pb::RunState::Queued).await;
    let listed_busy = listed.iter().find(|r| r.id == busy).expect("listed");
    assert_eq!(reason(listed_busy), pb::WaitingReason::AllSlotsBusy);

    // A retryable failure puts the first run into its (long) backoff.
    let failure = pb::RunFailure {
        error: "storage hiccup".into(),
        retryable: true,
    };
    let ack = eu
        .complete(&lease, pb::run_completion::Outcome::Failure(failure))
        .await;
    assert!(ack.accepted, "{ack:?}");
    let run = read(ready.clone()).await;
    assert_eq!(run.state, pb::RunState::Queued as i32);
    assert_eq!(reason(&run), pb::WaitingReason::Backoff, "{run:?}");
    assert!(
        run.waiting_message.starts_with("retrying after "),
        "{run:?}"
    );

    // Final runs carry no reason.
    let cancelled = api.cancel_run(&busy).await.expect("cancel");
    assert_eq!(reason(&cancelled), pb::WaitingReason::Unspecified);
    assert!(cancelled.waiting_message.is_empty());
}

/// With `queue_timeout_seconds`, a run no worker can take fails with its
/// waiting reason as the error, and is never leased.
async fn queue_timeout_fails_the_run_with_its_reason(backend: Backend) {
    let server = TestServer::start_with_leases(backend, quick_reaper()).await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let stuck = api.queue_run(backup("/data/gpu", &[("gpu", "yes")])).await;
    let _eu = LeaseClient::open(&server, "eu-1", &plain_worker(1)).await;
    server.configure("queue_timeout_seconds", "1").await;
    let failed = server
        .wait_until_final(&stuck, Duration::from_secs(30))
        .await;
    assert_eq!(failed.state, pb::RunState::Failed as i32, "{failed:?}");
    assert_eq!(
        failed.error,
        "no worker could take this run within 1s: no connected worker has labels {gpu=yes}"
    );
    assert_eq!(failed.attempt, 0, "it was never leased");
    assert_eq!(reason(&failed), pb::WaitingReason::Unspecified);
}

/// Two replicas' reapers race over the same overdue runs on one PostgreSQL
/// catalog: every run fails once, with the one reason, and none is leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_time_out_each_run_once() {
    let first = TestServer::start_with_leases(Backend::Postgres, quick_reaper()).await;
    let second = first.start_replica().await;
    let (_, tenant) = first.create_user("tenant").await;
    let stuck = flood(&first, &tenant, backup("/data/gpu", &[("gpu", "yes")]), 20).await;
    let mut events = [
        first.catalog().subscribe_runs(),
        second.catalog().subscribe_runs(),
    ];
    first.configure("queue_timeout_seconds", "1").await;
    for id in &stuck {
        let failed = second.wait_until_final(id, Duration::from_secs(30)).await;
        assert_eq!(failed.state, pb::RunState::Failed as i32, "{failed:?}");
        assert_eq!(
            failed.error,
            "no worker could take this run within 1s: no worker is connected"
        );
        assert_eq!(failed.attempt, 0);
    }
    // Every replica announces every run change, its own and (relayed through
    // PostgreSQL) the other's: on each replica, each run changed exactly once.
    for receiver in &mut events {
        let mut announced = std::collections::HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stuck.iter().any(|id| !announced.contains_key(id)) {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Ok(id)) => *announced.entry(id.to_string()).or_insert(0) += 1,
                _ => break,
            }
        }
        // Anything still in flight (a second change would be) is counted too.
        while let Ok(id) = receiver.try_recv() {
            *announced.entry(id.to_string()).or_insert(0) += 1;
        }
        for id in &stuck {
            assert_eq!(announced.get(id), Some(&1), "{id} failed once");
        }
    }
}

both_backends!(
    unmatchable_flood_does_not_block_another_tenant,
    a_busy_owner_does_not_starve_another,
    queued_run_limit_is_enforced_per_owner,
    scheduled_fire_over_the_limit_is_skipped,
    waiting_tick_over_the_limit_waits,
    job_and_token_limits_are_enforced,
    watch_stream_limit_is_enforced,
    each_waiting_reason_is_reported,
    queue_timeout_fails_the_run_with_its_reason,
);
