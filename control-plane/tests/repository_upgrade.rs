//! The data migration of repositories (0007): a catalog as the previous
//! release left it, keyed by location strings without ids or owners, keeps
//! working after the upgrade. Every repository gets an identity, and as
//! owner the owner of its oldest run; one no run names any more is claimed by
//! its next user, and an owned one is refused to everyone else.

mod support;

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
