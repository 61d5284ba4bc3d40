//! The HTTP surface: the state every handler shares ([`state`]), the
//! router assembled from each endpoint group's `router()`, and the server
//! that accepts connections ([`server`]).
//!
//! - [`stream`]: `GET /v1/stream`, Server-Sent Events with resume.
//! - [`inbox`]: the notification list, unread count and read marks.
//! - [`publish`]: `POST /v1/notifications` for publishers without SQL.
//! - [`health`], [`metrics`], [`openapi`]: operations.
//! - [`web`]: the browser client and the demo page.
//! - [`auth`]: who is asking, from a verified token.
//! - [`error`]: the one error type, rendered as RFC 9457 problem JSON.
//!
//! The audit endpoints live with the rest of audit (`crate::audit`). This
//! module must never hold delivery logic: handlers call into
//! `crate::delivery`, which knows nothing of HTTP.

pub mod auth;
pub mod error;
pub mod health;
pub mod inbox;
pub mod metrics;
pub mod openapi;
pub mod publish;
pub mod query;
pub mod server;
pub mod state;
pub mod stream;
pub mod web;

use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::{Extension, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::audit;
use error::AppError;
use openapi::Document;
pub use state::AppState;

/// Every endpoint, with what every request goes through: a request id, a
/// log span, the request counter, and CORS for `cors_origins`.
pub fn router(state: AppState, cors_origins: &[HeaderValue]) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let count_requests = axum::middleware::from_fn_with_state(
        state.delivery.metrics.clone(),
        metrics::count_requests,
    );
    let (routes, api) = openapi::router()
        .merge(stream::router())
        .merge(inbox::router())
        .merge(publish::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(audit::router())
        .merge(web::router())
        .split_for_parts();
    let app = routes
        .fallback(no_such_path)
        .method_not_allowed_fallback(no_such_method)
        .with_state(state)
        .layer(Extension(Document::new(&api)))
        .layer(count_requests)
        // No `on_failure`: a 5xx is logged once, with its cause, where it is
        // made (`AppError`); the layer's own line would repeat it without
        // the cause, and log every failing `/readyz` probe as an error.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    with_cors(app, cors_origins)
}

/// Lets the browsers of `origins` call the API from their pages, cookies
/// included; no other site's.
fn with_cors(app: Router, origins: &[HeaderValue]) -> Router {
    if origins.is_empty() {
        return app;
    }
    app.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ]),
    )
}

/// The span every log line of a request carries: its id, method and path.
/// Never the query string, which may hold an `access_token`.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", id = request_id, method = %request.method(), path = request.uri().path())
}

async fn no_such_path(uri: Uri) -> AppError {
    AppError::NotFound(format!("no endpoint at {}", uri.path()))
}

/// axum adds the `Allow` header to what this returns.
async fn no_such_method(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; Allow lists the methods that are",
        uri.path()
    ))
}
