//! Format v2 through the crate's public API, as a worker uses it: create a
//! repository, open it with a passphrase or the catalog's key, manage key
//! slots, and write and read back every kind of object, with storage
//! played by a map of object keys to bytes that the tests tamper with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use coffer_format::crypto::{
    unlock_slot, Argon2Params, KeySlot, NewRepository, SlotId, SlotSecret,
};
use coffer_format::manifest::{sealed_manifest_reader, sealed_manifest_writer};
use coffer_format::pack::{
    encode_chunk, new_compressor, open_blob, read_pack_v2, BlobType, PackWriterV2,
};
use coffer_format::{
    layout, AnyConfig, ChunkIndex, ChunkerParams, CondemnedPack, CondemnedSet, EntryKind,
    FileAttributes, FormatError, IndexFile, IndexPack, ManifestEntry, ManifestHeader, PackId,
    RepositoryConfigV2, RepositoryKeys,
};
use rand::rngs::OsRng;
use uuid::Uuid;

const REPOSITORY: &str = "0190a0c4-8a1e-7b52-9c3d-3f0e5a6b7c8d";
const CATALOG_KEY: [u8; 32] = [0x5c; 32];
/// Cheap parameters so the tests run fast; production uses the default.
const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// Object key → bytes, standing in for a bucket.
type Storage = BTreeMap<String, Vec<u8>>;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
}

fn create() -> (NewRepository, Storage) {
    let new = RepositoryKeys::create(
        REPOSITORY,
        &CATALOG_KEY,
        Some(("correct horse", CHEAP)),
        now(),
        &mut OsRng,
    )
    .expect("created");
    let mut storage: Storage = new.objects.iter().cloned().collect();
    storage.insert(layout::CONFIG_KEY.to_owned(), new.config.clone());
    (new, storage)
}

fn slots(storage: &Storage) -> Vec<KeySlot> {
    storage
        .iter()
        .filter(|(key, _)| key.starts_with(layout::KEYS_PREFIX))
        .map(|(key, bytes)| KeySlot::parse(key, bytes).expect("valid slot"))
        .collect()
}

fn keyrings(storage: &Storage) -> Vec<(String, Vec<u8>)> {
    storage
        .iter()
        .filter(|(key, _)| key.starts_with(layout::KEYRING_PREFIX))
        .map(|(key, bytes)| (key.clone(), bytes.clone()))
        .collect()
}

fn config(storage: &Storage) -> RepositoryConfigV2 {
    match AnyConfig::from_bytes(&storage[layout::CONFIG_KEY]).expect("config parses") {
        AnyConfig::V2(config) => config,
        AnyConfig::V1(_) => panic!("a v2 repository"),
    }
}

/// Opens the repository the way a worker does.
fn open(storage: &Storage, secret: SlotSecret<'_>) -> Result<RepositoryKeys, FormatError> {
    let config = config(storage);
    let slot = unlock_slot(&slots(storage), secret)?;
    RepositoryKeys::open(&config, &slot, &keyrings(storage))
}

#[test]
fn a_new_repository_opens_with_its_passphrase_and_with_the_catalog_key() {
    let (new, storage) = create();
    let by_passphrase =
        open(&storage, SlotSecret::Passphrase("correct horse", CHEAP)).expect("passphrase opens");
    let by_catalog = open(&storage, SlotSecret::Catalog(&CATALOG_KEY)).expect("catalog key opens");
    for keys in [&by_passphrase, &by_catalog] {
        assert_eq!(keys.repository_id(), REPOSITORY);
        assert_eq!(keys.current().generation(), 1);
        assert_eq!(
            keys.current().fingerprint(),
            new.keys.current().fingerprint()
        );
        assert_eq!(
            keys.hasher().chunk_id(b"x"),
            new.keys.hasher().chunk_id(b"x")
        );
    }
    let config = config(&storage);
    config
        .check_expected(REPOSITORY, true)
        .expect("what the catalog expects");
    assert!(config.check_expected(REPOSITORY, false).is_err());
    assert!(
        config.unencrypted_keys().is_err(),
        "an encrypted repository has no keys in its config"
    );
    let text = String::from_utf8(storage[layout::CONFIG_KEY].clone()).expect("json");
    assert!(
        text.contains("aes-256-gcm") && !text.contains("key"),
        "{text}"
    );
}

