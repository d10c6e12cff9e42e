use super::*;
use crate::test_data::pseudo_random_bytes;

fn hasher() -> ChunkHasher {
    ChunkHasher::new([3u8; 32])
}

fn sample_chunks() -> Vec<Vec<u8>> {
    vec![
        b"hello hello hello hello hello hello hello hello".repeat(1000),
        pseudo_random_bytes(10, 100_000),
        vec![0u8; 1],
        pseudo_random_bytes(11, 7),
        b"another compressible chunk ".repeat(5000),
    ]
}

fn build(chunks: &[Vec<u8>]) -> SealedPack {
    let hasher = hasher();
    let mut builder = PackBuilder::new(3);
    for chunk in chunks {
        assert!(builder
            .add(hasher.chunk_id(chunk), chunk)
            .expect("chunk fits"));
    }
    builder.finish().expect("pack fits")
}

#[test]
fn random_chunks_skip_zstd_and_text_like_chunks_are_compressed() {
    let mut compressor = new_compressor(3).expect("zstd starts");
    let text = b"words drawn from a small vocabulary, again and again; ".repeat(300);
    let half_text = [pseudo_random_bytes(20, 8000), text.clone()].concat();
    for (raw, expected) in [
        (pseudo_random_bytes(21, 1024), Compression::None),
        (pseudo_random_bytes(22, 2 << 20), Compression::None),
        (text, Compression::Zstd),
        (half_text, Compression::Zstd),
        (vec![7u8; 100_000], Compression::Zstd),
    ] {
        let id = hasher().chunk_id(&raw);
        let encoded = encode_chunk(&mut compressor, id, &raw).expect("encodes");
        assert_eq!(encoded.compression, expected, "{} bytes", raw.len());
        let mut builder = PackBuilder::new(3);
        builder.add_blob(&encoded).expect("fits");
        let pack = builder.finish().expect("pack fits");
        let entry = &pack.entries[0];
        let blob = &pack.bytes[entry.offset as usize..][..entry.length as usize];
        assert_eq!(decode_blob(&hasher(), entry, blob).expect("decodes"), raw);
    }
}

#[test]
fn pack_round_trips_compressible_and_random_chunks() {
    let chunks = sample_chunks();
    let pack = build(&chunks);
    assert_eq!(pack.id, PackId::compute(&pack.bytes));
    assert_eq!(pack.entries.len(), chunks.len());
    assert_eq!(pack.entries[0].compression, Compression::Zstd);
    assert!(pack.entries[0].length < pack.entries[0].raw_length / 10);
    assert_eq!(pack.entries[1].compression, Compression::None);

    let entries = read_pack_entries(&pack.bytes).expect("valid pack");
    assert_eq!(entries, pack.entries);
    for (entry, chunk) in entries.iter().zip(&chunks) {
        let blob = blob_slice(&pack.bytes, entry).expect("inside the pack");
        let raw = decode_blob(&hasher(), entry, blob).expect("intact blob");
        assert_eq!(&raw, chunk);
    }
}

#[test]
fn adding_the_same_chunk_twice_stores_it_once() {
    let hasher = hasher();
    let mut builder = PackBuilder::new(3);
    let chunk = b"same".repeat(100);
    let id = hasher.chunk_id(&chunk);
    assert!(builder.add(id, &chunk).expect("fits"));
    let len = builder.len();
    assert!(!builder.add(id, &chunk).expect("fits"));
    assert_eq!(builder.len(), len);
    assert_eq!(builder.chunk_count(), 1);
    assert!(builder.contains(&id));
}

#[test]
fn flipped_byte_in_a_blob_is_detected() {
    let chunks = sample_chunks();
    for index in [0, 1] {
        let pack = build(&chunks);
        let entry = &pack.entries[index];
        let mut bytes = pack.bytes.clone();
        bytes[entry.offset as usize + entry.length as usize / 2] ^= 0x40;
        // The trailer is intact, so listing still works...
        let entries = read_pack_entries(&bytes).expect("trailer intact");
        let blob = blob_slice(&bytes, &entries[index]).expect("inside");
        // ...but decoding the damaged blob must fail, never return bytes.
        let err = decode_blob(&hasher(), &entries[index], blob).expect_err("damaged");
        assert!(err.is_corruption(), "{err}");
        if entry.compression == Compression::None {
            assert!(matches!(err, FormatError::HashMismatch { .. }), "{err}");
        }
        assert_ne!(PackId::compute(&bytes), pack.id);
    }
}

