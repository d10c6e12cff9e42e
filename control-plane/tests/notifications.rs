//! Notifications end to end over real gRPC on both catalog backends: a
//! worker session fails a run and a webhook receiver on loopback gets the
//! signed notice after failing the first attempts; stale jobs, their
//! recovery and waiting runs are notified once; two replicas deliver one
//! notice; internal addresses and redirects are refused; owners see only
//! their own channels, rules and deliveries.

use crate::support;
use crate::support::fair_lease;
use crate::support::webhook;

use std::time::Duration;

use coffer_control_plane::testing::Api;
use coffer_proto::v1 as pb;
use fair_lease::{backup, LeaseClient, WorkerShape};
use support::{assert_code, assert_violations, Backend, TestServer};
use tonic::Code;
use webhook::{Answer, Received, Receiver};

/// Longest wait for a notice.
const LIMIT: Duration = Duration::from_secs(40);

/// Lets channels reach loopback (the receiver), and retries after 1 s.
async fn allow_loopback(server: &TestServer) -> pb::Configuration {
    let allowed = allow_loopback_only(server).await;
    server
        .configure("notification_retry_base_seconds", "1")
        .await;
    allowed
}

/// Lets channels reach loopback (the receiver).
async fn allow_loopback_only(server: &TestServer) -> pb::Configuration {
    server
        .configure("notification_allowed_networks", "127.0.0.0/8")
        .await
}

