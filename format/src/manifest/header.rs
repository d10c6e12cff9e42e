//! A manifest's first line: which snapshot it is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ChunkerParams;
use crate::version::{FORMAT_NAME, FORMAT_VERSION};

/// The first line of a manifest: which snapshot this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version the manifest was written with.
    pub version: u32,
    /// The backup run that produced this snapshot (also its object key).
    pub run_id: Uuid,
    /// The job the run belongs to, if any.
    pub job_id: Option<Uuid>,
    /// The snapshot this one was compared against to skip unchanged files.
    pub parent_run_id: Option<Uuid>,
    /// The backed-up directory on the source host; entry paths are relative to it.
    pub source_path: String,
    /// The host the source was read on.
    pub hostname: String,
    /// When the run started, in UTC (RFC 3339 in the JSON).
    pub created: DateTime<Utc>,
    /// The chunking sizes used, so a later run can tell whether the parent's
    /// chunk lists are reusable as they are.
    pub chunker: ChunkerParams,
}

impl ManifestHeader {
    /// A header for this format version with no job and no parent.
    pub fn new(
        run_id: Uuid,
        source_path: String,
        hostname: String,
        created: DateTime<Utc>,
        chunker: ChunkerParams,
    ) -> Self {
        ManifestHeader {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            run_id,
            job_id: None,
            parent_run_id: None,
            source_path,
            hostname,
            created,
            chunker,
        }
    }
}

/// Longest `source_path` a stored header may name (`PATH_MAX`).
const MAX_SOURCE_PATH: usize = 4096;
/// Longest `hostname` a stored header may name (a DNS name).
const MAX_HOSTNAME: usize = 255;

impl ManifestHeader {
    /// Checks what a header read from storage must satisfy before its
    /// fields go anywhere (a rebuild sends them to the control plane): the
    /// chunker sizes are valid and the texts short, without NUL bytes.
    pub(super) fn check(&self) -> Result<(), String> {
        self.chunker.validate().map_err(|e| e.to_string())?;
        let bad = |text: &str, limit: usize| text.len() > limit || text.contains('\0');
        if bad(&self.source_path, MAX_SOURCE_PATH) || bad(&self.hostname, MAX_HOSTNAME) {
            return Err("source path or host name too long or with a NUL byte".to_owned());
        }
        Ok(())
    }
}
