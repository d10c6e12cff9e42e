use super::*;
use crate::crypto::test_rng::{test_keys, FixedRng};
use crate::test_data::pseudo_random_bytes;

const KEY: &str = "snapshots/00000000-0000-0000-0000-000000000001.1";
/// 1 KiB segments, so small objects have many.
const SMALL: u8 = 10;

fn keys() -> RepositoryKeys {
    test_keys(b"sealed", Encryption::Aes256Gcm)
}

fn seal(keys: &RepositoryKeys, kind: ObjectKind, key: &str, plain: &[u8]) -> Vec<u8> {
    let mut writer = SealedWriter::with_segment_log2(
        Vec::new(),
        keys,
        kind,
        key,
        &mut FixedRng::new(plain),
        SMALL,
    )
    .expect("header written");
    // Uneven writes, to cross segment boundaries mid-write.
    for piece in plain.chunks(333) {
        writer.write_all(piece).expect("in memory");
    }
    writer.finish().expect("in memory")
}

fn open(
    keys: &RepositoryKeys,
    kind: ObjectKind,
    key: &str,
    stored: &[u8],
) -> Result<Vec<u8>, FormatError> {
    open_object(keys, kind, key, stored)
}

#[test]
fn objects_of_every_size_round_trip_across_segment_boundaries() {
    let keys = keys();
    for len in [0, 1, 1023, 1024, 1025, 2048, 5000] {
        let plain = pseudo_random_bytes(len as u64, len);
        let stored = seal(&keys, ObjectKind::Manifest, KEY, &plain);
        let segments = len / 1024 + 1;
        assert_eq!(
            stored.len(),
            SEALED_HEADER_LEN + len + segments * TAG_LEN,
            "{len}"
        );
        assert_eq!(
            open(&keys, ObjectKind::Manifest, KEY, &stored).expect("intact"),
            plain
        );
        if len > 16 {
            assert!(
                !stored.windows(16).any(|w| w == &plain[..16]),
                "plaintext visible"
            );
        }
    }
}

#[test]
fn every_flipped_bit_is_detected_and_names_the_object() {
    let keys = keys();
    let plain = pseudo_random_bytes(1, 2500);
    let stored = seal(&keys, ObjectKind::Manifest, KEY, &plain);
    for byte in 0..stored.len() {
        let mut damaged = stored.clone();
        damaged[byte] ^= 0x04;
        let err = open(&keys, ObjectKind::Manifest, KEY, &damaged).expect_err("damaged");
        // A flipped generation number names a generation this key set
        // does not hold; everything else is corruption.
        if (8..12).contains(&byte) {
            assert!(
                matches!(err, FormatError::KeyRejected(_)),
                "byte {byte}: {err}"
            );
        } else {
            assert!(err.is_corruption(), "byte {byte}: {err}");
        }
        assert!(err.to_string().contains(KEY), "byte {byte}: {err}");
    }
}

#[test]
fn truncated_and_extended_streams_are_refused() {
    let keys = keys();
    let plain = pseudo_random_bytes(2, 3000);
    let stored = seal(&keys, ObjectKind::Manifest, KEY, &plain);
    let full = 1024 + TAG_LEN;
    // Cut at every segment boundary (a clean-looking end) and inside segments.
    for cut in [
        SEALED_HEADER_LEN,
        SEALED_HEADER_LEN + full,
        SEALED_HEADER_LEN + 2 * full,
        stored.len() - 1,
        stored.len() - TAG_LEN,
        50,
    ] {
        let err = open(&keys, ObjectKind::Manifest, KEY, &stored[..cut]).expect_err("cut");
        assert!(err.is_corruption(), "cut at {cut}: {err}");
    }
    let mut extended = stored.clone();
    extended.extend_from_slice(&stored[SEALED_HEADER_LEN..SEALED_HEADER_LEN + full]);
    assert!(open(&keys, ObjectKind::Manifest, KEY, &extended)
        .expect_err("extended")
        .is_corruption());
    let mut one_more = stored.clone();
    one_more.push(0);
    assert!(open(&keys, ObjectKind::Manifest, KEY, &one_more)
        .expect_err("one byte more")
        .is_corruption());
}