fn webhook_channel(name: &str, url: &str, headers: &[(&str, &str)]) -> pb::NotificationChannel {
    pb::NotificationChannel {
        name: name.into(),
        kind: Some(pb::notification_channel::Kind::Webhook(
            pb::WebhookChannel {
                url: url.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

async fn try_create_channel(
    api: &Api,
    channel: pb::NotificationChannel,
) -> Result<pb::CreateNotificationChannelResponse, tonic::Status> {
    api.notifications
        .clone()
        .create_notification_channel(pb::CreateNotificationChannelRequest {
            channel: Some(channel),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Creates a channel; returns it with its signing secret.
async fn create_channel(
    api: &Api,
    channel: pb::NotificationChannel,
) -> (pb::NotificationChannel, String) {
    let created = try_create_channel(api, channel)
        .await
        .expect("create channel");
    (created.channel.expect("channel"), created.signing_secret)
}

fn rule(channel_id: &str, events: &[pb::NotificationEvent]) -> pb::NotificationRule {
    pb::NotificationRule {
        channel_id: channel_id.into(),
        events: events.iter().map(|e| *e as i32).collect(),
        ..Default::default()
    }
}

async fn try_create_rule(
    api: &Api,
    rule: pb::NotificationRule,
) -> Result<pb::NotificationRule, tonic::Status> {
    api.notifications
        .clone()
        .create_notification_rule(pb::CreateNotificationRuleRequest { rule: Some(rule) })
        .await
        .map(|r| r.into_inner().rule.expect("rule"))
}

async fn deliveries(api: &Api, channel_id: &str) -> Vec<pb::NotificationDelivery> {
    api.notifications
        .clone()
        .list_notification_deliveries(pb::ListNotificationDeliveriesRequest {
            channel_id: channel_id.into(),
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
}

/// The deliveries of a channel once none is pending; panics after 20 s.
async fn settled_deliveries(api: &Api, channel_id: &str) -> Vec<pb::NotificationDelivery> {
    let pending = pb::NotificationDeliveryState::Pending as i32;
    for _ in 0..200 {
        let recorded = deliveries(api, channel_id).await;
        if recorded.iter().all(|d| d.state != pending) {
            return recorded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("deliveries still pending after 20 s");
}

async fn test_channel(api: &Api, id: &str) -> pb::NotificationDelivery {
    api.notifications
        .clone()
        .test_notification_channel(pb::TestNotificationChannelRequest { id: id.into() })
        .await
        .expect("test channel")
        .into_inner()
        .delivery
        .expect("delivery")
}

fn events_of(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.header("coffer-event")).collect()
}

fn worker_in(zone: &'static str) -> WorkerShape {
    WorkerShape {
        labels: vec![("zone", zone)],
        slots: 1,
        ..Default::default()
    }
}

/// Takes the worker's next assignment and fails its run with `error`.
async fn fail_next_assignment(worker: &mut LeaseClient, error: &str) {
    let assignment = worker.assignment().await;
    let failure = pb::RunFailure {
        error: error.into(),
        retryable: false,
    };
    worker
        .complete(
            &assignment.lease.expect("lease"),
            pb::run_completion::Outcome::Failure(failure),
        )
        .await;
}

/// A scheduled job (daily at 03:00, so the scheduler leaves it alone) of
/// the caller of `api`.
async fn scheduled_job(api: &Api, name: &str) -> pb::Job {
    api.create_job(pb::Job {
        name: name.into(),
        source_path: "/data".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(format!(
                "/backups/{name}"
            ))),
        }),
        schedule: Some(pb::Schedule {
            cron: "0 3 * * *".into(),
            ..Default::default()
        }),
        worker_selector: [("zone".to_string(), "stale".to_string())].into(),
        ..Default::default()
    })
    .await
    .expect("create job")
}

async fn failed_runs_reach_a_signed_webhook_after_retries(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(2)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let headers = [("Authorization", "Bearer receiver-token")];
    let (channel, secret) =
        create_channel(&api, webhook_channel("ops", &receiver.url(), &headers)).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    try_create_rule(&api, rule(&channel.id, &[pb::NotificationEvent::RunFailed]))
        .await
        .expect("rule");

    let mut worker = LeaseClient::open(&server, "worker-1", &worker_in("north")).await;
    worker.credit(1).await;
    let run_id = api.queue_run(backup("/data", &[("zone", "north")])).await;
    fail_next_assignment(&mut worker, "disk on fire").await;

    let received = receiver
        .wait_until(LIMIT, |r| r.iter().any(|x| x.answered == 200))
        .await;
    assert_eq!(received.len(), 3, "two failed attempts, then the delivery");
    let delivery_id = received[0].header("coffer-delivery");
    for request in &received {
        assert!(request.signed_with(&secret), "bad signature: {request:?}");
        assert!(!request.signed_with("whsec_not-the-secret"));
        assert_eq!(request.header("authorization"), "Bearer receiver-token");
        assert_eq!(request.header("coffer-event"), "run.failed");
        assert_eq!(request.header("coffer-delivery"), delivery_id);
    }
    let body = received[2].json();
    assert_eq!(body["event"], "run.failed");
    assert_eq!(body["run"]["id"], run_id);
    assert_eq!(body["run"]["state"], "failed");
    assert!(body["run"]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("disk on fire"));
    assert!(body["text"].as_str().unwrap_or_default().contains("failed"));

    // The receiver answers before the notifier records the attempt.
    let recorded = settled_deliveries(&api, &channel.id).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let delivery = &recorded[0];
    assert_eq!(delivery.id, delivery_id);
    assert_eq!(
        delivery.state,
        pb::NotificationDeliveryState::Delivered as i32
    );
    assert_eq!(delivery.event, pb::NotificationEvent::RunFailed as i32);
    assert_eq!(delivery.run_id, run_id);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(delivery.http_status, 200);
    assert!(delivery.last_error.is_empty(), "{delivery:?}");

    // The secret and the header's value are never shown again.
    let fetched = api
        .notifications
        .clone()
        .get_notification_channel(pb::GetNotificationChannelRequest {
            id: channel.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let shown = format!("{:?} {:?}", fetched.channel, channel);
    assert!(
        !shown.contains(&secret) && !shown.contains("receiver-token"),
        "{shown}"
    );
    let Some(pb::notification_channel::Kind::Webhook(webhook)) =
        fetched.channel.expect("channel").kind
    else {
        panic!("a webhook channel");
    };
    assert_eq!(
        webhook.headers.get("authorization").map(String::as_str),
        Some("")
    );
}

async fn a_rotated_secret_signs_and_the_old_one_no_longer_does(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let (channel, old) = create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    let rotated = api
        .notifications
        .clone()
        .rotate_notification_channel_secret(pb::RotateNotificationChannelSecretRequest {
            id: channel.id.clone(),
        })
        .await
        .expect("rotate")
        .into_inner();
    let new = rotated.signing_secret;
    assert!(new.starts_with("whsec_") && new != old);
    let delivery = test_channel(&api, &channel.id).await;
    assert_eq!(
        delivery.state,
        pb::NotificationDeliveryState::Delivered as i32,
        "{delivery:?}"
    );
    assert_eq!(delivery.event, pb::NotificationEvent::Test as i32);
    let received = receiver.received();
    assert_eq!(events_of(&received), ["test"]);
    assert!(received[0].signed_with(&new));
    assert!(!received[0].signed_with(&old));
}

async fn internal_addresses_and_redirects_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://localhost:9/hook",
    ] {
        let refused = try_create_channel(&api, webhook_channel("internal", url, &[])).await;
        let status = refused.expect_err(url);
        assert_violations(&status, &["channel.webhook.url"]);
    }

    // Allowed by an admin, made, then withdrawn: the check at send time refuses.
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let allowed = allow_loopback(&server).await;
    let (channel, _) = create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    server
        .admin()
        .delete_configuration(&allowed.id)
        .await
        .expect("withdraw the allowance");
    let refused = test_channel(&api, &channel.id).await;
    assert_eq!(
        refused.state,
        pb::NotificationDeliveryState::Failed as i32,
        "{refused:?}"
    );
    assert!(refused.last_error.contains("loopback"), "{refused:?}");
    assert!(receiver.received().is_empty(), "nothing was sent");

    // A redirect is not followed.
    allow_loopback_only(&server).await;
    let redirecting = Receiver::start(Answer::Redirect).await;
    let (channel, _) =
        create_channel(&api, webhook_channel("moved", &redirecting.url(), &[])).await;
    let redirected = test_channel(&api, &channel.id).await;
    assert_eq!(
        redirected.state,
        pb::NotificationDeliveryState::Failed as i32
    );
    assert_eq!(redirected.http_status, 302);
    assert!(redirected.last_error.contains("redirect"), "{redirected:?}");
    let paths: Vec<String> = redirecting
        .received()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/hook"]);
}

async fn a_stale_job_is_notified_once_then_its_recovery(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let job = scheduled_job(&api, "nightly").await;
    let (channel, secret) =
        create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    try_create_rule(
        &api,
        pb::NotificationRule {
            job_id: job.id.clone(),
            stale_after_seconds: 3,
            ..rule(&channel.id, &[pb::NotificationEvent::JobStale])
        },
    )
    .await
    .expect("rule");

    let stale = receiver.wait_until(LIMIT, |r| !r.is_empty()).await;
    assert_eq!(events_of(&stale), ["job.stale"]);
    assert!(stale[0].signed_with(&secret));
    let body = stale[0].json();
    assert_eq!(body["job"]["id"], job.id);
    assert_eq!(body["job"]["name"], "nightly");
    assert!(body["text"].as_str().unwrap_or_default().contains("stale"));

    // Rounds go on; the episode is notified once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(events_of(&receiver.received()), ["job.stale"]);

    // A successful backup ends the episode.
    let mut worker = LeaseClient::open(&server, "worker-1", &worker_in("stale")).await;
    worker.credit(1).await;
    api.start_backup(&job.id).await;
    let assignment = worker.assignment().await;
    worker.succeed(&assignment.lease.expect("lease")).await;
    let after = receiver
        .wait_until(LIMIT, |r| {
            r.iter()
                .any(|x| x.header("coffer-event") == "job.recovered")
        })
        .await;
    assert_eq!(events_of(&after)[..2], ["job.stale", "job.recovered"]);
}

async fn runs_waiting_for_a_worker_are_notified(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let (channel, _) = create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    try_create_rule(
        &api,
        pb::NotificationRule {
            waiting_after_seconds: 1,
            ..rule(&channel.id, &[pb::NotificationEvent::RunWaiting])
        },
    )
    .await
    .expect("rule");
    let run_id = api.queue_run(backup("/data", &[("zone", "nowhere")])).await;
    let received = receiver.wait_until(LIMIT, |r| !r.is_empty()).await;
    assert_eq!(events_of(&received), ["run.waiting"]);
    assert_eq!(received[0].json()["run"]["id"], run_id);
}

/// Two replicas find the same events and race for the same deliveries:
/// every notice is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_send_each_notice_once() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    allow_loopback(&first).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, token) = first.create_user("tenant").await;
    let api = first.as_user(&token);
    let (channel, _) = create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    try_create_rule(
        &api,
        rule(&channel.id, &[pb::NotificationEvent::RunCancelled]),
    )
    .await
    .expect("rule");
    let mut runs = Vec::new();
    for _ in 0..10 {
        let id = api.queue_run(backup("/data", &[("zone", "nowhere")])).await;
        // Half through each replica.
        let through = if runs.len() % 2 == 0 { &first } else { &second };
        through
            .as_user(&token)
            .cancel_run(&id)
            .await
            .expect("cancel");
        runs.push(id);
    }
    receiver.wait_until(LIMIT, |r| r.len() >= runs.len()).await;
    // A few more rounds of both replicas.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received = receiver.received();
    assert_eq!(received.len(), runs.len(), "{received:#?}");
    let mut notified: Vec<String> = received
        .iter()
        .map(|r| {
            r.json()["run"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    notified.sort();
    runs.sort();
    assert_eq!(notified, runs);
    let recorded = settled_deliveries(&api, &channel.id).await;
    assert_eq!(recorded.len(), runs.len());
    assert!(recorded.iter().all(|d| d.attempts == 1));
}

/// A delivery that is pending when the control plane stops is sent after
/// it starts again.
async fn pending_deliveries_survive_a_restart(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback_only(&server).await;
    server
        .configure("notification_retry_base_seconds", "3")
        .await;
    let receiver = Receiver::start(Answer::OkAfterFailures(1)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let (channel, _) = create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    try_create_rule(
        &api,
        rule(&channel.id, &[pb::NotificationEvent::RunCancelled]),
    )
    .await
    .expect("rule");
    let id = api.queue_run(backup("/data", &[("zone", "nowhere")])).await;
    api.cancel_run(&id).await.expect("cancel");
    receiver.wait_until(LIMIT, |r| !r.is_empty()).await;
    let server = server.restart().await;
    let received = receiver
        .wait_until(LIMIT, |r| r.iter().any(|x| x.answered == 200))
        .await;
    assert_eq!(received.len(), 2);
    let api = server.as_user(&token);
    let recorded = settled_deliveries(&api, &channel.id).await;
    assert_eq!(recorded[0].attempts, 2, "{recorded:?}");
    assert_eq!(
        recorded[0].state,
        pb::NotificationDeliveryState::Delivered as i32
    );
}

async fn owners_see_and_use_only_their_own(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, tenant) = server.create_user("tenant").await;
    let (_, stranger) = server.create_user("stranger").await;
    let tenant = server.as_user(&tenant);
    let stranger = server.as_user(&stranger);
    let (channel, _) = create_channel(&tenant, webhook_channel("ops", &receiver.url(), &[])).await;
    let job = scheduled_job(&tenant, "nightly").await;

    let mut foreign = stranger.notifications.clone();
    let get = foreign
        .get_notification_channel(pb::GetNotificationChannelRequest {
            id: channel.id.clone(),
        })
        .await;
    assert_code(get, Code::NotFound, "foreign get");
    let test = foreign
        .test_notification_channel(pb::TestNotificationChannelRequest {
            id: channel.id.clone(),
        })
        .await;
    assert_code(test, Code::NotFound, "foreign test");
    let rotate = foreign
        .rotate_notification_channel_secret(pb::RotateNotificationChannelSecretRequest {
            id: channel.id.clone(),
        })
        .await;
    assert_code(rotate, Code::NotFound, "foreign rotation");
    let delete = foreign
        .delete_notification_channel(pb::DeleteNotificationChannelRequest {
            id: channel.id.clone(),
        })
        .await;
    assert_code(delete, Code::NotFound, "foreign delete");

    // A rule on someone else's channel, or on their job, or on everyone.
    let on_foreign_channel = try_create_rule(
        &stranger,
        rule(&channel.id, &[pb::NotificationEvent::RunFailed]),
    )
    .await;
    assert_violations(
        &on_foreign_channel.expect_err("refused"),
        &["rule.channel_id"],
    );
    let (own, _) = create_channel(&stranger, webhook_channel("mine", &receiver.url(), &[])).await;
    let on_foreign_job = try_create_rule(
        &stranger,
        pb::NotificationRule {
            job_id: job.id.clone(),
            ..rule(&own.id, &[pb::NotificationEvent::RunFailed])
        },
    )
    .await;
    assert_violations(&on_foreign_job.expect_err("refused"), &["rule.job_id"]);
    let everyone = try_create_rule(
        &stranger,
        pb::NotificationRule {
            all_owners: true,
            ..rule(&own.id, &[pb::NotificationEvent::RunFailed])
        },
    )
    .await;
    assert_code(
        everyone,
        Code::PermissionDenied,
        "all owners for a non-admin",
    );
    let no_events = try_create_rule(&stranger, rule(&own.id, &[])).await;
    assert_violations(&no_events.expect_err("refused"), &["rule.events"]);

    // Lists hold only the caller's own.
    let listed = stranger
        .notifications
        .clone()
        .list_notification_channels(pb::ListNotificationChannelsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .channels;
    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [own.id.as_str()]);
    test_channel(&tenant, &channel.id).await;
    assert!(deliveries(&stranger, &channel.id).await.is_empty());
    assert_eq!(deliveries(&tenant, &channel.id).await.len(), 1);
}

async fn bad_channels_name_their_fields(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let bad_webhook = webhook_channel(
        "Bad Name",
        "ftp://hooks.example.com/x",
        &[("Coffer-Signature", "forged"), ("X-Token", "line\r\nbreak")],
    );
    let status = try_create_channel(&api, bad_webhook)
        .await
        .expect_err("refused");
    let fields = assert_violations(
        &status,
        &[
            "channel.name",
            "channel.webhook.url",
            "channel.webhook.headers",
        ],
    );
    assert!(
        !status.message().contains("forged"),
        "{fields:?} {status:?}"
    );
    let bad_email = pb::NotificationChannel {
        name: "mail".into(),
        kind: Some(pb::notification_channel::Kind::Email(pb::EmailChannel {
            host: "smtp.example.com".into(),
            from: "coffer@example.com\r\nBcc: everyone@example.com".into(),
            to: vec!["ops@example.com".into(), "not an address".into()],
            ..Default::default()
        })),
        ..Default::default()
    };
    let status = try_create_channel(&api, bad_email)
        .await
        .expect_err("refused");
    assert_violations(&status, &["channel.email.from", "channel.email.to[1]"]);
    let mut unknown_format = webhook_channel("hook", "https://hooks.example.com/x", &[]);
    if let Some(pb::notification_channel::Kind::Webhook(webhook)) = &mut unknown_format.kind {
        webhook.format = 99;
    }
    let status = try_create_channel(&api, unknown_format)
        .await
        .expect_err("refused");
    assert_violations(&status, &["channel.webhook.format"]);
    let plaintext_login = pb::NotificationChannel {
        name: "mail".into(),
        kind: Some(pb::notification_channel::Kind::Email(pb::EmailChannel {
            host: "smtp.example.com".into(),
            security: pb::SmtpSecurity::None as i32,
            from: "coffer@example.com".into(),
            to: vec!["ops@example.com".into()],
            username: "coffer".into(),
            password: "never-in-an-error".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let status = try_create_channel(&api, plaintext_login)
        .await
        .expect_err("refused");
    assert_violations(&status, &["channel.email.username"]);
    assert!(
        !status.message().contains("never-in-an-error"),
        "{status:?}"
    );
}

/// A Slack-format channel posts `{"text": ...}` naming the job, run, state
/// and error, with the error's markup made inert; Get and List show the
/// format.
async fn a_slack_channel_posts_one_sentence_with_job_run_and_error(backend: Backend) {
    let server = TestServer::start(backend).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let mut slack = webhook_channel("slack", &receiver.url(), &[]);
    if let Some(pb::notification_channel::Kind::Webhook(webhook)) = &mut slack.kind {
        webhook.format = pb::WebhookFormat::Slack as i32;
    }
    let (channel, secret) = create_channel(&api, slack).await;
    let format_of = |channel: &pb::NotificationChannel| match &channel.kind {
        Some(pb::notification_channel::Kind::Webhook(webhook)) => webhook.format,
        other => panic!("not a webhook: {other:?}"),
    };
    let fetched = api
        .notifications
        .clone()
        .get_notification_channel(pb::GetNotificationChannelRequest {
            id: channel.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .channel
        .expect("channel");
    let listed = api
        .notifications
        .clone()
        .list_notification_channels(pb::ListNotificationChannelsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .channels;
    for shown in [&channel, &fetched, &listed[0]] {
        assert_eq!(format_of(shown), pb::WebhookFormat::Slack as i32);
    }
    try_create_rule(&api, rule(&channel.id, &[pb::NotificationEvent::RunFailed]))
        .await
        .expect("rule");

    let job = scheduled_job(&api, "nightly-db").await;
    let mut worker = LeaseClient::open(&server, "worker-1", &worker_in("stale")).await;
    worker.credit(1).await;
    let run = api.start_backup(&job.id).await;
    fail_next_assignment(&mut worker, "disk full <!channel> @all").await;

    let received = receiver.wait_until(LIMIT, |r| !r.is_empty()).await;
    let body = received[0].json();
    let object = body.as_object().expect("a JSON object");
    assert_eq!(object.keys().collect::<Vec<_>>(), ["text"], "{body}");
    let text = body["text"].as_str().expect("text");
    for part in ["nightly-db", "failed", "disk full", run.id.as_str()] {
        assert!(text.contains(part), "{part:?} missing from {text:?}");
    }
    assert!(
        !text.contains("<!channel>") && !text.contains("@all"),
        "{text}"
    );
    assert!(received[0].signed_with(&secret), "still signed");
}

/// A channel sealed under a key that is then replaced keeps working: a
/// start with both keys reseals it, and a start with the new key alone
/// still opens its signing secret and its SMTP password.
async fn replacing_the_key_reseals_every_channel(backend: Backend) {
    use coffer_control_plane::secrets::{Keyring, SecretKey};
    let old_key = SecretKey::generate();
    let server =
        TestServer::start_with_secrets(backend, Keyring::new(old_key.clone(), Vec::new())).await;
    allow_loopback(&server).await;
    let receiver = Receiver::start(Answer::OkAfterFailures(0)).await;
    let (_, token) = server.create_user("tenant").await;
    let api = server.as_user(&token);
    let (webhook, secret) =
        create_channel(&api, webhook_channel("ops", &receiver.url(), &[])).await;
    let (mail, _) = create_channel(
        &api,
        pb::NotificationChannel {
            name: "mail".into(),
            kind: Some(pb::notification_channel::Kind::Email(pb::EmailChannel {
                host: "127.0.0.1".into(),
                port: 2525,
                from: "coffer@example.com".into(),
                to: vec!["ops@example.com".into()],
                username: "coffer".into(),
                password: "smtp-password-before-the-new-key".into(),
                ..Default::default()
            })),
            ..Default::default()
        },
    )
    .await;

    let new_key = SecretKey::generate();
    let server = server
        .restart_with_secrets(Keyring::new(new_key.clone(), vec![old_key]))
        .await;
    let server = server
        .restart_with_secrets(Keyring::new(new_key.clone(), Vec::new()))
        .await;
    let api = server.as_user(&token);
    let delivery = test_channel(&api, &webhook.id).await;
    assert_eq!(
        delivery.state,
        pb::NotificationDeliveryState::Delivered as i32,
        "{delivery:?}"
    );
    assert!(receiver.received()[0].signed_with(&secret));
    let mail_id = mail.id.parse().expect("UUID");
    let (stored, sealed) = server
        .catalog()
        .notification_channel(mail_id, None)
        .await
        .expect("row");
    assert_eq!(sealed.key_id, new_key.id());
    let values = server
        .secrets()
        .open_channel(mail_id, stored.spec.owner_id, &sealed)
        .expect("the new key alone opens it");
    assert_eq!(values.smtp_password, "smtp-password-before-the-new-key");
}

both_backends!(
    a_slack_channel_posts_one_sentence_with_job_run_and_error,
    replacing_the_key_reseals_every_channel,
    failed_runs_reach_a_signed_webhook_after_retries,
    a_rotated_secret_signs_and_the_old_one_no_longer_does,
    internal_addresses_and_redirects_are_refused,
    a_stale_job_is_notified_once_then_its_recovery,
    runs_waiting_for_a_worker_are_notified,
    pending_deliveries_survive_a_restart,
    owners_see_and_use_only_their_own,
    bad_channels_name_their_fields,
);
