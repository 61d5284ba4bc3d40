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

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::state::AppState;

pub use chain::{heads, verify};
pub use export::{Exports, EXPORT_STALL_TIMEOUT};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(chain::verify_handler))
        .routes(routes!(log::events))
        .routes(routes!(inbox::inbox_at))
}
