//! The console's assets and gRPC-Web over plain HTTP/1.1 on the API port:
//! security headers on every page response, nothing but static files
//! without a token, and gRPC-Web calls authorised like any other call.

use coffer_control_plane::testing::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one HTTP/1.1 request and reads the whole answer (the connection
/// closes after it).
async fn http1(server: &TestServer, head: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let request = format!(
        "{head}\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    answer
}

fn head_of(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn assert_security_headers(head: &str) {
    for expected in [
        "content-security-policy: default-src 'none'; script-src 'self';",
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(
            head.contains(expected),
            "{expected:?} missing from:\n{head}"
        );
    }
    assert!(!head.contains("set-cookie"), "{head}");
}

#[tokio::test]
async fn console_pages_carry_security_headers_and_no_data() {
    let server = TestServer::start(Backend::Sqlite).await;
    let page = http1(&server, "GET / HTTP/1.1", b"").await;
    let head = head_of(&page);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert_security_headers(&head);
    let text = String::from_utf8_lossy(&page);
    assert!(
        text.contains(r#"<script type="module" src="/app.js"></script>"#),
        "{text}"
    );
    assert!(!text.contains("<script>"), "no inline script: {text}");

    let script = head_of(&http1(&server, "GET /app.js HTTP/1.1", b"").await);
    assert!(script.contains("content-type: text/javascript"), "{script}");
    assert_security_headers(&script);

    let missing = head_of(&http1(&server, "GET /admin.token HTTP/1.1", b"").await);
    assert!(missing.starts_with("http/1.1 404"), "{missing}");
    assert_security_headers(&missing);
}

#[tokio::test]
async fn grpc_web_calls_need_a_token_like_any_call() {
    let server = TestServer::start(Backend::Sqlite).await;
    // An empty ListJobsRequest in one uncompressed gRPC frame.
    let frame = [0u8, 0, 0, 0, 0];
    let call = "POST /coffer.v1.JobService/ListJobs HTTP/1.1\r\n\
                Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1";
    let refused = head_of(&http1(&server, call, &frame).await);
    assert!(refused.contains("grpc-status: 16"), "{refused}");

    let authorised = format!("{call}\r\nAuthorization: Bearer {}", server.admin_token);
    let answer = http1(&server, &authorised, &frame).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(head_of(&answer).starts_with("http/1.1 200"), "{text}");
    // The trailers travel in the body's last frame.
    assert!(text.contains("grpc-status:0"), "{text}");
}
