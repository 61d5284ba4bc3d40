//! Health: `GET /healthz` (the process runs) and `GET /readyz` (it can
//! deliver: a query like every request's works through the request pool,
//! and the LISTEN session hears what is sent through that pool).
//!
//! Must stay cheap and must never wait long: probes call it every few seconds.
//! Both answer from the moment the port is bound, before the database is
//! reachable and migrated (see [`while_starting`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(alive))
        .routes(routes!(ready))
}

/// The probes while the app waits for its database and migrations: alive,
/// and not ready (nothing else can answer yet).
pub fn while_starting() -> Router {
    Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(starting))
}

/// Whether `path` is one of [`while_starting`]'s: the requests that need
/// no database to answer.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

#[derive(Serialize, ToSchema)]
struct Alive {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
struct Readiness {
    ready: bool,
    /// `up` or `down`.
    #[schema(example = "up")]
    database: &'static str,
    /// The LISTEN session: `up` or `down`.
    #[schema(example = "up")]
    listener: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process runs", body = Alive)))]
async fn alive() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Readiness: 200 only while this instance can deliver: a query of the kind
/// requests run works through the request pool, and the LISTEN session has
/// heard its own check, a NOTIFY sent through that pool (see
/// `delivery::listener`).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready to deliver", body = Readiness),
        (status = 503, description = "The database or the LISTEN session is down", body = Readiness),
    ))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = matches!(
        tokio::time::timeout(Duration::from_secs(2), requests_work(&state.pool)).await,
        Ok(Ok(_))
    );
    let listener = state.delivery.health.listening();
    let status = if database && listener {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let up = |ok: bool| if ok { "up" } else { "down" };
    let body = Readiness {
        ready: database && listener,
        database: up(database),
        listener: up(listener),
    };
    (status, Json(body))
}

/// A query as requests run them: prepared, with a parameter, on tidings'
/// own table (a stream's first query reads the same row). `SELECT 1` also
/// answers when the role may not read the schema, or the schema is not
/// there - when every request fails.
async fn requests_work(pool: &sqlx::PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT FROM tidings.recipients WHERE recipient = $1) AS "exists!""#,
        "",
    )
    .fetch_one(pool)
    .await
}

async fn starting() -> (StatusCode, Json<Readiness>) {
    let body = Readiness {
        ready: false,
        database: "down",
        listener: "down",
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}
