//! Publishing over HTTP: `POST /v1/notifications` for callers with the
//! `publisher` role and no database access of their own.
//!
//! It is a thin door onto the primary write path, the same INSERT any SQL
//! client runs, so every invariant still comes from the database. A batch is
//! one transaction: all of it lands, or none. It must never assign a `seq`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::config::Role;
use crate::error::{AppError, AppJson};

/// Most notifications one request may carry.
const MAX_BATCH: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/notifications", post(publish))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNotification {
    recipient: String,
    kind: String,
    payload: Option<Box<RawValue>>,
    /// Retrying with the same key for the same recipient lands once.
    idempotency_key: Option<Uuid>,
}

#[derive(Serialize)]
struct Published {
    id: i64,
    seq: i64,
}

async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<Box<RawValue>>,
) -> Result<(StatusCode, AppJson<serde_json::Value>), AppError> {
    caller.require(Role::Publisher)?;
    let (batch, is_array) = parse(&body)?;
    validate(&batch)?;
    let published = insert(&state, &batch).await?;
    let body = if is_array {
        serde_json::to_value(published)
    } else {
        serde_json::to_value(published.into_iter().next())
    };
    Ok((StatusCode::CREATED, AppJson(body.unwrap_or_default())))
}

/// One notification or an array of them. (Parsed by hand: serde's untagged
/// enums cannot hold the raw, unparsed payloads.)
fn parse(body: &RawValue) -> Result<(Vec<NewNotification>, bool), AppError> {
    let invalid = |e: serde_json::Error| AppError::BadRequest(format!("invalid notification: {e}"));
    if body.get().trim_start().starts_with('[') {
        Ok((serde_json::from_str(body.get()).map_err(invalid)?, true))
    } else {
        Ok((
            vec![serde_json::from_str(body.get()).map_err(invalid)?],
            false,
        ))
    }
}

fn validate(batch: &[NewNotification]) -> Result<(), AppError> {
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(AppError::BadRequest(format!(
            "send from 1 to {MAX_BATCH} notifications per request"
        )));
    }
    for (index, item) in batch.iter().enumerate() {
        if item.recipient.is_empty() || item.kind.is_empty() {
            return Err(AppError::BadRequest(format!(
                "notification {index}: recipient and kind must not be empty"
            )));
        }
        if item
            .payload
            .as_ref()
            .is_some_and(|p| p.get().contains("\\u0000"))
        {
            return Err(AppError::BadRequest(format!(
                "notification {index}: PostgreSQL cannot store \\u0000 in a payload"
            )));
        }
    }
    Ok(())
}

/// Inserts in recipient order - the order that lets concurrent batches never
/// deadlock on the per-recipient locks - and answers in request order.
async fn insert(state: &AppState, batch: &[NewNotification]) -> Result<Vec<Published>, AppError> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch[a].recipient.cmp(&batch[b].recipient));
    let mut published: Vec<Option<Published>> = batch.iter().map(|_| None).collect();
    let mut tx = state.pool.begin().await?;
    for index in order {
        let item = &batch[index];
        let payload = item.payload.as_deref().map(SqlJson);
        let row = sqlx::query_as!(
            Published,
            r#"
            WITH inserted AS (
                INSERT INTO tidings.notifications (recipient, kind, payload, idempotency_key)
                VALUES ($1, $2, coalesce($3::jsonb, '{}'), $4)
                RETURNING id, seq)
            SELECT id AS "id!", seq AS "seq!" FROM inserted
            UNION ALL
            SELECT id, seq FROM tidings.notifications
             WHERE recipient = $1 AND idempotency_key = $4 AND NOT EXISTS (SELECT 1 FROM inserted)
            "#,
            item.recipient,
            item.kind,
            payload as _,
            item.idempotency_key
        )
        .fetch_optional(&mut *tx)
        .await?;
        // None: a twin with the same key committed after this statement began.
        let row = row.ok_or_else(|| {
            AppError::Conflict(format!(
                "notification {index}: its idempotency key is being published concurrently; retry"
            ))
        })?;
        published[index] = Some(row);
    }
    tx.commit().await?;
    Ok(published.into_iter().flatten().collect())
}
