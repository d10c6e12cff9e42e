//! BackupMetadataService over real gRPC on both catalog backends.

use crate::support;

use coffer_control_plane::model::metadata::MetadataValues;
use coffer_proto::v1 as pb;
use coffer_proto::v1::backup_metadata_service_client::BackupMetadataServiceClient;
use support::{assert_code, assert_violations, authed, violated_fields, Backend, TestServer};
use tonic::Code;
use uuid::Uuid;

type Client = BackupMetadataServiceClient<tonic::transport::Channel>;

async fn create_job(server: &TestServer, token: &str, name: &str) -> pb::Job {
    server
        .as_user(token)
        .create_job(pb::Job {
            name: name.into(),
            source_path: "/data".into(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath("/b".into())),
            }),
            ..Default::default()
        })
        .await
        .expect("create job")
}

async fn create_run(server: &TestServer, token: &str, job_id: &str) -> pb::Run {
    server.as_user(token).start_backup(job_id).await
}

fn record(job_id: &str, run_id: &str) -> pb::BackupMetadata {
    pb::BackupMetadata {
        job_id: job_id.into(),
        run_id: run_id.into(),
        size_bytes: 1_048_576,
        duration_seconds: 12.5,
        details: "manual import".into(),
        ..Default::default()
    }
}

