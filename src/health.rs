//! Health: `GET /healthz` (the process runs) and `GET /readyz` (it can
//! deliver: the database answers and the LISTEN session is up).
//!
//! Must stay cheap and must never wait long: probes call it every few seconds.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let query = sqlx::query_scalar!("SELECT 1 AS \"one!\"").fetch_one(&state.pool);
    let database = matches!(
        tokio::time::timeout(Duration::from_secs(2), query).await,
        Ok(Ok(_))
    );
    let listener = state.health.listening();
    let status = if database && listener {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let up = |ok: bool| if ok { "up" } else { "down" };
    let body =
        json!({"ready": database && listener, "database": up(database), "listener": up(listener)});
    (status, Json(body))
}
