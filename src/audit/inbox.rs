//! `GET /v1/audit/inbox?recipient=R&at=T`: what R's inbox held at time T,
//! and what of it was unread then - derived from the events, which is what
//! an event-sourced log is for.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as SqlJson;

use super::{limit_param, time_param};
use crate::app::AppState;
use crate::auth::Caller;
use crate::config::Role;
use crate::error::AppError;

#[derive(Deserialize)]
pub(super) struct InboxQuery {
    recipient: Option<String>,
    at: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub(super) struct InboxAt {
    recipient: String,
    at: DateTime<Utc>,
    /// Newest first, as the recipient saw them then.
    items: Vec<Item>,
    unread_count: i64,
    /// The recipient's latest seq at that moment.
    position: i64,
}

#[derive(Serialize)]
pub(super) struct Item {
    id: i64,
    seq: i64,
    kind: String,
    payload: SqlJson<Box<RawValue>>,
    created_at: DateTime<Utc>,
    /// When it was read, if that was at or before `at`.
    read_at: Option<DateTime<Utc>>,
}

pub(super) async fn inbox_at(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<InboxQuery>,
) -> Result<Json<InboxAt>, AppError> {
    caller.require(Role::Auditor)?;
    let recipient = query
        .recipient
        .filter(|r| !r.is_empty())
        .ok_or_else(|| AppError::BadRequest("recipient is required".into()))?;
    let at = time_param("at", query.at.as_deref())?
        .ok_or_else(|| AppError::BadRequest("at is required".into()))?;
    let limit = limit_param(query.limit.as_deref(), 100, 1000)?;

    let mut tx = state.pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let items = sqlx::query_as!(
        Item,
        r#"
        SELECT n.id, n.seq, n.kind, n.payload AS "payload: SqlJson<Box<RawValue>>", n.created_at,
               (SELECT min(r.created_at) FROM tidings.reads r
                 WHERE r.recipient = n.recipient AND n.id = ANY (r.notification_ids) AND r.created_at <= $2) AS read_at
          FROM tidings.notifications n
         WHERE n.recipient = $1 AND n.created_at <= $2
         ORDER BY n.seq DESC
         LIMIT $3
        "#,
        recipient,
        at,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    let totals = sqlx::query!(
        r#"
        SELECT (SELECT count(*) FROM tidings.notifications WHERE recipient = $1 AND created_at <= $2) AS "sent!",
               (SELECT coalesce(sum(cardinality(notification_ids)), 0) FROM tidings.reads
                 WHERE recipient = $1 AND created_at <= $2)::int8 AS "read!",
               greatest((SELECT max(seq) FROM tidings.notifications WHERE recipient = $1 AND created_at <= $2),
                        (SELECT max(seq) FROM tidings.reads WHERE recipient = $1 AND created_at <= $2), 0) AS "position!"
        "#,
        recipient,
        at
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(InboxAt {
        recipient,
        at,
        items,
        unread_count: totals.sent - totals.read,
        position: totals.position,
    }))
}
