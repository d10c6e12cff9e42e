//! Attacks on grants and repository identity with real worker processes and
//! real files, on both catalog backends: tenants reaching past their grants,
//! a grant withdrawn under a queued run, a grant's worker selector, a garbage
//! collection on another spelling of someone else's repository, and two
//! tenants on one path. Each asserts the refusal and that nothing was read,
//! written or changed.

use crate::support;

use crate::support::grants as grants_support;

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer, ALL_USES};
use coffer_proto::v1 as pb;
use grants_support::{backup, entries, filesystem, filesystem_spelled, restore, Tenant};
use pb::create_run_request::Spec;
use support::{assert_succeeded, noise, snapshot_files, write, WorkerProcess};
use tonic::Code;

/// Asserts PERMISSION_DENIED naming `field` first.
fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    match result {
        Ok(answer) => panic!("{field}: expected PERMISSION_DENIED, got {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(status.message().starts_with(field), "{status:?}");
        }
    }
}

/// A source tree with a few files, one of them large enough for a pack.
fn make_source(dir: &Path) {
    write(&dir.join("docs/readme.txt"), b"hello coffer\n");
    write(&dir.join("data/big.bin"), &noise(1 << 20, 3));
}

/// A server whose admin holds no grant.
async fn server(backend: Backend) -> TestServer {
    let server = TestServer::start(backend).await;
    server.revoke_admin_grants().await;
    server
}

/// Grants `tenant` a source, a repository and a restore destination, each
/// a separate directory below `base`.
async fn grant_layout(server: &TestServer, tenant: &Tenant, base: &Path) {
    use pb::GrantUse::{BackupSource, Repository, RestoreDestination};
    tenant
        .granted(server, &base.join("src"), &[BackupSource], &[])
        .await;
    tenant
        .granted(server, &base.join("repo"), &[Repository], &[])
        .await;
    tenant
        .granted(server, &base.join("out"), &[RestoreDestination], &[])
        .await;
}

/// A restore outside the grant, or in place without an in-place grant, is
/// refused and writes nothing; the granted destination gets the exact tree.
async fn a_restore_outside_the_grant_is_refused(backend: Backend) {
    let server = server(backend).await;
    let base = tempfile::tempdir().expect("base");
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    let alice = Tenant::new(&server, "alice").await;
    grant_layout(&server, &alice, base.path()).await;
    make_source(&base.path().join("src"));
    let _worker = WorkerProcess::spawn(&server, "grants-restore");
    let snapshot = alice
        .run_to_end(
            &server,
            backup(&base.path().join("src"), &base.path().join("repo")),
        )
        .await;
    assert_succeeded(&snapshot);

    assert_denied(
        alice
            .create_run(restore(&snapshot.id, Some(elsewhere.path())))
            .await,
        "restore.destination_path",
    );
    assert_denied(
        alice.create_run(restore(&snapshot.id, None)).await,
        "restore.destination_path",
    );
    // The repository's parent holds the repository: not a granted source.
    assert_denied(
        alice
            .create_run(backup(base.path(), &base.path().join("repo")))
            .await,
        "backup.source_path",
    );
    assert!(entries(elsewhere.path()).is_empty());

    let out = base.path().join("out");
    let restored = alice
        .run_to_end(&server, restore(&snapshot.id, Some(&out)))
        .await;
    assert_succeeded(&restored);
    let original = std::fs::read(base.path().join("src/data/big.bin")).expect("source");
    assert_eq!(
        std::fs::read(out.join("data/big.bin")).expect("restored"),
        original
    );
}

/// A grant deleted while its run waits: the run fails when leased, with a
/// clear error, and the worker writes nothing to the repository.
async fn a_grant_deleted_before_the_lease_fails_the_run(backend: Backend) {
    let server = server(backend).await;
    let base = tempfile::tempdir().expect("base");
    let alice = Tenant::new(&server, "alice").await;
    let source_grant = alice
        .granted(
            &server,
            &base.path().join("src"),
            &[pb::GrantUse::BackupSource],
            &[],
        )
        .await;
    alice
        .granted(
            &server,
            &base.path().join("repo"),
            &[pb::GrantUse::Repository],
            &[],
        )
        .await;
    make_source(&base.path().join("src"));
    let queued = alice
        .create_run(backup(&base.path().join("src"), &base.path().join("repo")))
        .await
        .expect("granted when created");
    server
        .admin()
        .delete_grant(&source_grant)
        .await
        .expect("delete grant");
    let _worker = WorkerProcess::spawn(&server, "grants-deleted");
    let run = server
        .wait_until_final(&queued.id, Duration::from_secs(120))
        .await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert!(run.error.contains("grant"), "{}", run.error);
    assert!(entries(&base.path().join("repo")).is_empty());
}

