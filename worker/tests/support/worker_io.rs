//! For the worker-io attack tests: a hand-made control plane that speaks
//! just enough of `WorkerService/LeaseSession` to hand a real
//! `coffer-worker` process assignments the test wrote itself (grants
//! included, or deliberately wrong) and hand back the completions; and
//! hashing a directory tree, to assert that nothing outside a run's paths
//! changed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use futures::Stream;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// The fake control plane: assignments queued by the test go to the first
/// worker with a free slot; completions come back in order.
pub struct FakeControlPlane {
    pub addr: SocketAddr,
    assignments: mpsc::UnboundedSender<pb::RunAssignment>,
    completions: Mutex<mpsc::UnboundedReceiver<pb::RunCompletion>>,
    server: tokio::task::JoinHandle<()>,
}

struct Service {
    assignments: Arc<Mutex<mpsc::UnboundedReceiver<pb::RunAssignment>>>,
    completions: mpsc::UnboundedSender<pb::RunCompletion>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::LeaseSessionResponse, Status>> + Send>>;

fn response(message: pb::lease_session_response::Message) -> pb::LeaseSessionResponse {
    pb::LeaseSessionResponse {
        message: Some(message),
    }
}

fn ack(lease: Option<pb::LeaseRef>, sequence: i64) -> pb::LeaseSessionResponse {
    response(pb::lease_session_response::Message::Ack(pb::LeaseAck {
        lease,
        accepted: true,
        reason: String::new(),
        sequence,
    }))
}

#[tonic::async_trait]
impl WorkerService for Service {
    type LeaseSessionStream = Outbound;

