//! Publishing over HTTP: `POST /v1/notifications` for callers with the
//! `publisher` role and no database access of their own.
//!
//! It is a thin door onto the primary write path, the same INSERT any SQL
//! client runs, so every invariant still comes from the database. A batch is
//! one transaction: all of it lands, or none. It must never assign a `seq`.

use std::collections::HashMap;

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

use crate::app::AppState;
use crate::auth::Caller;
use crate::config::Role;
use crate::error::{problems, AppError, AppJson};

/// Most notifications one request may carry.
const MAX_BATCH: usize = 1000;
/// Most bytes a payload may take as PostgreSQL prints it (`payload::text`,
/// what every fetch, page and frame carries): invariant I10 of migration
/// 0010, which must say the same number.
pub const MAX_PAYLOAD_TEXT: usize = 131_072;

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
    /// numbers in full (`1e6` as `1000000`), or a 400.
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
        (status = 503, response = problems::Unavailable),
    )
)]
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
        if let Some(problem) = crate::auth::recipient_problem(&item.recipient) {
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

/// How many bytes PostgreSQL prints for `json` as `jsonb` (`payload::text`);
/// `json` must be valid JSON, as a `RawValue` is. jsonb prints `", "` and
/// `": "` between items and no other space, keeps the last of duplicate
/// keys, re-escapes strings its own way and prints numbers as `numeric`
/// does: in full. Saturates at `usize::MAX` rather than overflow.
/// (`the_printed_size_is_computed_as_postgresql_prints` compares it with
/// the database.)
pub fn jsonb_text_len(json: &str) -> usize {
    let (bytes, mut at, mut scan) = (json.as_bytes(), 0, Scan::default());
    while at < bytes.len() {
        let start = at;
        at += 1;
        match bytes[start] {
            b'[' => scan.stack.push(Open::Array { items: 0, len: 0 }),
            b'{' => scan.stack.push(Open::Object(HashMap::new(), None)),
            b']' | b'}' => scan.close(),
            b'"' => {
                let (text, end) = unescape(json, start);
                at = end;
                scan.string(text);
            }
            b'-' | b'0'..=b'9' => {
                at = json[start..]
                    .find(|c: char| !matches!(c, '-' | '+' | '.' | 'e' | 'E' | '0'..='9'))
                    .map_or(json.len(), |end| start + end);
                scan.value(numeric_len(&json[start..at]));
            }
            b't' | b'n' => scan.value(4),
            b'f' => scan.value(5),
            _ => {} // whitespace, `,`, `:`, and the rest of a literal
        }
    }
    scan.total
}

/// [`jsonb_text_len`]'s state: the containers open around the scan.
#[derive(Default)]
struct Scan {
    stack: Vec<Open>,
    /// The whole value's length, once it is complete.
    total: usize,
}

enum Open {
    Array {
        items: usize,
        len: usize,
    },
    /// Each member's printed length (key, `": "` and value) by its key -
    /// the last of a duplicate key wins, as in jsonb - and the key read
    /// last, while its value is not complete yet.
    Object(HashMap<String, usize>, Option<(String, usize)>),
}

impl Scan {
    fn string(&mut self, text: String) {
        let len = escaped_len(&text);
        match self.stack.last_mut() {
            Some(Open::Object(_, key @ None)) => *key = Some((text, len)),
            _ => self.value(len),
        }
    }

    fn close(&mut self) {
        let len = match self.stack.pop() {
            Some(Open::Array { items, len }) => container_len(items, len),
            Some(Open::Object(members, _)) => {
                let len = members
                    .values()
                    .fold(0, |sum: usize, len| sum.saturating_add(*len));
                container_len(members.len(), len)
            }
            None => return,
        };
        self.value(len);
    }

    /// A complete value of `len` bytes: an item, a member, or the whole.
    fn value(&mut self, len: usize) {
        match self.stack.last_mut() {
            Some(Open::Array { items, len: sum }) => {
                *items += 1;
                *sum = sum.saturating_add(len);
            }
            Some(Open::Object(members, key)) => {
                if let Some((name, name_len)) = key.take() {
                    members.insert(name, name_len.saturating_add(2).saturating_add(len));
                }
            }
            None => self.total = len,
        }
    }
}

/// `[` and `]` (or braces) around `items` of `len` bytes in all, `", "` apart.
fn container_len(items: usize, len: usize) -> usize {
    len.saturating_add(2 + 2 * items.saturating_sub(1))
}

/// The string starting with the quote at `json[start]`, its escapes
/// resolved, and where it ends. A lone surrogate becomes U+FFFD (the
/// database refuses it anyway).
fn unescape(json: &str, start: usize) -> (String, usize) {
    let mut text = String::new();
    let mut chars = json[start + 1..].char_indices();
    let mut pending_high: Option<u32> = None;
    while let Some((offset, c)) = chars.next() {
        let decoded = match c {
            '"' => {
                text.extend(pending_high.map(|_| char::REPLACEMENT_CHARACTER));
                return (text, start + 1 + offset + 1);
            }
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                    u32::from_str_radix(&hex, 16).unwrap_or(0xFFFD)
                }
                Some('b') => 0x08,
                Some('f') => 0x0C,
                Some('n') => 0x0A,
                Some('r') => 0x0D,
                Some('t') => 0x09,
                Some(other) => u32::from(other), // `"`, `\`, `/`
                None => break,
            },
            c => u32::from(c),
        };
        let (high, c) = match (pending_high.take(), decoded) {
            (Some(high), low @ 0xDC00..=0xDFFF) => {
                (None, 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            }
            (earlier, high @ 0xD800..=0xDBFF) => {
                text.extend(earlier.map(|_| char::REPLACEMENT_CHARACTER));
                (Some(high), high)
            }
            (earlier, c) => {
                text.extend(earlier.map(|_| char::REPLACEMENT_CHARACTER));
                (None, c)
            }
        };
        pending_high = high;
        if high.is_none() {
            text.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
    }
    (text, json.len())
}

/// A string's length as jsonb prints it, quotes included: `"`, `\` and
/// five control characters take two bytes, other control characters six
/// (`\u001f`), everything else its UTF-8 bytes.
fn escaped_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x0C | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1F => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// A JSON number's length as `numeric` prints it: no exponent, the integer
/// part without leading zeros (at least `0`), and as many decimals as the
/// input had after its point, less the exponent (`1.50` has two, `1.5e-3`
/// four, `1.5e3` none); `-` only if it is not zero.
fn numeric_len(number: &str) -> usize {
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(e) => (&unsigned[..e], saturating_exponent(&unsigned[e + 1..])),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = whole.bytes().chain(fraction.bytes());
    let Some(first) = digits.clone().position(|d| d != b'0') else {
        // Zero: `0`, no sign, and its decimals.
        return decimals_len(fraction.len() as i64 - exponent).saturating_add(1);
    };
    let point = (whole.len() as i64).saturating_add(exponent);
    let whole_len = point.saturating_sub(first as i64).max(1);
    let len = whole_len
        .saturating_add(decimals_len(fraction.len() as i64 - exponent) as i64)
        .saturating_add(i64::from(negative));
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// `.` and `scale` digits, or nothing for a scale of 0 or less.
fn decimals_len(scale: i64) -> usize {
    match usize::try_from(scale) {
        Ok(0) | Err(_) => 0,
        Ok(scale) => scale.saturating_add(1),
    }
}

/// An exponent's value, held to a range where no sum with it overflows.
fn saturating_exponent(text: &str) -> i64 {
    const LIMIT: i64 = i64::MAX / 4;
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let value = digits.bytes().fold(0i64, |value, digit| {
        let value = value
            .saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'));
        value.min(LIMIT)
    });
    if negative {
        -value
    } else {
        value
    }
}
