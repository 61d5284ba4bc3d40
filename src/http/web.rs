//! Web: what a browser loads from tidings itself - `GET /tidings.js` (the
//! browser client and the `<tidings-bell>` element), `GET /tidings.d.ts`
//! (its TypeScript declarations), `GET /` (the demo page) and `GET /demo.js`
//! (the demo page's script). The files live in `web/` and are compiled into
//! the binary, so a deployment is still one file.
//!
//! The client is written as several ES modules (`web/tidings.js` and
//! `web/tidings/*.js`) but served as ONE file that build.rs joins, not as
//! an entry module importing siblings from `/tidings/*.js`. One file is one
//! version: an entry module and its siblings are separate responses, and a
//! page loading during an upgrade (or behind instances of two versions)
//! could get a fresh entry with a stale sibling, which versioned sibling
//! URLs would turn into a 404 instead. It is also one revalidation per page
//! load rather than five, two round trips deep; and a host app whose CSP
//! allows exactly `https://tidings.example.com/tidings.js` keeps working.
//! The join keeps the code as written (no minifying, a marker per part
//! mapping its line numbers), so it reads in a debugger as the sources do.
//!
//! Every response carries a strong ETag (a hash of the exact bytes) and
//! `Cache-Control: no-cache`: browsers revalidate each load with a cheap 304
//! and pick up a new version the moment tidings is upgraded. This module
//! must never put anything from a request into a response: the pages are
//! fixed at startup, so nothing a client sends can end up in them.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::state::AppState;

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// What TypeScript tooling that fetches declarations by URL (Deno) expects.
const TYPESCRIPT: &str = "application/typescript; charset=utf-8";

/// The demo page says whether it is in demo mode (`AppState::demo_mode`)
/// with this attribute; the server flips it, the page's script reads it.
const DEMO_OFF: &str = r#"data-demo="off""#;
const DEMO_ON: &str = r#"data-demo="on""#;

/// The demo page runs only its own script, talks only to this origin, and
/// never sends its address (which may hold a token) as a referrer.
const PAGE_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// `web/tidings.js` with the modules it imports, joined by build.rs.
static CLIENT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        JAVASCRIPT,
        include_str!(concat!(env!("OUT_DIR"), "/tidings.js")),
    )
});
/// `web/tidings.d.ts`. (Files are named from the crate root, so the
/// paths hold wherever this module lives.)
static TYPES: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        TYPESCRIPT,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/tidings.d.ts")),
    )
});
static DEMO_SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        JAVASCRIPT,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/demo.js")),
    )
});
/// The demo page as served without and with demo mode.
static PAGES: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    let page = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/index.html"));
    [
        Asset::new(HTML, page),
        Asset::new(HTML, page.replacen(DEMO_OFF, DEMO_ON, 1)),
    ]
});

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(demo_page))
        .routes(routes!(demo_script))
        .routes(routes!(client))
        .routes(routes!(client_types))
}

/// What every file here answers to: revalidation by ETag (documentation
/// only; `Asset::respond` reads the header).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct Revalidate {
    /// An ETag from an earlier answer.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// The answer when that ETag is still current.
#[derive(utoipa::ToResponse)]
#[response(description = "Unchanged since the ETag given")]
pub(crate) struct NotModified;

/// The demo page: the `<tidings-bell>` for the recipient of the
/// `access_token` in its address, and (demo mode only, i.e. started without
/// a JWT secret) a form that publishes a test notification.
#[utoipa::path(get, path = "/", tag = "browser", security(()),
    params(Revalidate),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 304, response = NotModified),
    ))]
async fn demo_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut response = PAGES[usize::from(state.demo_mode)].respond(&headers);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The demo page's script (kept out of the page for a strict CSP).
#[utoipa::path(get, path = "/demo.js", tag = "browser", security(()),
    params(Revalidate),
    responses(
        (status = 200, description = "The script", content_type = "text/javascript", body = String),
        (status = 304, response = NotModified),
    ))]
async fn demo_script(headers: HeaderMap) -> Response {
    DEMO_SCRIPT.respond(&headers)
}

/// The browser client: an ES module exporting `connect()` and defining the
/// `<tidings-bell>` element (see docs/browser.md).
#[utoipa::path(get, path = "/tidings.js", tag = "browser", security(()),
    params(Revalidate),
    responses(
        (status = 200, description = "The module", content_type = "text/javascript", body = String),
        (status = 304, response = NotModified),
    ))]
async fn client(headers: HeaderMap) -> Response {
    // Module scripts are fetched with CORS, so a host app on another origin
    // can import the client only if it says so; it holds nothing private.
    for_any_origin(CLIENT.respond(&headers))
}

/// The client's TypeScript declarations: what `/tidings.js` exports, and
/// the `<tidings-bell>` element's attributes, properties and events. Served
/// beside the client so they always match the version running here.
#[utoipa::path(get, path = "/tidings.d.ts", tag = "browser", security(()),
    params(Revalidate),
    responses(
        (status = 200, description = "The declarations", content_type = "application/typescript", body = String),
        (status = 304, response = NotModified),
    ))]
async fn client_types(headers: HeaderMap) -> Response {
    for_any_origin(TYPES.respond(&headers))
}

fn for_any_origin(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// A file served from memory, with the validator computed once.
struct Asset {
    body: Bytes,
    content_type: &'static str,
    /// `None` only if the hash could not be a header, which hex cannot.
    etag: Option<HeaderValue>,
}

impl Asset {
    fn new(content_type: &'static str, body: impl Into<String>) -> Self {
        let body = Bytes::from(body.into());
        let digest = Sha256::digest(&body);
        let etag = HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16]))).ok();
        Self {
            body,
            content_type,
            etag,
        }
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        let Some(etag) = &self.etag else {
            return self.full(headers);
        };
        headers.insert(ETAG, etag.clone());
        if unchanged(request, etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        self.full(headers)
    }

    fn full(&self, mut headers: HeaderMap) -> Response {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        (headers, self.body.clone()).into_response()
    }
}

/// Whether `If-None-Match` names `etag`. RFC 9110 says to compare weakly
/// here, so a `W/` that a proxy added still matches.
fn unchanged(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(wanted) = request.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ours = etag.as_bytes();
    wanted
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_page_can_be_switched_to_demo_mode() {
        assert!(PAGES[0]
            .body
            .windows(DEMO_OFF.len())
            .any(|w| w == DEMO_OFF.as_bytes()));
        assert!(PAGES[1]
            .body
            .windows(DEMO_ON.len())
            .any(|w| w == DEMO_ON.as_bytes()));
        assert_ne!(PAGES[0].etag, PAGES[1].etag);
    }

    #[test]
    fn if_none_match_matches_any_listed_tag_weak_or_strong() {
        let etag = HeaderValue::from_static("\"abc\"");
        let asking = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            unchanged(&headers, &etag)
        };
        assert!(asking("\"abc\""));
        assert!(asking("\"x\", W/\"abc\""));
        assert!(asking("*"));
        assert!(!asking("\"abcd\""));
        assert!(!unchanged(&HeaderMap::new(), &etag));
    }
}
