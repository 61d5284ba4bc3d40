//! Events: a recipient's log as streams see it - notifications and read marks
//! in `seq` order - and the two queries that read it.
//!
//! Owns the wire form of an event: its whole SSE frame, rendered once per
//! event and shared - by reference count, not by copy - with every stream
//! that sends it. It must never write: the log is appended to by SQL clients
//! and by the inbox only.

use std::ops::Range;
use std::sync::Arc;

use axum::body::Bytes;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::PgPool;

/// One event ready to send: what a stream needs, nothing more.
#[derive(Debug)]
pub struct Event {
    /// The recipient's position after this event; the SSE `id`.
    pub seq: i64,
    /// `id: <seq>`, `event: <name>`, `data: <one line of JSON>`, blank line.
    frame: Bytes,
    /// Where the JSON sits in `frame`.
    data: Range<usize>,
}

/// Room in a frame for everything but its variable parts: the field names,
/// numbers and the time (a notification's fixed part is about 140 bytes).
const FRAME_OVERHEAD: usize = 192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventName {
    Notification,
    Read,
    /// The client's position was beyond the log (e.g. after a restore).
    Reset,
}

impl EventName {
    fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "notification",
            Self::Read => "read",
            Self::Reset => "reset",
        }
    }
}

impl Event {
    /// Tells a client its position was unknown and it now stands at `position`.
    pub fn reset(position: i64) -> Self {
        #[derive(Serialize)]
        struct ResetData {
            position: i64,
        }
        Self::framed(position, EventName::Reset, &ResetData { position }, 0)
    }

    /// Renders the SSE frame, serializing `data` straight into it: one
    /// allocation per event (`extra` is the caller's estimate of how long
    /// its variable parts are). The JSON is one line: serde_json escapes
    /// every control character, so CR, LF and NUL cannot occur in it.
    fn framed(seq: i64, name: EventName, data: &impl Serialize, extra: usize) -> Self {
        use std::io::Write;
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD + extra);
        // Writing into a Vec cannot fail, nor can serializing borrowed
        // strings, numbers and an already-valid RawValue.
        let _ = write!(frame, "id: {seq}\nevent: {}\ndata: ", name.as_str());
        let start = frame.len();
        let _ = serde_json::to_writer(&mut frame, data);
        let data = start..frame.len();
        frame.extend_from_slice(b"\n\n");
        Self {
            seq,
            frame: Bytes::from(frame),
            data,
        }
    }

    /// The SSE frame, ready to write: a cheap handle on shared bytes.
    pub fn frame(&self) -> Bytes {
        self.frame.clone()
    }

    /// The SSE frame, to copy from.
    pub fn frame_bytes(&self) -> &[u8] {
        &self.frame
    }

    /// The event's JSON `data`.
    pub fn data(&self) -> &str {
        std::str::from_utf8(&self.frame[self.data.clone()]).unwrap_or_default()
    }
}

/// A row of the `tidings.events` view.
struct LogRow {
    recipient: String,
    seq: i64,
    event_type: String,
    id: i64,
    kind: Option<String>,
    payload: Option<Json<Box<RawValue>>>,
    notification_ids: Option<Vec<i64>>,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct NotificationData<'a> {
    id: i64,
    seq: i64,
    recipient: &'a str,
    kind: &'a str,
    payload: &'a RawValue,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct ReadData<'a> {
    seq: i64,
    recipient: &'a str,
    ids: &'a [i64],
    created_at: DateTime<Utc>,
}

impl Event {
    /// A notification event: its data is the row as one line of JSON.
    pub fn notification(
        id: i64,
        seq: i64,
        recipient: &str,
        kind: &str,
        payload: &RawValue,
        created_at: DateTime<Utc>,
    ) -> Self {
        let data = NotificationData {
            id,
            seq,
            recipient,
            kind,
            payload,
            created_at,
        };
        let extra = recipient.len() + kind.len() + payload.get().len();
        Self::framed(seq, EventName::Notification, &data, extra)
    }

    /// A read event: which notifications became read.
    pub fn read(seq: i64, recipient: &str, ids: &[i64], created_at: DateTime<Utc>) -> Self {
        let data = ReadData {
            seq,
            recipient,
            ids,
            created_at,
        };
        let extra = recipient.len() + ids.len() * 8;
        Self::framed(seq, EventName::Read, &data, extra)
    }
}

impl LogRow {
    fn into_event(self) -> (String, Arc<Event>) {
        let event = if self.event_type == "read" {
            let ids = self.notification_ids.as_deref().unwrap_or_default();
            Event::read(self.seq, &self.recipient, ids, self.created_at)
        } else {
            let kind = self.kind.as_deref().unwrap_or_default();
            let payload = self.payload.as_ref().map_or(RawValue::NULL, |json| &json.0);
            Event::notification(
                self.id,
                self.seq,
                &self.recipient,
                kind,
                payload,
                self.created_at,
            )
        };
        (self.recipient, Arc::new(event))
    }
}

/// For each `(recipients[i], after[i])`, that recipient's next events with
/// `seq > after[i]`, at most `limit` each, in `seq` order. One query serves
/// every recipient of a burst: the hub's way to fetch a row once for all.
///
/// Because `seq` is dense (invariant I1 in the migration), the next `limit`
/// events are exactly those in `after + 1 ..= after + limit`; saying so
/// bounds every scan by the page size whatever plan PostgreSQL picks (a
/// fresh burst without statistics otherwise got a scan of *all* later rows
/// per page, making a long replay quadratic).
pub async fn after(
    pool: &PgPool,
    recipients: &[String],
    after: &[i64],
    limit: i64,
) -> Result<Vec<(String, Arc<Event>)>, sqlx::Error> {
    let rows = sqlx::query_as!(
        LogRow,
        r#"
        SELECT e.recipient AS "recipient!", e.seq AS "seq!", e.type AS "event_type!",
               e.id AS "id!", e.kind, e.payload AS "payload: Json<Box<RawValue>>",
               e.notification_ids, e.created_at AS "created_at!"
          FROM unnest($1::text[], $2::int8[]) AS wanted (recipient, after)
         CROSS JOIN LATERAL (
               SELECT * FROM tidings.events ev
                WHERE ev.recipient = wanted.recipient AND ev.seq > wanted.after
                  AND ev.seq <= wanted.after + $3
                ORDER BY ev.seq
                LIMIT $3) e
         ORDER BY e.recipient, e.seq
        "#,
        recipients,
        after,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(LogRow::into_event).collect())
}

/// The recipient's latest `seq` (0 when it has none): its current position.
pub async fn position(pool: &PgPool, recipient: &str) -> Result<i64, sqlx::Error> {
    let position = sqlx::query_scalar!(
        "SELECT last_seq FROM tidings.recipients WHERE recipient = $1",
        recipient
    )
    .fetch_optional(pool)
    .await?;
    Ok(position.unwrap_or(0))
}