#[test]
fn wrong_key_is_a_hash_mismatch() {
    let chunks = sample_chunks();
    let pack = build(&chunks);
    let entry = &pack.entries[0];
    let blob = blob_slice(&pack.bytes, entry).expect("inside");
    let err = decode_blob(&ChunkHasher::new([4u8; 32]), entry, blob).expect_err("wrong key");
    assert!(
        matches!(err, FormatError::HashMismatch { expected, .. } if expected == entry.chunk_id),
        "{err}"
    );
}

#[test]
fn truncated_pack_is_rejected() {
    let pack = build(&sample_chunks());
    for cut in [
        1,
        10,
        PACK_FOOTER_LEN,
        pack.bytes.len() / 2,
        pack.bytes.len() - 9,
    ] {
        let truncated = &pack.bytes[..pack.bytes.len() - cut];
        let err = read_pack_entries(truncated).expect_err("truncated");
        assert!(err.is_corruption(), "cut {cut}: {err}");
    }
    assert!(read_pack_entries(&[]).is_err());
}

#[test]
fn damaged_trailer_is_rejected() {
    let pack = build(&sample_chunks());
    let trailer_byte = pack.bytes.len() - PACK_FOOTER_LEN - 3;
    let mut bytes = pack.bytes.clone();
    bytes[trailer_byte] ^= 1;
    let err = read_pack_entries(&bytes).expect_err("damaged");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn entry_and_blob_length_disagreement_is_corruption() {
    let pack = build(&sample_chunks());
    let entry = &pack.entries[1];
    let blob = blob_slice(&pack.bytes, entry).expect("inside");
    let err = decode_blob(&hasher(), entry, &blob[1..]).expect_err("short blob");
    assert!(matches!(err, FormatError::Corrupt(_)), "{err}");
}

#[test]
fn newer_pack_version_is_unsupported() {
    let mut bytes = build(&sample_chunks()).bytes;
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        read_pack_entries(&bytes),
        Err(FormatError::UnsupportedFormat { version: 2, .. })
    ));
}

#[test]
fn empty_pack_is_valid_and_lists_nothing() {
    let pack = PackBuilder::new(3).finish().expect("fits");
    assert_eq!(
        pack.bytes.len(),
        PACK_HEADER_LEN + TRAILER_COUNT_LEN + PACK_FOOTER_LEN
    );
    assert!(read_pack_entries(&pack.bytes).expect("valid").is_empty());
}

#[test]
fn oversized_chunk_is_refused() {
    let big = vec![0u8; MAX_CHUNK_SIZE as usize + 1];
    let mut builder = PackBuilder::new(1);
    let err = builder
        .add(hasher().chunk_id(&big), &big)
        .expect_err("too big");
    assert!(matches!(err, FormatError::InvalidInput(_)));
    assert!(builder.is_empty());
}

#[test]
fn a_blob_that_decodes_past_its_raw_length_is_an_error_not_an_allocation() {
    let hasher = hasher();
    // 64 MiB of zeros stored in a few KiB, under an entry promising 4 KiB.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).expect("compress");
    assert!(bomb.len() < 64 << 10);
    let entry = PackEntry {
        chunk_id: hasher.chunk_id(&[0u8; 4096]),
        offset: PACK_HEADER_LEN as u32,
        length: bomb.len() as u32,
        raw_length: 4096,
        compression: Compression::Zstd,
        blob_type: BlobType::Data,
    };
    assert!(matches!(
        decode_blob(&hasher, &entry, &bomb),
        Err(FormatError::Corrupt(_))
    ));
    let oversized = PackEntry {
        raw_length: MAX_CHUNK_SIZE + 1,
        ..entry
    };
    assert!(decode_blob(&hasher, &oversized, &bomb).is_err());
}
