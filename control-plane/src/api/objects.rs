//! ObjectService: the read side of backed-up objects, versions and snapshots.
//! Workers write through [`crate::catalog::Catalog::apply_snapshot`].

use coffer_proto::v1 as pb;
use coffer_proto::v1::object_service_server::ObjectService;
use tonic::Request;

use super::convert::{optional_id, optional_timestamp, timestamp};
use super::{respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::snapshots::diff::DiffPage;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::object::{
    path_text, BackupObject, DuplicateFile, DuplicateFilter, DuplicateGroup, EntryKind,
    LatestFilter, ObjectFilter, ObjectVersion, SnapshotFile,
};
use crate::model::path::check_normalised_relative;
use crate::model::snapshot_diff::{ChangeKind, DiffFilter, DiffSummary, SnapshotChange};
use crate::model::tag::{check_tag_key, check_tag_value, TagMatch};
use crate::model::{check_len, parse_id, parse_optional_id};
use crate::state::AppState;

/// Handler of `coffer.v1.ObjectService`.
#[derive(Clone, Debug)]
pub struct ObjectApi {
    state: AppState,
}

impl ObjectApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        ObjectApi { state }
    }
}

fn kind_to_proto(kind: EntryKind) -> pb::FileKind {
    match kind {
        EntryKind::File => pb::FileKind::Regular,
        EntryKind::Directory => pb::FileKind::Directory,
        EntryKind::Symlink => pb::FileKind::Symlink,
    }
}

impl From<ObjectVersion> for pb::ObjectVersion {
    fn from(version: ObjectVersion) -> Self {
        pb::ObjectVersion {
            id: version.id.to_string(),
            object_id: version.object_id.to_string(),
            mtime: optional_timestamp(version.mtime()),
            kind: kind_to_proto(version.attributes.kind) as i32,
            size_bytes: i64::try_from(version.attributes.size).unwrap_or(i64::MAX),
            mode: version.attributes.mode,
            uid: version.attributes.uid,
            gid: version.attributes.gid,
            content_hash: version.attributes.content_hash.unwrap_or_default(),
            symlink_target: version
                .attributes
                .symlink_target
                .as_deref()
                .map(path_text)
                .unwrap_or_default(),
            first_run_id: version.first_run_id.to_string(),
            last_run_id: optional_id(version.last_run_id),
            deleted: version.deleted,
            create_time: Some(timestamp(version.create_time)),
        }
    }
}

impl From<BackupObject> for pb::BackupObject {
    fn from(object: BackupObject) -> Self {
        pb::BackupObject {
            id: object.id.to_string(),
            bucket_id: optional_id(object.bucket_id),
            job_id: optional_id(object.job_id),
            path: object.path_text,
            owner_id: object.owner_id.to_string(),
            latest_version: object.latest_version.map(Into::into),
            create_time: Some(timestamp(object.create_time)),
        }
    }
}

impl From<SnapshotFile> for pb::SnapshotFile {
    fn from(file: SnapshotFile) -> Self {
        pb::SnapshotFile {
            path: file.path_text,
            object_id: file.version.object_id.to_string(),
            version: Some(file.version.into()),
        }
    }
}

fn change_kind_to_proto(kind: ChangeKind) -> pb::SnapshotChangeKind {
    match kind {
        ChangeKind::Added => pb::SnapshotChangeKind::Added,
        ChangeKind::Removed => pb::SnapshotChangeKind::Removed,
        ChangeKind::Content => pb::SnapshotChangeKind::Content,
        ChangeKind::Metadata => pb::SnapshotChangeKind::Metadata,
    }
}

/// Parses `change_kinds`; an unset or unknown value names the field.
fn change_kinds(values: &[i32]) -> DomainResult<Vec<ChangeKind>> {
    values
        .iter()
        .map(|value| match pb::SnapshotChangeKind::try_from(*value) {
            Ok(pb::SnapshotChangeKind::Added) => Ok(ChangeKind::Added),
            Ok(pb::SnapshotChangeKind::Removed) => Ok(ChangeKind::Removed),
            Ok(pb::SnapshotChangeKind::Content) => Ok(ChangeKind::Content),
            Ok(pb::SnapshotChangeKind::Metadata) => Ok(ChangeKind::Metadata),
            Ok(pb::SnapshotChangeKind::Unspecified) | Err(_) => Err(DomainError::invalid(
                "change_kinds",
                format!("{value} is not a kind of change"),
            )),
        })
        .collect()
}

impl From<SnapshotChange> for pb::SnapshotChange {
    fn from(change: SnapshotChange) -> Self {
        pb::SnapshotChange {
            changed_fields: change
                .changed_fields()
                .into_iter()
                .map(String::from)
                .collect(),
            path: change.path_text,
            kind: change_kind_to_proto(change.kind) as i32,
            from_version: change.from.map(Into::into),
            to_version: change.to.map(Into::into),
        }
    }
}

