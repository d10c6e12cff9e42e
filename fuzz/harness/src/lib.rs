//! The bodies of Coffer's fuzz targets. Each function takes arbitrary bytes,
//! feeds them to one parser or validator that meets untrusted input, and
//! panics only when an invariant that parser promises is broken (a crash
//! of the parser itself is found the same way). The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` call these, and `tests/corpus.rs` replays the
//! committed corpus through them on stable Rust, so CI needs no nightly.

mod seeds;

pub use seeds::seeds;

use std::path::Path;
use std::sync::OnceLock;

use coffer_control_plane::model::path::check_normalised_absolute;
use coffer_format::crypto::{unlock_slot, KeySlot, SlotSecret, UnlockedSlot};
use coffer_format::manifest::sealed_manifest_reader;
use coffer_format::pack::{open_blob, read_pack_v2};
use coffer_format::{
    decode_blob, read_pack_entries, ChunkHasher, ChunkIndex, IndexFile, ManifestReader,
    MAX_LINE_BYTES,
};
use coffer_format::{layout, CondemnedSet, RepositoryConfigV2, RepositoryKeys};
use coffer_proto::v1 as pb;
use coffer_worker::paths::grant::{check_path_grant, PathUse, WorkerRoots};
use coffer_worker::paths::{check_relative, is_within, normalise, relative_to};
use prost::Message;
use rand::SeedableRng;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: [(&str, Target); 6] = [
    ("path_normalise", path_normalise),
    ("manifest_reader", manifest_reader),
    ("index_parser", index_parser),
    ("pack_parser", pack_parser),
    ("proto_validation", proto_validation),
    ("v2_reader", v2_reader),
];

/// The key fuzzed packs are hashed with (and the seeds made with).
pub const FUZZ_KEY: [u8; 32] = [7; 32];

/// Entries read from one fuzzed manifest at most, so a valid but long one
/// does not stall the fuzzer.
const MAX_ENTRIES: usize = 100_000;

/// The one local-path rule (`coffer_format::local_path`) as both sides
/// apply it: the control plane and the worker accept exactly the same
/// spellings; an accepted path is absolute, returned unchanged (nothing is
/// rewritten), its components never empty, `.` or `..`; a grant for exactly
/// it admits it and no other.
pub fn path_normalise(data: &[u8]) {
    if check_relative(data).is_ok() {
        assert!(!data.starts_with(b"/") && !data.ends_with(b"/"));
        assert!(data
            .split(|b| *b == b'/')
            .all(|c| !matches!(c, b"" | b"." | b"..")));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let worker = normalise(text);
    let control_plane = check_normalised_absolute("path", text);
    assert_eq!(
        worker.is_ok(),
        control_plane.is_ok(),
        "{text:?}: the worker says {worker:?}, the control plane {control_plane:?}"
    );
    let Ok(path) = worker else {
        return;
    };
    let spelled = path
        .to_str()
        .expect("normalise returns the input's own text");
    assert_eq!(spelled, text, "an accepted path is never rewritten");
    assert!(spelled.starts_with('/'), "{spelled:?} is not absolute");
    if spelled != "/" {
        assert!(
            check_relative(&spelled.as_bytes()[1..]).is_ok(),
            "{spelled:?}"
        );
    }
    let root = path.parent().unwrap_or(Path::new("/"));
    assert!(is_within(&path, root));
    assert!(relative_to(&path, root).is_some());
    let grant = pb::PathGrant {
        path: spelled.to_owned(),
        r#use: pb::GrantUse::RestoreDestination as i32,
        root: root.to_str().unwrap_or("/").to_owned(),
        grant_id: "fuzz".to_owned(),
        restore_ownership: false,
        restore_special_bits: false,
    };
    let roots = WorkerRoots::default();
    let allowed = check_path_grant(
        std::slice::from_ref(&grant),
        &roots,
        spelled,
        PathUse::RestoreDestination,
    )
    .expect("a grant for exactly the path admits it");
    assert!(is_within(&allowed.path, &allowed.anchor));
    assert!(check_path_grant(&[grant], &roots, spelled, PathUse::BackupSource).is_err());
}

/// The manifest reader: whatever it hands out before an error is an entry a
/// restore may join below its destination.
pub fn manifest_reader(data: &[u8]) {
    let Ok(mut reader) = ManifestReader::new(data) else {
        return;
    };
    for _ in 0..MAX_ENTRIES {
        match reader.next_entry() {
            Ok(Some(entry)) => {
                assert!(
                    entry.path.is_empty() || check_relative(&entry.path).is_ok(),
                    "entry path {:?} escapes",
                    String::from_utf8_lossy(&entry.path)
                );
                assert!((entry.path.len() as u64) < MAX_LINE_BYTES);
                assert!(entry.attributes.check().is_ok());
            }
            Ok(None) => {
                assert!(reader.footer().is_some());
                return;
            }
            Err(_) => {
                assert!(
                    reader.next_entry().is_err(),
                    "a reader goes on after an error"
                );
                return;
            }
        }
    }
}

/// The index parser: every entry of an accepted index file lies inside its
/// pack, and the in-memory index finds every chunk it was given.
pub fn index_parser(data: &[u8]) {
    let Ok(file) = IndexFile::decode(data) else {
        return;
    };
    let mut index = ChunkIndex::new();
    index.add_file(&file);
    for pack in &file.packs {
        for entry in &pack.entries {
            let end = u64::from(entry.offset) + u64::from(entry.length);
            assert!(end <= pack.pack_length, "entry beyond its pack");
            assert!(entry.raw_length <= coffer_format::pack::MAX_CHUNK_SIZE);
            assert!(index.get(&entry.chunk_id).is_some());
        }
    }
}

/// The pack parser: the entries of an accepted pack tile it, and decoding a
/// blob yields exactly the raw length its entry promises, or an error.
pub fn pack_parser(data: &[u8]) {
    let Ok(entries) = read_pack_entries(data) else {
        return;
    };
    let hasher = ChunkHasher::new(FUZZ_KEY);
    for entry in &entries {
        let blob = coffer_format::pack::blob_slice(data, entry).expect("entries lie in the pack");
        if let Ok(raw) = decode_blob(&hasher, entry, blob) {
            assert_eq!(raw.len(), entry.raw_length as usize);
        }
    }
}

/// The control plane's proto → domain conversions: they never panic, and a
/// target they accept converts back to a proto they accept again unchanged.
pub fn proto_validation(data: &[u8]) {
    use coffer_control_plane::api::convert;
    if let Ok(job) = pb::Job::decode(data) {
        if let Ok(target) = convert::target_from_proto("job.target", job.target) {
            let again =
                convert::target_from_proto("job.target", Some(convert::target_to_proto(&target)))
                    .expect("a valid target round-trips");
            assert_eq!(again, target);
        }
        let _ = convert::options_from_proto("job.options", job.options);
        let _ = convert::selector_from_proto("job.worker_selector", job.worker_selector);
    }
    if let Ok(user) = pb::User::decode(data) {
        let _ = coffer_control_plane::model::user::NewUser::try_from(user);
    }
    if let Ok(tag) = pb::Tag::decode(data) {
        let _ = coffer_control_plane::model::tag::NewTag::try_from(tag);
    }
}

/// The catalog key of the v2 repository every v2 input is read against.
pub const V2_CATALOG_KEY: [u8; 32] = [9; 32];
/// The key a fuzzed v2 manifest is read under.
pub const V2_MANIFEST_KEY: &str = "snapshots/00000000-0000-0000-0000-000000000001.1";

/// A v2 repository made from a fixed seed: its keys, config, and catalog
/// slot (unlocked), for reading fuzzed v2 objects.
pub struct V2Fixture {
    /// The repository's keys.
    pub keys: RepositoryKeys,
    /// Its public config.
    pub config: RepositoryConfigV2,
    /// Its catalog slot, unlocked.
    pub slot: UnlockedSlot,
    /// `keys/<slot>` and its bytes.
    pub slot_object: (String, Vec<u8>),
    /// `keyring/1.<slot>` and its bytes.
    pub keyring_object: (String, Vec<u8>),
}

/// The one [`V2Fixture`], made on first use.
pub fn v2_fixture() -> &'static V2Fixture {
    static FIXTURE: OnceLock<V2Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let new = RepositoryKeys::create(
            "00aa",
            &V2_CATALOG_KEY,
            None,
            chrono::DateTime::UNIX_EPOCH,
            &mut rng,
        )
        .expect("a fixture repository");
        let config = RepositoryConfigV2::from_bytes(&new.config).expect("its config");
        let find = |prefix: &str| {
            new.objects
                .iter()
                .find(|(key, _)| key.starts_with(prefix))
                .cloned()
                .expect("created with one slot")
        };
        let slot_object = find(layout::KEYS_PREFIX);
        let keyring_object = find(layout::KEYRING_PREFIX);
        let slot = KeySlot::parse(&slot_object.0, &slot_object.1).expect("a valid slot");
        let slot = unlock_slot(&[slot], SlotSecret::Catalog(&V2_CATALOG_KEY)).expect("it opens");
        V2Fixture {
            keys: new.keys,
            config,
            slot,
            slot_object,
            keyring_object,
        }
    })
}

