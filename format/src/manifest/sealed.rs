//! Format v2 manifests: the v1 lines inside a sealed object.

use std::io::{Read, Write};

use super::{ManifestHeader, ManifestReader, ManifestWriter};
use crate::crypto::{ObjectKind, RepositoryKeys, SealedReader, SealedWriter};
use crate::error::FormatError;

/// Starts a v2 manifest to be stored under `object_key`
/// ([`crate::layout::attempt_manifest_key`]), sealed under the current
/// generation of `keys`. Finish it with `writer.finish()?.finish()?`: the
/// first ends the lines, the second seals the last segment.
pub fn sealed_manifest_writer<W: Write, R: rand::RngCore + rand::CryptoRng>(
    writer: W,
    keys: &RepositoryKeys,
    object_key: &str,
    header: &ManifestHeader,
    compression_level: i32,
    rng: &mut R,
) -> Result<ManifestWriter<SealedWriter<W>>, FormatError> {
    let sealed = SealedWriter::new(writer, keys, ObjectKind::Manifest, object_key, rng)?;
    ManifestWriter::new(sealed, header, compression_level)
}

/// Reads a v2 manifest stored under `object_key`. A manifest damaged,
/// cut, or stored under another key (another run's, or another attempt's)
/// is corrupt; entries stream as in v1, each segment authenticated before
/// any of its entries is handed out.
pub fn sealed_manifest_reader<R: Read>(
    reader: R,
    keys: &RepositoryKeys,
    object_key: &str,
) -> Result<ManifestReader<SealedReader<R>>, FormatError> {
    let sealed = SealedReader::new(reader, keys, ObjectKind::Manifest, object_key)?;
    ManifestReader::new(sealed)
}
