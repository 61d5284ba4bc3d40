//! `GET /v1/audit/events`: every event (notifications and read marks) with
//! filters on recipient, kind, type and time. JSON pages with a keyset
//! cursor by default; with `Accept: application/x-ndjson` or `text/csv`,
//! the whole result streamed from one consistent snapshot, in constant
//! memory however many rows match (see [`super::export`]).
//!
//! The SQL names only the filters given, so each query can use the index
//! that fits it (a generic `$1 IS NULL OR ...` plan cannot). It must never
//! write, and never put a request's text into the SQL itself: only the
//! fixed clauses are written out, and every value is a bound parameter.

use std::borrow::Cow;
use std::str::FromStr;

use axum::extract::{FromRequestParts, State};
use axum::http::header::ACCEPT;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as SqlJson;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::export::{self, Export};
use crate::http::auth::Auditor;
use crate::http::error::{problems, AppError, AppQuery};
use crate::http::query::{Limit, Time};
use crate::http::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only this recipient's events.
    recipient: Option<String>,
    /// Only notifications of this kind.
    kind: Option<String>,
    /// Only `notification` or only `read` events.
    #[serde(rename = "type")]
    #[param(value_type = Option<EventType>)]
    event_type: Option<EventType>,
    /// Created at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<Time>,
    /// Created before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<Time>,
    /// The previous page's `next`.
    #[param(value_type = Option<String>, pattern = r"^-?[0-9]{1,16}\.[nr]\.[0-9]{1,18}$")]
    after: Option<Cursor>,
    /// Events per page (JSON only; exports stream everything).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<Limit<MAX_LIMIT>>,
}

/// The two kinds of event in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum EventType {
    Notification,
    Read,
}

impl EventType {
    /// As the `type` column says it.
    fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "notification",
            Self::Read => "read",
        }
    }
}

/// The filters, validated.
struct Filters {
    recipient: Option<String>,
    kind: Option<String>,
    event_type: Option<EventType>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<Cursor>,
}

/// A position in the log's order (created_at, type, id): stable under
/// concurrent inserts, unlike an offset.
#[derive(Debug, Clone)]
struct Cursor {
    created_at: DateTime<Utc>,
    event_type: EventType,
    id: i64,
}

impl Cursor {
    fn encode(event: &AuditEvent) -> String {
        let kind = if event.event_type == "read" { 'r' } else { 'n' };
        format!(
            "{}.{kind}.{}",
            event.created_at.timestamp_micros(),
            event.id
        )
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("must be a cursor from a previous page; got {text:?}");
        let mut parts = text.split('.');
        let micros = parts
            .next()
            .and_then(|p| match p.strip_prefix('-') {
                Some(digits) => whole_number(digits, 16).map(|n| -n),
                None => whole_number(p, 16),
            })
            .ok_or_else(invalid)?;
        let event_type = match parts.next() {
            Some("n") => EventType::Notification,
            Some("r") => EventType::Read,
            _ => return Err(invalid()),
        };
        let id = parts
            .next()
            .and_then(|p| whole_number(p, 18))
            .ok_or_else(invalid)?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self {
            created_at,
            event_type,
            id,
        })
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Filters {
    /// An empty `recipient` or `kind` filters nothing, like an absent one.
    fn new(query: EventsQuery) -> Self {
        let non_empty = |value: Option<String>| value.filter(|v| !v.is_empty());
        Self {
            recipient: non_empty(query.recipient),
            kind: non_empty(query.kind),
            event_type: query.event_type,
            from: query.from.map(|Time(from)| from),
            to: query.to.map(|Time(to)| to),
            after: query.after,
        }
    }

    /// The query, naming only the filters given.
    fn select(&self) -> QueryBuilder<'static, Postgres> {
        let mut sql = QueryBuilder::new(
            "SELECT type AS event_type, recipient, seq, id, kind, payload, notification_ids, created_at, \
             read_at, read_seq, encode(hash, 'hex') AS hash FROM tidings.audit_log WHERE true",
        );
        if let Some(recipient) = &self.recipient {
            sql.push(" AND recipient = ").push_bind(recipient.clone());
        }
        if let Some(kind) = &self.kind {
            sql.push(" AND kind = ").push_bind(kind.clone());
        }
        if let Some(event_type) = &self.event_type {
            sql.push(" AND type = ").push_bind(event_type.as_str());
        }
        if let Some(from) = self.from {
            sql.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            sql.push(" AND created_at < ").push_bind(to);
        }
        if let Some(after) = &self.after {
            sql.push(" AND (created_at, type, id) > (")
                .push_bind(after.created_at);
            sql.push(", ")
                .push_bind(after.event_type.as_str())
                .push(", ")
                .push_bind(after.id)
                .push(")");
        }
        sql.push(" ORDER BY created_at, type, id");
        sql
    }
}

/// Up to `digits` ASCII digits and nothing else (no sign), as the cursor's
/// documented pattern says; short enough that every such number fits.
fn whole_number(text: &str, digits: usize) -> Option<i64> {
    let valid = (1..=digits).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    text.parse().ok().filter(|_| valid)
}

