//! The state every handler shares: the request pool, the delivery core,
//! the keys that verify tokens, the origins whose pages may write with the
//! token cookie, and the bounds on audit exports.
//!
//! It must never hold per-request data: everything here lives as long as
//! the server.

use axum::extract::FromRef;
use sqlx::PgPool;

use super::auth::{CookieOrigins, Keys};
use crate::audit::export::Exports;
use crate::delivery::Delivery;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Request pool: every query a request makes borrows from here.
    pub pool: PgPool,
    /// The delivery core, for streams, the readiness probe and metrics.
    pub delivery: Delivery,
    /// Verifies client tokens.
    pub keys: Keys,
    /// Which pages may write with the `tidings_token` cookie, besides
    /// tidings' own: those of `--cors-origin`.
    pub cookie_origins: CookieOrigins,
    /// Bounds the audit exports running at once, and how long each may wait
    /// for a client that stopped reading.
    pub exports: Exports,
    /// Started without a configured secret: the demo page offers its
    /// publish form (the logged demo token may publish).
    pub demo_mode: bool,
}

impl FromRef<AppState> for Keys {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

impl FromRef<AppState> for CookieOrigins {
    fn from_ref(state: &AppState) -> Self {
        state.cookie_origins.clone()
    }
}
