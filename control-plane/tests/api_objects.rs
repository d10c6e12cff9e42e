//! ObjectService over real gRPC on both catalog backends, with history
//! written through `Catalog::apply_snapshot` as a worker would.

use crate::support;

use coffer_control_plane::catalog::repositories::NewRepositoryFormat;

use coffer_control_plane::model::object::{
    EntryKind, FileAttributes, SnapshotCommit, SnapshotEntry, SnapshotStats,
};
use coffer_proto::v1 as pb;
use coffer_proto::v1::object_service_client::ObjectServiceClient;
use support::{assert_code, assert_violated, authed, violated_fields, Backend, TestServer};
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

const REPOSITORY: &str = "/backups/home";

fn file(path: &str, hash: &str, size: u64) -> SnapshotEntry {
    SnapshotEntry {
        path: path.as_bytes().to_vec(),
        attributes: FileAttributes {
            kind: EntryKind::File,
            size,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_700_000_000_123_456_789,
            content_hash: (!hash.is_empty()).then(|| hash.to_string()),
            symlink_target: None,
        },
        storage_key: format!("blobs/{hash}"),
    }
}

fn directory(path: &str) -> SnapshotEntry {
    let mut entry = file(path, "", 0);
    entry.attributes.kind = EntryKind::Directory;
    entry.storage_key = String::new();
    entry
}

/// The tag `key`=`value` on the resource `id` of `kind`.
fn tag_on(kind: pb::ResourceKind, id: String, key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        resource: Some(pb::ResourceRef {
            kind: kind as i32,
            id,
        }),
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Inserts a run of `user` and commits `entries` as its snapshot.
async fn snapshot(
    server: &TestServer,
    user: &pb::User,
    entries: Vec<SnapshotEntry>,
) -> (Uuid, SnapshotStats) {
    snapshot_in(
        server,
        user,
        &format!("{REPOSITORY}/{}", user.username),
        entries,
    )
    .await
}

/// [`snapshot`] into the repository at `location`, recorded on the run as a
/// lease records it.
async fn snapshot_in(
    server: &TestServer,
    user: &pb::User,
    location: &str,
    entries: Vec<SnapshotEntry>,
) -> (Uuid, SnapshotStats) {
    let owner = Uuid::parse_str(&user.id).expect("user id");
    let catalog = &server.catalog();
    let run_id = catalog
        .insert_test_run(owner, None, None)
        .await
        .expect("run");
    let repository = catalog
        .ensure_repository(location, owner, |_| Ok(NewRepositoryFormat::unencrypted()))
        .await
        .expect("repository");
    catalog
        .record_run_repository(run_id, repository.id)
        .await
        .expect("run repository");
    let stats = catalog
        .apply_snapshot(&SnapshotCommit {
            run_id,
            owner_id: owner,
            bucket_id: None,
            repository_id: repository.id,
            removed: None,
            job_id: None,
            entries,
        })
        .await
        .expect("apply snapshot");
    (run_id, stats)
}

async fn snapshot_files(
    objects: &mut ObjectServiceClient<Channel>,
    token: &str,
    run_id: Uuid,
) -> Vec<pb::SnapshotFile> {
    objects
        .list_snapshot_files(authed(
            token,
            pb::ListSnapshotFilesRequest {
                run_id: run_id.to_string(),
                ..Default::default()
            },
        ))
        .await
        .expect("snapshot files")
        .into_inner()
        .files
}

async fn latest(
    objects: &mut ObjectServiceClient<Channel>,
    token: &str,
    request: pb::ListLatestVersionsRequest,
) -> Vec<pb::BackupObject> {
    objects
        .list_latest_versions(authed(token, request))
        .await
        .expect("latest versions")
        .into_inner()
        .objects
}

fn paths_and_hashes(files: &[pb::SnapshotFile]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|f| {
            let version = f.version.as_ref().expect("version");
            (f.path.clone(), version.content_hash.clone())
        })
        .collect()
}