    async fn lease_session(
        &self,
        request: Request<Streaming<pb::LeaseSessionRequest>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let (out, receiver) = mpsc::unbounded_channel();
        let assignments = Arc::clone(&self.assignments);
        let completions = self.completions.clone();
        tokio::spawn(async move {
            use pb::lease_session_request::Message;
            let mut queue = assignments.lock().await;
            let mut free = 0;
            loop {
                tokio::select! {
                    message = inbound.next() => {
                        let Some(Ok(message)) = message else { return };
                        let reply = match message.message {
                            Some(Message::Hello(_)) => Some(response(
                                pb::lease_session_response::Message::Welcome(pb::SessionWelcome {
                                    worker_id: uuid::Uuid::now_v7().to_string(),
                                    lease_ttl: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                                    heartbeat_interval: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
                                }),
                            )),
                            Some(Message::Credit(credit)) => {
                                free = credit.free_slots;
                                None
                            }
                            Some(Message::FileBatch(batch)) => Some(ack(batch.lease, batch.sequence)),
                            Some(Message::Completion(completion)) => {
                                let lease = completion.lease.clone();
                                let _ = completions.send(completion);
                                Some(ack(lease, -1))
                            }
                            Some(Message::Release(release)) => Some(ack(release.lease, -1)),
                            Some(Message::Heartbeat(_)) | None => None,
                        };
                        if let Some(reply) = reply {
                            if out.send(Ok(reply)).is_err() {
                                return;
                            }
                        }
                    }
                    assignment = queue.recv(), if free > 0 => {
                        let Some(assignment) = assignment else { return };
                        free -= 1;
                        let message = pb::lease_session_response::Message::Assignment(assignment);
                        if out.send(Ok(response(message))).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn send_download(
        &self,
        _request: Request<Streaming<pb::SendDownloadRequest>>,
    ) -> Result<Response<pb::SendDownloadResponse>, Status> {
        Err(Status::unimplemented(
            "this test control plane assigns no downloads",
        ))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("not in the fake control plane"))
    }
}

impl FakeControlPlane {
    pub async fn start() -> FakeControlPlane {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (assignments, queue) = mpsc::unbounded_channel();
        let (completed, completions) = mpsc::unbounded_channel();
        let service = Service {
            assignments: Arc::new(Mutex::new(queue)),
            completions: completed,
        };
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        FakeControlPlane {
            addr,
            assignments,
            completions: Mutex::new(completions),
            server,
        }
    }

    /// Hands `assignment` to the worker and waits for its completion.
    pub async fn run(&self, assignment: pb::RunAssignment) -> pb::RunCompletion {
        self.assignments.send(assignment).expect("queue assignment");
        let mut completions = self.completions.lock().await;
        tokio::time::timeout(Duration::from_secs(120), completions.recv())
            .await
            .expect("the worker completes the run in time")
            .expect("a completion")
    }

    /// Spawns a `coffer-worker` against this control plane with `args`
    /// (its roots and protected paths).
    pub fn spawn_worker(&self, args: &[&str]) -> FakeWorker {
        let child = Command::new(env!("CARGO_BIN_EXE_coffer-worker"))
            .args([
                "--control-plane",
                &format!("http://{}", self.addr),
                "--name",
                "attacked-worker",
                "--slots",
                "1",
            ])
            .args(args)
            .env(
                "COFFER_WORKER_TOKEN",
                "coffer_fake-control-plane-token-0123456789",
            )
            .env("COFFER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn coffer-worker");
        FakeWorker { child }
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A worker process of the fake control plane, killed when dropped.
pub struct FakeWorker {
    child: Child,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backup assignment of `source` into the filesystem repository `repo`.
pub fn backup_assignment(
    source: &str,
    repo: &Path,
    grants: Vec<pb::PathGrant>,
) -> pb::RunAssignment {
    let spec = pb::run::Spec::Backup(pb::BackupSpec {
        source_path: source.to_owned(),
        ..Default::default()
    });
    assignment(spec, repo, grants)
}

/// A restore assignment of manifest `manifest_key` into `destination`.
pub fn restore_assignment(
    manifest_key: &str,
    destination: &str,
    repo: &Path,
    grants: Vec<pb::PathGrant>,
) -> pb::RunAssignment {
    let spec = pb::run::Spec::Restore(pb::RestoreSpec {
        destination_path: destination.to_owned(),
        ..Default::default()
    });
    let mut assignment = assignment(spec, repo, grants);
    assignment.snapshot_manifest_key = manifest_key.to_owned();
    assignment
}

fn assignment(spec: pb::run::Spec, repo: &Path, grants: Vec<pb::PathGrant>) -> pb::RunAssignment {
    let run_id = uuid::Uuid::now_v7().to_string();
    pb::RunAssignment {
        lease: Some(pb::LeaseRef {
            run_id: run_id.clone(),
            lease_token: 1,
        }),
        run: Some(pb::Run {
            id: run_id,
            spec: Some(spec),
            attempt: 1,
            max_attempts: 1,
            ..Default::default()
        }),
        target: Some(pb::ResolvedTarget {
            filesystem_path: repo.display().to_string(),
            ..Default::default()
        }),
        repository_key: vec![9; 32],
        path_grants: grants,
        ..Default::default()
    }
}

/// A grant of `path` beneath `root` for `grant_use`.
pub fn grant(path: &Path, root: &Path, grant_use: pb::GrantUse) -> pb::PathGrant {
    pb::PathGrant {
        path: path.display().to_string(),
        r#use: grant_use as i32,
        root: root.display().to_string(),
        grant_id: format!("grant-{}", uuid::Uuid::new_v4()),
        restore_ownership: false,
        restore_special_bits: false,
    }
}

/// The error of a failed completion (panics on success).
pub fn failure(completion: &pb::RunCompletion) -> &pb::RunFailure {
    match &completion.outcome {
        Some(pb::run_completion::Outcome::Failure(failure)) => failure,
        other => panic!("the run was expected to fail: {other:?}"),
    }
}

/// The manifest key of a successful completion (panics on failure).
pub fn manifest_key(completion: &pb::RunCompletion) -> String {
    match &completion.outcome {
        Some(pb::run_completion::Outcome::Success(success)) => success.manifest_key.clone(),
        other => panic!("the run was expected to succeed: {other:?}"),
    }
}

/// What a tree holds: per relative path, its kind, mode, owner, mtime and
/// content (or link target), without following symlinks.
pub type TreeHash = BTreeMap<PathBuf, String>;

/// Hashes the tree at `root` (see [`TreeHash`]).
pub fn hash_tree(root: &Path) -> TreeHash {
    let mut tree = TreeHash::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let content = if metadata.is_file() {
            blake3::hash(&std::fs::read(&path).expect("read sentinel"))
                .to_hex()
                .to_string()
        } else if metadata.file_type().is_symlink() {
            std::fs::read_link(&path)
                .expect("read link")
                .display()
                .to_string()
        } else {
            String::new()
        };
        let rel = path
            .strip_prefix(root)
            .expect("beneath the root")
            .to_path_buf();
        tree.insert(
            rel,
            format!(
                "{:o} {}:{} {} {content}",
                metadata.mode(),
                metadata.uid(),
                metadata.gid(),
                metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000
            ),
        );
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).expect("list sentinel") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    tree
}
