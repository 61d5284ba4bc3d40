//! Events: a recipient's log as streams see it - notifications and read marks
//! in `seq` order - and the queries that read it.
//!
//! Owns the wire form of an event: its whole SSE frame. Live events are
//! rendered once and shared - by reference count, not by copy - with every
//! stream that sends them; a replayed page of history is rendered straight
//! into one buffer for the one stream that asked. Both go through
//! `Row::render`, so the bytes are the same. It must never write: the log is
//! appended to by SQL clients, by `publish` (notifications) and by the
//! inbox (read marks) only.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use axum::body::Bytes;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::PgPool;
use tokio::task::{JoinError, JoinHandle};

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
    /// The client's resume point was beyond the log (e.g. after a restore).
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
    /// Tells a client that its resume point was beyond the log and that it
    /// now stands at `position`, the recipient's latest `seq`.
    pub fn reset(position: i64) -> Self {
        #[derive(Serialize)]
        struct ResetData {
            position: i64,
        }
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD);
        let data = render(
            &mut frame,
            position,
            EventName::Reset,
            &ResetData { position },
        );
        Self::new(position, frame, data)
    }

    /// The SSE frame, ready to write: a cheap handle on shared bytes.
    pub fn frame(&self) -> Bytes {
        self.frame.clone()
    }

    /// The event's JSON `data`.
    pub fn data(&self) -> &str {
        std::str::from_utf8(&self.frame[self.data.clone()]).unwrap_or_default()
    }
}

/// Appends one SSE frame to `out`; returns where its JSON sits. The JSON is
/// one line: serde_json escapes every control character, so CR, LF and NUL
/// cannot occur in it.
fn render(out: &mut Vec<u8>, seq: i64, name: EventName, data: &impl Serialize) -> Range<usize> {
    use std::io::Write;
    // Writing into a Vec cannot fail, nor can serializing borrowed strings,
    // numbers and an already-valid RawValue.
    let _ = write!(out, "id: {seq}\nevent: {}\ndata: ", name.as_str());
    let start = out.len();
    let _ = serde_json::to_writer(&mut *out, data);
    let data = start..out.len();
    out.extend_from_slice(b"\n\n");
    data
}

/// One event as read from the `tidings.events` view, less its recipient.
struct Row {
    seq: i64,
    is_read: bool,
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
    created_at: Rfc3339,
}

#[derive(Serialize)]
struct ReadData<'a> {
    seq: i64,
    recipient: &'a str,
    ids: &'a [i64],
    created_at: Rfc3339,
}

/// A time as chrono writes it (RFC 3339, UTC as `Z`, the fraction in 0, 3,
/// 6 or 9 digits - `SecondsFormat::AutoSi`), written without `fmt`: chrono
/// writes it in a dozen small pieces, each of which serde_json scans for
/// escapes, which made timestamps the largest single cost of a replay.
struct Rfc3339(DateTime<Utc>);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 30];
        match self.write(&mut text) {
            Some(len) => serializer.serialize_str(std::str::from_utf8(&text[..len]).unwrap_or("")),
            None => self.0.serialize(serializer),
        }
    }
}

impl Rfc3339 {
    /// Writes the common case - years 0 to 9999, no leap second - into
    /// `out`; returns its length, or `None` for chrono to handle the rest.
    fn write(&self, out: &mut [u8; 30]) -> Option<usize> {
        use chrono::{Datelike, Timelike};
        let (date, time) = (self.0.date_naive(), self.0.time());
        let year = u32::try_from(date.year())
            .ok()
            .filter(|year| *year <= 9999)?;
        let nanos = time.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        let digits = |out: &mut [u8], mut value: u32| {
            for digit in out.iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        out[..20].copy_from_slice(b"0000-00-00T00:00:00.");
        digits(&mut out[0..4], year);
        digits(&mut out[5..7], date.month());
        digits(&mut out[8..10], date.day());
        digits(&mut out[11..13], time.hour());
        digits(&mut out[14..16], time.minute());
        digits(&mut out[17..19], time.second());
        let (fraction, places) = match nanos {
            0 => (0, 0),
            n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
            n if n % 1_000 == 0 => (n / 1_000, 6),
            n => (n, 9),
        };
        let mut len = 19;
        if places > 0 {
            digits(&mut out[20..20 + places], fraction);
            len = 20 + places;
        }
        out[len] = b'Z';
        Some(len + 1)
    }
}

impl Row {
    /// Appends this event's frame to `out`: the one place a row becomes
    /// wire bytes, for live bursts and replayed pages alike.
    fn render(&self, recipient: &str, out: &mut Vec<u8>) -> Range<usize> {
        if self.is_read {
            let data = ReadData {
                seq: self.seq,
                recipient,
                ids: self.notification_ids.as_deref().unwrap_or_default(),
                created_at: Rfc3339(self.created_at),
            };
            render(out, self.seq, EventName::Read, &data)
        } else {
            let data = NotificationData {
                id: self.id,
                seq: self.seq,
                recipient,
                kind: self.kind.as_deref().unwrap_or_default(),
                payload: self.payload.as_ref().map_or(RawValue::NULL, |json| &json.0),
                created_at: Rfc3339(self.created_at),
            };
            render(out, self.seq, EventName::Notification, &data)
        }
    }

