//! `DownloadService.DownloadFile` end to end, on both catalog backends: a
//! real worker process reads a file of a real snapshot and its bytes reach
//! the caller through the control plane; what is not a downloadable file,
//! someone else's file or a file over the configured limit is refused with
//! the right code; a damaged chunk ends the stream with an error, never OK.

use crate::support;

#[allow(dead_code)] // a few of the tenant helpers
use crate::support::grants as grants_support;

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::{Api, Backend, TestServer};
use coffer_proto::v1 as pb;
use grants_support::{backup, Tenant};
use support::{noise, run_to_success, write, WorkerProcess};
use tonic::Code;

/// A source with a file spanning several chunks and a small one.
fn make_source(dir: &Path) -> Vec<u8> {
    let big = noise(3 << 20, 11);
    write(&dir.join("data/big.bin"), &big);
    write(&dir.join("docs/readme.txt"), b"hello coffer\n");
    big
}

/// What a download delivered: the header and the bytes, or the status the
/// stream ended with (after whatever bytes came before it).
struct Downloaded {
    header: Option<pb::DownloadedFile>,
    bytes: Vec<u8>,
    ended: Result<(), tonic::Status>,
}

async fn download(api: &Api, snapshot: &str, path: &str) -> Result<Downloaded, tonic::Status> {
    let mut client = api.downloads.clone();
    let mut stream = client
        .download_file(pb::DownloadFileRequest {
            snapshot_run_id: snapshot.to_string(),
            path: path.to_string(),
        })
        .await?
        .into_inner();
    let mut downloaded = Downloaded {
        header: None,
        bytes: Vec::new(),
        ended: Ok(()),
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => match message.part {
                Some(pb::download_file_response::Part::File(file)) => {
                    assert!(downloaded.header.is_none(), "a second header");
                    downloaded.header = Some(file);
                }
                Some(pb::download_file_response::Part::Data(data)) => {
                    assert!(downloaded.header.is_some(), "data before the header");
                    downloaded.bytes.extend_from_slice(&data);
                }
                None => panic!("an empty message"),
            },
            Ok(None) => return Ok(downloaded),
            Err(status) => {
                downloaded.ended = Err(status);
                return Ok(downloaded);
            }
        }
    }
}

/// Backs `source` up into a filesystem repository at `repository` as the
/// admin; returns the snapshot's run id.
async fn snapshot(server: &TestServer, source: &Path, repository: &Path) -> String {
    run_to_success(server, backup(source, repository)).await.id
}

async fn a_file_downloads_byte_identical(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "downloader");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = make_source(&dir.path().join("src"));
    let snapshot = snapshot(&server, &dir.path().join("src"), &dir.path().join("repo")).await;

    let got = download(&server.admin(), &snapshot, "data/big.bin")
        .await
        .expect("download accepted");
    got.ended.expect("the stream ends OK");
    let header = got.header.expect("a header");
    assert_eq!(header.path, "data/big.bin");
    assert_eq!(header.size_bytes, big.len() as i64);
    assert_ne!(header.mode & 0o777, 0, "mode {:o}", header.mode);
    assert!(header.mtime.is_some());
    assert!(
        got.bytes == big,
        "the downloaded bytes differ from the source"
    );

    // The run that carried it is an ordinary, visible run of its caller.
    let run = server
        .wait_until_final(&header.run_id, Duration::from_secs(60))
        .await;
    assert_eq!(run.state(), pb::RunState::Succeeded, "{run:?}");
    assert_eq!(run.kind(), pb::RunKind::Download);
    assert_eq!(
        run.progress.as_ref().map(|p| p.bytes_done),
        Some(big.len() as i64)
    );

    let small = download(&server.admin(), &snapshot, "docs/readme.txt")
        .await
        .expect("download accepted");
    small.ended.expect("the stream ends OK");
    assert_eq!(small.bytes, b"hello coffer\n");
}

