//! The format v2 test vectors in `tests/vectors/v2.json`: every byte of a
//! repository created from a fixed "random" stream (the BLAKE3 XOF of a
//! seed), so another implementation can check itself against this one.
//!
//! The test rebuilds everything and compares it with the file, then opens
//! the stored bytes of the file with the secrets it names. Run it with
//! `COFFER_WRITE_VECTORS=1` to rewrite the file after a deliberate change
//! of the format (which needs a new format version).

use std::io::Write;

use chrono::DateTime;
use serde_json::{json, Value};

use super::kdf;
use super::sealed::SealedWriter;
use super::slot::{unlock_slot, Argon2Params, KeySlot, SlotSecret};
use super::test_rng::FixedRng;
use super::{open_object, ObjectKind, RepositoryKeys};
use crate::chunker::GearTable;
use crate::id::to_hex;
use crate::pack::{encode_chunk, new_compressor, open_blob, read_pack_v2, BlobType, PackWriterV2};
use crate::RepositoryConfigV2;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/v2.json");
const SEED: &[u8] = b"coffer format v2 test vectors";
const REPOSITORY: &str = "0190a0c4-8a1e-7b52-9c3d-3f0e5a6b7c8d";
const CATALOG_KEY: [u8; 32] = [0x5c; 32];
const PASSPHRASE: &str = "correct horse battery staple";
const ARGON2: Argon2Params = Argon2Params {
    memory_kib: 64,
    iterations: 2,
    parallelism: 1,
};
const MANIFEST_KEY: &str = "snapshots/0190a0c4-0000-7000-8000-000000000001.1";

fn hex(bytes: &[u8]) -> Value {
    Value::String(to_hex(bytes))
}

