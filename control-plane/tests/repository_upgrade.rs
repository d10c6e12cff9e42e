//! The data migrations of repositories: a catalog as an earlier release
//! left it keeps working after the upgrade. With 0007 every repository gets
//! an identity, and as owner the owner of its oldest run; one no run names
//! any more is claimed by its next user, and an owned one is refused to
//! everyone else. With 0012 runs, objects and commit counters name their
//! repository by that identity instead of by its location. With 0014 they
//! stay format v1 with their chunk key, while new repositories are v2.
//! With 0016 (passphrase secrets; on SQLite a rebuild of `secrets`) stored
//! secrets and the buckets naming them are kept, and foreign keys still hold.

use crate::support;

use coffer_control_plane::testing::empty_database;
use coffer_proto::v1 as pb;
use support::{Backend, TestServer};
use tonic::Code;
use uuid::Uuid;

/// Literal SQL values in each backend's spelling.
struct Literals {
    backend: Backend,
}

impl Literals {
    fn id(&self, id: Uuid) -> String {
        match self.backend {
            Backend::Postgres => format!("'{id}'"),
            Backend::Sqlite => format!("X'{}'", id.simple()),
        }
    }

    fn key(&self) -> String {
        match self.backend {
            Backend::Postgres => format!("decode('{}', 'hex')", "ab".repeat(32)),
            Backend::Sqlite => format!("X'{}'", "ab".repeat(32)),
        }
    }
}

async fn an_upgraded_catalog_gives_repositories_ids_and_owners(backend: Backend) {
    let guard = empty_database(backend).await;
    let catalog = coffer_control_plane::catalog::Catalog::connect_without_migrating(guard.url())
        .await
        .expect("connect");
    catalog.migrate_before(7).await.expect("the old schema");
    let sql = Literals { backend };
    let alice = Uuid::now_v7();
    let time = "'2026-01-01 00:00:00+00:00'";
    let statements = [
        format!(
            "INSERT INTO users (id, username, email, admin, create_time, update_time) \
             VALUES ({}, 'alice', 'alice@example.com', FALSE, {time}, {time})",
            sql.id(alice)
        ),
        format!(
            "INSERT INTO runs (id, owner_id, kind, state, spec, max_attempts, not_before_time, \
             create_time, update_time, repository) VALUES ({}, {}, 'backup', 'succeeded', '{{}}', \
             1, {time}, {time}, {time}, 'filesystem:/srv/old')",
            sql.id(Uuid::now_v7()),
            sql.id(alice)
        ),
        format!(
            "INSERT INTO repositories (repository, chunk_key, create_time) \
             VALUES ('filesystem:/srv/old', {}, {time})",
            sql.key()
        ),
        format!(
            "INSERT INTO repositories (repository, chunk_key, create_time) \
             VALUES ('filesystem:/srv/orphan', {}, {time})",
            sql.key()
        ),
    ];
    for statement in &statements {
        catalog.execute_raw(statement).await.expect(statement);
    }

    catalog.migrate().await.expect("upgrade");
    let old = catalog
        .find_repository("filesystem:/srv/old")
        .await
        .expect("read")
        .expect("carried over");
    assert_eq!(old.owner_id, Some(alice));
    assert_eq!(old.chunk_key, vec![0xab; 32], "the key is kept");
    assert_eq!(
        old.format_version, 1,
        "a repository from before v2 stays v1"
    );
    assert_eq!(old.encryption().expect("encryption"), None);
    assert!(old.sealed_catalog_key().is_none());
    let orphan = catalog
        .find_repository("filesystem:/srv/orphan")
        .await
        .expect("read")
        .expect("carried over");
    assert_eq!(orphan.owner_id, None);
    assert_ne!(old.id, orphan.id);

    // The upgraded catalog serves: another user, granted everything, is
    // refused alice's repository but claims the orphan.
    let server = TestServer::start_on(catalog, guard).await;
    let (bob, token) = server.admin().create_user_with_token("bob").await;
    let bob_api = server.as_user(&token);
    let backup_to = |path: &str| {
        pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: "/srv/bob".to_string(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath(path.to_string())),
            }),
            ..Default::default()
        })
    };
    let refused = bob_api
        .create_run(backup_to("/srv/old"))
        .await
        .expect_err("alice's repository");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    bob_api
        .create_run(backup_to("/srv/orphan"))
        .await
        .expect("an unowned repository is claimed");
    let claimed = server
        .catalog()
        .find_repository("filesystem:/srv/orphan")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(claimed.owner_id.map(|id| id.to_string()), Some(bob.id));
    assert_eq!(claimed.id, orphan.id, "claiming keeps the identity");
}

