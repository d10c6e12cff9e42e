//! Throughput of format v2's costs, measured rather than asserted (timed
//! tests are flaky on shared machines). Run in release mode:
//!
//! ```text
//! cargo test --release -p coffer-format --test throughput -- --ignored --nocapture
//! ```

use std::io::{Read, Write};
use std::time::Instant;

use chrono::DateTime;
use coffer_format::crypto::{SealedReader, SealedWriter};
use coffer_format::pack::{
    encode_chunk, new_compressor, open_blob, read_pack_v2, BlobType, PackWriterV2,
};
use coffer_format::{Chunker, ChunkerParams, ObjectKind, PackBuilder};
use rand::rngs::OsRng;

const MIB: usize = 1 << 20;

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"throughput")
        .finalize_xof()
        .fill(&mut data);
    data
}

fn rate(bytes: usize, started: Instant) -> String {
    format!(
        "{:.0} MiB/s",
        bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64()
    )
}

#[test]
#[ignore = "a measurement: run in release mode with --ignored --nocapture"]
fn measure_sealing_packing_and_chunking_throughput() {
    let keys = coffer_format::RepositoryKeys::create(
        "00aa",
        &[7; 32],
        None,
        DateTime::UNIX_EPOCH,
        &mut OsRng,
    )
    .expect("created")
    .keys;
    let data = random_bytes(256 * MIB);

    let started = Instant::now();
    let mut writer = SealedWriter::new(
        Vec::with_capacity(data.len() + MIB),
        &keys,
        ObjectKind::Manifest,
        "m",
        &mut OsRng,
    )
    .expect("header");
    for piece in data.chunks(64 * 1024) {
        writer.write_all(piece).expect("in memory");
    }
    let sealed = writer.finish().expect("in memory");
    println!(
        "AES-256-GCM seal (sealed object, 1 MiB segments): {}",
        rate(data.len(), started)
    );
    let started = Instant::now();
    let mut reader =
        SealedReader::new(&sealed[..], &keys, ObjectKind::Manifest, "m").expect("header");
    let mut plain = Vec::with_capacity(data.len());
    reader.read_to_end(&mut plain).expect("intact");
    println!(
        "AES-256-GCM open (sealed object, 1 MiB segments): {}",
        rate(data.len(), started)
    );
    assert_eq!(plain.len(), data.len());

    // A 16 MiB pack of 1 MiB incompressible chunks, v1 against v2.
    let mut compressor = new_compressor(3).expect("zstd");
    let blobs: Vec<_> = data[..16 * MIB]
        .chunks(MIB)
        .map(|chunk| {
            encode_chunk(&mut compressor, keys.hasher().chunk_id(chunk), chunk).expect("fits")
        })
        .collect();
    let rounds = 8;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut builder = PackBuilder::new(3);
        blobs.iter().for_each(|blob| {
            builder.add_blob(blob).expect("fits");
        });
        builder.finish().expect("fits");
    }
    println!(
        "v1 pack build (16 MiB, ids included): {}",
        rate(rounds * 16 * MIB, started)
    );
    let started = Instant::now();
    let mut last = None;
    for _ in 0..rounds {
        let mut writer = PackWriterV2::new();
        blobs.iter().for_each(|blob| {
            writer.add(blob, BlobType::Data).expect("fits");
        });
        last = Some(writer.finish(&keys, &mut OsRng).expect("fits"));
    }
    println!(
        "v2 pack build (16 MiB, shuffled and sealed): {}",
        rate(rounds * 16 * MIB, started)
    );
    let pack = last.expect("built");
    let started = Instant::now();
    let (sealing, entries) = read_pack_v2(&keys, &pack.bytes).expect("intact");
    for entry in &entries {
        let blob = &pack.bytes[entry.offset as usize..][..entry.length as usize];
        open_blob(&keys, &sealing, entry, blob).expect("intact");
    }
    println!(
        "v2 blob open (decrypt + id check): {}",
        rate(16 * MIB, started)
    );

    let params = ChunkerParams::default();
    for (name, chunker) in [
        ("v1 (fastcdc's table)", Chunker::new(params)),
        ("v2 (keyed table)", keys.chunker()),
    ] {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let mut stream = chunker.stream(&data[..], Default::default());
            let mut count = 0;
            while let Some(chunk) = stream.next_chunk() {
                chunk.expect("in memory");
                count += 1;
            }
            assert!(count > 100);
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!(
            "chunker {name}: {:.0} MiB/s",
            data.len() as f64 / MIB as f64 / best
        );
    }
}