#[test]
fn reordered_segments_and_segments_from_another_object_are_refused() {
    let keys = keys();
    let full = 1024 + TAG_LEN;
    let stored = seal(
        &keys,
        ObjectKind::Manifest,
        KEY,
        &pseudo_random_bytes(3, 3000),
    );
    let mut swapped = stored.clone();
    let (first, second) = (SEALED_HEADER_LEN, SEALED_HEADER_LEN + full);
    let segment_one = stored[first..second].to_vec();
    swapped.copy_within(second..second + full, first);
    swapped[second..second + full].copy_from_slice(&segment_one);
    assert!(open(&keys, ObjectKind::Manifest, KEY, &swapped)
        .expect_err("swapped")
        .is_corruption());

    let other = seal(
        &keys,
        ObjectKind::Manifest,
        KEY,
        &pseudo_random_bytes(4, 3000),
    );
    let mut spliced = stored.clone();
    spliced[second..second + full].copy_from_slice(&other[second..second + full]);
    assert!(open(&keys, ObjectKind::Manifest, KEY, &spliced)
        .expect_err("spliced")
        .is_corruption());
}

#[test]
fn an_object_under_another_key_kind_or_repository_is_refused() {
    let keys = keys();
    let stored = seal(&keys, ObjectKind::Manifest, KEY, b"manifest lines");
    let other_run = "snapshots/00000000-0000-0000-0000-000000000002.1";
    let err = open(&keys, ObjectKind::Manifest, other_run, &stored).expect_err("moved");
    assert!(
        err.is_corruption() && err.to_string().contains(other_run),
        "{err}"
    );
    let err = open(&keys, ObjectKind::Condemned, KEY, &stored).expect_err("other kind");
    assert!(err.is_corruption(), "{err}");
    let stranger = test_keys(b"another repository", Encryption::Aes256Gcm);
    let err = open(&stranger, ObjectKind::Manifest, KEY, &stored).expect_err("other keys");
    assert!(err.is_corruption(), "{err}");
    // Index files are named by their hash, so their key is not bound.
    let index = seal(&keys, ObjectKind::Index, "", b"index lines");
    assert_eq!(
        open(&keys, ObjectKind::Index, "index/abc", &index).expect("unbound"),
        b"index lines"
    );
}

#[test]
fn unencrypted_objects_use_the_same_framing_with_a_checksum() {
    let keys = test_keys(b"plain", Encryption::None);
    let plain = b"readable by anyone ".repeat(100);
    let stored = seal(&keys, ObjectKind::Manifest, KEY, &plain);
    assert_eq!(stored[5], 0);
    assert!(stored.windows(19).any(|w| w == b"readable by anyone "));
    assert_eq!(
        open(&keys, ObjectKind::Manifest, KEY, &stored).expect("intact"),
        plain
    );
    let mut damaged = stored.clone();
    damaged[SEALED_HEADER_LEN + 10] ^= 1;
    assert!(open(&keys, ObjectKind::Manifest, KEY, &damaged)
        .expect_err("damaged")
        .is_corruption());
    // An encrypted repository never reads an unencrypted object as its own.
    assert!(open(&self::keys(), ObjectKind::Manifest, KEY, &stored)
        .expect_err("mixed")
        .is_corruption());
}

#[test]
fn a_hostile_segment_size_is_refused_before_any_allocation() {
    let keys = keys();
    let mut stored = seal(&keys, ObjectKind::Manifest, KEY, b"x");
    stored[7] = 40;
    let err = open(&keys, ObjectKind::Manifest, KEY, &stored).expect_err("2^40 segments");
    assert!(err.to_string().contains("segment size"), "{err}");
}
