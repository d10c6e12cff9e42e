//! Looking into snapshots through the catalog: the snapshots of a job, a
//! tree listing of one, and what changed between two.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use coffer_proto::v1 as pb;
use serde_json::{json, Value};

use crate::connection::{to_dynamic, Api};
use crate::output::{bytes, new_table, printable, to_json, Column, Format, Printer};
use crate::runs::job_id;

/// `coffer snapshots JOB`: the job's successful backups, newest first.
pub async fn list(api: &Api, printer: &Printer, job: &str) -> anyhow::Result<()> {
    let job_id = job_id(api, job).await?;
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .runs()
            .list_runs(pb::ListRunsRequest {
                job_id: job_id.clone(),
                kind: pb::RunKind::Backup.into(),
                state: pb::RunState::Succeeded.into(),
                page_size: 200,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        for run in &page.runs {
            let mut row = to_json(&to_dynamic(api.pool(), "Run", run)?);
            row["copies"] = copies(api, &run.id).await?.into();
            rows.push(row);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    printer.values(
        &rows,
        &[
            Column::text("ID", "id"),
            Column::time("TIME", "finishTime"),
            Column::text("FILES", "progress.filesSeen"),
            Column::bytes("SIZE", "progress.bytesSeen"),
            Column::bytes("UPLOADED", "progress.bytesUploaded"),
            Column::text("ERRORS", "progress.errorCount"),
            Column::text("WORKER", "workerId"),
            Column::text("COPIES", "copies"),
        ],
    )
}

/// Where snapshot `run_id` was copied to, as `bucket/prefix` or a path,
/// joined with commas (empty when it has no copy).
async fn copies(api: &Api, run_id: &str) -> anyhow::Result<String> {
    let copies = api
        .copies()
        .list_snapshot_copies(pb::ListSnapshotCopiesRequest {
            snapshot_run_id: run_id.to_owned(),
        })
        .await?
        .into_inner()
        .copies;
    let places: Vec<String> = copies
        .iter()
        .filter_map(|copy| copy.target.as_ref()?.destination.as_ref())
        .map(|destination| match destination {
            pb::target::Destination::Bucket(bucket) => {
                format!("{}/{}", bucket.bucket_id, bucket.prefix)
            }
            pb::target::Destination::FilesystemPath(path) => path.clone(),
            pb::target::Destination::NfsPath(path) => format!("nfs:{path}"),
        })
        .collect();
    Ok(places.join(","))
}

/// Every file of a snapshot beneath `prefix` ("" for all), by path.
async fn files(
    api: &Api,
    snapshot: &str,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, pb::SnapshotFile>> {
    let mut files = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .objects()
            .list_snapshot_files(pb::ListSnapshotFilesRequest {
                run_id: snapshot.to_string(),
                path_prefix: prefix.to_string(),
                page_size: 1000,
                page_token,
            })
            .await
            .with_context(|| format!("listing snapshot {snapshot}"))?
            .into_inner();
        for file in page.files {
            // `docs` names the directory, not `docs-old`.
            if prefix.is_empty()
                || file.path == prefix
                || file.path.starts_with(&format!("{prefix}/"))
            {
                files.insert(file.path.clone(), file);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(files);
        }
        page_token = page.next_page_token;
    }
}

/// `coffer ls SNAPSHOT [PATH]`: a tree of the snapshot (beneath PATH).
pub async fn ls(
    api: &Api,
    printer: &Printer,
    snapshot: &str,
    path: Option<&str>,
) -> anyhow::Result<()> {
    let prefix = path.unwrap_or("").trim_matches('/');
    let files = files(api, snapshot, prefix).await?;
    if printer.format != Format::Table {
        let rows: Vec<Value> = files
            .values()
            .map(|f| to_dynamic(api.pool(), "SnapshotFile", f).map(|m| to_json(&m)))
            .collect::<anyhow::Result<_>>()?;
        return printer.values(&rows, &[Column::text("PATH", "path")]);
    }
    let base_depth = if prefix.is_empty() {
        0
    } else {
        prefix.matches('/').count() + 1
    };
    let mut table = new_table(["MODE", "SIZE", "MODIFIED", "NAME"]);
    // Directories the catalog does not list on their own still show as parents.
    let mut shown: BTreeSet<String> = BTreeSet::new();
    for (path, file) in &files {
        let parts: Vec<&str> = path.split('/').collect();
        for depth in base_depth..parts.len().saturating_sub(1) {
            let parent = parts[..=depth].join("/");
            if shown.insert(parent.clone()) && !files.contains_key(&parent) {
                table.add_row([
                    "drwx------".to_string(),
                    String::new(),
                    String::new(),
                    tree_name(depth - base_depth, parts[depth], true),
                ]);
            }
        }
        shown.insert(path.clone());
        let version = file.version.clone().unwrap_or_default();
        let directory = version.kind() == pb::FileKind::Directory;
        let depth = parts.len().saturating_sub(1).saturating_sub(base_depth);
        let mut name = tree_name(depth, parts.last().copied().unwrap_or_default(), directory);
        if version.kind() == pb::FileKind::Symlink {
            name.push_str(&format!(" -> {}", printable(&version.symlink_target)));
        }
        let modified = version
            .mtime
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
            .map(|t| printer.time(&t.to_rfc3339()))
            .unwrap_or_default();
        let size = if directory {
            String::new()
        } else {
            bytes(u64::try_from(version.size_bytes).unwrap_or(0))
        };
        table.add_row([
            mode_string(version.kind(), version.mode),
            size,
            modified,
            name,
        ]);
    }
    crate::output::emit_line(&table)?;
    Ok(())
}

fn tree_name(depth: usize, name: &str, directory: bool) -> String {
    format!(
        "{}{name}{}",
        "  ".repeat(depth),
        if directory { "/" } else { "" }
    )
}

/// `-rw-r--r--`.
fn mode_string(kind: pb::FileKind, mode: u32) -> String {
    let kind = match kind {
        pb::FileKind::Directory => 'd',
        pb::FileKind::Symlink => 'l',
        _ => '-',
    };
    let mut text = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// The CLI's name and sign of a kind of change.
fn change_label(kind: pb::SnapshotChangeKind) -> (&'static str, &'static str) {
    match kind {
        pb::SnapshotChangeKind::Added => ("added", "+"),
        pb::SnapshotChangeKind::Removed => ("removed", "-"),
        pb::SnapshotChangeKind::Content => ("changed", "M"),
        pb::SnapshotChangeKind::Metadata => ("metadata", "U"),
        pb::SnapshotChangeKind::Unspecified => ("unknown", "?"),
    }
}

/// `coffer diff A B`: added, removed and changed paths with their sizes,
/// compared by the control plane (`DiffSnapshots`) a page at a time.
pub async fn diff(api: &Api, printer: &Printer, first: &str, second: &str) -> anyhow::Result<()> {
    let mut changes = Vec::new();
    let mut page_token = String::new();
    let summary = loop {
        let page = api
            .objects()
            .diff_snapshots(pb::DiffSnapshotsRequest {
                from_run_id: first.to_string(),
                to_run_id: second.to_string(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .with_context(|| format!("comparing snapshots {first} and {second}"))?
            .into_inner();
        changes.extend(page.changes);
        if page.next_page_token.is_empty() {
            break page.summary.unwrap_or_default();
        }
        page_token = page.next_page_token;
    };
    let size = |version: &Option<pb::ObjectVersion>| version.as_ref().map(|v| v.size_bytes);
    if printer.format != Format::Table {
        let values: Vec<Value> = changes
            .iter()
            .map(|c| json!({"change": change_label(c.kind()).0, "path": c.path, "oldSizeBytes": size(&c.from_version), "newSizeBytes": size(&c.to_version), "changedFields": c.changed_fields}))
            .collect();
        return printer.values(&values, &[Column::text("PATH", "path")]);
    }
    let mut table = new_table(["", "PATH", "SIZE"]);
    let show = |size: Option<i64>| {
        size.map(|s| bytes(u64::try_from(s).unwrap_or(0)))
            .unwrap_or_default()
    };
    for change in &changes {
        let (old, new) = (size(&change.from_version), size(&change.to_version));
        let size = match change.kind() {
            pb::SnapshotChangeKind::Added => show(new),
            pb::SnapshotChangeKind::Removed => show(old),
            _ => format!("{} -> {}", show(old), show(new)),
        };
        table.add_row([
            change_label(change.kind()).1.to_string(),
            printable(&change.path),
            size,
        ]);
    }
    if !changes.is_empty() {
        crate::output::emit_line(&table)?;
    }
    eprintln!(
        "added {} ({}), removed {} ({}), changed {} ({}), metadata only {}",
        summary.added_count,
        show(Some(summary.added_bytes)),
        summary.removed_count,
        show(Some(summary.removed_bytes)),
        summary.content_changed_count,
        show(Some(summary.changed_bytes)),
        summary.metadata_changed_count
    );
    Ok(())
}