both_backends!(an_upgraded_catalog_gives_repositories_ids_and_owners);

/// The data migration of runs, objects and commit counters to repository
/// ids (0012): a catalog whose rows name repositories by location keeps its
/// snapshots, objects and versions, now joined by id; a location only an
/// object names becomes a repository owned by that object's owner.
async fn an_upgraded_catalog_joins_repositories_by_id(backend: Backend) {
    let guard = empty_database(backend).await;
    let catalog = coffer_control_plane::catalog::Catalog::connect_without_migrating(guard.url())
        .await
        .expect("connect");
    catalog.migrate_before(12).await.expect("the old schema");
    let sql = Literals { backend };
    let alice = Uuid::now_v7();
    let repository_id = Uuid::now_v7();
    let snapshot = Uuid::now_v7();
    let in_flight = Uuid::now_v7();
    let object = Uuid::now_v7();
    let ancient_object = Uuid::now_v7();
    let time = "'2026-01-01 00:00:00+00:00'";
    let started = "'2026-01-02 00:00:00+00:00'";
    let path = match backend {
        Backend::Postgres => "decode('61', 'hex')",
        Backend::Sqlite => "X'61'",
    };
    let statements = [
        format!(
            "INSERT INTO users (id, username, email, admin, create_time, update_time) \
             VALUES ({}, 'alice', 'alice@example.com', FALSE, {time}, {time})",
            sql.id(alice)
        ),
        format!(
            "INSERT INTO repositories (repository, id, owner_id, chunk_key, create_time) \
             VALUES ('filesystem:/srv/data', {}, {}, {}, {time})",
            sql.id(repository_id),
            sql.id(alice),
            sql.key()
        ),
        format!(
            "INSERT INTO runs (id, owner_id, kind, state, spec, max_attempts, not_before_time, \
             create_time, update_time, finish_time, manifest_key, repository) VALUES ({}, {}, \
             'backup', 'succeeded', '{{}}', 1, {time}, {time}, {time}, {time}, 'snapshots/old', \
             'filesystem:/srv/data')",
            sql.id(snapshot),
            sql.id(alice)
        ),
        format!(
            "INSERT INTO runs (id, owner_id, kind, state, spec, max_attempts, not_before_time, \
             create_time, update_time, start_time, repository) VALUES ({}, {}, 'backup', \
             'running', '{{}}', 1, {time}, {time}, {time}, {started}, 'filesystem:/srv/data')",
            sql.id(in_flight),
            sql.id(alice)
        ),
        format!(
            "INSERT INTO objects (id, owner_id, repository, path, path_text, create_time) \
             VALUES ({}, {}, 'filesystem:/srv/data', {path}, 'a', {time})",
            sql.id(object),
            sql.id(alice)
        ),
        format!(
            "INSERT INTO object_versions (id, object_id, kind, first_run_id, create_time) \
             VALUES ({}, {}, 'regular', {}, {time})",
            sql.id(Uuid::now_v7()),
            sql.id(object),
            sql.id(snapshot)
        ),
        "INSERT INTO repository_commits (repository, job_key, generation) \
         VALUES ('filesystem:/srv/data', '', 3)"
            .to_string(),
        // An object from before repositories were recorded.
        format!(
            "INSERT INTO objects (id, owner_id, repository, path, path_text, create_time) \
             VALUES ({}, {}, 'filesystem:/srv/ancient', {path}, 'a', {time})",
            sql.id(ancient_object),
            sql.id(alice)
        ),
    ];
    for statement in &statements {
        catalog.execute_raw(statement).await.expect(statement);
    }

    catalog.migrate().await.expect("upgrade");
    let data = catalog
        .find_repository("filesystem:/srv/data")
        .await
        .expect("read")
        .expect("carried over");
    assert_eq!(data.id, repository_id, "the identity is kept");
    let latest = catalog
        .latest_snapshot(repository_id, None)
        .await
        .expect("read")
        .expect("the snapshot is found by repository id");
    assert_eq!(
        (latest.id, latest.manifest_key.as_str()),
        (snapshot, "snapshots/old")
    );
    let oldest = catalog
        .oldest_in_flight_start(repository_id, Uuid::now_v7())
        .await
        .expect("read")
        .expect("the running backup protects the repository");
    assert_eq!(oldest.to_rfc3339(), "2026-01-02T00:00:00+00:00");
    let kept = catalog.get_object(object, None).await.expect("object");
    assert_eq!(kept.repository, "filesystem:/srv/data");
    assert!(kept.latest_version.is_some(), "its version is kept");

    let ancient = catalog
        .find_repository("filesystem:/srv/ancient")
        .await
        .expect("read")
        .expect("a location only an object named becomes a repository");
    assert_eq!(ancient.owner_id, Some(alice));
    let ancient_kept = catalog
        .get_object(ancient_object, None)
        .await
        .expect("object");
    assert_eq!(ancient_kept.repository, "filesystem:/srv/ancient");

    // A new full snapshot of the repository without the path marks the
    // migrated object deleted: the plan found it by repository id.
    let next = catalog
        .insert_test_run(alice, None, None)
        .await
        .expect("run");
    let stats = catalog
        .apply_snapshot(&coffer_control_plane::model::object::SnapshotCommit {
            run_id: next,
            owner_id: alice,
            bucket_id: None,
            repository_id,
            job_id: None,
            entries: Vec::new(),
            removed: None,
        })
        .await
        .expect("snapshot");
    assert_eq!(stats.deleted, 1, "{stats:?}");
}

