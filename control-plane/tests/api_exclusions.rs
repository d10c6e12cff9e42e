//! Ignore files and exclusions through the API on both catalog backends:
//! options a job cannot carry are refused naming the field, a tenant's dry
//! run is admitted like the backup it stands for, and a dry run is a run of
//! its own kind that lists its exclusions (none before a worker ran it).
//! Bandwidth limits are job options too, and checked the same way.

use crate::support;

use coffer_proto::v1 as pb;
use support::{assert_violations, Backend, TestServer};
use tonic::Code;

fn filesystem_target(path: &str) -> Option<pb::Target> {
    Some(pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.into())),
    })
}

fn job_with(options: pb::JobOptions) -> pb::Job {
    pb::Job {
        name: "excluding".into(),
        source_path: "/srv/data".into(),
        target: filesystem_target("/srv/backup"),
        options: Some(options),
        ..Default::default()
    }
}

async fn bad_exclusion_options_name_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let cases = [
        (
            pb::JobOptions {
                ignore_file_name: "../escape".into(),
                ..Default::default()
            },
            "job.options.ignore_file_name",
        ),
        (
            pb::JobOptions {
                ignore_file_name: "..".into(),
                ..Default::default()
            },
            "job.options.ignore_file_name",
        ),
        (
            pb::JobOptions {
                exclude_if_present: vec![".nobackup".into(), "a/b".into()],
                ..Default::default()
            },
            "job.options.exclude_if_present[1]",
        ),
        (
            pb::JobOptions {
                max_file_size_bytes: -1,
                ..Default::default()
            },
            "job.options.max_file_size_bytes",
        ),
        // Bandwidth limits: 0 or 1 KiB/s to 4 GiB/s.
        (
            pb::JobOptions {
                upload_limit_bytes_per_second: 100,
                ..Default::default()
            },
            "job.options.upload_limit_bytes_per_second",
        ),
        (
            pb::JobOptions {
                download_limit_bytes_per_second: -1,
                ..Default::default()
            },
            "job.options.download_limit_bytes_per_second",
        ),
        (
            pb::JobOptions {
                upload_limit_bytes_per_second: 1 << 40,
                ..Default::default()
            },
            "job.options.upload_limit_bytes_per_second",
        ),
        (
            pb::JobOptions {
                pack_storage_class: "glacier".into(),
                ..Default::default()
            },
            "job.options.pack_storage_class",
        ),
    ];
    for (options, field) in cases {
        let refused = server
            .admin()
            .create_job(job_with(options))
            .await
            .expect_err("bad options");
        assert_violations(&refused, &[field]);
    }
}

async fn exclusion_options_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let options = pb::JobOptions {
        exclude: vec!["**/*.tmp".into()],
        ignore_file_name: ".backupignore".into(),
        exclude_caches: true,
        exclude_if_present: vec![".nobackup".into()],
        max_file_size_bytes: 1 << 30,
        upload_limit_bytes_per_second: 10 << 20,
        download_limit_bytes_per_second: 1024,
        pack_storage_class: "STANDARD_IA".into(),
        ..Default::default()
    };
    let created = server
        .admin()
        .create_job(job_with(options.clone()))
        .await
        .expect("create job");
    assert_eq!(created.options, Some(options));
}

async fn a_dry_run_is_authorised_like_the_backup(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.admin().create_user_without_grants("tenant").await;
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: "/srv/tenant".into(),
        target: filesystem_target("/srv/tenant-backup"),
        dry_run: true,
        ..Default::default()
    });
    let refused = server
        .as_user(&token)
        .create_run(spec)
        .await
        .expect_err("a dry run without a grant");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("backup.source_path"),
        "{refused:?}"
    );
}

async fn a_dry_run_is_a_run_of_its_own_kind(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin();
    let job = admin
        .create_job(job_with(pb::JobOptions::default()))
        .await
        .expect("create job");
    let run = admin
        .create_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            job_id: job.id.clone(),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("dry run");
    assert_eq!(run.kind, pb::RunKind::BackupDryRun as i32);
    assert_eq!(run.job_id, job.id);
    let Some(pb::run::Spec::BackupDryRun(spec)) = run.spec else {
        panic!("spec {:?}", run.spec);
    };
    assert!(spec.dry_run);
    assert_eq!(spec.source_path, "/srv/data");
    let listed = admin
        .runs
        .clone()
        .list_run_exclusions(pb::ListRunExclusionsRequest {
            run_id: run.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list exclusions")
        .into_inner();
    assert!(listed.exclusions.is_empty());
    let filtered = admin
        .runs
        .clone()
        .list_runs(pb::ListRunsRequest {
            kind: pb::RunKind::BackupDryRun as i32,
            ..Default::default()
        })
        .await
        .expect("list runs")
        .into_inner();
    assert_eq!(filtered.runs.len(), 1);
    let bad_token = admin
        .runs
        .clone()
        .list_run_exclusions(pb::ListRunExclusionsRequest {
            run_id: run.id,
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad page token");
    assert_violations(&bad_token, &["page_token"]);
}

both_backends!(
    bad_exclusion_options_name_the_field,
    exclusion_options_round_trip,
    a_dry_run_is_authorised_like_the_backup,
    a_dry_run_is_a_run_of_its_own_kind,
);
