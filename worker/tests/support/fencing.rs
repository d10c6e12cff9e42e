//! Helpers of `attack_fencing.rs`: reading a worker's log and hashing
//! stored objects.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::support::worker_api::Store;

/// Waits (up to `limit`) until the log at `path` contains `needle` at least
/// `times` times; returns the log.
pub async fn wait_for_log(path: &Path, needle: &str, times: usize, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} not logged {times} time(s) within {limit:?}; the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every object under `prefix` with the BLAKE3 hash of its content, by key.
pub async fn hashed_objects(store: &Store, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let cancel = CancellationToken::new();
    let mut hashed = Vec::new();
    for key in store.list(prefix, &cancel).await.expect("list objects") {
        let bytes = store.get_bytes(&key, &cancel).await.expect("read object");
        hashed.push((key, blake3::hash(&bytes).as_bytes().to_vec()));
    }
    hashed
}

/// The names in directory `dir`, sorted.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