impl From<DiffSummary> for pb::SnapshotDiffSummary {
    fn from(summary: DiffSummary) -> Self {
        pb::SnapshotDiffSummary {
            added_count: summary.added_count,
            removed_count: summary.removed_count,
            content_changed_count: summary.content_changed_count,
            metadata_changed_count: summary.metadata_changed_count,
            added_bytes: summary.added_bytes,
            removed_bytes: summary.removed_bytes,
            changed_bytes: summary.changed_bytes,
        }
    }
}

impl From<DuplicateFile> for pb::DuplicateFile {
    fn from(file: DuplicateFile) -> Self {
        pb::DuplicateFile {
            object_id: file.object_id.to_string(),
            path: file.path_text,
            job_id: optional_id(file.job_id),
        }
    }
}

impl From<DuplicateGroup> for pb::DuplicateGroup {
    fn from(group: DuplicateGroup) -> Self {
        pb::DuplicateGroup {
            content_hash: group.content_hash,
            size_bytes: group.size_bytes,
            files: group.files.into_iter().map(Into::into).collect(),
            saved_bytes: group.saved_bytes,
        }
    }
}

/// Builds the common object filters of a List call.
fn object_filter(
    caller: &Caller,
    bucket_id: &str,
    job_id: &str,
    path_prefix: &str,
) -> DomainResult<ObjectFilter> {
    check_len("path_prefix", path_prefix, 0, 4096)?;
    Ok(ObjectFilter {
        owner_id: caller.owner_scope(),
        bucket_id: parse_optional_id("bucket_id", bucket_id)?,
        job_id: parse_optional_id("job_id", job_id)?,
        path_prefix: path_prefix.to_string(),
    })
}

/// Parses a list's tag filter: `tag_key` alone matches any value,
/// `tag_value` needs `tag_key`.
fn tag_filter(tag_key: &str, tag_value: &str) -> DomainResult<Option<TagMatch>> {
    if tag_key.is_empty() {
        if !tag_value.is_empty() {
            return Err(DomainError::invalid("tag_value", "needs tag_key"));
        }
        return Ok(None);
    }
    let mut violations = Violations::new();
    violations.absorb(check_tag_key("tag_key", tag_key));
    violations.absorb(check_tag_value("tag_value", tag_value));
    violations.finish()?;
    Ok(Some(TagMatch {
        key: tag_key.to_string(),
        value: (!tag_value.is_empty()).then(|| tag_value.to_string()),
    }))
}

/// Builds the filter of ListLatestVersions.
fn latest_filter(
    caller: &Caller,
    request: &pb::ListLatestVersionsRequest,
) -> DomainResult<LatestFilter> {
    let objects = object_filter(
        caller,
        &request.bucket_id,
        &request.job_id,
        &request.path_prefix,
    )?;
    let tag = tag_filter(&request.tag_key, &request.tag_value)?;
    Ok(LatestFilter {
        objects,
        tag_key: tag.as_ref().map(|t| t.key.clone()),
        tag_value: tag.and_then(|t| t.value),
        include_deleted: request.include_deleted,
    })
}

/// Parses the page of ListDuplicates, whose token is a decimal group offset.
fn duplicate_page(page_size: i32, page_token: &str) -> DomainResult<(i64, i64)> {
    let size = Page::parse(page_size, "")?.size;
    if page_token.is_empty() {
        return Ok((size, 0));
    }
    let offset = page_token
        .parse::<u32>()
        .map_err(|_| DomainError::invalid("page_token", "not a token from a previous response"))?;
    Ok((size, i64::from(offset)))
}

