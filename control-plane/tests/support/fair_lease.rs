//! Helpers of the fair-leasing attack tests: a worker session spoken over the
//! real gRPC stream (labels, roots and slots of the test's choosing), and
//! the tenant-side fixtures those tests share.

use std::time::Duration;

use coffer_control_plane::testing::{Api, TestServer};
use coffer_proto::v1 as pb;
use pb::lease_session_request::Message as Up;
use pb::lease_session_response::Message as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// What a test worker announces in its hello.
#[derive(Clone, Debug, Default)]
pub struct WorkerShape {
    /// Labels for selectors.
    pub labels: Vec<(&'static str, &'static str)>,
    /// Source roots (empty: any path).
    pub source_roots: Vec<&'static str>,
    /// Parallel slots.
    pub slots: i32,
    /// Its class (unspecified: all).
    pub class: pb::WorkerClass,
}

/// One worker session driven by the test.
pub struct LeaseClient {
    tx: mpsc::Sender<pb::LeaseSessionRequest>,
    rx: Streaming<pb::LeaseSessionResponse>,
}

fn up(message: Up) -> pb::LeaseSessionRequest {
    pb::LeaseSessionRequest {
        message: Some(message),
    }
}

impl LeaseClient {
    /// Opens a session as the worker `name` and waits for the welcome.
    pub async fn open(server: &TestServer, name: &str, shape: &WorkerShape) -> LeaseClient {
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::WorkerHello {
            name: name.to_string(),
            labels: shape
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            slots: shape.slots,
            source_roots: shape.source_roots.iter().map(|r| r.to_string()).collect(),
            class: shape.class.into(),
            ..Default::default()
        };
        tx.send(up(Up::Hello(hello))).await.expect("send hello");
        let token = server.worker_token_for(name).await;
        let mut workers = server.as_user(&token).workers;
        let rx = workers
            .lease_session(ReceiverStream::new(rx))
            .await
            .expect("open session")
            .into_inner();
        let mut client = LeaseClient { tx, rx };
        match client.next(Duration::from_secs(20)).await {
            Some(Down::Welcome(_)) => client,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Offers `free_slots` slots to the control plane.
    pub async fn credit(&self, free_slots: i32) {
        self.tx
            .send(up(Up::Credit(pb::WorkerCredit { free_slots })))
            .await
            .expect("session open");
    }

    async fn next(&mut self, limit: Duration) -> Option<Down> {
        let message = tokio::time::timeout(limit, self.rx.message()).await.ok()?;
        message
            .expect("stream healthy")
            .expect("stream open")
            .message
    }

    /// The next assignment within `limit`, or `None`.
    pub async fn assignment_within(&mut self, limit: Duration) -> Option<pb::RunAssignment> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Down::Assignment(assignment) => return Some(assignment),
                _ => continue,
            }
        }
    }

    /// The next assignment; panics after 20 s.
    pub async fn assignment(&mut self) -> pb::RunAssignment {
        self.assignment_within(Duration::from_secs(20))
            .await
            .expect("an assignment within 20 s")
    }

    /// Reports the end of the attempt `lease` and waits for the answer.
    pub async fn complete(
        &mut self,
        lease: &pb::LeaseRef,
        outcome: pb::run_completion::Outcome,
    ) -> pb::LeaseAck {
        let completion = pb::RunCompletion {
            lease: Some(lease.clone()),
            outcome: Some(outcome),
            progress: None,
            batch_count: 0,
        };
        self.tx
            .send(up(Up::Completion(completion)))
            .await
            .expect("session open");
        loop {
            match self.next(Duration::from_secs(20)).await {
                Some(Down::Ack(ack)) => return ack,
                Some(_) => continue,
                None => panic!("no answer to a completion within 20 s"),
            }
        }
    }

    /// Completes `lease` successfully.
    pub async fn succeed(&mut self, lease: &pb::LeaseRef) -> pb::LeaseAck {
        let success = pb::RunSuccess {
            size_bytes: 1,
            details: "fair-lease test".into(),
            manifest_key: format!("snapshots/{}.{}", lease.run_id, lease.lease_token),
            parent_run_id: String::new(),
            ..Default::default()
        };
        self.complete(lease, pb::run_completion::Outcome::Success(success))
            .await
    }
}

/// An ad-hoc backup of `source_path` into a filesystem repository of its
/// own (a repository belongs to one owner, and these tests are about
/// queueing, not sharing), for workers carrying `selector`.
pub fn backup(source_path: &str, selector: &[(&str, &str)]) -> pb::create_run_request::Spec {
    pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source_path.into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(format!(
                "/backups/fair-lease/{}",
                uuid::Uuid::new_v4().simple()
            ))),
        }),
        worker_selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// Every run `api`'s caller can list in `state`, reading all pages.
pub async fn runs_in_state(api: &Api, state: pb::RunState) -> Vec<pb::Run> {
    let mut runs = Vec::new();
    let mut request = pb::ListRunsRequest {
        state: state as i32,
        page_size: 100,
        ..Default::default()
    };
    loop {
        let page = api
            .runs
            .clone()
            .list_runs(request.clone())
            .await
            .expect("list runs")
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        request.page_token = page.next_page_token;
    }
}
