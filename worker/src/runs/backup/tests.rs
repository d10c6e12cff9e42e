//! Incrementals against a real tree: what is read again and what is
//! reported to the control plane after an owner change, a status change
//! alone, and no change.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use coffer_proto::v1::{FileRecord, RunProgress};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::store::FilesystemStore;

/// Keeps the file records of every batch.
#[derive(Default)]
struct Collector {
    files: Mutex<Vec<FileRecord>>,
}

impl Reporter for Collector {
    fn progress(&self, _: &RunProgress) {}

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch.files);
        Ok(())
    }
}

/// Backs `source` up into `store` against `parent`; returns the summary and
/// the file records reported.
async fn back_up(
    source: &Path,
    store: &Arc<Store>,
    parent: Option<&BackupSummary>,
) -> (BackupSummary, Vec<FileRecord>) {
    let run_id = Uuid::now_v7();
    let plan = BackupPlan {
        run_id,
        job_id: None,
        lease_token: 1,
        source: source.to_path_buf(),
        options: JobOptions::default(),
        store: Arc::clone(store),
        repository: crate::repository::RepositoryAccess::v1(vec![7; 32]),
        parent: parent.map(|parent| ParentSnapshot {
            run_id: Uuid::nil(),
            manifest_key: parent.manifest_key.clone(),
        }),
        access: None,
        commands: Default::default(),
    };
    let collector = Collector::default();
    let summary = run_backup(plan, &collector, CancellationToken::new())
        .await
        .expect("the backup succeeds");
    let files = collector
        .files
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    (summary, files)
}

/// Changes the status-change time of `path` and nothing else, by setting
/// its mode to what it is; repeated until the (coarse) clock shows it.
fn touch_status(path: &Path) {
    let before = std::fs::metadata(path).expect("file exists");
    loop {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(before.mode()))
            .expect("chmod");
        let now = std::fs::metadata(path).expect("file exists");
        if (now.ctime(), now.ctime_nsec()) != (before.ctime(), before.ctime_nsec()) {
            return;
        }
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_reports_an_owner_change_but_not_a_status_change_alone() {
    let source = tempfile::tempdir().expect("temp dir");
    let repository = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Store::Filesystem(
        FilesystemStore::new(repository.path().to_path_buf()).expect("store"),
    ));
    for name in ["chowned.txt", "touched.txt", "unchanged.txt"] {
        std::fs::write(source.path().join(name), name).expect("write");
    }
    let (full, _) = back_up(source.path(), &store, None).await;
    assert_eq!(full.files_read, 3);

    let chowned = source.path().join("chowned.txt");
    let gid = std::fs::metadata(&chowned).expect("file exists").gid();
    // Tests run as root in CI; another user cannot give a file away.
    if std::os::unix::fs::chown(&chowned, Some(4242), Some(gid)).is_err() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    touch_status(&source.path().join("touched.txt"));

    let (incremental, records) = back_up(source.path(), &store, Some(&full)).await;
    assert_eq!(
        incremental.files_read, 2,
        "the chowned and the touched file are read again, the unchanged one is not"
    );
    let paths: Vec<&[u8]> = records.iter().map(|r| r.path.as_slice()).collect();
    assert_eq!(
        paths,
        [b"chowned.txt".as_slice()],
        "only the owner change is reported"
    );
    assert_eq!(records[0].uid, 4242);
    assert_eq!(records[0].gid, gid);
}
