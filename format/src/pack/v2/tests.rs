use super::*;
use crate::crypto::test_rng::{test_keys, FixedRng};
use crate::pack::{encode_chunk, new_compressor, read_pack_entries};
use crate::test_data::pseudo_random_bytes;

fn keys() -> RepositoryKeys {
    test_keys(b"packs", Encryption::Aes256Gcm)
}

fn chunks() -> Vec<Vec<u8>> {
    (0..12u64)
        .map(|i| {
            if i % 2 == 0 {
                format!("compressible chunk {i} ").repeat(200).into_bytes()
            } else {
                pseudo_random_bytes(i, 3000 + i as usize)
            }
        })
        .collect()
}

fn build(keys: &RepositoryKeys, chunks: &[Vec<u8>], seed: &[u8]) -> SealedPack {
    let mut compressor = new_compressor(3).expect("zstd");
    let mut writer = PackWriterV2::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let encoded =
            encode_chunk(&mut compressor, keys.hasher().chunk_id(chunk), chunk).expect("fits");
        let blob_type = if i == 3 {
            BlobType::Tree
        } else {
            BlobType::Data
        };
        assert!(writer.add(encoded.clone(), blob_type).expect("fits"));
        assert!(
            !writer.add(encoded, blob_type).expect("fits"),
            "a duplicate is skipped"
        );
    }
    writer.finish(keys, &mut FixedRng::new(seed)).expect("fits")
}

fn blob<'a>(pack: &'a SealedPack, entry: &PackEntry) -> &'a [u8] {
    &pack.bytes[entry.offset as usize..][..entry.length as usize]
}

#[test]
fn a_v2_pack_round_trips_and_hides_its_chunks() {
    let keys = keys();
    let chunks = chunks();
    let pack = build(&keys, &chunks, b"one");
    assert_eq!(pack.id, PackId::compute(&pack.bytes));
    let (sealing, entries) = read_pack_v2(&keys, &pack.bytes).expect("intact");
    assert_eq!(Some(sealing), pack.sealing);
    assert_eq!(entries, pack.entries);
    for entry in &entries {
        let raw = open_blob(&keys, &sealing, entry, blob(&pack, entry)).expect("intact blob");
        assert_eq!(keys.hasher().chunk_id(&raw), entry.chunk_id);
        assert!(chunks.contains(&raw));
    }
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.blob_type == BlobType::Tree)
            .count(),
        1
    );
    for chunk in &chunks {
        assert!(
            !pack.bytes.windows(32).any(|w| w == &chunk[..32]),
            "chunk bytes visible"
        );
    }
    // A v1 reader says this is a newer version rather than misreading it.
    assert!(matches!(
        read_pack_entries(&pack.bytes),
        Err(FormatError::UnsupportedFormat { version: 2, .. })
    ));
}

#[test]
fn blob_order_is_shuffled() {
    let keys = keys();
    let chunks = chunks();
    let insertion: Vec<_> = chunks.iter().map(|c| keys.hasher().chunk_id(c)).collect();
    let order = |seed: &[u8]| -> Vec<_> {
        build(&keys, &chunks, seed)
            .entries
            .iter()
            .map(|e| e.chunk_id)
            .collect()
    };
    let first = order(b"a");
    let second = order(b"b");
    assert_ne!(first, insertion);
    assert_ne!(first, second);
    let mut sorted = first.clone();
    sorted.sort();
    let mut expected = insertion.clone();
    expected.sort();
    assert_eq!(sorted, expected);
}

