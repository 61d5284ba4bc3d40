//! Audit: the history as auditors see it, under the `auditor` role -
//! tamper evidence ([`chain`]), the event log with filters, paging and
//! streaming export ([`log`]), and a recipient's inbox as it stood at any
//! moment ([`inbox`]), derived from the events; [`export`] bounds the
//! streamed exports.
//!
//! Everything here reads; nothing here may ever write to the history.

pub mod chain;
pub mod export;
pub mod inbox;
pub mod log;

use chrono::{DateTime, Utc};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;
use crate::error::AppError;

pub use chain::{heads, verify};
pub use export::{Exports, EXPORT_STALL_TIMEOUT};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(chain::verify_handler))
        .routes(routes!(log::events))
        .routes(routes!(inbox::inbox_at))
}

/// An optional RFC 3339 time parameter. (Present but empty is invalid, as
/// the OpenAPI document says: only an absent parameter means "none".)
fn time_param(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, AppError> {
    match raw {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|time| Some(time.with_timezone(&Utc)))
            .map_err(|_| {
                AppError::BadRequest(format!(
                    "{name} must be an RFC 3339 time, e.g. 2026-11-21T13:00:00Z; got {text:?}"
                ))
            }),
    }
}

/// An optional `limit` from 1 to `max`.
fn limit_param(raw: Option<&str>, default: i64, max: i64) -> Result<i64, AppError> {
    let Some(text) = raw else {
        return Ok(default);
    };
    text.parse::<i64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "limit must be a whole number from 1 to {max}; got {text:?}"
            ))
        })
}
