//! Contract tests of the catalog itself, written once and run on both
//! backends (a fresh PostgreSQL database and a fresh SQLite file each).

use std::time::Duration;

use uuid::Uuid;

use super::leases::{AttemptOutcome, CompletionResult, LeaseSettings, WorkerLease};
use super::workers::WorkerRegistration;
use super::{Catalog, Page};
use crate::model::configuration::{ConfigurationPatch, NewConfiguration};
use crate::model::object::{EntryKind, FileAttributes, SnapshotCommit, SnapshotEntry};
use crate::model::run::{BackupSpec, JobOptions, Labels, NewRun, RunSpec, Target};
use crate::model::user::NewUser;
use crate::testing::{fresh_catalog, Backend};

/// Instantiates each `async fn name(Backend)` as one test per backend.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::testing::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::testing::Backend::Sqlite).await;
                }
            )*
        }
    };
}

on_both_backends!(
    an_owner_change_is_recorded_as_a_new_version,
    run_changes_are_published_after_they_commit,
    recent_configuration_is_reread_after_a_write_or_when_too_old,
);

const REPOSITORY: &str = "filesystem:/backups";

async fn user(catalog: &Catalog) -> Uuid {
    let user = catalog
        .create_user(&NewUser {
            username: "alice".into(),
            email: "alice@example.com".into(),
            admin: false,
        })
        .await
        .expect("user");
    user.id
}

fn backup_run(owner_id: Uuid) -> NewRun {
    NewRun {
        owner_id,
        job_id: None,
        spec: RunSpec::Backup(BackupSpec {
            job_id: None,
            source_path: "/home/alice".into(),
            target: Target::Filesystem {
                path: "/backups".into(),
            },
            options: JobOptions::default(),
            worker_selector: Labels::new(),
            commands: Default::default(),
        }),
        max_attempts: 1,
        request_id: None,
    }
}

fn owned_by(uid: u32) -> SnapshotEntry {
    SnapshotEntry {
        path: b"notes.txt".to_vec(),
        attributes: FileAttributes {
            kind: EntryKind::File,
            size: 5,
            mode: 0o644,
            uid,
            gid: 100,
            mtime_ns: 1_700_000_000_000_000_000,
            content_hash: Some("ab".repeat(32)),
            symlink_target: None,
        },
        storage_key: String::new(),
    }
}

/// After a `chown`, the catalog must record the new owner, or a restore
/// would put back the old one.
async fn an_owner_change_is_recorded_as_a_new_version(backend: Backend) {
    let (catalog, _guard) = fresh_catalog(backend).await;
    let owner_id = user(&catalog).await;
    let repository_id = catalog
        .ensure_repository(REPOSITORY, owner_id, |_| {
            Ok(super::repositories::NewRepositoryFormat::unencrypted())
        })
        .await
        .expect("repository")
        .id;
    let mut objects = Vec::new();
    for uid in [1000, 1000, 0] {
        let run = catalog
            .create_run(&backup_run(owner_id))
            .await
            .expect("run");
        let stats = catalog
            .apply_snapshot(&SnapshotCommit {
                run_id: run.run.id,
                owner_id,
                bucket_id: None,
                repository_id,
                job_id: None,
                entries: vec![owned_by(uid)],
                removed: None,
            })
            .await
            .expect("snapshot");
        objects.push(stats);
    }
    assert_eq!(
        objects[1].unchanged, 1,
        "the same owner is the same version"
    );
    assert_eq!(objects[2].new_versions, 1, "{:?}", objects[2]);
    assert_eq!(objects[2].closed_versions, 1, "{:?}", objects[2]);

    let filter = crate::model::object::ObjectFilter::default();
    let page = Page::parse(0, "").expect("page");
    let (listed, _) = catalog
        .list_objects(&filter, None, page)
        .await
        .expect("objects");
    let [object] = listed.as_slice() else {
        panic!("one object expected, got {listed:?}");
    };
    let latest = object.latest_version.as_ref().expect("latest version");
    assert_eq!(latest.attributes.uid, 0);
    let (versions, _) = catalog
        .list_object_versions(object.id, None, None, page)
        .await
        .expect("versions");
    let uids: Vec<u32> = versions.iter().map(|v| v.attributes.uid).collect();
    assert_eq!(uids, [0, 1000], "newest first");
}

