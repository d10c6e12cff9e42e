//! Prometheus metrics: a real control plane and a real `coffer-worker`
//! process, each serving `/metrics` on a port of its own, are scraped over
//! HTTP before and after a scheduled job's backup to Garage, and the
//! counters moved by what the backup did.

use crate::support;

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::scrape::{scrape, scrape_until, status, Scrape};
use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use support::{backup_job, garage_bucket, noise, write, WorkerProcess};

/// Waits until the worker's JSON log names the address its metrics
/// listener bound, and returns the URL to scrape.
async fn worker_metrics_url(log: &Path) -> String {
    for _ in 0..300 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let address = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|line| line["fields"]["metrics"].as_str().map(str::to_owned));
        if let Some(address) = address {
            return format!("http://{address}/metrics");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the worker never said where it serves metrics");
}

fn moved(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.value(series) - before.value(series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_moves_the_counters_of_both_binaries_by_what_it_did() {
    let server = TestServer::start(Backend::Postgres).await;
    let control_plane = server.serve_metrics().await;
    let (bucket_id, _store) = garage_bucket(&server).await;
    let source = tempfile::tempdir().expect("source dir");
    let unique = noise(3 << 20, 31);
    write(&source.path().join("data/original.bin"), &unique);
    write(&source.path().join("data/copy.bin"), &unique);
    write(&source.path().join("notes.txt"), b"metrics, not paths\n");
    let file_bytes = 2 * unique.len() as i64 + 19;
    let job_id = support::create_job(
        &server,
        pb::Job {
            name: "hourly".into(),
            source_path: source.path().display().to_string(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                    bucket_id,
                    prefix: "repo".into(),
                })),
            }),
            schedule: Some(pb::Schedule {
                cron: "0 * * * *".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let log_dir = tempfile::tempdir().expect("log dir");
    let log = log_dir.path().join("worker.log");
    let _worker = WorkerProcess::spawn_with(
        &server,
        "metered",
        1,
        &[
            ("COFFER_METRICS_LISTEN", "127.0.0.1:0"),
            ("COFFER_LOG_FORMAT", "json"),
        ],
        Some(&log),
    );
    let worker = worker_metrics_url(&log).await;

    let cp_before = scrape(&control_plane).await;
    let worker_before = scrape(&worker).await;
    assert!(cp_before.content_type.starts_with("text/plain"));
    let run = backup_job(&server, &job_id).await;
    let succeeded = r#"{kind="backup",state="succeeded"}"#;
    // The control plane counts a run's end just after WatchRun shows it.
    let finished = format!("coffer_runs_finished_total{succeeded}");
    let cp_after = scrape_until(&control_plane, |s| moved(&cp_before, s, &finished) > 0.0).await;
    let worker_after = scrape(&worker).await;

    // The control plane: one lease, one succeeded backup and its duration.
    assert_eq!(
        moved(
            &cp_before,
            &cp_after,
            &format!("coffer_runs_finished_total{succeeded}")
        ),
        1.0
    );
    assert_eq!(
        moved(
            &cp_before,
            &cp_after,
            &format!("coffer_run_duration_seconds_count{succeeded}")
        ),
        1.0
    );
    assert_eq!(
        moved(&cp_before, &cp_after, "coffer_lease_grants_total"),
        1.0
    );
    assert_eq!(cp_after.value("coffer_workers_connected"), 1.0);
    assert!(
        cp_after
            .series_of("coffer_catalog_operation_duration_seconds_count")
            .iter()
            .any(|(series, count)| series.contains(r#"operation="leases""#) && *count > 0.0),
        "catalog operations are timed by module"
    );
    // Staleness: the job's last success is this backup's end, its schedule
    // an hour.
    let job = format!(r#"{{job_id="{job_id}"}}"#);
    let finished = run.finish_time.expect("finish time").seconds as f64;
    assert_eq!(
        cp_after.value(&format!("coffer_job_last_success_timestamp_seconds{job}")),
        finished
    );
    assert_eq!(
        cp_after.value(&format!("coffer_job_schedule_interval_seconds{job}")),
        3600.0
    );

    // The worker: what the run's own progress says it read, deduplicated
    // (the copy), uploaded and processed.
    let progress = run.progress.expect("final progress");
    let backup = r#"{kind="backup"}"#;
    let worker_moved =
        |name: &str| moved(&worker_before, &worker_after, &format!("{name}{backup}")) as i64;
    assert_eq!(worker_moved("coffer_worker_bytes_read_total"), file_bytes);
    assert_eq!(progress.bytes_read, file_bytes);
    assert!(progress.bytes_deduplicated >= unique.len() as i64 - (1 << 20));
    assert_eq!(
        worker_moved("coffer_worker_bytes_deduplicated_total"),
        progress.bytes_deduplicated
    );
    assert_eq!(
        worker_moved("coffer_worker_bytes_uploaded_total"),
        progress.bytes_uploaded
    );
    assert!(
        progress.bytes_uploaded < file_bytes,
        "the copy was stored once"
    );
    assert_eq!(
        worker_moved("coffer_worker_files_processed_total"),
        progress.files_done
    );
    assert_eq!(worker_moved("coffer_worker_file_errors_total"), 0);
    // S3 requests were timed by operation.
    assert!(
        worker_after
            .series_of("coffer_s3_request_duration_seconds_count")
            .iter()
            .any(|(series, count)| series.contains(r#"operation="PutObject""#) && *count > 0.0),
        "PutObject requests are timed: {}",
        worker_after.text
    );

    // Neither endpoint names a path, a bucket or a token.
    for scraped in [&cp_after, &worker_after] {
        assert!(!scraped.text.contains(&*source.path().to_string_lossy()));
        assert!(!scraped.text.contains("original.bin"));
        assert!(!scraped.text.contains(&server.admin_token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_their_own_path_only() {
    let server = TestServer::start(Backend::Sqlite).await;
    let url = server.serve_metrics().await;
    let scraped = scrape(&url).await;
    assert!(scraped
        .text
        .contains("# TYPE coffer_workers_connected gauge"));
    assert_eq!(status(&url.replace("/metrics", "/")).await, 404);
    assert_eq!(status(&url.replace("/metrics", "/debug")).await, 404);
}