both_backends!(an_upgraded_catalog_joins_repositories_by_id);

/// Migration 0016 rebuilds SQLite's `secrets` table (to widen its kind
/// CHECK) while buckets reference it: the rows, the references and the
/// foreign-key enforcement all survive, and a passphrase kind is accepted.
async fn secrets_and_their_buckets_survive_the_passphrase_migration(backend: Backend) {
    let guard = empty_database(backend).await;
    let catalog = coffer_control_plane::catalog::Catalog::connect_without_migrating(guard.url())
        .await
        .expect("connect");
    catalog.migrate_before(16).await.expect("the old schema");
    let sql = Literals { backend };
    let (alice, secret, bucket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let time = "'2026-01-01 00:00:00+00:00'";
    let statements = [
        format!(
            "INSERT INTO users (id, username, email, admin, create_time, update_time) \
             VALUES ({}, 'alice', 'alice@example.com', FALSE, {time}, {time})",
            sql.id(alice)
        ),
        format!(
            "INSERT INTO secrets (id, owner_id, name, kind, key_id, nonce, ciphertext, \
             create_time, update_time) VALUES ({}, {}, 'keys', 's3', 'k', {}, {}, {time}, {time})",
            sql.id(secret),
            sql.id(alice),
            sql.key(),
            sql.key()
        ),
        format!(
            "INSERT INTO buckets (id, owner_id, name, kind, s3_bucket, s3_secret_id, \
             create_time, update_time) VALUES ({}, {}, 'b', 's3', 'b', {}, {time}, {time})",
            sql.id(bucket),
            sql.id(alice),
            sql.id(secret)
        ),
    ];
    for statement in &statements {
        catalog.execute_raw(statement).await.expect(statement);
    }

    catalog.migrate().await.expect("upgrade");
    let kept = catalog
        .get_secret(secret, None)
        .await
        .expect("the secret is kept");
    assert_eq!(kept.spec.name, "keys");
    let named = catalog
        .get_bucket(bucket, None)
        .await
        .expect("the bucket is kept");
    let coffer_control_plane::model::bucket::Location::S3(s3) = named.spec.location else {
        panic!("an S3 bucket");
    };
    assert_eq!(s3.secret_id, Some(secret));
    let dangling = format!(
        "UPDATE buckets SET passphrase_secret_id = {} WHERE id = {}",
        sql.id(Uuid::now_v7()),
        sql.id(bucket)
    );
    assert!(
        catalog.execute_raw(&dangling).await.is_err(),
        "foreign keys are enforced again"
    );
    let passphrase = format!(
        "INSERT INTO secrets (id, owner_id, name, kind, key_id, nonce, ciphertext, \
         create_time, update_time) VALUES ({}, {}, 'phrase', 'passphrase', 'k', {}, {}, {time}, \
         {time})",
        sql.id(Uuid::now_v7()),
        sql.id(alice),
        sql.key(),
        sql.key()
    );
    catalog
        .execute_raw(&passphrase)
        .await
        .expect("the passphrase kind is accepted");
}

both_backends!(secrets_and_their_buckets_survive_the_passphrase_migration);
