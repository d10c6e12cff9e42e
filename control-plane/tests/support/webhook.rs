//! A webhook receiver on loopback for the notification tests: a real HTTP
//! server (axum) that records every request, answers the first ones with
//! a failure when asked to, and checks signatures with its own HMAC code
//! (not the control plane's), as a receiver written by a user would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Its path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// What the receiver answered.
    pub answered: u16,
}

impl Received {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// Whether `Coffer-Signature` signs the body with `secret` and its time
    /// is within five minutes of now: the check the README describes.
    pub fn signed_with(&self, secret: &str) -> bool {
        let header = self.header("coffer-signature");
        let mut timestamp = None;
        let mut given = None;
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", v)) => given = Some(v.to_string()),
                _ => {}
            }
        }
        let (Some(timestamp), Some(given)) = (timestamp, given) else {
            return false;
        };
        if (chrono::Utc::now().timestamp() - timestamp).abs() > 300 {
            return false;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&self.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        expected == given
    }
}

/// How the receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// 200 after `failures` answers of 503.
    OkAfterFailures(usize),
    /// A redirect to `/elsewhere` of the same server.
    Redirect,
}

struct Shared {
    answer: Answer,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// A running receiver; it stops with the test's runtime.
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens: `http://127.0.0.1:PORT`.
    pub base: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts a receiver on a loopback port.
    pub async fn start(answer: Answer) -> Receiver {
        let shared = Arc::new(Shared {
            answer,
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/elsewhere", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the receiver serves");
        });
        Receiver {
            base: format!("http://{address}"),
            shared,
        }
    }

    /// The URL of its hook.
    pub fn url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("not poisoned").clone()
    }

    /// Waits until `done` holds for what was received; panics after `limit`.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            if done(&received) {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "the receiver did not get what was expected within {limit:?}: {received:#?}"
                );
            }
        }
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = shared.received.lock().expect("not poisoned");
    let (status, response) = match shared.answer {
        Answer::OkAfterFailures(failures) if received.len() < failures => (
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE.into_response(),
        ),
        Answer::OkAfterFailures(_) => (StatusCode::OK, StatusCode::OK.into_response()),
        Answer::Redirect if uri.path() == "/hook" => (
            StatusCode::FOUND,
            (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
        ),
        Answer::Redirect => (StatusCode::OK, StatusCode::OK.into_response()),
    };
    received.push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        answered: status.as_u16(),
    });
    drop(received);
    shared.arrived.notify_waiters();
    response
}
