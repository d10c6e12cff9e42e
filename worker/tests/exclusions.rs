//! Ignore files and exclusions end to end: a real control plane, a real
//! `coffer-worker` process and a filesystem target. A job's dry run lists
//! every excluded path with the rule that excluded it and writes nothing;
//! the job's backup then leaves out exactly those paths, and its restore
//! brings back the rest byte for byte.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use pb::ExclusionReason as Reason;

use support::{
    assert_succeeded, backup_job, create_job, restore, snapshot_files, start_run, wait_until_final,
    write, WorkerProcess,
};

const CACHE_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";

/// A tree exercising every kind of exclusion.
fn tree(root: &Path) {
    write(
        &root.join(".cofferignore"),
        b"# logs\n*.log\n!keep.log\n/build/\ntmp/\n",
    );
    write(&root.join("app.log"), b"noise\n");
    write(&root.join("keep.log"), b"kept by a negation\n");
    write(&root.join("build/out.o"), b"object\n");
    write(
        &root.join("src/build"),
        b"a file named build, not the anchored directory\n",
    );
    write(&root.join("src/tmp/scratch"), b"scratch\n");
    write(&root.join("src/.cofferignore"), b"!debug.log\nsecret.txt\n");
    write(
        &root.join("src/debug.log"),
        b"re-included by the deeper file\n",
    );
    write(&root.join("src/other.log"), b"excluded by the root file\n");
    write(
        &root.join("src/secret.txt"),
        b"excluded by the deeper file\n",
    );
    write(&root.join("src/main.rs"), b"fn main() {}\n");
    write(&root.join("cache/CACHEDIR.TAG"), CACHE_SIGNATURE);
    write(&root.join("cache/blob"), b"cached\n");
    write(
        &root.join("not-a-cache/CACHEDIR.TAG"),
        b"no signature here\n",
    );
    write(&root.join("not-a-cache/data"), b"kept\n");
    write(&root.join("vm/.nobackup"), b"");
    write(&root.join("vm/disk.img"), b"disk\n");
    write(&root.join("notes.tmp"), b"temporary\n");
    write(&root.join("big.bin"), &vec![7u8; 4096]);
}

/// (path, reason, rule, source) of every exclusion the tree above has.
fn expected_exclusions() -> BTreeSet<(String, i32, String, String)> {
    [
        ("app.log", Reason::IgnoreFile, "*.log", ".cofferignore:2"),
        (
            "big.bin",
            Reason::SizeLimit,
            "1024 bytes",
            "options.max_file_size_bytes",
        ),
        ("build", Reason::IgnoreFile, "/build/", ".cofferignore:4"),
        (
            "cache/blob",
            Reason::CacheTag,
            "CACHEDIR.TAG",
            "cache/CACHEDIR.TAG",
        ),
        (
            "notes.tmp",
            Reason::ExcludePattern,
            "**/*.tmp",
            "options.exclude[0]",
        ),
        (
            "src/other.log",
            Reason::IgnoreFile,
            "*.log",
            ".cofferignore:2",
        ),
        (
            "src/secret.txt",
            Reason::IgnoreFile,
            "secret.txt",
            "src/.cofferignore:2",
        ),
        ("src/tmp", Reason::IgnoreFile, "tmp/", ".cofferignore:5"),
        (
            "vm/disk.img",
            Reason::MarkerFile,
            ".nobackup",
            "vm/.nobackup",
        ),
    ]
    .into_iter()
    .map(|(path, reason, rule, source)| (path.into(), reason as i32, rule.into(), source.into()))
    .collect()
}

/// Paths a backup of the tree keeps.
const INCLUDED: &[&str] = &[
    ".cofferignore",
    "cache",
    "cache/CACHEDIR.TAG",
    "keep.log",
    "not-a-cache",
    "not-a-cache/CACHEDIR.TAG",
    "not-a-cache/data",
    "src",
    "src/.cofferignore",
    "src/build",
    "src/debug.log",
    "src/main.rs",
    "vm",
    "vm/.nobackup",
];