/// Every format v2 reader, chosen by the first byte: key slots, keyring
/// objects, packs (and their blobs), index files, manifests, condemned sets
/// and the config. None may panic or allocate beyond its bounds; what they
/// accept must hold together (a blob opens to its raw length).
pub fn v2_reader(data: &[u8]) {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = v2_fixture();
    match selector % 7 {
        0 => {
            if let Ok(slot) = KeySlot::parse(&fixture.slot_object.0, rest) {
                let _ = unlock_slot(&[slot], SlotSecret::Catalog(&V2_CATALOG_KEY));
            }
        }
        1 => {
            let objects = [(fixture.keyring_object.0.clone(), rest.to_vec())];
            if let Ok(keys) = RepositoryKeys::open(&fixture.config, &fixture.slot, &objects) {
                assert_eq!(keys.repository_id(), fixture.keys.repository_id());
            }
        }
        2 => {
            let Ok((sealing, entries)) = read_pack_v2(&fixture.keys, rest) else {
                return;
            };
            for entry in &entries {
                let blob = &rest[entry.offset as usize..][..entry.length as usize];
                if let Ok(raw) = open_blob(&fixture.keys, &sealing, entry, blob) {
                    assert_eq!(raw.len(), entry.raw_length as usize);
                }
            }
        }
        3 => {
            let _ = IndexFile::decode_v2(&fixture.keys, "index/fuzzed", rest);
        }
        4 => {
            let Ok(mut reader) = sealed_manifest_reader(rest, &fixture.keys, V2_MANIFEST_KEY)
            else {
                return;
            };
            for _ in 0..MAX_ENTRIES {
                if !matches!(reader.next_entry(), Ok(Some(_))) {
                    break;
                }
            }
        }
        5 => {
            let _ = CondemnedSet::from_sealed(&fixture.keys, "condemned/fuzzed", rest);
        }
        _ => {
            let _ = RepositoryConfigV2::from_bytes(rest);
        }
    }
}
