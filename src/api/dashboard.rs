//! The dashboard at `/`: a page, a script and a stylesheet from `dashboard/`, compiled into the
//! binary so the page needs nothing but the server (no CDN, no build step, no network). The
//! page asks the public API for everything it shows, with the token the person gives it, so it
//! can see exactly what that token may see through the API and nothing more: serving it needs
//! no token, and it holds no data.
//!
//! Each answer forbids what the page never does (inline scripts, other origins, framing) and
//! carries a validator, so a browser asks again cheaply and gets a new build's assets at once.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorCode};

/// Where the page's assets are served, beside the page at `/`.
pub(super) const ASSETS: &str = "/ui/";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS_SERVED: [Asset; 3] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../dashboard/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboard/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../dashboard/app.css"),
    },
];

/// The page may load its own script, style and API, and nothing else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// Each asset's entity tag: a hash of its bytes, made once.
static TAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS_SERVED
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

fn serve(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS_SERVED[index];
    let tag = TAGS[index].clone();
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, tag.clone()),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if request.get(header::IF_NONE_MATCH) == Some(&tag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.body).into_response()
}

/// `GET /`: the page.
pub(super) async fn page(request: HeaderMap) -> Response {
    serve(0, &request)
}

/// `GET /ui/{file}`: its script and stylesheet.
pub(super) async fn asset(Path(file): Path<String>, request: HeaderMap) -> Response {
    match ASSETS_SERVED.iter().position(|asset| asset.name == file) {
        Some(index) if index > 0 => serve(index, &request),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such file of the dashboard",
        )
        .into_response(),
    }
}
