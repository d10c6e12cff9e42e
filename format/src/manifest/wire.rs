//! The JSON form of a manifest entry, as format version 1 stores it.
//!
//! [`ManifestEntry`] groups what a version records into a
//! [`FileAttributes`], but the stored line lists every field flat, in this
//! order: `path_b64`, `kind`, `size`, `mode`, `uid`, `gid`, `mtime_ns`,
//! `ctime_ns`, `inode`, `dev`, `content_hash`, `chunks`,
//! `symlink_target_b64`. The attributes' fields sit among the others, so
//! `#[serde(flatten)]` could not keep that order (and would decode every
//! entry through an intermediate map); these two structs keep the bytes.

use serde::{Deserialize, Serialize};

use super::{EntryKind, ManifestEntry};
use crate::id::ChunkId;
use crate::FileAttributes;

/// An entry as it is written, borrowing from the [`ManifestEntry`].
#[derive(Serialize)]
pub(super) struct EntryOut<'a> {
    #[serde(rename = "path_b64", serialize_with = "base64_bytes::serialize")]
    path: &'a [u8],
    kind: EntryKind,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_hash: Option<&'a str>,
    chunks: &'a [ChunkId],
    #[serde(
        rename = "symlink_target_b64",
        skip_serializing_if = "Option::is_none",
        serialize_with = "base64_optional_bytes::serialize"
    )]
    symlink_target: Option<&'a [u8]>,
}

impl<'a> From<&'a ManifestEntry> for EntryOut<'a> {
    fn from(entry: &'a ManifestEntry) -> Self {
        let attributes = &entry.attributes;
        EntryOut {
            path: &entry.path,
            kind: attributes.kind,
            size: attributes.size,
            mode: attributes.mode,
            uid: attributes.uid,
            gid: attributes.gid,
            mtime_ns: attributes.mtime_ns,
            ctime_ns: entry.ctime_ns,
            inode: entry.inode,
            dev: entry.dev,
            content_hash: attributes.content_hash.as_deref(),
            chunks: &entry.chunks,
            symlink_target: attributes.symlink_target.as_deref(),
        }
    }
}

/// An entry as it is read. Fields written only for some kinds may be absent.
#[derive(Deserialize)]
pub(super) struct EntryIn {
    #[serde(rename = "path_b64", deserialize_with = "base64_bytes::deserialize")]
    path: Vec<u8>,
    kind: EntryKind,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
    #[serde(default)]
    content_hash: Option<String>,
    #[serde(default)]
    chunks: Vec<ChunkId>,
    #[serde(
        rename = "symlink_target_b64",
        default,
        deserialize_with = "base64_optional_bytes::deserialize"
    )]
    symlink_target: Option<Vec<u8>>,
}

impl From<EntryIn> for ManifestEntry {
    fn from(entry: EntryIn) -> Self {
        ManifestEntry {
            path: entry.path,
            attributes: FileAttributes {
                kind: entry.kind,
                size: entry.size,
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                mtime_ns: entry.mtime_ns,
                content_hash: entry.content_hash,
                symlink_target: entry.symlink_target,
            },
            ctime_ns: entry.ctime_ns,
            inode: entry.inode,
            dev: entry.dev,
            chunks: entry.chunks,
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

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
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

        deserializer.deserialize_str(Base64Visitor)
    }
}

/// Serde for optional raw bytes as standard base64 text.
mod base64_optional_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<&[u8]>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::base64_bytes::serialize(bytes, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        super::base64_bytes::deserialize(deserializer).map(Some)
    }
}
