//! Key-slot runs end to end: a real control plane (gRPC over loopback, both
//! catalog backends) and real `coffer-worker` processes changing the key
//! slots of encrypted repositories on a filesystem target and on Garage.
//! A removed passphrase opens nothing written after its removal; a slot
//! planted in storage is never sealed to; another tenant's repository and
//! passphrase secrets are out of reach.

use crate::support;

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_format::crypto::{open_object, unlock_slot, Argon2Params, KeySlot, SlotSecret};
use coffer_format::layout;
use coffer_format::{AnyConfig, ObjectKind, RepositoryKeys};
use coffer_proto::v1 as pb;
use support::{
    assert_restorable, assert_succeeded, create_run, filesystem_target, noise, passphrase_secret,
    repository_access, run_to_success, s3_bucket, start_run, wait_until_final, write, S3Server,
    WorkerProcess,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

fn source() -> tempfile::TempDir {
    let source = tempfile::tempdir().expect("source dir");
    write(&source.path().join("docs/a.txt"), b"before the removal\n");
    write(&source.path().join("data/big.bin"), &noise(1 << 20, 7));
    source
}

fn key_slots(target: &pb::Target, operation: pb::KeySlotOperation) -> pb::KeySlotsSpec {
    pb::KeySlotsSpec {
        target: Some(target.clone()),
        operation: operation.into(),
        ..Default::default()
    }
}

async fn key_slot_run(server: &TestServer, spec: pb::KeySlotsSpec) -> pb::Run {
    let id = start_run(server, pb::create_run_request::Spec::KeySlots(spec)).await;
    wait_until_final(server, &id, LIMIT).await
}

/// The slot id an ADD run names in its details.
fn added_slot(details: &str) -> String {
    let id = details
        .split("added passphrase key slot ")
        .nth(1)
        .unwrap_or_else(|| panic!("no added slot named: {details}"));
    id.chars().take(32).collect()
}

async fn details(server: &TestServer, run: &pb::Run) -> String {
    server
        .admin()
        .run_metadata(&run.id)
        .await
        .into_iter()
        .map(|entry| entry.details)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `keys/<slot>` and every `keyring/<g>.<slot>` of one slot, as stored.
fn slot_files(repo: &Path, slot: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        format!("keys/{slot}"),
        std::fs::read(repo.join("keys").join(slot)).expect("slot file"),
    )];
    for entry in std::fs::read_dir(repo.join("keyring")).expect("keyring dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        if name.ends_with(slot) {
            let bytes = std::fs::read(repo.join("keyring").join(&name)).expect("keyring file");
            files.push((format!("keyring/{name}"), bytes));
        }
    }
    files
}

/// What someone who kept a removed slot's files and knows its passphrase
/// can open: the key set their slot holds.
fn open_with_kept_slot(
    repo: &Path,
    kept: &[(String, Vec<u8>)],
    passphrase: &str,
) -> RepositoryKeys {
    let AnyConfig::V2(config) =
        AnyConfig::from_bytes(&std::fs::read(repo.join("config")).expect("config"))
            .expect("config")
    else {
        panic!("a v2 repository")
    };
    let slot = KeySlot::parse(&kept[0].0, &kept[0].1).expect("kept slot");
    let unlocked = unlock_slot(
        &[slot],
        SlotSecret::Passphrase(passphrase, Argon2Params::DEFAULT),
    )
    .expect("the kept slot opens with its passphrase");
    RepositoryKeys::open(&config, &unlocked, &kept[1..]).expect("the kept keyring opens")
}

