//! Publishing over HTTP: `POST /v1/notifications` for callers with the
//! `publisher` role and no database access of their own.
//!
//! It is a thin door onto the primary write path, the same INSERT any SQL
//! client runs, so every invariant still comes from the database. A batch is
//! one transaction: all of it lands, or none. It must never assign a `seq`.

pub mod payload;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as SqlJson;
use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Schema};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::state::AppState;
use crate::http::auth::Publisher;
use crate::http::error::{problems, AppError, AppJson};
use payload::{jsonb_text_len, nests_deeper_than};

/// Most notifications one request may carry.
const MAX_BATCH: usize = 1000;
/// Most bytes a payload may take as PostgreSQL prints it (`payload::text`,
/// what every fetch, page and frame carries): invariant I10 of the schema
/// (`migrations/0001_schema.sql`), whose trigger must say the same number.
pub const MAX_PAYLOAD_TEXT: usize = 131_072;
/// Deepest nesting of arrays and objects a published payload may have.
/// PostgreSQL has no such bound: its JSON parser recurses until the stack
/// runs out ("stack depth limit exceeded", 54001, a 400 too), at about
/// 13,000 levels of objects and 14,500 of arrays with the default
/// `max_stack_depth` of 2 MB (PostgreSQL 15.18, measured at 272a25a on
/// 2026-12-07) - a point that moves with the server's settings. A fixed
/// bound below it answers the same on every server, with a message that
/// says what is wrong, and keeps the size scan's frames (one per open
/// level) to under a megabyte.
pub const MAX_PAYLOAD_DEPTH: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(publish))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewNotification {
    /// Who receives it (a token's `sub`).
    #[schema(min_length = 1, max_length = 512)]
    recipient: String,
    /// What happened, e.g. `comment.created`.
    #[schema(min_length = 1)]
    kind: String,
    /// Any JSON; `{}` when absent. Like `recipient` and `kind`, it cannot
    /// hold U+0000, which PostgreSQL text cannot store (a 400). At most
    /// 131072 bytes (128 KiB) as PostgreSQL prints it, which writes
    /// numbers in full (`1e6` as `1000000`), and at most 10000 levels of
    /// arrays and objects deep, or a 400.
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// Retrying with the same key for the same recipient lands once.
    idempotency_key: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
struct Published {
    id: i64,
    seq: i64,
}

/// The request body: one notification, or an array of 1 to `MAX_BATCH`.
struct PublishRequest;
/// The answer: one `Published`, or an array in request order.
struct PublishResponse;

fn one_or_many<T: ToSchema>() -> RefOr<Schema> {
    let item = || RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()));
    let many = ArrayBuilder::new()
        .items(item())
        .min_items(Some(1))
        .max_items(Some(MAX_BATCH));
    OneOfBuilder::new().item(item()).item(many).into()
}

impl PartialSchema for PublishRequest {
    fn schema() -> RefOr<Schema> {
        one_or_many::<NewNotification>()
    }
}

impl ToSchema for PublishRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((NewNotification::name().into(), NewNotification::schema()));
    }
}

impl PartialSchema for PublishResponse {
    fn schema() -> RefOr<Schema> {
        one_or_many::<Published>()
    }
}

impl ToSchema for PublishResponse {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Published::name().into(), Published::schema()));
    }
}

/// Publishes one notification or a batch (one transaction: all or none),
/// exactly as an SQL `INSERT` would. Needs the `publisher` role.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    tag = "publish",
    request_body(content = inline(PublishRequest), description = "One notification or an array of them"),
    responses(
        (status = 201, description = "Published: an object for an object, an array for an array", body = inline(PublishResponse)),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 403, response = problems::Forbidden),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 503, response = problems::Unavailable),
    )
)]
async fn publish(
    State(state): State<AppState>,
    _: Publisher,
    AppJson(body): AppJson<Box<RawValue>>,
) -> Result<(StatusCode, AppJson<serde_json::Value>), AppError> {
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
        if let Some(problem) = crate::http::auth::recipient_problem(&item.recipient) {
            let detail = format!("notification {index}: recipient {problem}");
            return Err(AppError::BadRequest(detail));
        }
        if let Some(problem) = item.payload.as_deref().and_then(payload_problem) {
            return Err(AppError::BadRequest(format!(
                "notification {index}: {problem}"
            )));
        }
    }
    Ok(())
}

/// What the database would refuse in a payload, said before it has to.
/// The size is worth checking here, not only there: a 9 KB request can
/// print as 131 MB (see [`MAX_PAYLOAD_TEXT`]), which the database would
/// build, twice, just to refuse it.
fn payload_problem(payload: &RawValue) -> Option<String> {
    let json = payload.get();
    if json.contains("\\u0000") {
        return Some("PostgreSQL cannot store \\u0000 in a payload".into());
    }
    if nests_deeper_than(json, MAX_PAYLOAD_DEPTH) {
        return Some(format!(
            "its payload nests arrays and objects more than {MAX_PAYLOAD_DEPTH} levels deep"
        ));
    }
    let printed = jsonb_text_len(json);
    (printed > MAX_PAYLOAD_TEXT).then(|| {
        let printed = match printed {
            usize::MAX => "more than 2^64".to_owned(),
            n => n.to_string(),
        };
        format!(
            "its payload prints as {printed} bytes in PostgreSQL (`payload::text`), more than \
             the {MAX_PAYLOAD_TEXT} allowed; jsonb prints numbers in full: 1e6 as 1000000"
        )
    })
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
