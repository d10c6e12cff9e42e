//! `coffer copy` against a real standalone control plane (SQLite, embedded
//! worker): a snapshot copied into a second bucket is shown with its copy
//! where snapshots are listed.

use crate::support;

use support::{write_random, Standalone};

#[test]
fn copy_puts_a_snapshot_into_another_bucket_and_snapshots_show_it() {
    let server = Standalone::start();
    let root = server.path("copy");
    std::fs::create_dir_all(root.join("source")).expect("source");
    write_random(&root.join("source/data.bin"), 300_000, 7);
    let job = server.job_over(&root, "nightly");
    let snapshot = server
        .ok(&["backup", &job, "--wait", "-o", "id"])
        .trim()
        .to_string();

    std::fs::create_dir_all(root.join("offsite")).expect("offsite dir");
    let root_text = root.to_str().expect("UTF-8 temp dir");
    let offsite = server
        .ok(&[
            "buckets",
            "create",
            "-o",
            "id",
            "--set",
            "name=offsite",
            "--set",
            &format!("filesystem.path={root_text}/offsite"),
        ])
        .trim()
        .to_string();
    let copy = server.run(&[
        "copy", &snapshot, "--to", &offsite, "--prefix", "nightly", "--wait",
    ]);
    assert!(
        copy.status.success(),
        "copy failed: {}",
        String::from_utf8_lossy(&copy.stderr)
    );

    let snapshots = server.ok(&["snapshots", &job]);
    assert!(snapshots.contains("COPIES"), "{snapshots}");
    assert!(
        snapshots.contains(&format!("{offsite}/nightly")),
        "the copy is not shown: {snapshots}"
    );
}
