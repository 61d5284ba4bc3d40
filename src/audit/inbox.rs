//! `GET /v1/audit/inbox?recipient=R&at=T`: what R's inbox held at time T,
//! and what of it was unread then - derived from the events, which is what
//! an event-sourced log is for.
//!
//! It must never write, and never let an event created after `at` into the
//! answer: every query filters on `created_at <= at`, and all of them read
//! one snapshot, so that the items and the totals agree.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as SqlJson;
use sqlx::PgConnection;

use crate::http::auth::Auditor;
use crate::http::error::{problems, AppError, AppQuery};
use crate::http::inbox::Item;
use crate::http::query::{Limit, Time};
use crate::http::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct InboxQuery {
    /// Whose inbox.
    #[param(required = true, value_type = String, min_length = 1)]
    recipient: Option<String>,
    /// The moment, RFC 3339.
    #[param(required = true, value_type = String, format = DateTime)]
    at: Option<Time>,
    /// How many notifications, newest first.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<Limit<1000>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct InboxAt {
    recipient: String,
    at: DateTime<Utc>,
    /// Newest first, as the recipient saw them then.
    items: Vec<Item>,
    unread_count: i64,
    /// The recipient's latest seq at that moment.
    position: i64,
}

/// A recipient's inbox as it stood at a past moment, derived from the
/// events: what it held and what of it was unread then.
#[utoipa::path(
    get,
    path = "/v1/audit/inbox",
    tag = "audit",
    params(InboxQuery),
    responses(
        (status = 200, description = "The inbox then", body = InboxAt),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 403, response = problems::Forbidden),
        (status = 503, response = problems::Unavailable),
    )
)]
pub(super) async fn inbox_at(
    State(state): State<AppState>,
    _: Auditor,
    AppQuery(query): AppQuery<InboxQuery>,
) -> Result<Json<InboxAt>, AppError> {
    let recipient = query
        .recipient
        .filter(|r| !r.is_empty())
        .ok_or_else(|| AppError::BadRequest("recipient is required".into()))?;
    let Time(at) = query
        .at
        .ok_or_else(|| AppError::BadRequest("at is required".into()))?;
    let limit = query.limit.map_or(100, |Limit(limit)| limit);

    let mut tx = crate::db::snapshot(&state.pool).await?;
    let items = items_at(&mut tx, &recipient, at, limit).await?;
    let totals = totals_at(&mut tx, &recipient, at).await?;
    tx.commit().await?;
    Ok(Json(InboxAt {
        recipient,
        at,
        items,
        unread_count: totals.unread_count,
        position: totals.position,
    }))
}

/// Up to `limit` of the recipient's notifications sent by `at`, newest
/// first, each with when it was first marked read by then (if it was).
async fn items_at(
    snapshot: &mut PgConnection,
    recipient: &str,
    at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Item>, sqlx::Error> {
    sqlx::query_as!(
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
    .fetch_all(snapshot)
    .await
}

/// What the inbox's counts were at a moment.
struct Totals {
    unread_count: i64,
    /// The recipient's latest seq then.
    position: i64,
}

/// The unread count (sent less marked read) and the position at `at`.
async fn totals_at(
    snapshot: &mut PgConnection,
    recipient: &str,
    at: DateTime<Utc>,
) -> Result<Totals, sqlx::Error> {
    let row = sqlx::query!(
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
    .fetch_one(snapshot)
    .await?;
    Ok(Totals {
        unread_count: row.sent - row.read,
        position: row.position,
    })
}