async fn downloads_refuse_what_they_must_not_send(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "downloader");
    let dir = tempfile::tempdir().expect("tempdir");
    make_source(&dir.path().join("src"));
    let snapshot = snapshot(&server, &dir.path().join("src"), &dir.path().join("repo")).await;
    let admin = server.admin();

    let code = |result: Result<Downloaded, tonic::Status>| match result {
        Ok(_) => panic!("expected a refusal"),
        Err(status) => (status.code(), status.message().to_string()),
    };
    let (refused, message) = code(download(&admin, &snapshot, "docs").await);
    assert_eq!(refused, Code::FailedPrecondition, "{message}");
    let (refused, message) = code(download(&admin, &snapshot, "docs/missing.txt").await);
    assert_eq!(refused, Code::NotFound, "{message}");
    let (refused, message) = code(download(&admin, &snapshot, "../etc/passwd").await);
    assert_eq!(refused, Code::InvalidArgument, "{message}");
    assert!(message.contains("path: "), "{message}");
    let (refused, message) = code(download(&admin, &snapshot, "").await);
    assert_eq!(refused, Code::InvalidArgument, "{message}");

    // Another tenant cannot tell the snapshot exists.
    let stranger = Tenant::new(&server, "stranger").await;
    let (refused, message) = code(download(&stranger.api, &snapshot, "docs/readme.txt").await);
    assert_eq!(refused, Code::NotFound, "{message}");

    // Over the configured limit, and with downloads turned off.
    let limit = admin
        .create_configuration(pb::Configuration {
            key: "download_max_bytes".into(),
            value: "1000".into(),
            ..Default::default()
        })
        .await
        .expect("set the limit");
    let (refused, message) = code(download(&admin, &snapshot, "data/big.bin").await);
    assert_eq!(refused, Code::FailedPrecondition, "{message}");
    assert!(message.contains("download_max_bytes"), "{message}");
    download(&admin, &snapshot, "docs/readme.txt")
        .await
        .expect("a small file is still sent")
        .ended
        .expect("ends OK");
    admin
        .configurations
        .clone()
        .update_configuration(pb::UpdateConfigurationRequest {
            configuration: Some(pb::Configuration {
                id: limit.id,
                value: "0".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["value".into()],
            }),
        })
        .await
        .expect("turn downloads off");
    let (refused, message) = code(download(&admin, &snapshot, "docs/readme.txt").await);
    assert_eq!(refused, Code::FailedPrecondition, "{message}");
}

async fn a_damaged_chunk_ends_the_download_with_an_error(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "downloader");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = make_source(&dir.path().join("src"));
    let repository = dir.path().join("repo");
    let snapshot = snapshot(&server, &dir.path().join("src"), &repository).await;

    // The largest object of the repository is the pack holding big.bin.
    let pack = largest_file(&repository);
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&pack, bytes).expect("write pack");

    let got = download(&server.admin(), &snapshot, "data/big.bin")
        .await
        .expect("download accepted");
    let status = got.ended.expect_err("a damaged file must not end OK");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(got.bytes.len() < big.len(), "the whole file arrived");
    assert!(
        big.starts_with(&got.bytes),
        "what arrived before the damage is not the file's start"
    );
    let run_id = got.header.expect("a header").run_id;
    let run = server
        .wait_until_final(&run_id, Duration::from_secs(60))
        .await;
    assert_eq!(run.state(), pb::RunState::Failed, "{run:?}");
}

/// The largest regular file below `dir`.
fn largest_file(dir: &Path) -> std::path::PathBuf {
    let mut largest: Option<(u64, std::path::PathBuf)> = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                pending.push(entry.path());
            } else if largest.as_ref().is_none_or(|(size, _)| meta.len() > *size) {
                largest = Some((meta.len(), entry.path()));
            }
        }
    }
    largest.expect("a file in the repository").1
}

both_backends!(
    a_file_downloads_byte_identical,
    downloads_refuse_what_they_must_not_send,
    a_damaged_chunk_ends_the_download_with_an_error,
);
