//! Valid inputs for every target, the starting corpus: without them a
//! fuzzer would spend its time finding the zstd magic number.

use chrono::{TimeZone, Utc};
use coffer_format::{
    ChunkHasher, ChunkerParams, EntryKind, FileAttributes, IndexFile, IndexPack, ManifestEntry,
    ManifestHeader, ManifestWriter, PackBuilder,
};
use coffer_proto::v1 as pb;
use prost::Message;
use rand::SeedableRng;
use uuid::Uuid;

use super::FUZZ_KEY;

/// `(target, input)` pairs of valid inputs.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for path in [
        "/",
        "/srv/data",
        "/srv/data/",
        "/a//b",
        "/a/../b",
        "relative",
    ] {
        seeds.push(("path_normalise", path.as_bytes().to_vec()));
    }
    let hasher = ChunkHasher::new(FUZZ_KEY);
    let chunks: [&[u8]; 3] = [b"first chunk of text text text text", &[0u8; 600], b"last"];
    let mut pack = PackBuilder::new(3);
    for chunk in chunks {
        pack.add(hasher.chunk_id(chunk), chunk).expect("seed chunk");
    }
    let sealed = pack.finish().expect("seed pack");
    seeds.push(("pack_parser", sealed.bytes.clone()));
    let index = IndexFile {
        packs: vec![IndexPack::from_sealed(&sealed)],
    };
    seeds.push(("index_parser", index.encode().expect("seed index").1));
    seeds.push(("manifest_reader", manifest(&hasher, &chunks)));
    seeds.push(("proto_validation", job().encode_to_vec()));
    seeds.extend(v2_seeds(&chunks));
    seeds
}

/// Valid v2 objects of the fixture repository, each behind the byte that
/// selects its reader in `v2_reader`.
fn v2_seeds(chunks: &[&[u8]]) -> Vec<(&'static str, Vec<u8>)> {
    use coffer_format::manifest::sealed_manifest_writer;
    use coffer_format::pack::{encode_chunk, new_compressor, BlobType, PackWriterV2};

    let fixture = super::v2_fixture();
    let keys = &fixture.keys;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut compressor = new_compressor(3).expect("zstd");
    let mut pack = PackWriterV2::new();
    for chunk in chunks {
        let encoded = encode_chunk(&mut compressor, keys.hasher().chunk_id(chunk), chunk)
            .expect("seed chunk");
        pack.add(encoded, BlobType::Data).expect("seed chunk");
    }
    let pack = pack.finish(keys, &mut rng).expect("seed pack");
    let index = IndexFile {
        packs: vec![IndexPack::from_sealed(&pack)],
    };
    let header = seed_header();
    let mut manifest = sealed_manifest_writer(
        Vec::new(),
        keys,
        super::V2_MANIFEST_KEY,
        &header,
        3,
        &mut rng,
    )
    .expect("seed manifest");
    manifest
        .add(&entry(b"", EntryKind::Directory, 0o040_755))
        .expect("root");
    let manifest = manifest.finish().expect("lines").finish().expect("sealed");
    let set = coffer_format::CondemnedSet::new(
        Uuid::from_u128(2),
        Utc.timestamp_opt(0, 0).single().expect("epoch"),
    );
    let objects = [
        fixture.slot_object.1.clone(),
        fixture.keyring_object.1.clone(),
        pack.bytes,
        index.encode_v2(keys, &mut rng).expect("seed index").1,
        manifest,
        set.to_sealed(keys, &mut rng).expect("seed set"),
        fixture.config.to_bytes(),
    ];
    objects
        .into_iter()
        .zip(0u8..)
        .map(|(bytes, selector)| ("v2_reader", [vec![selector], bytes].concat()))
        .collect()
}

/// An entry of `kind` at `path`, owned by root, with no content yet.
fn entry(path: &[u8], kind: EntryKind, mode: u32) -> ManifestEntry {
    let attributes = FileAttributes {
        kind,
        size: 0,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        content_hash: None,
        symlink_target: None,
    };
    ManifestEntry::new(path.to_vec(), attributes)
}

/// The header of every seed manifest.
fn seed_header() -> ManifestHeader {
    ManifestHeader::new(
        Uuid::from_u128(1),
        "/srv/data".to_owned(),
        "host".to_owned(),
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date"),
        ChunkerParams::default(),
    )
}

fn manifest(hasher: &ChunkHasher, chunks: &[&[u8]]) -> Vec<u8> {
    let header = seed_header();
    let mut writer = ManifestWriter::new(Vec::new(), &header, 3).expect("seed manifest");
    let mut file = entry(b"dir/file", EntryKind::File, 0o104_755);
    let mut content = hasher.content_hasher();
    for chunk in chunks {
        content.update(chunk);
        file.chunks.push(hasher.chunk_id(chunk));
        file.attributes.size += chunk.len() as u64;
    }
    file.attributes.content_hash = Some(content.finalize());
    let mut link = entry(b"dir/link", EntryKind::Symlink, 0o120_777);
    link.attributes.symlink_target = Some(b"../../etc/passwd".to_vec());
    for entry in [
        entry(b"", EntryKind::Directory, 0o040_755),
        entry(b"dir", EntryKind::Directory, 0o041_777),
        file,
        link,
    ] {
        writer.add(&entry).expect("seed entry");
    }
    writer.finish().expect("seed manifest")
}

fn job() -> pb::Job {
    pb::Job {
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                "/srv/repository".to_owned(),
            )),
        }),
        options: Some(pb::JobOptions {
            exclude: vec!["**/*.tmp".to_owned()],
            fail_on_file_errors: true,
            one_file_system: false,
            ..pb::JobOptions::default()
        }),
        worker_selector: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
        ..pb::Job::default()
    }
}