/// The key-slot runs on a filesystem repository: add a passphrase slot,
/// remove it (a rotation that leaves it out), back up again. The removed
/// passphrase, with copies of its slot's files, opens only the old
/// generation: the new snapshot's manifest does not open with it, while
/// the catalog's slot restores it byte for byte. The catalog pins the new
/// generation and shows the slots as they are.
async fn a_removed_passphrase_opens_nothing_written_after_its_removal(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "key-slots");
    let source = source();
    let repo = tempfile::tempdir().expect("repo dir");
    let target = filesystem_target(repo.path());
    let location = format!("filesystem:{}", repo.path().display());
    let first = wait_until_final(
        &server,
        &create_run(
            &server,
            source.path(),
            target.destination.clone().expect("set"),
        )
        .await,
        LIMIT,
    )
    .await;
    assert_succeeded(&first);

    let passphrase = format!("leaving {}", uuid::Uuid::new_v4().simple());
    let secret = passphrase_secret(&server.admin(), &passphrase).await;
    let added = key_slot_run(
        &server,
        pb::KeySlotsSpec {
            passphrase_secret_id: secret,
            ..key_slots(&target, pb::KeySlotOperation::Add)
        },
    )
    .await;
    assert_succeeded(&added);
    let slot = added_slot(&details(&server, &added).await);
    let kept = slot_files(repo.path(), &slot);
    assert_eq!(
        kept.len(),
        2,
        "the new slot and its keyring object of generation 1"
    );
    let recorded = server
        .catalog()
        .repository_key_slots(
            server
                .catalog()
                .find_repository(&location)
                .await
                .expect("read")
                .expect("repository")
                .id,
        )
        .await
        .expect("slots");
    assert!(recorded.iter().any(|record| record.slot.slot_id == slot));

    let removed = key_slot_run(
        &server,
        pb::KeySlotsSpec {
            slot_id: slot.clone(),
            ..key_slots(&target, pb::KeySlotOperation::Remove)
        },
    )
    .await;
    assert_succeeded(&removed);
    assert!(!repo.path().join("keys").join(&slot).exists());
    let access = repository_access(&server, &location).await;
    assert_eq!(
        access.pinned.as_ref().map(|pinned| pinned.generation),
        Some(2),
        "the catalog pinned the rotation's generation"
    );

    write(&source.path().join("docs/b.txt"), b"after the removal\n");
    let second = run_to_success(
        &server,
        pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: source.path().display().to_string(),
            target: Some(target.clone()),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        assert_restorable(&server, &second.id, source.path()).await,
        3
    );

    let old_keys = open_with_kept_slot(repo.path(), &kept, &passphrase);
    assert_eq!(old_keys.current().generation(), 1);
    let manifest = server
        .catalog()
        .get_run(second.id.parse().expect("uuid"))
        .await
        .expect("run")
        .manifest_key;
    let stored = std::fs::read(repo.path().join(&manifest)).expect("manifest");
    assert!(
        open_object(&old_keys, ObjectKind::Manifest, &manifest, &stored).is_err(),
        "the removed passphrase opens the snapshot written after its removal"
    );
    let first_manifest = server
        .catalog()
        .get_run(first.id.parse().expect("uuid"))
        .await
        .expect("run")
        .manifest_key;
    let stored = std::fs::read(repo.path().join(&first_manifest)).expect("manifest");
    assert!(
        open_object(&old_keys, ObjectKind::Manifest, &first_manifest, &stored).is_ok(),
        "what it could read before its removal stays readable until a full re-key"
    );
}

/// Refusals the catalog decides, on both backends: the only catalog slot,
/// a slot the repository does not have, another tenant's repository and
/// another tenant's passphrase secret; each names its field.
async fn key_slot_runs_refuse_what_would_lock_out_or_leak(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "key-slots-refusals");
    let source = source();
    let repo = tempfile::tempdir().expect("repo dir");
    let target = filesystem_target(repo.path());
    let location = format!("filesystem:{}", repo.path().display());
    let first = create_run(
        &server,
        source.path(),
        target.destination.clone().expect("set"),
    )
    .await;
    assert_succeeded(&wait_until_final(&server, &first, LIMIT).await);
    let repository = server
        .catalog()
        .find_repository(&location)
        .await
        .expect("read")
        .expect("repository");
    let slots = server
        .catalog()
        .repository_key_slots(repository.id)
        .await
        .expect("slots");
    assert_eq!(slots.len(), 1, "one catalog slot after the first backup");

    let refused = |spec: pb::KeySlotsSpec| {
        let api = server.admin();
        async move {
            api.create_run(pb::create_run_request::Spec::KeySlots(spec))
                .await
                .expect_err("refused")
        }
    };
    let last = refused(pb::KeySlotsSpec {
        slot_id: slots[0].slot.slot_id.clone(),
        ..key_slots(&target, pb::KeySlotOperation::Remove)
    })
    .await;
    assert_eq!(last.code(), tonic::Code::FailedPrecondition, "{last:?}");
    assert!(last.message().contains("key_slots.slot_id"), "{last:?}");
    let unknown = refused(pb::KeySlotsSpec {
        slot_id: "0".repeat(32),
        ..key_slots(&target, pb::KeySlotOperation::Remove)
    })
    .await;
    assert_eq!(
        unknown.code(),
        tonic::Code::FailedPrecondition,
        "{unknown:?}"
    );
    let malformed = refused(pb::KeySlotsSpec {
        slot_id: "not-a-slot".into(),
        ..key_slots(&target, pb::KeySlotOperation::Remove)
    })
    .await;
    assert_eq!(
        malformed.code(),
        tonic::Code::InvalidArgument,
        "{malformed:?}"
    );

    let (_, token) = server.create_user("mallory").await;
    let mallory = server.as_user(&token);
    let mallorys_secret = passphrase_secret(&mallory, "mallory's own passphrase").await;
    let foreign = mallory
        .create_run(pb::create_run_request::Spec::KeySlots(pb::KeySlotsSpec {
            passphrase_secret_id: mallorys_secret.clone(),
            ..key_slots(&target, pb::KeySlotOperation::Add)
        }))
        .await
        .expect_err("another tenant's repository");
    assert!(
        matches!(
            foreign.code(),
            tonic::Code::PermissionDenied | tonic::Code::NotFound
        ),
        "{foreign:?}"
    );
    let borrowed = refused(pb::KeySlotsSpec {
        passphrase_secret_id: mallorys_secret,
        ..key_slots(&target, pb::KeySlotOperation::Add)
    })
    .await;
    assert_eq!(
        borrowed.code(),
        tonic::Code::PermissionDenied,
        "{borrowed:?}"
    );
    assert!(
        borrowed
            .message()
            .contains("key_slots.passphrase_secret_id"),
        "{borrowed:?}"
    );
}