async fn snapshots_record_only_changes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let catalog = &server.catalog();
    let mut objects = ObjectServiceClient::new(server.channel().await);

    let first = vec![
        directory("docs"),
        file("docs/a.txt", "h-a", 10),
        file("docs/b.txt", "h-b1", 20),
    ];
    let (run1, stats) = snapshot(&server, &alice, first.clone()).await;
    assert_eq!(stats.new_objects, 3);
    assert_eq!(stats.new_versions, 3);

    // The same snapshot again writes no rows at all.
    let rows = catalog.count_object_versions().await.expect("count");
    let (run2, stats) = snapshot(&server, &alice, first).await;
    assert_eq!(stats.unchanged, 3);
    assert_eq!(
        stats.new_versions + stats.new_objects + stats.closed_versions,
        0
    );
    assert_eq!(catalog.count_object_versions().await.expect("count"), rows);

    // b changes, a disappears, c is new.
    let (run3, stats) = snapshot(
        &server,
        &alice,
        vec![
            directory("docs"),
            file("docs/b.txt", "h-b2", 21),
            file("docs/c.txt", "h-c", 5),
        ],
    )
    .await;
    assert_eq!(
        stats,
        SnapshotStats {
            new_objects: 1,
            new_versions: 3,
            closed_versions: 2,
            unchanged: 1,
            deleted: 1,
        }
    );

    // Older snapshots still show the old content; deleted files vanish later.
    let expected_old = vec![
        ("docs".to_string(), String::new()),
        ("docs/a.txt".to_string(), "h-a".to_string()),
        ("docs/b.txt".to_string(), "h-b1".to_string()),
    ];
    assert_eq!(
        paths_and_hashes(&snapshot_files(&mut objects, &token, run1).await),
        expected_old
    );
    assert_eq!(
        paths_and_hashes(&snapshot_files(&mut objects, &token, run2).await),
        expected_old
    );
    assert_eq!(
        paths_and_hashes(&snapshot_files(&mut objects, &token, run3).await),
        vec![
            ("docs".to_string(), String::new()),
            ("docs/b.txt".to_string(), "h-b2".to_string()),
            ("docs/c.txt".to_string(), "h-c".to_string()),
        ]
    );

    // Versions of b, newest first, with half-open run ranges.
    let all = server
        .as_user(&token)
        .objects
        .list_objects(pb::ListObjectsRequest {
            path_prefix: "docs/".into(),
            ..Default::default()
        })
        .await
        .expect("list objects")
        .into_inner()
        .objects;
    let paths: Vec<_> = all.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, ["docs/a.txt", "docs/b.txt", "docs/c.txt"]);
    let b = &all[1];
    let versions = server
        .as_user(&token)
        .objects
        .list_object_versions(pb::ListObjectVersionsRequest {
            object_id: b.id.clone(),
            ..Default::default()
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].content_hash, "h-b2");
    assert_eq!(versions[0].first_run_id, run3.to_string());
    assert_eq!(versions[0].last_run_id, "");
    assert_eq!(versions[1].content_hash, "h-b1");
    assert_eq!(versions[1].first_run_id, run1.to_string());
    assert_eq!(versions[1].last_run_id, run3.to_string());

    let fetched = server
        .as_user(&token)
        .objects
        .get_object(pb::GetObjectRequest { id: b.id.clone() })
        .await
        .expect("get object")
        .into_inner()
        .object
        .expect("object");
    let current = fetched.latest_version.expect("latest version");
    assert_eq!(current.content_hash, "h-b2");
    assert_eq!(current.size_bytes, 21);
    assert_eq!(current.kind, pb::FileKind::Regular as i32);

    // Latest versions leave the deleted a.txt out unless asked.
    let live = latest(
        &mut objects,
        &token,
        pb::ListLatestVersionsRequest::default(),
    )
    .await;
    let live_paths: Vec<_> = live.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(live_paths, ["docs", "docs/b.txt", "docs/c.txt"]);
    let everything = latest(
        &mut objects,
        &token,
        pb::ListLatestVersionsRequest {
            include_deleted: true,
            ..Default::default()
        },
    )
    .await;
    let a = everything
        .iter()
        .find(|o| o.path == "docs/a.txt")
        .expect("deleted a.txt listed");
    assert!(a.latest_version.as_ref().expect("version").deleted);

    // A path that comes back gets a new version again.
    let (_, stats) = snapshot(
        &server,
        &alice,
        vec![
            directory("docs"),
            file("docs/a.txt", "h-a", 10),
            file("docs/b.txt", "h-b2", 21),
            file("docs/c.txt", "h-c", 5),
        ],
    )
    .await;
    assert_eq!(
        (stats.new_versions, stats.closed_versions, stats.unchanged),
        (1, 1, 3)
    );
}