    /// How long this event's variable parts are, roughly.
    fn variable_len(&self, recipient: &str) -> usize {
        let kind = self.kind.as_ref().map_or(0, String::len);
        let payload = self.payload.as_ref().map_or(0, |json| json.0.get().len());
        let ids = self
            .notification_ids
            .as_ref()
            .map_or(0, |ids| ids.len() * 8);
        recipient.len() + kind + payload + ids
    }
}

impl Event {
    fn from_row(recipient: &str, row: &Row) -> Self {
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD + row.variable_len(recipient));
        let data = row.render(recipient, &mut frame);
        Self::new(row.seq, frame, data)
    }

    fn new(seq: i64, frame: Vec<u8>, data: Range<usize>) -> Self {
        Self {
            seq,
            frame: Bytes::from(frame),
            data,
        }
    }

    /// A notification event: its data is the row as one line of JSON.
    pub fn notification(
        id: i64,
        seq: i64,
        recipient: &str,
        kind: &str,
        payload: &RawValue,
        created_at: DateTime<Utc>,
    ) -> Self {
        let row = Row {
            seq,
            is_read: false,
            id,
            kind: Some(kind.to_owned()),
            payload: Some(Json(payload.to_owned())),
            notification_ids: None,
            created_at,
        };
        Self::from_row(recipient, &row)
    }
}

/// A row of the `tidings.events` view, for a query over many recipients.
struct LogRow {
    recipient: String,
    seq: i64,
    is_read: bool,
    id: i64,
    kind: Option<String>,
    payload: Option<Json<Box<RawValue>>>,
    notification_ids: Option<Vec<i64>>,
    created_at: DateTime<Utc>,
}

impl LogRow {
    fn into_event(self) -> (String, Arc<Event>) {
        let row = Row {
            seq: self.seq,
            is_read: self.is_read,
            id: self.id,
            kind: self.kind,
            payload: self.payload,
            notification_ids: self.notification_ids,
            created_at: self.created_at,
        };
        let event = Event::from_row(&self.recipient, &row);
        (self.recipient, Arc::new(event))
    }
}

/// For each `(recipients[i], after[i])`, that recipient's next events with
/// `seq > after[i]`, at most `limit` each, in `seq` order. One query serves
/// every recipient of a burst: the hub's way to fetch a row once for all.
///
/// Because `seq` is dense (invariant I1 of the schema), the next `limit`
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
        SELECT e.recipient AS "recipient!", e.seq AS "seq!", e.type = 'read' AS "is_read!",
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

/// One recipient's history after a position, rendered: the frames of its
/// next events, back to back, ready to write as one chunk.
#[derive(Default)]
pub struct Page {
    pub frames: Bytes,
    /// How many events the page holds.
    pub events: usize,
    /// The last event's `seq`, if the page holds any.
    pub last_seq: Option<i64>,
}