#[derive(sqlx::FromRow, Serialize, utoipa::ToSchema)]
struct AuditEvent {
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    event_type: String,
    recipient: String,
    seq: i64,
    /// The notification's id, or the read event's id.
    id: i64,
    /// Notifications only.
    kind: Option<String>,
    /// Notifications only.
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<SqlJson<Box<RawValue>>>,
    /// Read events only: the notifications it marked read.
    notification_ids: Option<Vec<i64>>,
    created_at: DateTime<Utc>,
    /// Notifications only: when first marked read, if ever.
    read_at: Option<DateTime<Utc>>,
    /// Notifications only: the `seq` of the read event that marked it.
    read_seq: Option<i64>,
    /// This event's link in the recipient's hash chain (hex SHA-256).
    hash: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AuditPage)]
struct Page {
    items: Vec<AuditEvent>,
    /// Pass as `after` for the next page; null on the last one.
    next: Option<String>,
}

/// Every event (notifications and read marks) in log order, filtered. JSON
/// pages with a keyset cursor; with `Accept: application/x-ndjson` or
/// `text/csv`, the whole result streamed from one snapshot.
#[utoipa::path(
    get,
    path = "/v1/audit/events",
    tag = "audit",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events, or the whole result as NDJSON or CSV",
            content(
                (Page = "application/json"),
                (AuditEvent = "application/x-ndjson"),
                (String = "text/csv"),
            )),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 403, response = problems::Forbidden),
        (status = 503, response = problems::Unavailable),
    )
)]
pub(super) async fn events(
    State(state): State<AppState>,
    _: Auditor,
    format: Format,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<Response, AppError> {
    let limit = query.limit.map_or(DEFAULT_LIMIT, |Limit(limit)| limit);
    let filters = Filters::new(query);
    match format {
        Format::Ndjson => export::run(&state.exports, state.pool, ndjson_export(&filters)).await,
        Format::Csv => export::run(&state.exports, state.pool, csv_export(&filters)).await,
        Format::Pages => Ok(Json(page(&state.pool, &filters, limit).await?).into_response()),
    }
}

/// What the client asked for in `Accept`: NDJSON or CSV streams the whole
/// result; anything else (JSON, `*/*`, nothing) is a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Pages,
    Ndjson,
    Csv,
}

impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let accept = parts
            .headers
            .get(ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .unwrap_or_default();
        Ok(if accept.contains("application/x-ndjson") {
            Self::Ndjson
        } else if accept.contains("text/csv") {
            Self::Csv
        } else {
            Self::Pages
        })
    }
}

async fn page(pool: &PgPool, filters: &Filters, limit: i64) -> Result<Page, sqlx::Error> {
    let mut sql = filters.select();
    sql.push(" LIMIT ").push_bind(limit);
    let items: Vec<AuditEvent> = sql.build_query_as().fetch_all(pool).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(Cursor::encode))
        .flatten();
    Ok(Page { items, next })
}

const CSV_HEADER: &str =
    "type,recipient,seq,id,kind,payload,notification_ids,created_at,read_at,read_seq,hash\n";

fn ndjson_export(filters: &Filters) -> Export<AuditEvent> {
    Export {
        sql: filters.select(),
        head: b"",
        render: |event, out| {
            // Serializing these fields into memory cannot fail.
            let _ = serde_json::to_writer(&mut *out, event);
            out.push(b'\n');
        },
        content_type: "application/x-ndjson",
    }
}

fn csv_export(filters: &Filters) -> Export<AuditEvent> {
    Export {
        sql: filters.select(),
        head: CSV_HEADER.as_bytes(),
        render: |event, out| out.extend_from_slice(&csv_record(event)),
        content_type: "text/csv; charset=utf-8",
    }
}

/// One CSV record (RFC 4180 quoting by the csv crate): payload and ids as
/// JSON text, times in RFC 3339, free text made inert ([`inert`]).
fn csv_record(event: &AuditEvent) -> Vec<u8> {
    let ids = event
        .notification_ids
        .as_ref()
        .map(|ids| serde_json::to_string(ids).unwrap_or_default())
        .unwrap_or_default();
    let record = [
        event.event_type.as_str(),
        &inert(&event.recipient),
        &event.seq.to_string(),
        &event.id.to_string(),
        &inert(event.kind.as_deref().unwrap_or_default()),
        event.payload.as_ref().map_or("", |p| p.0.get()),
        &ids,
        &event.created_at.to_rfc3339(),
        &event.read_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        &event.read_seq.map(|s| s.to_string()).unwrap_or_default(),
        &event.hash,
    ];
    // One writer per row keeps rows independent; its buffer is sized for a
    // row, not csv's 8 KiB default, since it is made a million times.
    let mut writer = csv::WriterBuilder::new()
        .buffer_capacity(256)
        .from_writer(Vec::with_capacity(256));
    let _ = writer.write_record(record);
    writer.into_inner().unwrap_or_default()
}

/// A free-text cell - what a publisher chose: `recipient` and `kind` - as
/// a spreadsheet will not run it: one that begins with `=`, `+`, `-` or
/// `@`, or a tab or carriage return (OWASP, "CSV injection"), gets a
/// leading `'`, which spreadsheets read as "text follows" and do not show.
/// So does one that begins with `'` already, so that one leading `'` can
/// always be dropped again to get the value back. Every other
/// column is written by tidings and needs none: `type`, `seq`, `id`,
/// `read_seq` (whole numbers, never negative), times (RFC 3339, starting
/// with the year), `hash` (hex), `notification_ids` (a JSON array) - and
/// `payload`, JSON as PostgreSQL prints it, which starts with `{`, `[`,
/// `"`, a digit, `t`, `f` or `n`, or with `-` only for a bare number,
/// which a spreadsheet reads as that number; a `'` would only stop the
/// column from parsing as JSON.
fn inert(text: &str) -> Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}