fn unhex(value: &Value) -> Vec<u8> {
    let text = value.as_str().expect("a hex string");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Everything the vectors hold, computed afresh.
fn compute() -> Value {
    let mut rng = FixedRng::new(SEED);
    let created = DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
    let new = RepositoryKeys::create(
        REPOSITORY,
        &CATALOG_KEY,
        Some((PASSPHRASE, ARGON2)),
        created,
        &mut rng,
    )
    .expect("created");
    let keys = &new.keys;
    let payload = keys.current().payload();
    let gear = GearTable::from_key(&kdf::derive(
        payload.dedup_key.as_ref(),
        None,
        kdf::INFO_GEAR,
    ));
    let gear_bytes: Vec<u8> = gear.values().iter().flat_map(|v| v.to_le_bytes()).collect();

    let plaintext: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    let mut writer = SealedWriter::with_segment_log2(
        Vec::new(),
        keys,
        ObjectKind::Manifest,
        MANIFEST_KEY,
        &mut rng,
        10,
    )
    .expect("in memory");
    writer.write_all(&plaintext).expect("in memory");
    let sealed = writer.finish().expect("in memory");

    let mut compressor = new_compressor(3).expect("zstd");
    let mut pack = PackWriterV2::new();
    for chunk in [&b"alpha"[..], b"bravo bravo", b"charlie"] {
        let encoded =
            encode_chunk(&mut compressor, keys.hasher().chunk_id(chunk), chunk).expect("fits");
        pack.add(encoded, BlobType::Data).expect("fits");
    }
    let pack = pack.finish(keys, &mut rng).expect("fits");

    let objects: serde_json::Map<String, Value> = new
        .objects
        .iter()
        .map(|(key, bytes)| (key.clone(), hex(bytes)))
        .collect();
    json!({
        "description": "Coffer repository format v2 test vectors; see format/README.md, Version 2. \
                        Randomness is the BLAKE3 XOF of `seed`, drawn in the order the reference writer draws it.",
        "seed": String::from_utf8_lossy(SEED),
        "repository_id": REPOSITORY,
        "catalog_key": hex(&CATALOG_KEY),
        "passphrase": PASSPHRASE,
        "argon2id": {"memory_kib": ARGON2.memory_kib, "iterations": ARGON2.iterations, "parallelism": ARGON2.parallelism},
        "config": String::from_utf8(new.config.clone()).expect("json"),
        "generation_1": {
            "data_key": hex(payload.data_key.as_ref()),
            "dedup_key": hex(payload.dedup_key.as_ref()),
            "payload_json": String::from_utf8(payload.to_json().to_vec()).expect("json"),
            "fingerprint": keys.current().fingerprint(),
        },
        "derived": {
            "chunk_id_key": hex(kdf::derive(payload.dedup_key.as_ref(), None, kdf::INFO_CHUNK_ID).as_ref()),
            "gear_key": hex(kdf::derive(payload.dedup_key.as_ref(), None, kdf::INFO_GEAR).as_ref()),
            "gear_table_first_4": gear.values()[..4].iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            "gear_table_blake3": blake3::hash(&gear_bytes).to_hex().to_string(),
            "chunk_id_of_alpha": keys.hasher().chunk_id(b"alpha").to_hex(),
        },
        "key_objects": objects,
        "sealed_manifest": {
            "object_key": MANIFEST_KEY,
            "segment_size": 1024,
            "plaintext": hex(&plaintext),
            "stored": hex(&sealed),
        },
        "pack": {
            "id": pack.id.to_hex(),
            "chunks": ["alpha", "bravo bravo", "charlie"],
            "stored": hex(&pack.bytes),
        },
    })
}

#[test]
fn the_checked_in_test_vectors_match_this_implementation() {
    let computed = compute();
    if std::env::var_os("COFFER_WRITE_VECTORS").is_some() {
        let mut text = serde_json::to_string_pretty(&computed).expect("serializes");
        text.push('\n');
        std::fs::write(PATH, text).expect("vectors written");
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vectors checked in"))
            .expect("json");
    assert_eq!(
        stored, computed,
        "the format's bytes changed; a change needs a new version"
    );
}

#[test]
fn the_checked_in_test_vectors_open_with_the_secrets_they_name() {
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vectors checked in"))
            .expect("json");
    let config =
        RepositoryConfigV2::from_bytes(stored["config"].as_str().expect("text").as_bytes())
            .expect("config");
    let objects: Vec<(String, Vec<u8>)> = stored["key_objects"]
        .as_object()
        .expect("a map")
        .iter()
        .map(|(key, value)| (key.clone(), unhex(value)))
        .collect();
    let slots: Vec<KeySlot> = objects
        .iter()
        .filter(|(key, _)| key.starts_with(crate::layout::KEYS_PREFIX))
        .map(|(key, bytes)| KeySlot::parse(key, bytes).expect("slot"))
        .collect();
    let catalog_key: [u8; 32] = unhex(&stored["catalog_key"]).try_into().expect("32 bytes");
    for secret in [
        SlotSecret::Catalog(&catalog_key),
        SlotSecret::Passphrase(stored["passphrase"].as_str().expect("text"), ARGON2),
    ] {
        let slot = unlock_slot(&slots, secret).expect("unlocks");
        let keys = RepositoryKeys::open(&config, &slot, &objects).expect("opens");
        assert_eq!(
            keys.current().payload().data_key.to_vec(),
            unhex(&stored["generation_1"]["data_key"])
        );
        let manifest = &stored["sealed_manifest"];
        let plain = open_object(
            &keys,
            ObjectKind::Manifest,
            manifest["object_key"].as_str().expect("text"),
            &unhex(&manifest["stored"]),
        )
        .expect("opens");
        assert_eq!(plain, unhex(&manifest["plaintext"]));
        let pack = unhex(&stored["pack"]["stored"]);
        let (sealing, entries) = read_pack_v2(&keys, &pack).expect("pack opens");
        let mut chunks: Vec<Vec<u8>> = entries
            .iter()
            .map(|entry| {
                let blob = &pack[entry.offset as usize..][..entry.length as usize];
                open_blob(&keys, &sealing, entry, blob).expect("blob opens")
            })
            .collect();
        chunks.sort();
        assert_eq!(
            chunks,
            vec![
                b"alpha".to_vec(),
                b"bravo bravo".to_vec(),
                b"charlie".to_vec()
            ]
        );
    }
}
