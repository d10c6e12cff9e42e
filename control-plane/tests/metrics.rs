//! The gauges the control plane reads from the catalog when `/metrics` is
//! scraped, on both backends: the queue by worker selector, connected
//! workers, and each job's freshness and schedule period.

use crate::support;

use coffer_control_plane::testing::scrape::scrape;
use coffer_proto::v1 as pb;
use support::{Backend, TestServer};

fn filesystem(path: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.into())),
    }
}

async fn catalog_gauges_describe_the_queue_and_the_jobs(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.serve_metrics().await;
    for _ in 0..2 {
        server
            .admin()
            .queue_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
                source_path: "/data/source".into(),
                target: Some(filesystem("/backups/metrics")),
                worker_selector: [("zone".to_string(), "eu".to_string())].into(),
                ..Default::default()
            }))
            .await;
    }
    let job = server
        .admin()
        .create_job(pb::Job {
            name: "every-six-hours".into(),
            source_path: "/data/source".into(),
            target: Some(filesystem("/backups/metrics")),
            schedule: Some(pb::Schedule {
                cron: "0 */6 * * *".into(),
                time_zone: "Europe/Berlin".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create job");

    let scraped = scrape(&url).await;
    assert_eq!(
        scraped.value(r#"coffer_queue_depth{selector="zone=eu"}"#),
        2.0
    );
    let age = scraped.value(r#"coffer_queue_oldest_age_seconds{selector="zone=eu"}"#);
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(scraped.value("coffer_workers_connected"), 0.0);
    assert_eq!(scraped.value("coffer_worker_free_slots"), 0.0);
    // No successful backup yet: the job's creation stands in for it.
    let series = |name: &str| format!(r#"{name}{{job_id="{}"}}"#, job.id);
    let created = job.create_time.expect("create time").seconds as f64;
    assert_eq!(
        scraped.value(&series("coffer_job_last_success_timestamp_seconds")),
        created
    );
    assert_eq!(
        scraped.value(&series("coffer_job_schedule_interval_seconds")),
        6.0 * 3600.0
    );
    // Reading the catalog for the scrape is itself timed, by module.
    assert!(
        scraped
            .series_of("coffer_catalog_operation_duration_seconds_count")
            .iter()
            .any(|(series, _)| series.contains(r#"operation="monitoring""#)),
        "{}",
        scraped.text
    );
    assert!(
        !scraped.text.contains("/data/source") && !scraped.text.contains("every-six-hours"),
        "no paths or job names: {}",
        scraped.text
    );
}

both_backends!(catalog_gauges_describe_the_queue_and_the_jobs);