#[test]
fn a_wrong_passphrase_is_refused_without_naming_a_slot() {
    let (new, storage) = create();
    let mut storage = storage;
    let (second, objects) = new
        .keys
        .add_slot(
            SlotSecret::Passphrase("another one", CHEAP),
            now(),
            &mut OsRng,
        )
        .expect("added");
    storage.extend(objects);
    let err = open(&storage, SlotSecret::Passphrase("wrong", CHEAP)).expect_err("wrong passphrase");
    assert!(matches!(err, FormatError::KeyRejected(_)), "{err}");
    let message = err.to_string();
    assert_eq!(
        message,
        "key rejected: no key slot opens with this passphrase"
    );
    for id in [
        new.passphrase_slot.expect("asked for"),
        second,
        new.catalog_slot,
    ] {
        assert!(!message.contains(&id.to_string()));
    }
    assert!(open(&storage, SlotSecret::Passphrase("another one", CHEAP)).is_ok());
    assert!(open(&storage, SlotSecret::Catalog(&[0; 32])).is_err());
}

#[test]
fn rotation_and_slot_removal_revoke_new_data_but_not_old() {
    let (new, mut storage) = create();
    let (leaver, objects) = new
        .keys
        .add_slot(SlotSecret::Passphrase("leaving", CHEAP), now(), &mut OsRng)
        .expect("added");
    storage.extend(objects);
    let old = CondemnedSet::new(Uuid::from_u128(1), now());
    let old_bytes = old.to_sealed(&new.keys, &mut OsRng).expect("sealed");
    // The leaver's view before its removal, as a copy of its storage.
    let leaver_storage = storage.clone();

    let remaining: Vec<KeySlot> = slots(&storage)
        .into_iter()
        .filter(|slot| slot.id() != leaver)
        .collect();
    let (rotated, objects) = new
        .keys
        .rotate(&remaining, now(), &mut OsRng)
        .expect("rotated");
    assert_eq!(rotated.current().generation(), 2);
    storage.extend(objects);
    storage.retain(|key, _| !key.ends_with(&leaver.to_string()));
    let fresh = CondemnedSet::new(Uuid::from_u128(2), now());
    let fresh_bytes = fresh.to_sealed(&rotated, &mut OsRng).expect("sealed");
    let fresh_key = layout::condemned_key(fresh.gc_run_id);

    // Every remaining slot opens both generations, without a passphrase
    // having been needed for the rotation.
    for secret in [
        SlotSecret::Passphrase("correct horse", CHEAP),
        SlotSecret::Catalog(&CATALOG_KEY),
    ] {
        let keys = open(&storage, secret).expect("remaining slot opens");
        assert_eq!(keys.generations().count(), 2);
        assert_eq!(
            CondemnedSet::from_sealed(&keys, &fresh_key, &fresh_bytes).expect("new data"),
            fresh
        );
        let old_key = layout::condemned_key(old.gc_run_id);
        assert_eq!(
            CondemnedSet::from_sealed(&keys, &old_key, &old_bytes).expect("old data"),
            old
        );
        assert_eq!(
            keys.hasher().chunk_id(b"dedup survives"),
            new.keys.hasher().chunk_id(b"dedup survives")
        );
    }
    // The removed slot, even with every object it ever saw plus the new
    // ones, opens the old generation only.
    let mut everything = leaver_storage.clone();
    everything.extend(storage.clone());
    let keys = open(&everything, SlotSecret::Passphrase("leaving", CHEAP)).expect("old generation");
    assert_eq!(keys.current().generation(), 1);
    let err =
        CondemnedSet::from_sealed(&keys, &fresh_key, &fresh_bytes).expect_err("new data is sealed");
    assert!(matches!(err, FormatError::KeyRejected(_)), "{err}");
    let old_key = layout::condemned_key(old.gc_run_id);
    assert!(CondemnedSet::from_sealed(&keys, &old_key, &old_bytes).is_ok());
    // And with the removal done, its passphrase opens nothing.
    assert!(open(&storage, SlotSecret::Passphrase("leaving", CHEAP)).is_err());
}