impl ObjectApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// Queues a run that reads a bucket repository's manifests and records
    /// every snapshot the catalog does not know.
    async fn rebuild(
        &self,
        caller: &Caller,
        request: pb::RebuildCatalogRequest,
    ) -> DomainResult<pb::RebuildCatalogResponse> {
        // Storage is untrusted input: what a rebuild records comes from
        // manifests anyone with write access to the bucket could have made.
        caller.require_admin("RebuildCatalog")?;
        let bucket_id = parse_id("bucket_id", &request.bucket_id)?;
        check_normalised_relative("prefix", &request.prefix)?;
        let run = self
            .state
            .runs
            .rebuild_catalog(caller, bucket_id, &request.prefix)
            .await?;
        Ok(pb::RebuildCatalogResponse {
            run_id: run.id.to_string(),
        })
    }

    /// Compares two snapshots, authorised like ListSnapshotFiles: a
    /// snapshot outside the caller's scope is not found.
    async fn diff(
        &self,
        caller: &Caller,
        request: pb::DiffSnapshotsRequest,
    ) -> DomainResult<pb::DiffSnapshotsResponse> {
        let from_run = parse_id("from_run_id", &request.from_run_id)?;
        let to_run = parse_id("to_run_id", &request.to_run_id)?;
        check_len("path_prefix", &request.path_prefix, 0, 4096)?;
        let filter = DiffFilter {
            path_prefix: request.path_prefix,
            kinds: change_kinds(&request.change_kinds)?,
        };
        let page = DiffPage::parse(request.page_size, &request.page_token)?;
        let (changes, summary, next_page_token) = self
            .state
            .catalog
            .diff_snapshots(from_run, to_run, caller.owner_scope(), &filter, &page)
            .await?;
        Ok(pb::DiffSnapshotsResponse {
            changes: changes.into_iter().map(Into::into).collect(),
            next_page_token,
            summary: Some(summary.into()),
        })
    }

    async fn duplicates(
        &self,
        caller: &Caller,
        request: pb::ListDuplicatesRequest,
    ) -> DomainResult<pb::ListDuplicatesResponse> {
        if request.min_size_bytes < 0 {
            return Err(DomainError::invalid(
                "min_size_bytes",
                "must not be negative",
            ));
        }
        let filter = DuplicateFilter {
            owner_id: caller.owner_scope(),
            bucket_id: parse_optional_id("bucket_id", &request.bucket_id)?,
            job_id: parse_optional_id("job_id", &request.job_id)?,
            min_size_bytes: request.min_size_bytes,
        };
        let (size, offset) = duplicate_page(request.page_size, &request.page_token)?;
        let (groups, more) = self
            .state
            .catalog
            .list_duplicates(&filter, size, offset)
            .await?;
        let next_page_token = if more {
            (offset + size).to_string()
        } else {
            String::new()
        };
        Ok(pb::ListDuplicatesResponse {
            groups: groups.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl ObjectService for ObjectApi {
    async fn list_objects(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> RpcResult<pb::ListObjectsResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let filter = object_filter(
            &caller,
            &request.bucket_id,
            &request.job_id,
            &request.path_prefix,
        )?;
        let tag = tag_filter(&request.tag_key, &request.tag_value)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (objects, next_page_token) = self
            .state
            .catalog
            .list_objects(&filter, tag.as_ref(), page)
            .await?;
        respond(Ok(pb::ListObjectsResponse {
            objects: objects.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn get_object(
        &self,
        request: Request<pb::GetObjectRequest>,
    ) -> RpcResult<pb::GetObjectResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let object = self
            .state
            .catalog
            .get_object(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetObjectResponse {
            object: Some(object.into()),
        }))
    }

    async fn list_object_versions(
        &self,
        request: Request<pb::ListObjectVersionsRequest>,
    ) -> RpcResult<pb::ListObjectVersionsResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let id = parse_id("object_id", &request.object_id)?;
        let tag = tag_filter(&request.tag_key, &request.tag_value)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (versions, next_page_token) = self
            .state
            .catalog
            .list_object_versions(id, caller.owner_scope(), tag.as_ref(), page)
            .await?;
        respond(Ok(pb::ListObjectVersionsResponse {
            versions: versions.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn list_latest_versions(
        &self,
        request: Request<pb::ListLatestVersionsRequest>,
    ) -> RpcResult<pb::ListLatestVersionsResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let filter = latest_filter(&caller, &request)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (objects, next_page_token) = self
            .state
            .catalog
            .list_latest_versions(&filter, page)
            .await?;
        respond(Ok(pb::ListLatestVersionsResponse {
            objects: objects.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn list_snapshot_files(
        &self,
        request: Request<pb::ListSnapshotFilesRequest>,
    ) -> RpcResult<pb::ListSnapshotFilesResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let run_id = parse_id("run_id", &request.run_id)?;
        check_len("path_prefix", &request.path_prefix, 0, 4096)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (files, next_page_token) = self
            .state
            .catalog
            .list_snapshot_files(run_id, caller.owner_scope(), &request.path_prefix, page)
            .await?;
        respond(Ok(pb::ListSnapshotFilesResponse {
            files: files.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn diff_snapshots(
        &self,
        request: Request<pb::DiffSnapshotsRequest>,
    ) -> RpcResult<pb::DiffSnapshotsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.diff(&caller, request.into_inner()).await)
    }

    async fn list_duplicates(
        &self,
        request: Request<pb::ListDuplicatesRequest>,
    ) -> RpcResult<pb::ListDuplicatesResponse> {
        let caller = self.caller(&request).await?;
        respond(self.duplicates(&caller, request.into_inner()).await)
    }

    async fn rebuild_catalog(
        &self,
        request: Request<pb::RebuildCatalogRequest>,
    ) -> RpcResult<pb::RebuildCatalogResponse> {
        let caller = self.caller(&request).await?;
        respond(self.rebuild(&caller, request.into_inner()).await)
    }
}