/// Every change of a run row is announced, by the catalog method that made
/// it, once it is committed.
async fn run_changes_are_published_after_they_commit(backend: Backend) {
    let (catalog, _guard) = fresh_catalog(backend).await;
    let owner_id = user(&catalog).await;
    let mut events = catalog.subscribe_runs();
    let mut next_event = async || {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within five seconds")
            .expect("the channel stays open")
    };

    let cancelled = catalog
        .create_run(&backup_run(owner_id))
        .await
        .expect("run");
    assert_eq!(next_event().await, cancelled.run.id, "creation");
    catalog
        .cancel_run(cancelled.run.id, "alice")
        .await
        .expect("cancel");
    assert_eq!(next_event().await, cancelled.run.id, "cancellation");

    let completed = catalog
        .create_run(&backup_run(owner_id))
        .await
        .expect("run");
    assert_eq!(next_event().await, completed.run.id, "creation");
    let worker = catalog
        .register_worker(&WorkerRegistration {
            name: "w1".into(),
            slots: 1,
            ..WorkerRegistration::default()
        })
        .await
        .expect("worker");
    let settings = LeaseSettings::default();
    let leased = catalog
        .acquire_runs(worker, 1, &settings, |_| true)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!(next_event().await, completed.run.id, "lease");
    let outcome = AttemptOutcome::Success {
        size_bytes: 0,
        details: String::new(),
        manifest_key: "snapshots/1".into(),
        parent_run_id: None,
    };
    let complete = || {
        catalog.complete_attempt(
            WorkerLease {
                run_id: completed.run.id,
                token: leased[0].lease_token,
                worker_id: worker,
            },
            &outcome,
            "{}",
            &settings,
        )
    };
    let result = complete().await.expect("complete");
    assert_eq!(
        result,
        CompletionResult::Accepted {
            state: "succeeded".into()
        }
    );
    assert_eq!(next_event().await, completed.run.id, "completion");

    // A repeated completion changes nothing and announces nothing.
    complete().await.expect("repeat");
    assert!(
        events.try_recv().is_err(),
        "a repeated completion was announced"
    );
}

/// The lease settings' cache: a read within the allowed age is served from
/// it (a write that bypasses the catalog is not seen), one older than that
/// goes to the database, and a write through the catalog is seen at once.
async fn recent_configuration_is_reread_after_a_write_or_when_too_old(backend: Backend) {
    const KEY: &str = "lease_ttl_seconds";
    let (catalog, _guard) = fresh_catalog(backend).await;
    let long = Duration::from_secs(3600);
    let read = |max_age| {
        let catalog = catalog.clone();
        async move {
            catalog
                .recent_configuration_values(&[KEY], max_age)
                .await
                .expect("read")
        }
    };
    let value = |v: &str| vec![(KEY.to_string(), v.to_string())];

    let entry = catalog
        .create_configuration(&NewConfiguration {
            key: KEY.into(),
            value: "30".into(),
            description: String::new(),
        })
        .await
        .expect("create");
    assert_eq!(read(long).await, value("30"));

    catalog
        .execute_raw("UPDATE configurations SET value = '40'")
        .await
        .expect("update behind the catalog's back");
    assert_eq!(read(long).await, value("30"), "served from the cache");
    assert_eq!(
        read(Duration::ZERO).await,
        value("40"),
        "too old: read again"
    );

    catalog
        .update_configuration(
            entry.id,
            &ConfigurationPatch {
                value: Some("50".into()),
                description: None,
            },
        )
        .await
        .expect("update");
    assert_eq!(read(long).await, value("50"), "a write is seen at once");
    catalog
        .delete_configuration(entry.id)
        .await
        .expect("delete");
    assert_eq!(read(long).await, Vec::new(), "so is a deletion");
}