async fn objects_page_by_path_and_escape_bytes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let mut entries: Vec<_> = (0..7)
        .map(|n| file(&format!("f{}", 6 - n), &format!("h{n}"), 1))
        .collect();
    entries.push(SnapshotEntry {
        path: b"raw\xffname".to_vec(),
        ..file("", "h-raw", 1)
    });
    snapshot(&server, &alice, entries).await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .as_user(&token)
            .objects
            .list_objects(pb::ListObjectsRequest {
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.objects.len() <= 3);
        seen.extend(page.objects.into_iter().map(|o| o.path));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "raw\\xffname"]
    );
}

async fn duplicates_are_grouped_by_hash(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    snapshot(
        &server,
        &alice,
        vec![
            file("x1", "small", 100),
            file("x2", "small", 100),
            file("x3", "small", 100),
            file("y1", "big", 1000),
            file("y2", "big", 1000),
            file("unique", "one", 5000),
            directory("d1"),
            directory("d2"),
        ],
    )
    .await;
    let mut objects = server.as_user(&token).objects;
    let first = objects
        .list_duplicates(pb::ListDuplicatesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("duplicates")
        .into_inner();
    assert_eq!(first.groups.len(), 1);
    let big = &first.groups[0];
    assert_eq!(big.content_hash, "big");
    assert_eq!(big.saved_bytes, 1000);
    let big_paths: Vec<_> = big.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(big_paths, ["y1", "y2"]);
    assert_eq!(first.next_page_token, "1");

    let second = objects
        .list_duplicates(pb::ListDuplicatesRequest {
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect("second page")
        .into_inner();
    assert_eq!(second.groups.len(), 1);
    assert_eq!(second.groups[0].content_hash, "small");
    assert_eq!(second.groups[0].saved_bytes, 200);
    assert_eq!(second.groups[0].files.len(), 3);
    assert!(second.next_page_token.is_empty());

    let filtered = objects
        .list_duplicates(pb::ListDuplicatesRequest {
            min_size_bytes: 500,
            ..Default::default()
        })
        .await
        .expect("min size")
        .into_inner();
    assert_eq!(filtered.groups.len(), 1);

    assert_violated(
        objects
            .list_duplicates(pb::ListDuplicatesRequest {
                page_token: "not-a-number".into(),
                ..Default::default()
            })
            .await,
        &["page_token"],
        "bad token",
    );
}

async fn objects_are_owner_scoped(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let (run_id, _) = snapshot(&server, &alice, vec![file("secret.txt", "s", 1)]).await;
    let mut objects = ObjectServiceClient::new(server.channel().await);
    let mine = server
        .as_user(&alice_token)
        .objects
        .list_objects(pb::ListObjectsRequest::default())
        .await
        .expect("alice lists")
        .into_inner()
        .objects;
    assert_eq!(mine.len(), 1);
    let id = mine[0].id.clone();

    let bobs = server
        .as_user(&bob_token)
        .objects
        .list_objects(pb::ListObjectsRequest::default())
        .await
        .expect("bob lists")
        .into_inner()
        .objects;
    assert!(bobs.is_empty());
    assert!(latest(&mut objects, &bob_token, Default::default())
        .await
        .is_empty());
    let mut bobs_objects = server.as_user(&bob_token).objects;
    let versions = pb::ListObjectVersionsRequest {
        object_id: id.clone(),
        ..Default::default()
    };
    let files = pb::ListSnapshotFilesRequest {
        run_id: run_id.to_string(),
        ..Default::default()
    };
    let object = pb::GetObjectRequest { id: id.clone() };
    let statuses = [
        bobs_objects
            .get_object(object)
            .await
            .expect_err("foreign object"),
        bobs_objects
            .list_object_versions(versions)
            .await
            .expect_err("foreign versions"),
        bobs_objects
            .list_snapshot_files(files)
            .await
            .expect_err("foreign snapshot"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::NotFound);
    }
    // The admin sees everything.
    server
        .admin()
        .objects
        .get_object(pb::GetObjectRequest { id })
        .await
        .expect("admin reads");

    assert_code(
        server
            .admin()
            .objects
            .rebuild_catalog(pb::RebuildCatalogRequest::default())
            .await,
        Code::InvalidArgument,
        "rebuild without a bucket",
    );
    assert_code(
        server
            .admin()
            .objects
            .rebuild_catalog(pb::RebuildCatalogRequest {
                bucket_id: uuid::Uuid::now_v7().to_string(),
                prefix: String::new(),
            })
            .await,
        Code::NotFound,
        "rebuild of an unknown bucket",
    );
}

async fn latest_versions_filter_by_tag(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    snapshot(
        &server,
        &alice,
        vec![file("keep.txt", "k", 1), file("other.txt", "o", 1)],
    )
    .await;
    let mut objects = ObjectServiceClient::new(server.channel().await);
    let all = latest(&mut objects, &token, Default::default()).await;
    let keep = all.iter().find(|o| o.path == "keep.txt").expect("keep");
    let other = all.iter().find(|o| o.path == "other.txt").expect("other");
    let version_id = other.latest_version.as_ref().expect("version").id.clone();

    for (kind, id, value) in [
        (pb::ResourceKind::Object, keep.id.clone(), "forever"),
        (pb::ResourceKind::ObjectVersion, version_id, "month"),
    ] {
        server
            .as_user(&token)
            .create_tag(tag_on(kind, id, "retain", value))
            .await
            .expect("tag");
    }
    let retained = |value: &str| pb::ListLatestVersionsRequest {
        tag_key: "retain".into(),
        tag_value: value.into(),
        ..Default::default()
    };
    let paths = |found: Vec<pb::BackupObject>| -> Vec<String> {
        found.into_iter().map(|o| o.path).collect()
    };
    let tagged = latest(&mut objects, &token, retained("")).await;
    assert_eq!(tagged.len(), 2);
    let forever = latest(&mut objects, &token, retained("forever")).await;
    assert_eq!(paths(forever), ["keep.txt"]);
    let month = latest(&mut objects, &token, retained("month")).await;
    assert_eq!(paths(month), ["other.txt"]);

    let value_without_key = pb::ListLatestVersionsRequest {
        tag_value: "x".into(),
        ..Default::default()
    };
    assert_violated(
        objects
            .list_latest_versions(authed(&token, value_without_key))
            .await,
        &["tag_value"],
        "value without key",
    );
}

async fn objects_and_versions_filter_by_tag(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let (run1, _) = snapshot(
        &server,
        &alice,
        vec![
            file("a.txt", "a1", 1),
            file("b.txt", "b", 1),
            file("c.txt", "c", 1),
        ],
    )
    .await;
    snapshot(
        &server,
        &alice,
        vec![
            file("a.txt", "a2", 1),
            file("b.txt", "b", 1),
            file("c.txt", "c", 1),
        ],
    )
    .await;
    let objects = server.as_user(&token).objects;
    let list = |request: pb::ListObjectsRequest| {
        let mut objects = objects.clone();
        async move {
            objects.list_objects(request).await.map(|r| {
                r.into_inner()
                    .objects
                    .into_iter()
                    .map(|o| (o.path, o.id))
                    .collect::<Vec<_>>()
            })
        }
    };
    let all = list(pb::ListObjectsRequest::default()).await.expect("list");
    let id_of = |path: &str| {
        all.iter()
            .find(|(p, _)| p == path)
            .map(|(_, id)| id.clone())
            .expect("object")
    };
    let versions = |tag_key: &str, tag_value: &str| {
        let mut objects = objects.clone();
        let request = pb::ListObjectVersionsRequest {
            object_id: id_of("a.txt"),
            tag_key: tag_key.into(),
            tag_value: tag_value.into(),
            ..Default::default()
        };
        async move {
            objects
                .list_object_versions(request)
                .await
                .map(|r| r.into_inner().versions)
        }
    };
    let a_versions = versions("", "").await.expect("versions");
    assert_eq!(a_versions.len(), 2);
    let old_a = a_versions
        .iter()
        .find(|v| v.first_run_id == run1.to_string())
        .expect("first version of a")
        .id
        .clone();

    // The superseded version of a.txt and the object c.txt carry tags.
    for (kind, id, key, value) in [
        (
            pb::ResourceKind::ObjectVersion,
            old_a.clone(),
            "audit",
            "2024",
        ),
        (pb::ResourceKind::Object, id_of("c.txt"), "owner", "ops"),
    ] {
        server
            .as_user(&token)
            .create_tag(tag_on(kind, id, key, value))
            .await
            .expect("tag");
    }

    let paths = |found: Vec<(String, String)>| -> Vec<String> {
        found.into_iter().map(|(path, _)| path).collect()
    };
    for (key, value, expected) in [
        ("audit", "", vec!["a.txt"]),
        ("audit", "2024", vec!["a.txt"]),
        ("audit", "2025", vec![]),
        ("owner", "", vec!["c.txt"]),
        ("nothing", "", vec![]),
    ] {
        let found = list(pb::ListObjectsRequest {
            tag_key: key.into(),
            tag_value: value.into(),
            ..Default::default()
        })
        .await
        .expect("filtered list");
        assert_eq!(paths(found), expected, "{key}={value}");
    }

    let tagged: Vec<String> = versions("audit", "")
        .await
        .expect("filtered versions")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(tagged, vec![old_a.clone()]);
    assert!(versions("audit", "2025")
        .await
        .expect("filtered versions")
        .is_empty());
    assert_violated(
        versions("", "2024").await,
        &["tag_value"],
        "value without key",
    );
    let status = list(pb::ListObjectsRequest {
        tag_key: "1bad".into(),
        ..Default::default()
    })
    .await
    .expect_err("bad key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["tag_key".to_string()]);
}

fn symlink(path: &str, target: &str) -> SnapshotEntry {
    let mut entry = file(path, "", 0);
    entry.attributes.kind = EntryKind::Symlink;
    entry.attributes.symlink_target = Some(target.as_bytes().to_vec());
    entry.storage_key = String::new();
    entry
}

/// Every page of a diff, with the summary of the last page.
async fn diff_pages(
    objects: &mut ObjectServiceClient<Channel>,
    token: &str,
    request: pb::DiffSnapshotsRequest,
) -> (Vec<pb::SnapshotChange>, pb::SnapshotDiffSummary) {
    let mut changes = Vec::new();
    let mut request = request;
    loop {
        let page = objects
            .diff_snapshots(authed(token, request.clone()))
            .await
            .expect("diff")
            .into_inner();
        changes.extend(page.changes);
        if page.next_page_token.is_empty() {
            return (changes, page.summary.expect("summary"));
        }
        request.page_token = page.next_page_token;
    }
}

fn kinds_by_path(
    changes: &[pb::SnapshotChange],
) -> Vec<(String, pb::SnapshotChangeKind, Vec<String>)> {
    changes
        .iter()
        .map(|c| (c.path.clone(), c.kind(), c.changed_fields.clone()))
        .collect()
}

async fn diff_lists_adds_removes_edits_and_chmod(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let mut link = symlink("docs/link", "a.txt");
    let (before, _) = snapshot(
        &server,
        &alice,
        vec![
            directory("docs"),
            file("docs/a.txt", "a1", 10),
            file("docs/b.txt", "b1", 20),
            file("keep.txt", "k1", 5),
            file("script.sh", "s1", 7),
            file("touched.txt", "t1", 3),
            link.clone(),
        ],
    )
    .await;
    let mut chmodded = file("script.sh", "s1", 7);
    chmodded.attributes.mode = 0o755;
    let mut touched = file("touched.txt", "t1", 3);
    touched.attributes.mtime_ns += 5_000_000_000;
    link.attributes.symlink_target = Some(b"c.txt".to_vec());
    let (after, _) = snapshot(
        &server,
        &alice,
        vec![
            directory("docs"),
            file("docs/a.txt", "a2", 12),
            file("docs/c.txt", "c1", 30),
            file("keep.txt", "k1", 5),
            chmodded,
            touched,
            link,
        ],
    )
    .await;
    let mut objects = ObjectServiceClient::new(server.channel().await);
    let request = pb::DiffSnapshotsRequest {
        from_run_id: before.to_string(),
        to_run_id: after.to_string(),
        ..Default::default()
    };
    let (changes, summary) = diff_pages(&mut objects, &token, request.clone()).await;
    use pb::SnapshotChangeKind as K;
    let fields = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        kinds_by_path(&changes),
        vec![
            (
                "docs/a.txt".to_string(),
                K::Content,
                fields(&["size", "content"])
            ),
            ("docs/b.txt".to_string(), K::Removed, vec![]),
            ("docs/c.txt".to_string(), K::Added, vec![]),
            (
                "docs/link".to_string(),
                K::Metadata,
                fields(&["symlink_target"])
            ),
            ("script.sh".to_string(), K::Metadata, fields(&["mode"])),
            ("touched.txt".to_string(), K::Metadata, fields(&["mtime"])),
        ]
    );
    let edited = &changes[0];
    assert_eq!(
        edited.from_version.as_ref().expect("old").content_hash,
        "a1"
    );
    assert_eq!(edited.to_version.as_ref().expect("new").content_hash, "a2");
    assert!(changes[1].to_version.is_none() && changes[2].from_version.is_none());
    assert_eq!(
        summary,
        pb::SnapshotDiffSummary {
            added_count: 1,
            removed_count: 1,
            content_changed_count: 1,
            metadata_changed_count: 3,
            added_bytes: 30,
            removed_bytes: 20,
            changed_bytes: 12,
        }
    );

    // One change a page gives the same list.
    let (paged, paged_summary) = diff_pages(
        &mut objects,
        &token,
        pb::DiffSnapshotsRequest {
            page_size: 1,
            ..request.clone()
        },
    )
    .await;
    assert_eq!(paged, changes);
    assert_eq!(paged_summary, summary);

    // Filters: a prefix restricts the list and the summary; kinds only the list.
    let (docs, docs_summary) = diff_pages(
        &mut objects,
        &token,
        pb::DiffSnapshotsRequest {
            path_prefix: "docs/".into(),
            change_kinds: vec![K::Added as i32, K::Removed as i32],
            ..request.clone()
        },
    )
    .await;
    let paths: Vec<&str> = docs.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["docs/b.txt", "docs/c.txt"]);
    assert_eq!(
        (
            docs_summary.content_changed_count,
            docs_summary.metadata_changed_count
        ),
        (1, 1)
    );

    // Backwards, an addition is a removal.
    let (backwards, _) = diff_pages(
        &mut objects,
        &token,
        pb::DiffSnapshotsRequest {
            from_run_id: after.to_string(),
            to_run_id: before.to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(backwards[1].kind(), K::Added);
    assert_eq!(backwards[2].kind(), K::Removed);

    // A snapshot against itself: nothing changed.
    let (same, same_summary) = diff_pages(
        &mut objects,
        &token,
        pb::DiffSnapshotsRequest {
            to_run_id: before.to_string(),
            ..request
        },
    )
    .await;
    assert!(same.is_empty());
    assert_eq!(same_summary, pb::SnapshotDiffSummary::default());
}

async fn diff_is_owner_scoped_and_checks_its_input(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let (first, _) = snapshot(&server, &alice, vec![file("a.txt", "a1", 1)]).await;
    let (second, _) = snapshot(&server, &alice, vec![file("a.txt", "a2", 2)]).await;
    let (elsewhere, _) = snapshot_in(
        &server,
        &alice,
        "/backups/other",
        vec![file("a.txt", "a1", 1)],
    )
    .await;
    let request = pb::DiffSnapshotsRequest {
        from_run_id: first.to_string(),
        to_run_id: second.to_string(),
        ..Default::default()
    };
    assert_code(
        server
            .as_user(&bob_token)
            .objects
            .diff_snapshots(request.clone())
            .await,
        Code::NotFound,
        "bob diffs alice's snapshots",
    );
    let mut alices = server.as_user(&alice_token).objects;
    let cases = [
        (
            pb::DiffSnapshotsRequest {
                to_run_id: elsewhere.to_string(),
                ..request.clone()
            },
            "to_run_id",
        ),
        (
            pb::DiffSnapshotsRequest {
                from_run_id: "nope".into(),
                ..request.clone()
            },
            "from_run_id",
        ),
        (
            pb::DiffSnapshotsRequest {
                change_kinds: vec![0],
                ..request.clone()
            },
            "change_kinds",
        ),
        (
            pb::DiffSnapshotsRequest {
                page_token: "%%".into(),
                ..request.clone()
            },
            "page_token",
        ),
    ];
    for (bad, field) in cases {
        assert_violated(alices.diff_snapshots(bad).await, &[field], field);
    }
    let admin = server
        .admin()
        .objects
        .diff_snapshots(request)
        .await
        .expect("the admin diffs anyone's snapshots")
        .into_inner();
    assert_eq!(admin.changes.len(), 1);
}

both_backends!(
    diff_lists_adds_removes_edits_and_chmod,
    diff_is_owner_scoped_and_checks_its_input,
    objects_and_versions_filter_by_tag,
    snapshots_record_only_changes,
    objects_page_by_path_and_escape_bytes,
    duplicates_are_grouped_by_hash,
    objects_are_owner_scoped,
    latest_versions_filter_by_tag,
);
