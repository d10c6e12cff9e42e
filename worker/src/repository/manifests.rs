//! Where a new manifest's lines go: straight into the spool file (v1), or
//! through a sealing writer bound to the manifest's storage key (v2).

use std::io::{self, Write};

use coffer_format::crypto::SealedWriter;
use coffer_format::{FormatError, ManifestHeader, ManifestWriter, ObjectKind};

use super::Repository;

/// The output under a manifest writer.
pub enum ManifestOutput<W: Write> {
    /// A v1 manifest: the lines as they are.
    Plain(W),
    /// A v2 manifest: sealed segment by segment.
    Sealed(SealedWriter<W>),
}

impl<W: Write> ManifestOutput<W> {
    /// Seals the last segment (v2) and returns the inner writer.
    pub fn finish(self) -> Result<W, FormatError> {
        match self {
            ManifestOutput::Plain(inner) => Ok(inner),
            ManifestOutput::Sealed(sealed) => sealed.finish(),
        }
    }
}

impl<W: Write> Write for ManifestOutput<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            ManifestOutput::Plain(inner) => inner.write(data),
            ManifestOutput::Sealed(sealed) => sealed.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ManifestOutput::Plain(inner) => inner.flush(),
            ManifestOutput::Sealed(sealed) => sealed.flush(),
        }
    }
}

impl Repository {
    /// Starts a manifest to be stored under `object_key`, writing into
    /// `inner`. Finish it with `writer.finish()?.finish()?`: the first ends
    /// the lines, the second seals the last segment of a v2 manifest.
    pub fn manifest_writer<W: Write>(
        &self,
        inner: W,
        object_key: &str,
        header: &ManifestHeader,
        compression_level: i32,
    ) -> Result<ManifestWriter<ManifestOutput<W>>, FormatError> {
        let output = match self.keys() {
            Some(keys) => ManifestOutput::Sealed(SealedWriter::new(
                inner,
                keys,
                ObjectKind::Manifest,
                object_key,
                &mut rand::rngs::OsRng,
            )?),
            None => ManifestOutput::Plain(inner),
        };
        ManifestWriter::new(output, header, compression_level)
    }
}
