//! Scraping a `/metrics` endpoint in tests, with a real HTTP client.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One scrape: every sample by its series (`name{label="value",…}` as
/// exported), comments left out.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Samples by series.
    pub samples: BTreeMap<String, f64>,
    /// The response's `Content-Type`.
    pub content_type: String,
    /// The body as received.
    pub text: String,
}

impl Scrape {
    /// The value of `series` (0 when absent: a counter not incremented yet).
    pub fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The series of metric `name` (any labels).
    pub fn series_of(&self, name: &str) -> Vec<(&str, f64)> {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(series, value)| (series.as_str(), *value))
            .collect()
    }
}

/// GETs `url`: the status, the `Content-Type` and the body.
async fn get(url: &str) -> (http::StatusCode, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(url.parse().expect("a URL"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
    (status, content_type, text)
}

/// The status code of a GET of `url`.
pub async fn status(url: &str) -> u16 {
    get(url).await.0.as_u16()
}

/// Scrapes `url` until `done` holds (at most 10 s): counters of an event
/// move just after the event is visible through the API.
pub async fn scrape_until(url: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut scraped = scrape(url).await;
    for _ in 0..100 {
        if done(&scraped) {
            return scraped;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        scraped = scrape(url).await;
    }
    panic!(
        "the metrics at {url} never reached the expected values:\n{}",
        scraped.text
    );
}

/// GETs `url` and parses the Prometheus text format.
pub async fn scrape(url: &str) -> Scrape {
    let (status, content_type, text) = get(url).await;
    assert!(status.is_success(), "GET {url}: {status}");
    let samples = text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect();
    Scrape {
        samples,
        content_type,
        text,
    }
}
