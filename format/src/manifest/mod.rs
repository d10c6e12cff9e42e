//! Snapshot manifests: one per snapshot, listing every entry of the backed
//! up tree with its metadata and chunk ids.
//!
//! A manifest is zstd-compressed JSON lines, each line one externally tagged
//! object, so `zstd -dc snapshots/<run> | jq` reads it:
//!
//! ```text
//! {"manifest":{"format":"coffer","version":1,"run_id":"...",...}}
//! {"entry":{"path_b64":"...","kind":"file","size":5,...,"chunks":["<hex>"]}}
//! ...
//! {"end":{"entries":N,"files":F,"total_bytes":B}}
//! ```
//!
//! Entries are in [`compare_paths`] order, so a new walk of the source can
//! be merge-joined with its parent's manifest one entry at a time, and both
//! [`ManifestWriter`] and [`ManifestReader`] stream: memory does not grow
//! with the number of entries. The end line's counts make a manifest cut
//! short at a line boundary detectable as well.
//!
//! In format v2 the same lines are the plaintext of a sealed object
//! ([`sealed_manifest_writer`], [`sealed_manifest_reader`]) bound to the
//! manifest's key, so a manifest cannot be moved to another run's key.

mod entry;
mod footer;
mod header;
mod reader;
mod sealed;
mod subtree;
mod wire;
mod writer;

pub use crate::attributes::EntryKind;
pub use entry::{compare_paths, ManifestEntry};
pub use footer::ManifestFooter;
pub use header::ManifestHeader;
pub use reader::{list_subtrees, ManifestReader};
pub use sealed::{sealed_manifest_reader, sealed_manifest_writer};
pub use subtree::{encode_tree, Subtree, TreeSource};
pub use writer::ManifestWriter;

#[cfg(test)]
mod tests;
