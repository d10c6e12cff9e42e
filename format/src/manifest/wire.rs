//! The JSON form of a manifest entry, as format version 1 stores it.
//!
//! [`ManifestEntry`](super::ManifestEntry) groups what a version records
//! into a [`FileAttributes`](crate::FileAttributes), but the stored line lists every field flat, in this
//! order: `path_b64`, `kind`, `size`, `mode`, `uid`, `gid`, `mtime_ns`,
//! `ctime_ns`, `inode`, `dev`, `content_hash`, `chunks`,
//! `symlink_target_b64`. The attributes' fields sit among the others, so
//! `#[serde(flatten)]` could not keep that order (and would decode every
//! entry through an intermediate map); [`EntryLine`] keeps the bytes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::attributes::EntryKind;
use crate::id::ChunkId;

/// An entry line's object: borrowing from a [`ManifestEntry`] when written,
/// owning what it read when read. Fields written only for some kinds may be
/// absent.
#[derive(Serialize, Deserialize)]
pub(super) struct EntryLine<'a> {
    #[serde(rename = "path_b64", with = "base64_bytes")]
    pub(super) path: Cow<'a, [u8]>,
    pub(super) kind: EntryKind,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime_ns: i64,
    pub(super) ctime_ns: i64,
    pub(super) inode: u64,
    pub(super) dev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) content_hash: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) chunks: Cow<'a, [ChunkId]>,
    #[serde(
        rename = "symlink_target_b64",
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_optional_bytes"
    )]
    pub(super) symlink_target: Option<Cow<'a, [u8]>>,
}

/// Serde for raw bytes as standard base64 text.
pub(super) mod base64_bytes {
    use std::fmt;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        struct Base64Visitor;

        impl Visitor<'_> for Base64Visitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 text")
            }

            // Accepts borrowed and escaped strings alike without copying
            // the text first.
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Base64Visitor).map(T::from)
    }
}

/// Serde for optional raw bytes as standard base64 text.
mod base64_optional_bytes {
    use std::borrow::Cow;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Cow<'_, [u8]>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::base64_bytes::serialize(bytes, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, 'a, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Cow<'a, [u8]>>, D::Error> {
        super::base64_bytes::deserialize(deserializer).map(Some)
    }
}