#[test]
fn a_generation_planted_by_someone_with_storage_access_is_refused() {
    let (_, mut storage) = create();
    // The attacker makes a repository of their own with the same id and
    // seals its next generation to the victim's public slots: the classic
    // forgery against keys sealed to a public key.
    let attacker =
        RepositoryKeys::create(REPOSITORY, &[1; 32], None, now(), &mut OsRng).expect("created");
    let (_, planted) = attacker
        .keys
        .rotate(&slots(&storage), now(), &mut OsRng)
        .expect("rotated");
    storage.extend(planted);
    let err = open(&storage, SlotSecret::Catalog(&CATALOG_KEY)).expect_err("forged generation");
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains("keyring/2."), "{err}");
}

#[test]
fn hostile_argon2_parameters_are_refused_before_hashing() {
    let (new, storage) = create();
    let key = layout::slot_key(new.passphrase_slot.expect("asked for"));
    for (at, value) in [(80, u32::MAX), (80, 2 * 1024 * 1024), (84, 1000), (88, 64)] {
        let mut bytes = storage[&key].clone();
        bytes[at..at + 4].copy_from_slice(&u32::to_le_bytes(value));
        let err = KeySlot::parse(&key, &bytes).expect_err("too costly");
        assert!(
            err.is_corruption() && err.to_string().contains("bounds"),
            "{err}"
        );
        assert!(err.to_string().contains(&key));
    }
}

#[test]
fn a_flipped_bit_in_a_key_slot_or_keyring_object_never_opens() {
    let (new, storage) = create();
    let slot_key = layout::slot_key(new.catalog_slot);
    for byte in 0..storage[&slot_key].len() {
        let mut damaged = storage.clone();
        damaged.get_mut(&slot_key).expect("present")[byte] ^= 0x10;
        let slot = KeySlot::parse(&slot_key, &damaged[&slot_key]);
        let result = slot.and_then(|slot| unlock_slot(&[slot], SlotSecret::Catalog(&CATALOG_KEY)));
        match result {
            Err(FormatError::Corrupt(message)) => assert!(message.contains(&slot_key), "{message}"),
            Err(FormatError::KeyRejected(_)) => {}
            other => panic!("byte {byte}: {other:?}"),
        }
    }
    let keyring_key = layout::keyring_key(1, new.catalog_slot);
    for byte in 0..storage[&keyring_key].len() {
        let mut damaged = storage.clone();
        damaged.get_mut(&keyring_key).expect("present")[byte] ^= 0x10;
        let err = open(&damaged, SlotSecret::Catalog(&CATALOG_KEY)).expect_err("damaged keyring");
        assert!(
            err.is_corruption() && err.to_string().contains(&keyring_key),
            "byte {byte}: {err}"
        );
    }
}

#[test]
fn a_changed_config_is_detected() {
    let (_, storage) = create();
    let original = config(&storage);
    let bytes = storage[layout::CONFIG_KEY].clone();
    for (byte, original_byte) in bytes.iter().enumerate() {
        let mut damaged = storage.clone();
        damaged.get_mut(layout::CONFIG_KEY).expect("present")[byte] ^= 0x01;
        let opened =
            AnyConfig::from_bytes(&damaged[layout::CONFIG_KEY]).and_then(|config| match config {
                AnyConfig::V2(config) if config == original => Ok(()),
                AnyConfig::V2(config) => {
                    let slot = unlock_slot(&slots(&damaged), SlotSecret::Catalog(&CATALOG_KEY))?;
                    RepositoryKeys::open(&config, &slot, &keyrings(&damaged))?;
                    config.check_expected(REPOSITORY, true)
                }
                AnyConfig::V1(_) => Ok(()),
            });
        let unchanged = matches!(AnyConfig::from_bytes(&damaged[layout::CONFIG_KEY]), Ok(AnyConfig::V2(ref c)) if *c == original);
        assert!(
            opened.is_err() || unchanged,
            "byte {byte} ({:?}) went unnoticed",
            *original_byte as char
        );
    }
    // Switching to `none` is refused by the catalog's expectation even if
    // someone supplies keys of their own.
    let (plain, _) =
        RepositoryConfigV2::unencrypted(REPOSITORY, now(), &mut OsRng).expect("config");
    let parsed = RepositoryConfigV2::from_bytes(&plain.to_bytes()).expect("valid");
    assert!(parsed.check_expected(REPOSITORY, true).is_err());
}

