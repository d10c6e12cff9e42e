//! The JSON form of a manifest entry, as format version 1 stores it.
//!
//! [`ManifestEntry`] groups what a version records into a
//! [`FileAttributes`], but the stored line lists every field flat, in this
//! order: `path_b64`, `kind`, `size`, `mode`, `uid`, `gid`, `mtime_ns`,
//! `ctime_ns`, `inode`, `dev`, `content_hash`, `chunks`,
//! `symlink_target_b64`. The attributes' fields sit among the others, so
//! `#[serde(flatten)]` could not keep that order (and would decode every
//! entry through an intermediate map); [`EntryLine`] keeps the bytes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{EntryKind, ManifestEntry};
use crate::id::ChunkId;
use crate::FileAttributes;

/// An entry line's object: borrowing from a [`ManifestEntry`] when written,
/// owning what it read when read. Fields written only for some kinds may be
/// absent.
#[derive(Serialize, Deserialize)]
pub(super) struct EntryLine<'a> {
    #[serde(rename = "path_b64", with = "base64_bytes")]
    path: Cow<'a, [u8]>,
    kind: EntryKind,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_hash: Option<Cow<'a, str>>,
    #[serde(default)]
    chunks: Cow<'a, [ChunkId]>,
    #[serde(
        rename = "symlink_target_b64",
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_optional_bytes"
    )]
    symlink_target: Option<Cow<'a, [u8]>>,
}

impl<'a> From<&'a ManifestEntry> for EntryLine<'a> {
    fn from(entry: &'a ManifestEntry) -> Self {
        let attributes = &entry.attributes;
        EntryLine {
            path: Cow::Borrowed(&entry.path),
            kind: attributes.kind,
            size: attributes.size,
            mode: attributes.mode,
            uid: attributes.uid,
            gid: attributes.gid,
            mtime_ns: attributes.mtime_ns,
            ctime_ns: entry.ctime_ns,
            inode: entry.inode,
            dev: entry.dev,
            content_hash: attributes.content_hash.as_deref().map(Cow::Borrowed),
            chunks: Cow::Borrowed(&entry.chunks),
            symlink_target: attributes.symlink_target.as_deref().map(Cow::Borrowed),
        }
    }
}

/// What was read is owned: the conversion moves it, copying nothing.
impl From<EntryLine<'_>> for ManifestEntry {
    fn from(line: EntryLine<'_>) -> Self {
        ManifestEntry {
            path: line.path.into_owned(),
            attributes: FileAttributes {
                kind: line.kind,
                size: line.size,
                mode: line.mode,
                uid: line.uid,
                gid: line.gid,
                mtime_ns: line.mtime_ns,
                content_hash: line.content_hash.map(Cow::into_owned),
                symlink_target: line.symlink_target.map(Cow::into_owned),
            },
            ctime_ns: line.ctime_ns,
            inode: line.inode,
            dev: line.dev,
            chunks: line.chunks.into_owned(),
        }
    }
}

/// Serde for raw bytes as standard base64 text.
mod base64_bytes {
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