fn options() -> pb::JobOptions {
    pb::JobOptions {
        exclude: vec!["**/*.tmp".into()],
        exclude_caches: true,
        exclude_if_present: vec![".nobackup".into()],
        max_file_size_bytes: 1024,
        ..Default::default()
    }
}

/// Every exclusion of run `run_id`, read three at a time.
async fn exclusions(server: &TestServer, run_id: &str) -> Vec<pb::RunExclusion> {
    let mut runs = server.admin().runs;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = runs
            .list_run_exclusions(pb::ListRunExclusionsRequest {
                run_id: run_id.into(),
                page_size: 3,
                page_token: page_token.clone(),
            })
            .await
            .expect("list exclusions")
            .into_inner();
        assert!(page.exclusions.len() <= 3);
        all.extend(page.exclusions);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

async fn dry_run_lists_every_exclusion_and_the_backup_leaves_them_out(backend: Backend) {
    let server = TestServer::start(backend).await;
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    tree(source.path());
    let job_id = create_job(
        &server,
        pb::Job {
            name: "excluding".into(),
            source_path: source.path().display().to_string(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath(
                    target.path().display().to_string(),
                )),
            }),
            options: Some(options()),
            ..Default::default()
        },
    )
    .await;
    let _worker = WorkerProcess::spawn(&server, "excluding");

    let dry_run_id = start_run(
        &server,
        pb::create_run_request::Spec::Backup(pb::BackupSpec {
            job_id: job_id.clone(),
            dry_run: true,
            ..Default::default()
        }),
    )
    .await;
    let dry_run = wait_until_final(&server, &dry_run_id, Duration::from_secs(120)).await;
    assert_succeeded(&dry_run);
    assert_eq!(dry_run.kind, pb::RunKind::BackupDryRun as i32);
    assert!(
        matches!(&dry_run.spec, Some(pb::run::Spec::BackupDryRun(spec)) if spec.dry_run),
        "{:?}",
        dry_run.spec
    );
    let listed = exclusions(&server, &dry_run_id).await;
    let found: BTreeSet<_> = listed
        .iter()
        .map(|e| (e.path.clone(), e.reason, e.rule.clone(), e.source.clone()))
        .collect();
    assert_eq!(found, expected_exclusions());
    assert_eq!(listed.len(), found.len(), "each path is listed once");
    let big = listed
        .iter()
        .find(|e| e.path == "big.bin")
        .expect("big.bin");
    assert_eq!(big.size_bytes, 4096);
    // Nothing was written to the target, and there is no snapshot.
    let written: Vec<_> = std::fs::read_dir(target.path()).expect("target").collect();
    assert!(written.is_empty(), "a dry run wrote {written:?}");
    assert!(dry_run.error.is_empty());

    let backup = backup_job(&server, &job_id).await;
    let files = snapshot_files(&server, &backup.id).await;
    let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let expected: BTreeSet<&str> = INCLUDED.iter().copied().collect();
    assert_eq!(paths, expected);

    let destination = tempfile::tempdir().expect("restore dir");
    assert_succeeded(&restore(&server, &backup.id, destination.path()).await);
    for path in INCLUDED {
        let original = source.path().join(path);
        if original.is_dir() {
            assert!(
                destination.path().join(path).is_dir(),
                "{path} not restored"
            );
            continue;
        }
        let restored = std::fs::read(destination.path().join(path))
            .unwrap_or_else(|e| panic!("{path} was not restored: {e}"));
        assert_eq!(
            restored,
            std::fs::read(&original).expect("source"),
            "{path}"
        );
    }
    for (excluded, ..) in expected_exclusions() {
        assert!(
            !destination.path().join(&excluded).exists(),
            "{excluded} was restored"
        );
    }
}

both_backends!(dry_run_lists_every_exclusion_and_the_backup_leaves_them_out);
