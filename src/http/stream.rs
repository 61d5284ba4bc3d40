//! `GET /v1/stream`: a recipient's events as Server-Sent Events, resumable
//! after any `seq` without a gap or a duplicate.
//!
//! Owns what is HTTP about a stream - who may open it, where the client
//! asks to resume ([`ResumeAfter`]), the response's headers - and hands the
//! rest to the delivery core (`crate::delivery::stream`). It must never
//! answer with an error once the response has started: an EventSource gives
//! up for good on anything but a 200 when it reconnects.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::{query_param, Caller};
use super::error::{problems, AppError, Busy};
use super::state::AppState;
use crate::delivery::slots::Full;
use crate::delivery::stream::{self as delivery_stream};

/// How long the request waits for the database before answering 200 anyway
/// (the stream then keeps trying on its own).
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// The caller's events as Server-Sent Events, resumable without a gap or a
/// duplicate.
///
/// Each event is `id: <seq>`, `event: <type>`, `data: <one line of JSON>`:
///
/// - `notification`: `{"id", "seq", "recipient", "kind", "payload",
///   "created_at"}` - a notification was committed.
/// - `read`: `{"seq", "recipient", "ids": [...], "created_at"}` - these
///   notification ids were marked read (from any tab or device).
/// - `reset`: `{"position"}` - the requested resume point is beyond the
///   recipient's latest `seq` (say, after a database restore); the stream
///   continues from `position` (that latest `seq`), so reload the inbox.
///
/// The stream opens with a `retry:` field and sends a `:` comment line as a
/// heartbeat whenever it has been quiet for the heartbeat interval. On
/// reconnect, browsers send `Last-Event-ID` themselves; everything after it
/// is replayed from the table, then live events follow.
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "stream",
    params(
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0,
            description = "Resume after this `seq` (what EventSource sends on reconnect); wins over `last_event_id`"),
        ("last_event_id" = Option<i64>, Query, minimum = 0,
            description = "Resume after this `seq` on a first connect, e.g. the inbox's `position`; `0` replays everything. Absent: live events from now on"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream` of `notification`, `read` and `reset` events", content_type = "text/event-stream", body = String),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 429, response = problems::TooManyStreams),
        (status = 503, response = problems::Unavailable),
    )
)]
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    ResumeAfter(resume_after): ResumeAfter,
) -> Result<Response, AppError> {
    let delivery = &state.delivery;
    let slot = delivery
        .slots
        .take(&caller.recipient, delivery.streams.limits())
        .map_err(|full| match full {
            Full::Recipient { .. } => AppError::TooManyRequests(full.to_string()),
            Full::Instance { .. } => AppError::Busy(Busy::Streams, full.to_string()),
        })?;
    let registered = delivery_stream::open(delivery, &caller.recipient, OPEN_TIMEOUT)
        .await
        .map_err(|refused| {
            tracing::warn!(error = %refused.cause, "the database refuses a stream's recipient");
            AppError::BadRequest(format!(
                "the database refuses this token's recipient (SQLSTATE {})",
                refused.code
            ))
        })?;
    let body = delivery_stream::body(
        delivery.clone(),
        caller.recipient,
        resume_after,
        registered,
        slot,
    );
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Tells nginx (and proxies that copy it) not to buffer the stream.
        (
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    Ok((headers, Body::from_stream(body)).into_response())
}

/// The `seq` the client asks to resume after, if any: the `Last-Event-ID`
/// header (what browsers send on reconnect) wins over the `last_event_id`
/// query parameter. Empty is the same as absent: live from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeAfter(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for ResumeAfter {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let header = match parts.headers.get("last-event-id") {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| AppError::BadRequest("Last-Event-ID must be a number".into()))?
                    .to_owned(),
            ),
            None => None,
        };
        let query = parts.uri.query().unwrap_or("");
        let raw = header.or_else(|| query_param(query, "last_event_id"));
        match raw.as_deref().map(str::trim) {
            None | Some("") => Ok(Self(None)),
            Some(text) => parse_event_id(text).map(|seq| Self(Some(seq))),
        }
    }
}

fn parse_event_id(text: &str) -> Result<i64, AppError> {
    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    text.parse::<i64>().ok().filter(|_| valid).ok_or_else(|| {
        AppError::BadRequest(format!(
            "Last-Event-ID must be a whole number from 0 to {}, got {text:?}",
            i64::MAX
        ))
    })
}