fn manifest_header(run: Uuid) -> ManifestHeader {
    ManifestHeader::new(
        run,
        "/srv/data".to_owned(),
        "host-1".to_owned(),
        now(),
        ChunkerParams::default(),
    )
}

fn directory(path: &[u8]) -> ManifestEntry {
    ManifestEntry {
        path: path.to_vec(),
        attributes: FileAttributes {
            kind: EntryKind::Directory,
            size: 0,
            mode: 0o755,
            uid: 1,
            gid: 1,
            mtime_ns: 0,
            content_hash: None,
            symlink_target: None,
        },
        ctime_ns: 0,
        inode: 1,
        dev: 1,
        chunks: Vec::new(),
    }
}

fn write_manifest(keys: &RepositoryKeys, key: &str, run: Uuid, entries: usize) -> Vec<u8> {
    let mut writer =
        sealed_manifest_writer(Vec::new(), keys, key, &manifest_header(run), 1, &mut OsRng)
            .expect("starts");
    writer.add(&directory(b"")).expect("root");
    for i in 0..entries {
        writer
            .add(&directory(format!("d{i:07}").as_bytes()))
            .expect("in order");
    }
    writer
        .finish()
        .expect("lines end")
        .finish()
        .expect("sealed")
}

fn read_manifest(keys: &RepositoryKeys, key: &str, bytes: &[u8]) -> Result<u64, FormatError> {
    let mut reader = sealed_manifest_reader(bytes, keys, key)?;
    let mut count = 0;
    while reader.next_entry()?.is_some() {
        count += 1;
    }
    Ok(count)
}

#[test]
fn manifests_round_trip_and_are_bound_to_their_run() {
    let (new, _) = create();
    let run = Uuid::from_u128(7);
    let key = layout::attempt_manifest_key(run, 3);
    // Enough entries for several 1 MiB segments.
    let bytes = write_manifest(&new.keys, &key, run, 40_000);
    assert_eq!(
        read_manifest(&new.keys, &key, &bytes).expect("intact"),
        40_001
    );

    let other_attempt = layout::attempt_manifest_key(run, 4);
    let err = read_manifest(&new.keys, &other_attempt, &bytes).expect_err("another key");
    assert!(
        err.is_corruption() && err.to_string().contains(&other_attempt),
        "{err}"
    );
    let other_run = layout::attempt_manifest_key(Uuid::from_u128(8), 3);
    assert!(read_manifest(&new.keys, &other_run, &bytes)
        .expect_err("another run")
        .is_corruption());

    // (Bytes 8..12 are the generation: damage there names a generation the
    // key set does not hold, refused as such.)
    for at in [2, 30, 100, bytes.len() / 2, bytes.len() - 3] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x80;
        let err = read_manifest(&new.keys, &key, &damaged).expect_err("damaged");
        assert!(
            err.is_corruption() && err.to_string().contains(&key),
            "byte {at}: {err}"
        );
    }
    let err = read_manifest(&new.keys, &key, &bytes[..bytes.len() - 100]).expect_err("cut");
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn packs_index_files_and_the_chunk_index_carry_what_one_ranged_read_needs() {
    let (new, _) = create();
    let keys = &new.keys;
    let mut compressor = new_compressor(3).expect("zstd");
    let mut packs = Vec::new();
    for pack_number in 0..3u8 {
        let mut writer = PackWriterV2::new();
        for i in 0..5u8 {
            let chunk = vec![pack_number * 10 + i; 5000];
            let encoded = encode_chunk(&mut compressor, keys.hasher().chunk_id(&chunk), &chunk)
                .expect("fits");
            writer.add(encoded, BlobType::Data).expect("fits");
        }
        packs.push(writer.finish(keys, &mut OsRng).expect("sealed"));
    }
    let file = IndexFile {
        packs: packs.iter().map(IndexPack::from_sealed).collect(),
    };
    let (id, bytes) = file.encode_v2(keys, &mut OsRng).expect("encoded");
    assert_eq!(id, coffer_format::IndexId::compute(&bytes));
    let key = layout::index_key(&id);
    let decoded = IndexFile::decode_v2(keys, &key, &bytes).expect("intact");
    assert_eq!(decoded, file);
    assert!(
        IndexFile::decode(&bytes).is_err(),
        "a v1 reader does not take a sealed index"
    );
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let err = IndexFile::decode_v2(keys, &key, &damaged).expect_err("damaged");
    assert!(
        err.is_corruption() && err.to_string().contains(&key),
        "{err}"
    );

    let mut index = ChunkIndex::new();
    index.add_file(&decoded);
    for pack in &packs {
        for entry in &pack.entries {
            let location = index.get(&entry.chunk_id).expect("indexed");
            assert_eq!(location.pack_id, pack.id);
            let sealing = location.sealing.expect("a v2 pack");
            let blob = &pack.bytes[location.offset as usize..][..location.length as usize];
            let raw = open_blob(keys, &sealing, &location.entry(entry.chunk_id), blob)
                .expect("one ranged read");
            assert_eq!(keys.hasher().chunk_id(&raw), entry.chunk_id);
        }
        let (sealing, entries) = read_pack_v2(keys, &pack.bytes).expect("whole pack");
        assert_eq!(Some(sealing), pack.sealing);
        assert_eq!(entries, pack.entries);
    }
}

