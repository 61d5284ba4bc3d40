//! Errors: the one error type every handler returns, and how it becomes an
//! RFC 9457 problem document.
//!
//! Owns the mapping from failure to HTTP status. It must never leak internal
//! details (SQL, connection strings) into a response body: a 5xx says only
//! that something failed, and its cause chain goes to the log, once.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A body over the 2 MiB every JSON endpoint takes at most.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body sent as something other than `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// The path exists, the method does not; the router adds `Allow`.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A deliberate, expected refusal (still starting, at a limit): a 503
    /// to retry later, with no cause worth logging.
    #[error("{1}")]
    Busy(Busy, String),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Database(#[source] sqlx::Error),
}

/// Why tidings refuses for now what it will do later: what decides how
/// long a client should wait (`Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The request came while tidings was starting, and the start failed
    /// or was stopped.
    NotStarted,
    /// As many audit exports run as allowed.
    Exports,
    /// The instance serves as many streams as `--max-streams` allows.
    Streams,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Busy(..) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name for the `type` member.
    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::TooManyRequests(_) => "too-many-streams",
            Self::MethodNotAllowed(_) => "method-not-allowed",
            Self::Busy(..) | Self::Unavailable(_) => "unavailable",
            Self::Database(_) => "internal",
        }
    }

    /// `Retry-After`, in seconds, for every refusal that will pass (every
    /// 429 and 503): long enough that asking again is likely to succeed,
    /// short enough that a client is not kept waiting once it would.
    fn retry_after(&self) -> Option<u64> {
        match self {
            // Only the recipient's own streams ending frees a place: a
            // person closing a tab, a dead connection noticed. Sooner
            // would only get the same answer.
            Self::TooManyRequests(_) => Some(30),
            // A restarting instance serves again within seconds, and a
            // balancer sends the retry to another one anyway.
            Self::Busy(Busy::NotStarted, _) => Some(5),
            // An export holds its place for as long as its client reads:
            // seconds for most, minutes for the largest.
            Self::Busy(Busy::Exports, _) => Some(30),
            // A place frees whenever any stream ends, and another instance
            // may have room now; 10 s spreads the refused clients' returns
            // rather than bringing them back at once.
            Self::Busy(Busy::Streams, _) => Some(10),
            // The pool already waited 5 s for a connection; PostgreSQL
            // restarts and failovers take seconds, and open streams retry
            // on the same scale (up to 5 s apart).
            Self::Unavailable(_) => Some(5),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for AppError {
    /// Losing the database is a transient 503 (clients should retry); a
    /// value the database cannot store is the client's 400; anything else a
    /// 500.
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                Self::Unavailable(error)
            }
            sqlx::Error::Database(ref gone) if is_unavailable(gone.code().as_deref()) => {
                Self::Unavailable(error)
            }
            sqlx::Error::Database(refused) if is_unstorable_input(refused.code().as_deref()) => {
                Self::BadRequest(format!(
                    "the database refused a value: {}",
                    refused.message()
                ))
            }
            other => Self::Database(other),
        }
    }
}

/// SQLSTATEs of a database that is going away or not there yet, which a
/// retry will find again: a lost or refused connection (class 08, also what
/// PgBouncer answers while it cannot reach PostgreSQL), a server shutting
/// down or starting (57P01-57P03), or one with no connection to spare
/// (53300).
fn is_unavailable(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    })
}

/// SQLSTATEs that only input can cause: text PostgreSQL cannot hold (NUL,
/// lone surrogates: 22021, 22P05, 22P02 for a bad JSON escape), a number
/// beyond `numeric`'s range (22003, a payload's `1e999999`), rows the
/// schema refuses (23514, such as a payload that prints larger than
/// invariant I10 allows), and input too large or too complex for
/// PostgreSQL to handle: class 54, "program limit exceeded" - values too
/// large to index (54000, say a recipient of many kilobytes) and JSON
/// nested deeper than the server's stack allows (54001, "stack depth
/// limit exceeded"). tidings' own statements are fixed and small, so a
/// program limit is reached only through the values a request carries.
fn is_unstorable_input(code: Option<&str>) -> bool {
    match code {
        Some("22021" | "22P05" | "22P02" | "22003" | "23514") => true,
        Some(code) => code.starts_with("54"),
        None => false,
    }
}

