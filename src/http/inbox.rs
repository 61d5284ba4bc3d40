//! Inbox: `GET /v1/notifications` (a recipient's notifications, newest
//! first, with the unread count and the position to stream from), and the
//! read marks `POST /v1/notifications/{id}/read` and `.../read-all`.
//!
//! Marking read appends a read event to `tidings.reads`; the database's
//! trigger keeps only notifications that are the caller's and still unread,
//! so both calls are idempotent and can never touch another recipient's
//! notifications. This module must never change a notification row.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::auth::Caller;
use crate::http::error::{problems, AppError, AppPath, AppQuery};
use crate::http::query::{Limit, Seq};
use crate::http::state::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read_all))
        .routes(routes!(read_one))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// How many notifications to return, newest first.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<Limit<MAX_LIMIT>>,
    /// Only notifications with a `seq` below this one: the next page.
    #[param(value_type = Option<i64>, minimum = 0)]
    before: Option<Seq>,
}

/// A recipient's notifications, and where to stream from to miss nothing.
#[derive(Serialize, ToSchema)]
struct Inbox {
    items: Vec<Item>,
    /// Notifications of this recipient not yet marked read (all of them,
    /// not just this page).
    unread_count: i64,
    /// The recipient's latest seq as of this very list: stream from here.
    position: i64,
}

/// One notification as an inbox shows it; also what the audit view of a
/// past inbox lists.
#[derive(Serialize, ToSchema)]
#[schema(as = InboxItem)]
pub(crate) struct Item {
    /// Global id: what read marks name.
    pub id: i64,
    /// Position in this recipient's log: 1, 2, 3, ...
    pub seq: i64,
    pub kind: String,
    /// Whatever JSON the publisher stored.
    #[schema(value_type = serde_json::Value)]
    pub payload: SqlJson<Box<RawValue>>,
    pub created_at: DateTime<Utc>,
    /// When it was first marked read, or null while unread (in a past
    /// inbox: if that was at or before the moment asked about).
    pub read_at: Option<DateTime<Utc>>,
}

/// The caller's notifications, newest first, with the unread count and the
/// position to open the stream from (`last_event_id=<position>`).
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "inbox",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the inbox", body = Inbox),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 503, response = problems::Unavailable),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<Inbox>, AppError> {
    let limit = query.limit.map_or(DEFAULT_LIMIT, |Limit(limit)| limit);
    let before = query.before.map(|Seq(seq)| seq);

    // One snapshot for the items and the position, so that "list, then
    // stream from position" can neither miss nor repeat an event.
    let mut tx = crate::db::snapshot(&state.pool).await?;
    let counts = sqlx::query!(
        "SELECT last_seq, notifications - read AS \"unread!\" FROM tidings.recipients WHERE recipient = $1",
        caller.recipient
    )
    .fetch_optional(&mut *tx)
    .await?;
    let items = sqlx::query_as!(
        Item,
        r#"
        SELECT n.id, n.seq, n.kind, n.payload AS "payload: SqlJson<Box<RawValue>>",
               n.created_at, m.read_at AS "read_at?"
          FROM tidings.notifications n
          LEFT JOIN tidings.read_marks m ON m.notification_id = n.id
         WHERE n.recipient = $1 AND ($2::int8 IS NULL OR n.seq < $2)
         ORDER BY n.seq DESC
         LIMIT $3
        "#,
        caller.recipient,
        before,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    Ok(Json(Inbox {
        items,
        unread_count: counts.as_ref().map_or(0, |c| c.unread),
        position: counts.map_or(0, |c| c.last_seq),
    }))
}

/// Marks one notification read. Idempotent: only the first call appends a
/// read event (which every open stream of the recipient then receives).
#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/read",
    tag = "inbox",
    params(("id" = i64, Path, description = "The notification's `id` (not its `seq`)")),
    responses(
        (status = 204, description = "Read (now or before)"),
        (status = 401, response = problems::Unauthorized),
        (status = 404, response = problems::NotFound),
        (status = 503, response = problems::Unavailable),
    )
)]
async fn read_one(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, AppError> {
    let not_found = || AppError::NotFound(format!("no notification {id} for this recipient"));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM tidings.notifications WHERE id = $1 AND recipient = $2) AS "exists!""#,
        id,
        caller.recipient
    )
    .fetch_one(&state.pool)
    .await?;
    if !exists {
        return Err(not_found());
    }
    // Already read: the trigger appends nothing, and this is still a 204.
    sqlx::query!(
        "INSERT INTO tidings.reads (recipient, notification_ids) VALUES ($1, ARRAY[$2::int8])",
        caller.recipient,
        id
    )
    .execute(&state.pool)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Marks everything up to the recipient's current position read, as one
/// read event (or none, if nothing was unread).
#[utoipa::path(
    post,
    path = "/v1/notifications/read-all",
    tag = "inbox",
    responses(
        (status = 204, description = "Everything is read"),
        (status = 401, response = problems::Unauthorized),
        (status = 503, response = problems::Unavailable),
    )
)]
async fn read_all(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, AppError> {
    sqlx::query!(
        r#"
        INSERT INTO tidings.reads (recipient, notification_ids)
        SELECT $1, array_agg(n.id ORDER BY n.id)
          FROM tidings.notifications n
         WHERE n.recipient = $1
           AND NOT EXISTS (SELECT 1 FROM tidings.read_marks m WHERE m.notification_id = n.id)
        HAVING count(*) > 0
        "#,
        caller.recipient
    )
    .execute(&state.pool)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
