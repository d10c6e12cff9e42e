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

/// Nanoseconds this thread has run on a CPU (Linux), so figures on a
/// shared machine are not diluted by other processes' load.
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// A point to measure from: wall clock and on-CPU time.
struct Started(Instant, Option<u64>);

fn start() -> Started {
    Started(Instant::now(), cpu_ns())
}

fn rate(bytes: usize, started: Started) -> String {
    let mib = bytes as f64 / MIB as f64;
    let wall = mib / started.0.elapsed().as_secs_f64();
    match (started.1, cpu_ns()) {
        (Some(before), Some(after)) if after > before => {
            let busy = mib / ((after - before) as f64 / 1e9);
            format!("{wall:.0} MiB/s wall, {busy:.0} MiB/s per busy core")
        }
        _ => format!("{wall:.0} MiB/s wall"),
    }
}

/// Cuts `data` as the chunker did before the gear table became a
/// parameter: `fastcdc::v2020::cut` with its built-in table. Returns the
/// number of chunks.
fn cut_with_the_static_table(data: &[u8], params: ChunkerParams) -> usize {
    use fastcdc::v2020::{cut, logarithm2, Normalization, MASKS};
    let bits = logarithm2(params.avg_size);
    let level = Normalization::Level1.bits();
    let mask_s = MASKS[(bits + level) as usize];
    let mask_l = MASKS[(bits - level) as usize];
    let (mut start, mut count) = (0, 0);
    while start < data.len() {
        let (_, length) = cut(
            &data[start..],
            params.min_size as usize,
            params.avg_size as usize,
            params.max_size as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        start += length;
        count += 1;
    }
    count
}

/// Seals `data` as a manifest into `sink`, in 64 KiB writes.
fn seal_into<W: Write>(sink: W, keys: &coffer_format::RepositoryKeys, data: &[u8]) -> W {
    let mut writer =
        SealedWriter::new(sink, keys, ObjectKind::Manifest, "m", &mut OsRng).expect("header");
    for piece in data.chunks(64 * 1024) {
        writer.write_all(piece).expect("in memory");
    }
    writer.finish().expect("in memory")
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

    // The AEAD alone, for comparison with the framing below.
    {
        use aes_gcm::aead::AeadInPlace;
        use aes_gcm::{Aes256Gcm, KeyInit};
        let cipher = Aes256Gcm::new(&[3u8; 32].into());
        let mut buffer = data[..MIB].to_vec();
        let started = start();
        for counter in 0..256u32 {
            let mut nonce = [0u8; 12];
            nonce[8..].copy_from_slice(&counter.to_be_bytes());
            cipher
                .encrypt_in_place_detached(&nonce.into(), b"", &mut buffer)
                .expect("1 MiB");
        }
        println!(
            "AES-256-GCM alone (aes-gcm, 1 MiB in place): {}",
            rate(256 * MIB, started)
        );
    }

    // Sealed objects, streamed as a worker streams a manifest: written
    // into a sink, read in 64 KiB pieces, so the figure is the framing's
    // cost and not that of a fresh 256 MiB buffer.
    let sealed = seal_into(Vec::with_capacity(data.len() + MIB), &keys, &data);
    let started = start();
    seal_into(std::io::sink(), &keys, &data);
    println!(
        "sealed object seal (1 MiB segments): {}",
        rate(data.len(), started)
    );
    let started = start();
    let mut reader =
        SealedReader::new(&sealed[..], &keys, ObjectKind::Manifest, "m").expect("header");
    let (mut piece, mut total) = (vec![0u8; 64 * 1024], 0);
    loop {
        let read = reader.read(&mut piece).expect("intact");
        if read == 0 {
            break;
        }
        total += read;
    }
    println!(
        "sealed object open (1 MiB segments): {}",
        rate(data.len(), started)
    );
    assert_eq!(total, data.len());

    // A 16 MiB pack of 1 MiB incompressible chunks, v1 against v2.
    let mut compressor = new_compressor(3).expect("zstd");
    let blobs: Vec<_> = data[..16 * MIB]
        .chunks(MIB)
        .map(|chunk| {
            encode_chunk(&mut compressor, keys.hasher().chunk_id(chunk), chunk).expect("fits")
        })
        .collect();
    let rounds = 8;
    let started = start();
    for _ in 0..rounds {
        let mut builder = PackBuilder::new(3);
        blobs.iter().for_each(|blob| {
            builder.add_blob(blob).expect("fits");
        });
        builder.finish().expect("fits");
    }
    println!(
        "v1 pack build (16 MiB): {}",
        rate(rounds * 16 * MIB, started)
    );
    let mut last = None;
    // The worker hands each blob over; cloning them is not part of the cost.
    let copies: Vec<Vec<_>> = (0..rounds).map(|_| blobs.clone()).collect();
    let started = start();
    for copy in copies {
        let mut writer = PackWriterV2::new();
        for blob in copy {
            writer.add(blob, BlobType::Data).expect("fits");
        }
        last = Some(writer.finish(&keys, &mut OsRng).expect("fits"));
    }
    println!(
        "v2 pack build (16 MiB, shuffled and sealed): {}",
        rate(rounds * 16 * MIB, started)
    );
    let pack = last.expect("built");
    let started = start();
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
    for round in 0..2 {
        let started = start();
        let count = cut_with_the_static_table(&data, params);
        assert!(count > 100);
        println!(
            "chunker before this change (fastcdc's static table), round {round}: {}",
            rate(data.len(), started)
        );
        for (name, chunker) in [
            ("v1 (fastcdc's table)", Chunker::new(params)),
            ("v2 (keyed table)", keys.chunker()),
        ] {
            let started = start();
            let mut stream = chunker.stream(&data[..], Default::default());
            let mut count = 0;
            while let Some(chunk) = stream.next_chunk() {
                chunk.expect("in memory");
                count += 1;
            }
            assert!(count > 100);
            println!(
                "chunker {name}, round {round}: {}",
                rate(data.len(), started)
            );
        }
    }
}
