use std::cmp::Ordering;
use std::io::{self, Read};

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::*;
use crate::attributes::FileAttributes;
use crate::config::ChunkerParams;
use crate::hash::ChunkHasher;
use crate::FormatError;

fn header() -> ManifestHeader {
    let mut header = ManifestHeader::new(
        Uuid::from_u128(1),
        "/srv/data".to_owned(),
        "host-1".to_owned(),
        Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9)
            .single()
            .expect("valid date"),
        ChunkerParams::default(),
    );
    header.job_id = Some(Uuid::from_u128(2));
    header.parent_run_id = Some(Uuid::from_u128(3));
    header
}

fn entry(path: &[u8], kind: EntryKind) -> ManifestEntry {
    ManifestEntry {
        path: path.to_vec(),
        attributes: FileAttributes {
            kind,
            size: 0,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_700_000_000_123_456_789,
            content_hash: None,
            symlink_target: None,
        },
        ctime_ns: -5,
        inode: 42,
        dev: 7,
        chunks: Vec::new(),
    }
}

fn sample_entries() -> Vec<ManifestEntry> {
    let hasher = ChunkHasher::new([1u8; 32]);
    let root = entry(b"", EntryKind::Directory);
    let dir = entry(b"a", EntryKind::Directory);
    let mut file = entry(b"a/data.bin", EntryKind::File);
    file.attributes.size = 10;
    file.chunks = vec![hasher.chunk_id(b"01234"), hasher.chunk_id(b"56789")];
    let mut content = hasher.content_hasher();
    content.update(b"0123456789");
    file.attributes.content_hash = Some(content.finalize());
    let mut empty = entry(b"a/empty", EntryKind::File);
    empty.attributes.content_hash = Some(hasher.content_hasher().finalize());
    let mut non_utf8 = entry(b"a/\xe9t\xe9\xff", EntryKind::File);
    non_utf8.attributes.size = 5;
    non_utf8.chunks = vec![hasher.chunk_id(b"01234")];
    let mut link = entry(b"a.b", EntryKind::Symlink);
    link.attributes.symlink_target = Some(b"../target\x80".to_vec());
    vec![root, dir, file, empty, non_utf8, link]
}

fn write_manifest(entries: &[ManifestEntry]) -> Vec<u8> {
    let mut writer = ManifestWriter::new(Vec::new(), &header(), 3).expect("header");
    for entry in entries {
        writer.add(entry).expect("entry in order");
    }
    writer.finish().expect("finish")
}

fn read_all(bytes: &[u8]) -> Result<Vec<ManifestEntry>, FormatError> {
    let mut reader = ManifestReader::new(bytes)?;
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        entries.push(entry);
    }
    Ok(entries)
}

#[test]
fn manifest_round_trips_every_kind_of_entry() {
    let entries = sample_entries();
    let bytes = write_manifest(&entries);
    let mut reader = ManifestReader::new(bytes.as_slice()).expect("header");
    assert_eq!(reader.header(), &header());
    assert!(reader.footer().is_none());
    let mut read = Vec::new();
    while let Some(entry) = reader.next_entry().expect("intact") {
        read.push(entry);
    }
    assert_eq!(read, entries);
    assert_eq!(
        reader.footer(),
        Some(&ManifestFooter {
            entries: 6,
            files: 3,
            total_bytes: 15
        })
    );
    assert_eq!(reader.next_entry().expect("still fine"), None);
}