/// On Garage, with the bucket's own passphrase slot: a slot planted in
/// storage (its public key is all a rotation needs to seal to it) fails the
/// rotation, named, and gets nothing; once removed, the rotation keeps the
/// bucket's passphrase slot (opened with the bucket's passphrase) and the
/// catalog's, and a backup after it restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_never_seals_to_a_planted_slot() {
    let server = TestServer::start(Backend::Sqlite).await;
    let _worker = WorkerProcess::spawn(&server, "key-slots-garage");
    let (name, store) = support::new_bucket_on(&S3Server::shared()).await;
    let secret = passphrase_secret(&server.admin(), "the bucket's passphrase").await;
    let bucket_id = server
        .admin()
        .create_bucket(pb::Bucket {
            passphrase_secret_id: secret,
            ..s3_bucket(&S3Server::shared(), &name)
        })
        .await
        .expect("bucket")
        .id;
    let target = pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id: bucket_id.clone(),
            prefix: "repo".into(),
        })),
    };
    let source = source();
    let backup = || {
        pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: source.path().display().to_string(),
            target: Some(target.clone()),
            ..Default::default()
        })
    };
    run_to_success(&server, backup()).await;

    // Someone who can write the bucket plants a passphrase slot of their own.
    let cancel = CancellationToken::new();
    let theirs = RepositoryKeys::create(
        &uuid::Uuid::new_v4().to_string(),
        &[7; 32],
        Some(("the planter's passphrase", Argon2Params::DEFAULT)),
        chrono::Utc::now(),
        &mut rand::rngs::OsRng,
    )
    .expect("their keys");
    let planted = theirs.passphrase_slot.expect("a passphrase slot");
    let planted_key = layout::slot_key(planted);
    let (_, bytes) = theirs
        .objects
        .iter()
        .find(|(key, _)| *key == planted_key)
        .expect("the planted slot");
    store
        .put_bytes(&planted_key, bytes.clone(), &cancel)
        .await
        .expect("plant");

    let refused = key_slot_run(&server, key_slots(&target, pb::KeySlotOperation::Rotate)).await;
    assert_eq!(refused.state, pb::RunState::Failed as i32, "{refused:?}");
    assert!(
        refused.error.contains(&planted.to_string()),
        "{}",
        refused.error
    );
    let keyring = store.list("keyring/", &cancel).await.expect("list");
    assert!(
        keyring
            .iter()
            .all(|key| !key.ends_with(&planted.to_string())),
        "nothing was sealed to the planted slot: {keyring:?}"
    );

    // A backup reports the slot; removing it by id then rotates without it.
    run_to_success(&server, backup()).await;
    let removed = key_slot_run(
        &server,
        pb::KeySlotsSpec {
            slot_id: planted.to_string(),
            ..key_slots(&target, pb::KeySlotOperation::Remove)
        },
    )
    .await;
    assert_succeeded(&removed);
    let mut generations: Vec<u32> = store
        .list("keyring/", &cancel)
        .await
        .expect("list")
        .iter()
        .filter_map(|key| layout::parse_keyring_key(key).map(|(generation, _)| generation))
        .collect();
    generations.sort_unstable();
    assert_eq!(
        generations,
        vec![1, 1, 2, 2],
        "the catalog's and the bucket's passphrase slot each hold generations 1 and 2"
    );
    write(&source.path().join("docs/c.txt"), b"after the rotation\n");
    let after = run_to_success(&server, backup()).await;
    assert_eq!(
        assert_restorable(&server, &after.id, source.path()).await,
        3
    );
}

both_backends!(
    a_removed_passphrase_opens_nothing_written_after_its_removal,
    key_slot_runs_refuse_what_would_lock_out_or_leak,
);