async fn create(
    client: &mut Client,
    token: &str,
    record: pb::BackupMetadata,
) -> Result<pb::BackupMetadata, tonic::Status> {
    client
        .create_backup_metadata(authed(
            token,
            pb::CreateBackupMetadataRequest {
                backup_metadata: Some(record),
            },
        ))
        .await
        .map(|r| r.into_inner().backup_metadata.expect("record"))
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn manual_metadata_crud(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (user, token) = server.create_user("alice").await;
    let job = create_job(&server, &token, "home").await;
    let mut client = BackupMetadataServiceClient::new(server.channel().await);

    let created = create(&mut client, &token, record(&job.id, ""))
        .await
        .expect("create");
    assert_eq!(created.owner_id, user.id);
    assert_eq!(created.job_id, job.id);
    assert_eq!(created.source, pb::MetadataSource::Manual as i32);
    assert_eq!(created.size_bytes, 1_048_576);

    let fetched = client
        .get_backup_metadata(authed(
            &token,
            pb::GetBackupMetadataRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .backup_metadata
        .expect("record");
    assert_eq!(fetched, created);

    let updated = client
        .update_backup_metadata(authed(
            &token,
            pb::UpdateBackupMetadataRequest {
                backup_metadata: Some(pb::BackupMetadata {
                    id: created.id.clone(),
                    size_bytes: 2048,
                    details: "ignored: not in mask".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["size_bytes"]),
            },
        ))
        .await
        .expect("update")
        .into_inner()
        .backup_metadata
        .expect("record");
    assert_eq!(updated.size_bytes, 2048);
    assert_eq!(updated.details, "manual import");

    let second = create(&mut client, &token, record(&job.id, ""))
        .await
        .expect("second");
    let listed = client
        .list_backup_metadata(authed(
            &token,
            pb::ListBackupMetadataRequest {
                job_id: job.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = listed.backup_metadata.into_iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        vec![second.id.clone(), created.id.clone()],
        "newest first"
    );

    client
        .delete_backup_metadata(authed(
            &token,
            pb::DeleteBackupMetadataRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect("delete");
    assert_code(
        client
            .get_backup_metadata(authed(
                &token,
                pb::GetBackupMetadataRequest {
                    id: created.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "deleted",
    );
}

async fn run_reference_sets_the_job(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("bob").await;
    let job = create_job(&server, &token, "home").await;
    let other_job = create_job(&server, &token, "other").await;
    let run = create_run(&server, &token, &job.id).await;
    let mut client = BackupMetadataServiceClient::new(server.channel().await);

    let created = create(&mut client, &token, record("", &run.id))
        .await
        .expect("by run");
    assert_eq!(created.job_id, job.id);
    assert_eq!(created.run_id, run.id);

    let status = create(&mut client, &token, record(&other_job.id, &run.id))
        .await
        .expect_err("run of another job");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        vec!["backup_metadata.run_id".to_string()]
    );

    let listed = client
        .list_backup_metadata(authed(
            &token,
            pb::ListBackupMetadataRequest {
                run_id: run.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.backup_metadata.len(), 1);
}

async fn invalid_and_foreign_records_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice) = server.create_user("alice").await;
    let (_, bob) = server.create_user("bob").await;
    let job = create_job(&server, &alice, "home").await;
    let mut client = BackupMetadataServiceClient::new(server.channel().await);

    let status = create(
        &mut client,
        &alice,
        pb::BackupMetadata {
            size_bytes: -1,
            duration_seconds: f64::NAN,
            details: "x".repeat(10_001),
            ..Default::default()
        },
    )
    .await
    .expect_err("invalid");
    assert_violations(
        &status,
        &[
            "backup_metadata.job_id",
            "backup_metadata.size_bytes",
            "backup_metadata.duration_seconds",
            "backup_metadata.details",
        ],
    );

    assert_code(
        create(&mut client, &bob, record(&job.id, "")).await,
        Code::NotFound,
        "foreign job",
    );
    assert_code(
        create(&mut client, &alice, record(&Uuid::new_v4().to_string(), "")).await,
        Code::NotFound,
        "missing job",
    );

    let created = create(&mut client, &alice, record(&job.id, ""))
        .await
        .expect("create");
    assert_code(
        client
            .get_backup_metadata(authed(
                &bob,
                pb::GetBackupMetadataRequest {
                    id: created.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "foreign record",
    );
    assert_code(
        client
            .delete_backup_metadata(authed(
                &bob,
                pb::DeleteBackupMetadataRequest {
                    id: created.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "foreign delete",
    );
    let bobs = client
        .list_backup_metadata(authed(&bob, pb::ListBackupMetadataRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(bobs.backup_metadata.is_empty());
}

async fn automatic_records_are_read_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("carol").await;
    let job = create_job(&server, &token, "home").await;
    let run = create_run(&server, &token, &job.id).await;
    let domain_run = server
        .catalog()
        .get_run(Uuid::parse_str(&run.id).expect("uuid"))
        .await
        .expect("run");
    let automatic = server
        .catalog()
        .record_automatic_metadata(
            &domain_run,
            MetadataValues {
                size_bytes: 10,
                duration_seconds: 1.5,
                details: "run finished".into(),
            },
        )
        .await
        .expect("automatic record");
    let id = automatic.id.to_string();
    let mut client = BackupMetadataServiceClient::new(server.channel().await);

    let listed = client
        .list_backup_metadata(authed(
            &token,
            pb::ListBackupMetadataRequest {
                source: pb::MetadataSource::Automatic as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.backup_metadata.len(), 1);
    assert_eq!(listed.backup_metadata[0].job_id, job.id);

    assert_code(
        client
            .update_backup_metadata(authed(
                &token,
                pb::UpdateBackupMetadataRequest {
                    backup_metadata: Some(pb::BackupMetadata {
                        id: id.clone(),
                        details: "edited".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["details"]),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "update automatic",
    );
    assert_code(
        client
            .delete_backup_metadata(authed(
                &token,
                pb::DeleteBackupMetadataRequest { id: id.clone() },
            ))
            .await,
        Code::FailedPrecondition,
        "delete automatic",
    );
    let kept = client
        .get_backup_metadata(authed(&token, pb::GetBackupMetadataRequest { id }))
        .await
        .expect("still there")
        .into_inner()
        .backup_metadata
        .expect("record");
    assert_eq!(kept.details, "run finished");
    assert_eq!(kept.source, pb::MetadataSource::Automatic as i32);
}

both_backends!(
    manual_metadata_crud,
    run_reference_sets_the_job,
    invalid_and_foreign_records_are_refused,
    automatic_records_are_read_only,
);
