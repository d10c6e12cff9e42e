//! The console's embedded assets and the headers every one of them carries.

use bytes::Bytes;
use http_body_util::Full;
use tonic::body::Body;

/// One embedded file of `console/dist/`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Everything the console loads. Pages are routed in the URL's fragment
/// (`/#/jobs/…`), so the server knows only these paths.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../../console/dist/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../console/dist/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../console/dist/app.css"),
    },
    Asset {
        // The API's descriptors with their comments, for the API reference
        // page: the set reflection serves, so the page describes this binary.
        path: "/api.binpb",
        content_type: "application/octet-stream",
        bytes: coffer_proto::FILE_DESCRIPTOR_SET,
    },
];

/// The policy of every console response: scripts and styles only from the
/// console's own files (no inline script or style, so injected markup cannot
/// run), calls only to this origin, and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The response to a GET or HEAD of `path`: the asset, or 404; both with
/// the console's security headers.
pub fn asset_response(path: &str, method: &http::Method) -> http::Response<Body> {
    let asset = ASSETS.iter().find(|asset| asset.path == path);
    let (status, content_type, bytes) = match asset {
        Some(asset) => (http::StatusCode::OK, asset.content_type, asset.bytes),
        None => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            &b"not found\n"[..],
        ),
    };
    let body = if method == http::Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(bytes)
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .header(
            http::header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        )
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .header(http::header::X_FRAME_OPTIONS, "DENY")
        .header("cross-origin-opener-policy", "same-origin")
        .header("cross-origin-resource-policy", "same-origin")
        // Assets keep their names across releases: revalidate every time.
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(Body::new(Full::new(body)))
        .expect("static headers are valid")
}