/// A run covered by a grant with a worker selector waits for a worker with
/// those labels, even when another worker is idle.
async fn the_grants_worker_selector_is_respected(backend: Backend) {
    let server = server(backend).await;
    let base = tempfile::tempdir().expect("base");
    let alice = Tenant::new(&server, "alice").await;
    let pinned = base.path().join("pinned");
    let free = base.path().join("free");
    alice
        .granted(&server, &pinned, ALL_USES, &[("host", "db1")])
        .await;
    alice.granted(&server, &free, ALL_USES, &[]).await;
    make_source(&pinned.join("src"));
    make_source(&free.join("src"));
    let _plain = WorkerProcess::spawn(&server, "grants-plain");
    let waiting = alice
        .create_run(backup(&pinned.join("src"), &pinned.join("repo")))
        .await
        .expect("pinned run");
    assert_eq!(
        waiting.worker_selector.get("host").map(String::as_str),
        Some("db1")
    );
    // The idle worker takes the other run and finishes it; the pinned one
    // is still waiting for its worker.
    let other = alice
        .run_to_end(&server, backup(&free.join("src"), &free.join("repo")))
        .await;
    assert_succeeded(&other);
    let still = server.get_run(&waiting.id).await;
    assert_eq!(still.state, pb::RunState::Queued as i32, "{still:?}");
    assert!(entries(&pinned.join("repo")).is_empty());

    let _db1 = WorkerProcess::spawn_with(
        &server,
        "grants-db1",
        2,
        &[("COFFER_WORKER_LABELS", "host=db1")],
        None,
    );
    let done = server
        .wait_until_final(&waiting.id, Duration::from_secs(120))
        .await;
    assert_succeeded(&done);
}

/// The scenario: a tenant collects garbage with zero grace on
/// another spelling (`a//b/`) of a repository another tenant is backing up
/// to. The aliased spelling is invalid, the canonical one is not the
/// collector's, and the victim's backup verifies completely.
async fn a_collection_on_an_aliased_path_cannot_touch_another_tenants_backup(backend: Backend) {
    let server = server(backend).await;
    let base = tempfile::tempdir().expect("base");
    let alice = Tenant::new(&server, "alice").await;
    let mallory = Tenant::new(&server, "mallory").await;
    for tenant in [&alice, &mallory] {
        tenant.granted(&server, base.path(), ALL_USES, &[]).await;
    }
    let repository = base.path().join("a/b");
    for i in 0..20 {
        write(
            &base.path().join(format!("src/file-{i}.bin")),
            &noise(64 << 10, i),
        );
    }
    let _worker = WorkerProcess::spawn(&server, "grants-gc");
    let uploading = alice
        .create_run(backup(&base.path().join("src"), &repository))
        .await
        .expect("alice's backup");
    let gc = |target: pb::Target| {
        Spec::GarbageCollection(pb::GarbageCollectionSpec {
            target: Some(target),
            grace_period: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        })
    };
    let aliased = format!("{}//b/", base.path().join("a").display());
    let status = mallory
        .create_run(gc(filesystem_spelled(&aliased)))
        .await
        .expect_err("aliased spelling");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_denied(
        mallory.create_run(gc(filesystem(&repository))).await,
        "garbage_collection.grace_period",
    );
    let patient = Spec::GarbageCollection(pb::GarbageCollectionSpec {
        target: Some(filesystem(&repository)),
        grace_period: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    });
    assert_denied(
        mallory.create_run(patient).await,
        "garbage_collection.target",
    );

    let backed_up = server
        .wait_until_final(&uploading.id, Duration::from_secs(120))
        .await;
    assert_succeeded(&backed_up);
    let verify = Spec::Verify(pb::VerifySpec {
        snapshot_run_id: backed_up.id.clone(),
        read_data_percent: 100.0,
    });
    assert_succeeded(&alice.run_to_end(&server, verify).await);
    assert!(snapshot_files(&server, &backed_up.id).await.len() >= 20);
}

/// Two tenants on one filesystem path: the second is refused and the first
/// one's catalog is untouched; a repository whose stored identity is not
/// the catalog's (a copied `config`) is refused by the worker before it
/// writes anything.
async fn two_tenants_on_one_path_cannot_mix(backend: Backend) {
    let server = server(backend).await;
    let base = tempfile::tempdir().expect("base");
    let alice = Tenant::new(&server, "alice").await;
    let bob = Tenant::new(&server, "bob").await;
    for tenant in [&alice, &bob] {
        tenant.granted(&server, base.path(), ALL_USES, &[]).await;
    }
    make_source(&base.path().join("alice"));
    write(&base.path().join("bob/secret.txt"), b"bob's\n");
    let _worker = WorkerProcess::spawn(&server, "grants-mix");
    let shared = base.path().join("shared");
    let snapshot = alice
        .run_to_end(&server, backup(&base.path().join("alice"), &shared))
        .await;
    assert_succeeded(&snapshot);
    let before = snapshot_files(&server, &snapshot.id).await;

    assert_denied(
        bob.create_run(backup(&base.path().join("bob"), &shared))
            .await,
        "backup.target",
    );

    let planted = base.path().join("bobs-repo");
    std::fs::create_dir_all(&planted).expect("planted repo");
    std::fs::copy(shared.join("config"), planted.join("config")).expect("copy config");
    let refused = bob
        .run_to_end(&server, backup(&base.path().join("bob"), &planted))
        .await;
    assert_eq!(refused.state, pb::RunState::Failed as i32, "{refused:?}");
    assert!(refused.error.contains("identity"), "{}", refused.error);
    assert_eq!(entries(&planted), vec!["config".to_string()]);
    assert_eq!(snapshot_files(&server, &snapshot.id).await, before);
}

both_backends!(
    a_restore_outside_the_grant_is_refused,
    a_grant_deleted_before_the_lease_fails_the_run,
    the_grants_worker_selector_is_respected,
    a_collection_on_an_aliased_path_cannot_touch_another_tenants_backup,
    two_tenants_on_one_path_cannot_mix,
);