/// Up to `limit` events of `recipient` after `after`, rendered straight into
/// one buffer as the rows arrive. This is a stream's replay, the one path
/// that moves a million events in a reconnect storm, so it shares nothing:
/// no per-event buffer or reference count, and the recipient (known) and the
/// event type (a flag) are not decoded per row. The frames are the same
/// bytes `Event` renders (`replayed_frames_match_live_frames` checks it).
pub async fn page(
    pool: &PgPool,
    recipient: &str,
    after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    // On a task of its own: sqlx re-enters the span current when the query
    // starts for every row it yields, and under the request's span (with
    // its filter checks) that cost about a sixth of the server's CPU in a
    // replay of a million rows. A fresh task has no current span. The
    // query's own log lines lose the request id; the stream's keep it.
    let (pool, recipient) = (pool.clone(), recipient.to_owned());
    let read = on_own_task(async move { render_page(&pool, &recipient, after, limit).await });
    match read.await {
        Ok(page) => page,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        Err(_cancelled) => Err(sqlx::Error::WorkerCrashed), // the runtime is shutting down
    }
}

/// Runs `work` on a task of its own that ends when the returned future is
/// dropped. A stream whose client leaves drops its page read, and with it
/// the catch-up permit it holds (`stream::read_page`); a task left running
/// would go on querying and rendering up to a page outside the permits'
/// limit - a reconnect storm's abandoned replays would pile up unbounded.
async fn on_own_task<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, JoinError> {
    struct AbortOnDrop<T>(JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort(); // no-op once the task has finished
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(work));
    (&mut task.0).await
}

async fn render_page(
    pool: &PgPool,
    recipient: &str,
    after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    use futures_util::TryStreamExt;
    let mut rows = sqlx::query_as!(
        Row,
        r#"
        SELECT seq AS "seq!", type = 'read' AS "is_read!", id AS "id!", kind,
               payload AS "payload: Json<Box<RawValue>>", notification_ids,
               created_at AS "created_at!"
          FROM tidings.events
         WHERE recipient = $1 AND seq > $2 AND seq <= $2 + $3
         ORDER BY seq
         LIMIT $3
        "#,
        recipient,
        after,
        limit,
    )
    .fetch(pool);
    let mut page = Page::default();
    let mut out = Vec::with_capacity(4096);
    while let Some(row) = rows.try_next().await? {
        row.render(recipient, &mut out);
        page.events += 1;
        page.last_seq = Some(row.seq);
    }
    page.frames = Bytes::from(out);
    Ok(page)
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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{Context, Result};
    use chrono::TimeZone;

    fn at(year: i32, month: u32, day: u32, h: u32, m: u32, s: u32) -> Result<DateTime<Utc>> {
        let time = Utc.with_ymd_and_hms(year, month, day, h, m, s).single();
        time.context("a valid instant")
    }

    #[tokio::test]
    async fn a_page_read_ends_when_its_stream_lets_go_of_it() -> Result<()> {
        // The work holds `held` until it ends; `ended` learns when it does.
        let (held, ended) = tokio::sync::oneshot::channel::<()>();
        let mut read = Box::pin(on_own_task(async move {
            let _held = held;
            std::future::pending::<()>().await;
        }));
        let running = tokio::time::timeout(std::time::Duration::from_millis(50), &mut read).await;
        assert!(running.is_err(), "the work is running");

        drop(read);

        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
        assert!(
            waited.is_ok_and(|ended| ended.is_err()),
            "the work ended with its reader"
        );
        Ok(())
    }

    #[test]
    fn times_are_written_exactly_as_chrono_writes_them() -> Result<()> {
        // Every fraction shape, the ends of the year range, and a spread of
        // pseudo-random instants from year 0 to 9999.
        let mut times = vec![
            at(2026, 11, 21, 18, 3, 16)?,
            at(0, 1, 1, 0, 0, 0)?,
            at(9999, 12, 31, 23, 59, 59)?,
            at(10000, 1, 1, 0, 0, 0)?,
            at(-1, 6, 1, 12, 0, 0)?,
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let seconds = (state % 315_537_897_600) as i64 - 62_167_219_200;
            let nanos = match state % 4 {
                0 => 0,
                1 => (state >> 8) as u32 % 1000 * 1_000_000,
                2 => (state >> 8) as u32 % 1_000_000 * 1_000,
                _ => (state >> 8) as u32 % 1_000_000_000,
            };
            let time = Utc.timestamp_opt(seconds, nanos).single();
            times.push(time.context("a valid instant")?);
        }
        for time in times {
            let ours = serde_json::to_string(&Rfc3339(time))?;
            let chrono = serde_json::to_string(&time)?;
            assert_eq!(ours, chrono);
        }
        Ok(())
    }
}
