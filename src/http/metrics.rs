//! `GET /metrics`, and the middleware that counts every request by route,
//! method and status. What is counted lives in `crate::metrics`.
//!
//! It must never let a client add label values without bound: routes are
//! templates, and made-up methods share one label.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::state::AppState;
use crate::metrics::{HttpLabels, Metrics};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(scrape))
}

/// Every metric in the Prometheus (OpenMetrics) text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String)))]
async fn scrape(State(state): State<AppState>) -> Response {
    let body = state.delivery.metrics.render(&state.pool).await;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

/// Middleware: counts every request by route template, method and status.
pub async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method()).to_owned();
    let response = next.run(request).await;
    let labels = HttpLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    response
}

/// The method as a label: any token is a valid method, so a client could
/// otherwise add a series per made-up method, unauthenticated, forever.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