#[test]
fn condemned_sets_round_trip_and_detect_damage() {
    let (new, _) = create();
    let mut set = CondemnedSet::new(Uuid::from_u128(9), now());
    set.packs.push(CondemnedPack {
        pack_id: PackId::compute(b"p"),
        length: 3,
    });
    let bytes = set.to_sealed(&new.keys, &mut OsRng).expect("sealed");
    let key = layout::condemned_key(set.gc_run_id);
    assert_eq!(
        CondemnedSet::from_sealed(&new.keys, &key, &bytes).expect("intact"),
        set
    );
    let mut damaged = bytes.clone();
    damaged[bytes.len() - 1] ^= 1;
    let err = CondemnedSet::from_sealed(&new.keys, &key, &damaged).expect_err("damaged");
    assert!(
        err.is_corruption() && err.to_string().contains(&key),
        "{err}"
    );
    let elsewhere = layout::condemned_key(Uuid::from_u128(10));
    assert!(CondemnedSet::from_sealed(&new.keys, &elsewhere, &bytes).is_err());
}

#[test]
fn an_unencrypted_repository_is_an_explicit_choice_with_the_same_framing() {
    let (config, keys) =
        RepositoryConfigV2::unencrypted(REPOSITORY, now(), &mut OsRng).expect("config");
    let stored = config.to_bytes();
    let AnyConfig::V2(parsed) = AnyConfig::from_bytes(&stored).expect("parses") else {
        panic!("a v2 config");
    };
    parsed
        .check_expected(REPOSITORY, false)
        .expect("the catalog chose none");
    let reopened = parsed.unencrypted_keys().expect("keys in the clear");
    let run = Uuid::from_u128(5);
    let key = layout::attempt_manifest_key(run, 1);
    let bytes = write_manifest(&keys, &key, run, 10);
    assert_eq!(
        read_manifest(&reopened, &key, &bytes).expect("readable"),
        11
    );
    let mut damaged = bytes.clone();
    damaged[60] ^= 1;
    assert!(read_manifest(&reopened, &key, &damaged).is_err());
    assert!(reopened
        .add_slot(SlotSecret::Catalog(&CATALOG_KEY), now(), &mut OsRng)
        .is_err());
}

#[test]
fn the_v2_chunker_cuts_with_a_keyed_gear_table() {
    let (new, _) = create();
    let mut data = vec![0u8; 8 << 20];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    let cut = |chunker: &coffer_format::Chunker| -> Vec<usize> {
        chunker
            .chunks(&data[..])
            .map(|chunk| chunk.expect("in memory").len())
            .collect()
    };
    let v2 = cut(&new.keys.chunker());
    let v1 = cut(&coffer_format::Chunker::new(ChunkerParams::default()));
    assert_eq!(v2.iter().sum::<usize>(), data.len());
    assert_ne!(v1, v2, "the gear table must change the boundaries");
    let (other, _) = create();
    assert_ne!(
        cut(&other.keys.chunker()),
        v2,
        "each repository cuts differently"
    );
}

#[test]
fn slot_ids_parse_only_in_their_canonical_spelling() {
    let id: SlotId = "00112233445566778899aabbccddeeff"
        .parse()
        .expect("canonical");
    assert_eq!(id.to_string(), "00112233445566778899aabbccddeeff");
    assert!("00112233445566778899AABBCCDDEEFF"
        .parse::<SlotId>()
        .is_err());
}