#[test]
fn manifest_is_json_lines_a_person_can_read() {
    let bytes = write_manifest(&sample_entries());
    let text = String::from_utf8(zstd::decode_all(bytes.as_slice()).expect("zstd")).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    assert!(lines[0].starts_with(r#"{"manifest":{"format":"coffer","version":1,"run_id":"00000000-0000-0000-0000-000000000001""#));
    assert!(lines[0].contains(r#""created":"2024-05-06T07:08:09Z""#));
    assert!(lines[2].starts_with(r#"{"entry":{"path_b64":"YQ==","kind":"directory""#));
    assert!(lines[6].contains(r#""symlink_target_b64":"#));
    assert_eq!(
        lines[7],
        r#"{"end":{"entries":6,"files":3,"total_bytes":15}}"#
    );
}

/// Entry lines exactly as format version 1 wrote them before the attributes
/// were grouped into [`FileAttributes`]: every such line must still read,
/// and every entry must still be written byte for byte the same, so that
/// older workers read what newer ones write.
const VERSION_1_ENTRY_LINES: [&str; 3] = [
    concat!(
        r#"{"path_b64":"YS9kYXRhLmJpbg==","kind":"file","size":10,"mode":33188,"uid":1000,"#,
        r#""gid":100,"mtime_ns":1700000000123456789,"ctime_ns":-5,"inode":42,"dev":7,"#,
        r#""content_hash":"abababababababababababababababababababababababababababababababab","#,
        r#""chunks":["cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"]}"#
    ),
    concat!(
        r#"{"path_b64":"YQ==","kind":"directory","size":0,"mode":16877,"uid":0,"gid":0,"#,
        r#""mtime_ns":-1,"ctime_ns":0,"inode":1,"dev":2,"chunks":[]}"#
    ),
    concat!(
        r#"{"path_b64":"YS5i","kind":"symlink","size":0,"mode":41471,"uid":1,"gid":2,"#,
        r#""mtime_ns":3,"ctime_ns":4,"inode":5,"dev":6,"chunks":[],"#,
        r#""symlink_target_b64":"Li4vdGFyZ2V0gA=="}"#
    ),
];

fn version_1_entries() -> [ManifestEntry; 3] {
    let attributes = |kind, size, mode, uid, gid, mtime_ns| FileAttributes {
        kind,
        size,
        mode,
        uid,
        gid,
        mtime_ns,
        content_hash: None,
        symlink_target: None,
    };
    let mut file = ManifestEntry {
        path: b"a/data.bin".to_vec(),
        attributes: attributes(
            EntryKind::File,
            10,
            0o100644,
            1000,
            100,
            1_700_000_000_123_456_789,
        ),
        ctime_ns: -5,
        inode: 42,
        dev: 7,
        chunks: vec![crate::ChunkId([0xcd; 32])],
    };
    file.attributes.content_hash = Some("ab".repeat(32));
    let directory = ManifestEntry {
        path: b"a".to_vec(),
        attributes: attributes(EntryKind::Directory, 0, 0o40755, 0, 0, -1),
        ctime_ns: 0,
        inode: 1,
        dev: 2,
        chunks: Vec::new(),
    };
    let mut link = ManifestEntry {
        path: b"a.b".to_vec(),
        attributes: attributes(EntryKind::Symlink, 0, 0o120777, 1, 2, 3),
        ctime_ns: 4,
        inode: 5,
        dev: 6,
        chunks: Vec::new(),
    };
    link.attributes.symlink_target = Some(b"../target\x80".to_vec());
    [file, directory, link]
}

#[test]
fn entries_keep_the_version_1_bytes() {
    for (line, entry) in VERSION_1_ENTRY_LINES.iter().zip(version_1_entries()) {
        let read: ManifestEntry = serde_json::from_str(line).expect("a version 1 line reads");
        assert_eq!(read, entry);
        assert_eq!(read.check(), Ok(()));
        assert_eq!(serde_json::to_string(&entry).expect("encodes"), *line);
    }
}

#[test]
fn truncated_manifest_is_an_error_never_a_short_read() {
    let entries = sample_entries();
    let bytes = write_manifest(&entries);
    for keep in 0..bytes.len() {
        match read_all(&bytes[..keep]) {
            Ok(read) => panic!(
                "{keep} of {} bytes read as {} entries",
                bytes.len(),
                read.len()
            ),
            Err(err) => assert!(
                err.is_corruption() || matches!(err, FormatError::Io(_)),
                "{keep}: {err}"
            ),
        }
    }
    assert_eq!(read_all(&bytes).expect("whole"), entries);
}

#[test]
fn manifest_cut_at_a_line_boundary_is_rejected() {
    // A writer dropped before `finish` produces a complete zstd frame
    // only if flushed; emulate a cut after the last entry line instead.
    let entries = sample_entries();
    let mut lines = crate::jsonl::LineWriter::new(Vec::new(), 3).expect("encoder");
    lines
        .write_line(&serde_json::json!({ "manifest": header() }))
        .expect("header");
    for entry in &entries {
        lines
            .write_line(&serde_json::json!({ "entry": entry }))
            .expect("entry");
    }
    let bytes = lines.finish().expect("frame");
    let err = read_all(&bytes).expect_err("no end line");
    assert!(err.to_string().contains("no end line"), "{err}");
}

#[test]
fn footer_counts_must_match_entries() {
    let entries = sample_entries();
    let mut lines = crate::jsonl::LineWriter::new(Vec::new(), 3).expect("encoder");
    lines
        .write_line(&serde_json::json!({ "manifest": header() }))
        .expect("header");
    for entry in &entries[1..] {
        lines
            .write_line(&serde_json::json!({ "entry": entry }))
            .expect("entry");
    }
    lines
        .write_line(&serde_json::json!({"end": {"entries": 6, "files": 3, "total_bytes": 15}}))
        .expect("end");
    let bytes = lines.finish().expect("frame");
    let err = read_all(&bytes).expect_err("a line went missing");
    assert!(matches!(err, FormatError::Corrupt(_)), "{err}");
}

#[test]
fn damaged_manifest_is_rejected() {
    let bytes = write_manifest(&sample_entries());
    for position in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 6] {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x01;
        assert!(
            read_all(&damaged).is_err(),
            "flip at {position} went unnoticed"
        );
    }
}

#[test]
fn newer_manifest_version_is_unsupported() {
    let mut lines = crate::jsonl::LineWriter::new(Vec::new(), 3).expect("encoder");
    lines
        .write_line(
            &serde_json::json!({"manifest": {"format": "coffer", "version": 2, "new": true}}),
        )
        .expect("header");
    let bytes = lines.finish().expect("frame");
    let err = ManifestReader::new(bytes.as_slice()).expect_err("too new");
    assert!(
        matches!(err, FormatError::UnsupportedFormat { version: 2, .. }),
        "{err}"
    );
}

#[test]
fn writer_refuses_out_of_order_and_invalid_entries() {
    let mut writer = ManifestWriter::new(Vec::new(), &header(), 3).expect("header");
    writer
        .add(&entry(b"a/b", EntryKind::Directory))
        .expect("first");
    for path in [&b"a/b"[..], b"a", b"a/a"] {
        let err = writer
            .add(&entry(path, EntryKind::Directory))
            .expect_err("not after a/b");
        assert!(matches!(err, FormatError::InvalidInput(_)), "{err}");
    }
    for path in [&b"a/../x"[..], b"b//c", b"/abs", b"c/", b"nul\0"] {
        assert!(
            writer.add(&entry(path, EntryKind::File)).is_err(),
            "{path:?}"
        );
    }
    let mut dir_with_chunks = entry(b"d", EntryKind::Directory);
    dir_with_chunks.chunks = vec![crate::ChunkId([0; 32])];
    assert!(writer.add(&dir_with_chunks).is_err());
    assert!(writer.add(&entry(b"link", EntryKind::Symlink)).is_err());
    writer
        .add(&entry(b"a.b", EntryKind::Directory))
        .expect("a/b < a.b");
    assert_eq!(writer.counts().entries, 2);
}

#[test]
fn writer_refuses_a_header_of_another_version() {
    let mut other = header();
    other.version = 2;
    assert!(matches!(
        ManifestWriter::new(Vec::new(), &other, 3),
        Err(FormatError::InvalidInput(_))
    ));
}

#[test]
fn read_errors_of_the_source_are_io_errors() {
    struct FailAfter<'a>(&'a [u8]);
    impl Read for FailAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0.len()).min(16);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let bytes = write_manifest(&sample_entries());
    let half = &bytes[..bytes.len() / 2];
    let result = ManifestReader::new(FailAfter(half)).and_then(|mut reader| {
        while reader.next_entry()?.is_some() {}
        Ok(())
    });
    let err = result.expect_err("source failed");
    assert!(matches!(err, FormatError::Io(_)), "{err}");
}

#[test]
fn compare_paths_orders_component_by_component() {
    assert_eq!(compare_paths(b"a/b", b"a.b"), Ordering::Less);
    assert_eq!(b"a/b".as_slice().cmp(b"a.b".as_slice()), Ordering::Greater);
    assert_eq!(compare_paths(b"", b"a"), Ordering::Less);
    assert_eq!(compare_paths(b"a", b"a/b"), Ordering::Less);
    assert_eq!(compare_paths(b"a/b/c", b"a/b0"), Ordering::Less);
    assert_eq!(compare_paths(b"a/z", b"b"), Ordering::Less);
    assert_eq!(compare_paths(b"x/y", b"x/y"), Ordering::Equal);
    assert_eq!(compare_paths(b"\xff", b"a"), Ordering::Greater);
}

/// A directory tree for the depth-first-walk test.
struct Dir {
    name: Vec<u8>,
    children: Vec<Dir>,
}

fn dfs(dir: &Dir, prefix: &[u8], out: &mut Vec<Vec<u8>>) {
    let mut children: Vec<&Dir> = dir.children.iter().collect();
    children.sort_by(|a, b| a.name.cmp(&b.name));
    for child in children {
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&child.name);
        out.push(path.clone());
        dfs(child, &path, out);
    }
}

#[test]
fn sorted_depth_first_walk_is_compare_paths_order() {
    // Names chosen around '/' (0x2f): '-', '.', ' ' and '!' sort before it,
    // '0' and letters after, plus non-UTF-8 bytes.
    let names: [&[u8]; 9] = [
        b"a", b"a.b", b"a-b", b"a b", b"a!", b"a0", b"ab", b"\xff", b"A",
    ];
    let mut seed = 7u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    fn grow(depth: usize, names: &[&[u8]], next: &mut dyn FnMut() -> u64) -> Vec<Dir> {
        if depth == 0 {
            return Vec::new();
        }
        let mut dirs = Vec::new();
        for name in names {
            if next().is_multiple_of(3) {
                continue;
            }
            dirs.push(Dir {
                name: name.to_vec(),
                children: grow(depth - 1, names, next),
            });
        }
        dirs
    }
    let root = Dir {
        name: Vec::new(),
        children: grow(3, &names, &mut next),
    };
    let mut walk = Vec::new();
    dfs(&root, b"", &mut walk);
    assert!(walk.len() > 50, "tree too small: {}", walk.len());

    let mut sorted = walk.clone();
    sorted.reverse();
    sorted.sort_by(|a, b| compare_paths(a, b));
    assert_eq!(sorted, walk);

    // And a manifest written in walk order is accepted.
    let mut writer = ManifestWriter::new(io::sink(), &header(), 1).expect("header");
    for path in &walk {
        writer
            .add(&entry(path, EntryKind::Directory))
            .expect("walk order is manifest order");
    }
    writer.finish().expect("finish");
}

mod subtrees {
    use std::collections::HashMap;

    use super::*;
    use crate::id::ChunkId;

    fn trees(blobs: HashMap<ChunkId, Vec<u8>>) -> Box<dyn TreeSource> {
        Box::new(move |id: &ChunkId| {
            blobs
                .get(id)
                .cloned()
                .ok_or_else(|| FormatError::Corrupt(format!("no tree blob {id}")))
        })
    }

    fn read_with(
        bytes: &[u8],
        blobs: HashMap<ChunkId, Vec<u8>>,
    ) -> Result<Vec<ManifestEntry>, FormatError> {
        let mut reader = ManifestReader::with_trees(bytes, trees(blobs))?;
        let mut entries = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The sample entries with `a/data.bin`, `a/empty` and the non-UTF-8
    /// file (entries 2..5) stored as a subtree.
    fn with_subtree() -> (Vec<ManifestEntry>, Vec<u8>, Subtree, Vec<u8>) {
        let entries = sample_entries();
        let (subtree, blob) =
            encode_tree(&ChunkHasher::new([2; 32]), &entries[2..5]).expect("valid run");
        let mut writer = ManifestWriter::new(Vec::new(), &header(), 3).expect("header");
        writer.add(&entries[0]).expect("root");
        writer.add(&entries[1]).expect("dir");
        writer.add_subtree(&subtree).expect("after the dir");
        assert!(
            writer.add(&entries[3]).is_err(),
            "inside the subtree's range"
        );
        writer.add(&entries[5]).expect("after the subtree");
        assert_eq!(writer.counts().entries, 6);
        (entries, writer.finish().expect("finish"), subtree, blob)
    }

    #[test]
    fn a_subtree_line_expands_in_place() {
        let (entries, bytes, subtree, blob) = with_subtree();
        let read = read_with(&bytes, HashMap::from([(subtree.blob, blob)])).expect("intact");
        assert_eq!(read, entries);
    }

    #[test]
    fn listing_subtrees_names_each_blob_without_expanding_it() {
        let (_, bytes, subtree, _) = with_subtree();
        assert_eq!(list_subtrees(&bytes[..]).expect("intact"), vec![subtree]);
        let plain = ManifestWriter::new(Vec::new(), &header(), 3)
            .expect("header")
            .finish()
            .expect("finish");
        assert!(list_subtrees(&plain[..]).expect("intact").is_empty());
    }

    #[test]
    fn a_subtree_needs_a_tree_source_and_the_right_blob() {
        let (_, bytes, subtree, blob) = with_subtree();
        let err = read_all(&bytes).expect_err("v1 readers take no subtree");
        assert!(err.is_corruption(), "{err}");
        let other = encode_tree(&ChunkHasher::new([2; 32]), &sample_entries()[2..4])
            .expect("valid")
            .1;
        let err =
            read_with(&bytes, HashMap::from([(subtree.blob, other)])).expect_err("short tree");
        assert!(
            err.is_corruption() && err.to_string().contains("subtree"),
            "{err}"
        );
        let mut cut = blob.clone();
        cut.pop();
        let err = read_with(&bytes, HashMap::from([(subtree.blob, cut)])).expect_err("cut tree");
        assert!(err.is_corruption(), "{err}");
        let shifted = encode_tree(&ChunkHasher::new([2; 32]), &sample_entries()[3..6])
            .expect("valid")
            .1;
        let err =
            read_with(&bytes, HashMap::from([(subtree.blob, shifted)])).expect_err("other run");
        assert!(err.is_corruption(), "{err}");
    }
}
