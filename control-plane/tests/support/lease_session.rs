//! A worker's lease session driven message by message, for the tests of
//! lease timing and fencing (`lease_settings.rs`, `attack_fencing.rs`).

use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::lease_session_request::Message as Up;
use coffer_proto::v1::lease_session_response::Message as Down;
use coffer_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::support::TestServer;

/// One open lease session.
pub struct Session {
    tx: mpsc::Sender<pb::LeaseSessionRequest>,
    rx: Streaming<pb::LeaseSessionResponse>,
    /// What the control plane welcomed the worker with.
    pub welcome: pb::SessionWelcome,
}

/// Opens a session as worker `name` with `token`; the error is the status
/// the control plane ended the stream with instead of a welcome.
pub async fn open(server: &TestServer, token: &str, name: &str) -> Result<Session, tonic::Status> {
    let (tx, up) = mpsc::channel(64);
    let hello = pb::WorkerHello {
        name: name.to_string(),
        slots: 4,
        labels: [("role".to_string(), name.to_string())].into(),
        ..Default::default()
    };
    tx.send(request(Up::Hello(hello)))
        .await
        .expect("queue hello");
    let mut client = WorkerServiceClient::new(server.channel().await);
    let mut call = tonic::Request::new(ReceiverStream::new(up));
    call.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    let mut rx = client.lease_session(call).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), rx.message())
        .await
        .expect("an answer to hello within 20 s")?;
    match first.and_then(|m| m.message) {
        Some(Down::Welcome(welcome)) => Ok(Session { tx, rx, welcome }),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn request(message: Up) -> pb::LeaseSessionRequest {
    pb::LeaseSessionRequest {
        message: Some(message),
    }
}

impl Session {
    /// Sends one message.
    pub async fn send(&self, message: Up) {
        self.tx.send(request(message)).await.expect("session open");
    }

    /// Announces `free_slots`.
    pub async fn credit(&self, free_slots: i32) {
        self.send(Up::Credit(pb::WorkerCredit { free_slots })).await;
    }

    /// Heartbeats `leases` (none: just "still here").
    pub async fn heartbeat(&self, leases: &[pb::LeaseRef]) {
        let leases = leases
            .iter()
            .map(|lease| pb::LeaseProgress {
                lease: Some(lease.clone()),
                progress: None,
            })
            .collect();
        self.send(Up::Heartbeat(pb::WorkerHeartbeat { leases }))
            .await;
    }

    /// Reports a success of `lease` naming `manifest_key`.
    pub async fn succeed(&self, lease: &pb::LeaseRef, manifest_key: String) {
        let success = pb::RunSuccess {
            size_bytes: 1,
            details: "scripted".into(),
            manifest_key,
            parent_run_id: String::new(),
            ..Default::default()
        };
        self.send(Up::Completion(pb::RunCompletion {
            lease: Some(lease.clone()),
            outcome: Some(pb::run_completion::Outcome::Success(success)),
            progress: None,
            batch_count: 0,
        }))
        .await;
    }

    /// Reports a retryable failure of `lease`.
    pub async fn fail(&self, lease: &pb::LeaseRef) {
        self.send(Up::Completion(pb::RunCompletion {
            lease: Some(lease.clone()),
            outcome: Some(pb::run_completion::Outcome::Failure(pb::RunFailure {
                error: "scripted failure".into(),
                retryable: true,
            })),
            progress: None,
            batch_count: 0,
        }))
        .await;
    }

    /// The next message, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Down, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("a message within 20 s")?;
        Ok(message
            .and_then(|m| m.message)
            .expect("the stream stays open with a message"))
    }

    /// The next message within `wait`, if any (`None` also when the
    /// stream ended).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Down> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(message))) => message.message,
            _ => None,
        }
    }

    /// Skips messages until an assignment arrives; returns its lease.
    pub async fn assignment(&mut self) -> pb::LeaseRef {
        loop {
            if let Down::Assignment(assignment) = self.next().await.expect("stream healthy") {
                return assignment.lease.expect("an assignment names its lease");
            }
        }
    }

    /// Skips messages until a lease acknowledgement arrives.
    pub async fn ack(&mut self) -> pb::LeaseAck {
        loop {
            if let Down::Ack(ack) = self.next().await.expect("stream healthy") {
                return ack;
            }
        }
    }

    /// Skips messages until a heartbeat answer arrives.
    pub async fn heartbeat_ack(&mut self) -> pb::HeartbeatAck {
        loop {
            if let Down::HeartbeatAck(ack) = self.next().await.expect("stream healthy") {
                return ack;
            }
        }
    }

    /// Skips messages until the stream ends; returns the status it ended with.
    pub async fn closed(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.rx.message()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return tonic::Status::ok("stream ended"),
                Ok(Err(status)) => return status,
                Err(_) => panic!("the stream stayed open for 20 s"),
            }
        }
    }
}

/// The attempt-specific manifest key of `lease`.
pub fn attempt_key(lease: &pb::LeaseRef) -> String {
    format!("snapshots/{}.{}", lease.run_id, lease.lease_token)
}

/// Queues an admin's backup of `/data/source` into the filesystem path
/// `target` (scripted workers never touch either); returns the run's id.
pub async fn queue_backup(server: &TestServer, target: &str) -> String {
    let target = pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(target.into())),
    };
    let spec = pb::BackupSpec {
        source_path: "/data/source".into(),
        target: Some(target),
        ..Default::default()
    };
    server
        .admin()
        .queue_run(pb::create_run_request::Spec::Backup(spec))
        .await
}