/// RFC 9457 `application/problem+json`: what every 4xx and 5xx carries.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "urn:tidings:problem:bad-request",
    "title": "Bad Request",
    "status": 400,
    "detail": "Last-Event-ID must be a whole number from 0 to 9223372036854775807, got \"abc\""
}))]
pub struct Problem {
    /// A stable name for the kind of problem: `urn:tidings:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    #[schema(value_type = String)]
    pub title: &'static str,
    pub status: u16,
    /// What went wrong, for a human; never internal details.
    pub detail: String,
}

/// The problem documents an endpoint can answer with, for its OpenAPI
/// description: one type per status, so that each path lists exactly the
/// failures it can produce.
pub mod problems {
    use super::Problem;

    macro_rules! problem_response {
        ($name:ident, $description:literal) => {
            #[derive(utoipa::ToResponse)]
            #[response(description = $description, content_type = "application/problem+json")]
            pub struct $name(#[allow(dead_code)] Problem);
        };
    }

    problem_response!(
        BadRequest,
        "The request is malformed: a parameter or the body is invalid."
    );
    problem_response!(
        Unauthorized,
        "No valid token: missing, malformed, badly signed, expired or not yet valid."
    );
    problem_response!(
        Forbidden,
        "The token is valid but lacks the role this endpoint needs."
    );
    problem_response!(NotFound, "No such notification for this recipient.");
    problem_response!(
        Conflict,
        "A concurrent request holds the same idempotency key; retry."
    );
    problem_response!(
        PayloadTooLarge,
        "The body is over the 2 MiB a request may carry; send fewer notifications at once."
    );
    problem_response!(
        UnsupportedMediaType,
        "The body is not sent as `Content-Type: application/json`."
    );
    problem_response!(
        TooManyStreams,
        "This recipient already has as many streams open here as allowed; \
         Retry-After says when to retry."
    );
    problem_response!(
        Unavailable,
        "The database is unreachable, tidings could not start, or at a limit: \
         (audit exports) as many exports run as allowed, (streams) this instance \
         serves as many streams as allowed. Retry-After says when to retry."
    );
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, Self::Busy(..)) {
            tracing::error!(error = %cause_chain(&self), "request failed");
        }
        let problem = Problem {
            kind: format!("urn:tidings:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let body = serde_json::to_string(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

/// `axum::extract::Query`, except that a query string it cannot parse (a
/// repeated parameter, say) becomes a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct AppQuery<T>(pub T);

/// `axum::extract::Path`, with the same difference.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct AppPath<T>(pub T);

/// `axum::Json`, except that a body it refuses becomes a problem document
/// like every other client error, keeping axum's status: 413 for a body
/// over its limit (2 MiB), 415 for one not sent as JSON, 400 otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(rejection.body_text()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    AppError::UnsupportedMediaType(rejection.body_text())
                }
                _ => AppError::BadRequest(rejection.body_text()),
            }),
        }
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::{AppError, Busy};
    use axum::http::header::RETRY_AFTER;
    use axum::response::IntoResponse;

    #[test]
    fn every_429_and_503_says_when_to_retry_and_nothing_else_does() {
        let errors = [
            AppError::BadRequest("x".into()),
            AppError::Unauthorized("x".into()),
            AppError::Forbidden("x".into()),
            AppError::NotFound("x".into()),
            AppError::Conflict("x".into()),
            AppError::PayloadTooLarge("x".into()),
            AppError::UnsupportedMediaType("x".into()),
            AppError::TooManyRequests("x".into()),
            AppError::MethodNotAllowed("x".into()),
            AppError::Busy(Busy::NotStarted, "x".into()),
            AppError::Busy(Busy::Exports, "x".into()),
            AppError::Busy(Busy::Streams, "x".into()),
            AppError::Unavailable(sqlx::Error::PoolTimedOut),
            AppError::Database(sqlx::Error::RowNotFound),
        ];
        for error in errors {
            let name = format!("{error:?}");
            let response = error.into_response();
            let status = response.status().as_u16();
            let seconds = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
            match status {
                429 | 503 => assert!(seconds.is_some_and(|s| s >= 1), "{name}: {seconds:?}"),
                _ => assert_eq!(seconds, None, "{name}"),
            }
        }
    }
}