#[test]
fn a_flipped_bit_in_a_blob_or_the_trailer_is_detected() {
    let keys = keys();
    let pack = build(&keys, &chunks(), b"flip");
    let sealing = pack.sealing.expect("v2");
    for entry in &pack.entries {
        let mut damaged = pack.bytes.clone();
        damaged[entry.offset as usize + entry.length as usize / 2] ^= 0x20;
        let err = open_blob(
            &keys,
            &sealing,
            entry,
            blob(
                &SealedPack {
                    bytes: damaged,
                    ..pack.clone()
                },
                entry,
            ),
        )
        .expect_err("damaged blob");
        assert!(
            err.is_corruption() && err.to_string().contains(&entry.chunk_id.to_hex()),
            "{err}"
        );
    }
    let trailer_byte = pack.bytes.len() - 8 - 20;
    let mut damaged = pack.bytes.clone();
    damaged[trailer_byte] ^= 1;
    let err = read_pack_v2(&keys, &damaged).expect_err("damaged trailer");
    assert!(
        err.is_corruption() && err.to_string().contains("trailer"),
        "{err}"
    );
    for header_byte in [0, 8, 20, 40] {
        let mut damaged = pack.bytes.clone();
        damaged[header_byte] ^= 1;
        let err = read_pack_v2(&keys, &damaged).expect_err("damaged header");
        assert!(err.is_corruption(), "byte {header_byte}: {err}");
    }
}

#[test]
fn a_blob_moved_within_a_pack_or_between_packs_is_refused() {
    let keys = keys();
    let chunks = chunks();
    let pack = build(&keys, &chunks, b"move");
    let sealing = pack.sealing.expect("v2");
    let (a, b) = (&pack.entries[0], &pack.entries[1]);
    // Entry a pointed at b's bytes (as if the blobs were swapped).
    let moved = PackEntry {
        offset: b.offset,
        length: b.length,
        ..a.clone()
    };
    assert!(open_blob(&keys, &sealing, &moved, blob(&pack, b)).is_err());
    // b's bytes read as if they sat at a's offset.
    let shifted = PackEntry {
        offset: a.offset,
        ..b.clone()
    };
    assert!(open_blob(&keys, &sealing, &shifted, blob(&pack, b))
        .expect_err("moved")
        .is_corruption());
    // The same chunk in another pack has other bytes under another key.
    let other = build(&keys, &chunks, b"another pack");
    let there = other
        .entries
        .iter()
        .find(|e| e.chunk_id == a.chunk_id)
        .expect("same chunk");
    let err = open_blob(
        &keys,
        &sealing,
        &PackEntry {
            offset: a.offset,
            ..there.clone()
        },
        blob(&other, there),
    )
    .expect_err("from another pack");
    assert!(err.is_corruption(), "{err}");
    // A data blob cannot be passed off as a tree blob.
    let retyped = PackEntry {
        blob_type: BlobType::Tree,
        ..a.clone()
    };
    assert!(open_blob(&keys, &sealing, &retyped, blob(&pack, a)).is_err());
}

#[test]
fn a_pack_of_another_repository_or_an_unknown_generation_is_refused() {
    let keys = keys();
    let pack = build(&keys, &chunks(), b"x");
    let stranger = test_keys(b"stranger", Encryption::Aes256Gcm);
    assert!(read_pack_v2(&stranger, &pack.bytes)
        .expect_err("other key")
        .is_corruption());
    let mut later = pack.bytes.clone();
    later[12..16].copy_from_slice(&7u32.to_le_bytes());
    assert!(matches!(
        read_pack_v2(&keys, &later),
        Err(FormatError::KeyRejected(_))
    ));
}

#[test]
fn unencrypted_v2_packs_round_trip_and_detect_damage() {
    let keys = test_keys(b"plain", Encryption::None);
    let chunks = chunks();
    let pack = build(&keys, &chunks, b"plain");
    let (sealing, entries) = read_pack_v2(&keys, &pack.bytes).expect("intact");
    let entry = entries
        .iter()
        .find(|e| e.compression == Compression::None)
        .expect("a raw blob");
    let stored = blob(&pack, entry);
    assert!(chunks
        .iter()
        .any(|c| c.as_slice() == &stored[..stored.len() - TAG_LEN]));
    let mut damaged = stored.to_vec();
    damaged[0] ^= 1;
    assert!(open_blob(&keys, &sealing, entry, &damaged)
        .expect_err("damaged")
        .is_corruption());
}

#[test]
fn an_empty_v2_pack_is_valid() {
    let keys = keys();
    let pack = PackWriterV2::new()
        .finish(&keys, &mut FixedRng::new(b"empty"))
        .expect("fits");
    let (_, entries) = read_pack_v2(&keys, &pack.bytes).expect("valid");
    assert!(entries.is_empty());
}
