//! Streams: `GET /v1/stream`, a recipient's events as Server-Sent Events,
//! resumable after any `seq` without a gap or a duplicate.
//!
//! A stream registers with the hub *before* it reads history, so an event is
//! always either in what it reads or in what the hub sends it afterwards -
//! usually both, which is why it then sends only `seq = sent + 1`: anything
//! lower is a duplicate and dropped, anything higher means it missed
//! something and reads the table from `sent` on. The table is the truth; the
//! hub is only the fast path.
//!
//! Once the response has started, nothing here turns a database problem
//! into an HTTP error (a browser's EventSource gives up for good on a
//! non-200): the stream waits and retries, and heartbeats keep flowing.
//! The exception is a database that refuses the recipient itself, which no
//! retry can change: that is an error response, and a stream that meets it
//! after answering 200 ends, so that the client's reconnect gets one.
//!
//! The body is written from each event's pre-rendered frame (see `events`)
//! rather than through axum's `Sse`, which re-encodes every event for every
//! connection: with shared frames, fan-out to N streams costs N reference
//! counts, not N allocations and copies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;
use crate::auth::{query_param, Caller};
use crate::error::{problems, AppError};
use crate::events::{self, Event, Page};
use crate::hub::{Live, Subscription};
use crate::metrics::Held;

/// Events read from the table per query while replaying or catching up.
const PAGE: i64 = 500;
/// How long the request waits for the database before answering 200 anyway
/// (the stream then keeps trying on its own).
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// The caller's events as Server-Sent Events, resumable without a gap or a
/// duplicate.
///
/// Each event is `id: <seq>`, `event: <type>`, `data: <one line of JSON>`:
///
/// - `notification`: `{"id", "seq", "recipient", "kind", "payload",
///   "created_at"}` - a notification was committed.
/// - `read`: `{"seq", "recipient", "ids": [...], "created_at"}` - these
///   notification ids were marked read (from any tab or device).
/// - `reset`: `{"position"}` - the requested resume point is beyond the
///   recipient's latest `seq` (say, after a database restore); the stream
///   continues from `position` (that latest `seq`), so reload the inbox.
///
/// The stream opens with a `retry:` field and sends a `:` comment line as a
/// heartbeat whenever it has been quiet for the heartbeat interval. On
/// reconnect, browsers send `Last-Event-ID` themselves; everything after it
/// is replayed from the table, then live events follow.
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "stream",
    params(
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0,
            description = "Resume after this `seq` (what EventSource sends on reconnect); wins over `last_event_id`"),
        ("last_event_id" = Option<i64>, Query, minimum = 0,
            description = "Resume after this `seq` on a first connect, e.g. the inbox's `position`; `0` replays everything. Absent: live events from now on"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream` of `notification`, `read` and `reset` events", content_type = "text/event-stream", body = String),
        (status = 400, response = problems::BadRequest),
        (status = 401, response = problems::Unauthorized),
        (status = 429, response = problems::TooManyStreams),
    )
)]
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, AppError> {
    let resume_after = requested_resume_after(&headers, uri.query())?;
    let slot = state
        .slots
        .take(&caller.recipient, state.streams.max_per_recipient)?;
    let registered = open(&state, &caller.recipient).await?;
    let frames = follow(
        state.clone(),
        caller.recipient,
        resume_after,
        registered,
        slot,
    );
    let body = Body::from_stream(Heartbeat::new(frames, state.streams.heartbeat));
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Tells nginx (and proxies that copy it) not to buffer the stream.
        (
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    Ok((headers, body).into_response())
}

/// Registers before answering if the database answers within
/// [`OPEN_TIMEOUT`]: "live from now on" should mean from this request, not
/// from whenever the client starts reading. A slow or unreachable database
/// is `None` (the stream registers later, on its own); a refusal is an
/// error, as a 200 would only retry it for good.
async fn open(state: &AppState, recipient: &str) -> Result<Option<Registered>, AppError> {
    match tokio::time::timeout(OPEN_TIMEOUT, register(state, recipient)).await {
        Ok(Ok(registered)) => Ok(Some(registered)),
        Ok(Err(error)) => match refusal(&error) {
            Some(code) => {
                tracing::warn!(%error, "the database refuses a stream's recipient");
                Err(AppError::BadRequest(format!(
                    "the database refuses this token's recipient (SQLSTATE {code})"
                )))
            }
            None => Ok(None),
        },
        Err(_) => Ok(None),
    }
}

/// Writes a comment line whenever the stream has been quiet for `every`, so
/// that proxies and browsers keep an idle connection open - also while the
/// stream itself waits for the database.
struct Heartbeat<S> {
    frames: Pin<Box<S>>,
    quiet_until: Pin<Box<tokio::time::Sleep>>,
    every: Duration,
}

impl<S: Stream<Item = Bytes>> Heartbeat<S> {
    fn new(frames: S, every: Duration) -> Self {
        let quiet_until = Box::pin(tokio::time::sleep(every));
        Self {
            frames: Box::pin(frames),
            quiet_until,
            every,
        }
    }

    fn rearm(&mut self) {
        let next = tokio::time::Instant::now() + self.every;
        self.quiet_until.as_mut().reset(next);
    }
}

impl<S: Stream<Item = Bytes>> Stream for Heartbeat<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.frames.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                self.rearm();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.quiet_until.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.rearm();
                    Poll::Ready(Some(Ok(Bytes::from_static(b":\n\n"))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The `seq` the client asks to resume after, if any: the `Last-Event-ID`
/// header (what browsers send on reconnect) wins over the `last_event_id`
/// query parameter.
pub fn requested_resume_after(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<i64>, AppError> {
    let header = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| AppError::BadRequest("Last-Event-ID must be a number".into()))?
                .to_owned(),
        ),
        None => None,
    };
    let raw = header.or_else(|| query_param(query.unwrap_or(""), "last_event_id"));
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => parse_event_id(text).map(Some),
    }
}

fn parse_event_id(text: &str) -> Result<i64, AppError> {
    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    text.parse::<i64>().ok().filter(|_| valid).ok_or_else(|| {
        AppError::BadRequest(format!(
            "Last-Event-ID must be a whole number from 0 to {}, got {text:?}",
            i64::MAX
        ))
    })
}

/// The stream of one connection: the `retry:` advice, then a `reset` if the
/// client was ahead of the log, then history after `resume_after`, then
/// live.
fn follow(
    state: AppState,
    recipient: String,
    resume_after: Option<i64>,
    registered: Option<Registered>,
    slot: Slot,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let _slot = slot;
        let _open = Held::new(&state.metrics.open_streams);
        yield Bytes::from(format!("retry: {}\n\n", state.streams.retry.as_millis()));
        let registered = match registered {
            Some(registered) => Some(registered),
            None => register_late(&state, &recipient).await,
        };
        let Some(Registered { latest, mut subscription }) = registered else { return };
        let (mut cursor, reset) = Cursor::start(resume_after, latest);
        if let Some(reset) = reset {
            yield reset.frame();
        }
        loop {
            // Catch up from the table until it has nothing more...
            loop {
                let sent = cursor.sent();
                // Boxed: a stream spends its life idle in the live loop below,
                // and an unboxed read would size its state for the largest
                // await (the query) all along - about 0.8 KiB per stream.
                let page = Box::pin(retry_until_shutdown(&state, || read_page(&state, &recipient, sent))).await;
                let Some(page) = page else { return };
                let complete = (page.events as i64) < PAGE;
                if let Some(last_seq) = page.last_seq {
                    cursor.advance(last_seq);
                    state.metrics.replayed.inc_by(page.events as u64);
                    state.metrics.delivered.inc_by(page.events as u64);
                    yield page.frames;
                }
                if complete { break }
            }
            // ...then follow the hub until it skips something.
            'live: loop {
                let live = tokio::select! {
                    live = subscription.next() => live,
                    _ = state.shutdown.cancelled() => return,
                };
                let burst = match live {
                    Live::Events(burst) => burst,
                    Live::Lagged => break,
                    Live::Closed => return,
                };
                for event in burst.iter() {
                    match cursor.offer(event.seq) {
                        Offer::Send => {
                            state.metrics.delivered.inc();
                            yield event.frame();
                        }
                        Offer::Duplicate => continue,
                        Offer::Gap => break 'live,
                    }
                }
            }
        }
    }
}

/// How many streams each recipient has open on this instance, so one
/// recipient (or a leaked token) cannot open connections without bound.
#[derive(Clone, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream's place in [`StreamSlots`]; dropping it frees the place.
pub struct Slot {
    slots: StreamSlots,
    recipient: String,
}

impl StreamSlots {
    /// A place for one more stream of `recipient`, unless it already holds
    /// `max` (0: no limit): then a 429 problem, never a silent drop.
    pub fn take(&self, recipient: &str, max: usize) -> Result<Slot, AppError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(recipient.to_owned()).or_default();
        if max > 0 && *count >= max {
            return Err(AppError::TooManyRequests(format!(
                "this recipient already has {count} open streams here, the most allowed"
            )));
        }
        *count += 1;
        Ok(Slot {
            slots: self.clone(),
            recipient: recipient.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.recipient) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.recipient);
            }
        }
    }
}

/// Where a stream stands: the last `seq` it sent. It enforces the rule that
/// makes delivery exactly-once and in order: only `sent + 1` goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    sent: i64,
}

/// What to do with an event the hub offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The next one: send it (the cursor has moved).
    Send,
    /// Already sent (it came from the table too): drop it.
    Duplicate,
    /// Something before it is missing: read the table from `sent()` on.
    Gap,
}

impl Cursor {
    /// The starting point for a client asking to resume after the `seq`
    /// `resume_after` (`None`: only what comes next), given the recipient's
    /// `latest` seq. A resume point beyond the log (say, after a restore)
    /// is reset to `latest`, and the client must be told with the returned
    /// event.
    pub fn start(resume_after: Option<i64>, latest: i64) -> (Self, Option<Event>) {
        match resume_after {
            Some(resume_after) if resume_after > latest => {
                (Self { sent: latest }, Some(Event::reset(latest)))
            }
            Some(resume_after) => (Self { sent: resume_after }, None),
            None => (Self { sent: latest }, None),
        }
    }

    pub fn sent(&self) -> i64 {
        self.sent
    }

    /// Records an event sent from the table, which is always in order.
    pub fn advance(&mut self, seq: i64) {
        self.sent = seq;
    }

    pub fn offer(&mut self, seq: i64) -> Offer {
        if seq <= self.sent {
            Offer::Duplicate
        } else if seq == self.sent + 1 {
            self.sent = seq;
            Offer::Send
        } else {
            Offer::Gap
        }
    }
}

/// A stream's registration with the hub, and the recipient's position
/// (latest `seq`) read just before it.
struct Registered {
    latest: i64,
    subscription: Subscription,
}

/// Takes the recipient's hint lease and reads its position, then registers
/// with the hub - in that order: every append committed after the read
/// hints (unless the lease could not be had in time, see
/// [`crate::lease::Leases::position`]), and the hub fetches everything
/// after the position.
async fn register(state: &AppState, recipient: &str) -> Result<Registered, sqlx::Error> {
    let latest = state.leases.position(recipient).await?;
    let subscription = state.hub.subscribe(recipient, latest);
    Ok(Registered {
        latest,
        subscription,
    })
}

/// [`register`], for a stream that has answered 200 already: a refusal is
/// `None`, which ends the stream instead of retrying it for good; the
/// client's reconnect then meets it in [`open`], as an error response.
async fn register_unless_refused(
    state: &AppState,
    recipient: &str,
) -> Result<Option<Registered>, sqlx::Error> {
    match register(state, recipient).await {
        Err(error) if refusal(&error).is_some() => {
            tracing::warn!(%error, "the database refuses a stream's recipient; ending it");
            Ok(None)
        }
        result => result.map(Some),
    }
}

/// The registration of a stream that answered 200 without one (the
/// database was slow or unreachable): retried until it succeeds, or `None`
/// on shutdown or a refusal. The retries are boxed, like a page read, so
/// they do not size the state a stream keeps for its whole life.
async fn register_late(state: &AppState, recipient: &str) -> Option<Registered> {
    let attempt = || register_unless_refused(state, recipient);
    Box::pin(retry_until_shutdown(state, attempt))
        .await
        .flatten()
}

/// The SQLSTATE of an error that retrying cannot clear: the database
/// refusing a value (class 22, data exception; 23, integrity constraint;
/// 54, program limit - a recipient too long to index, say). Anything else
/// may pass (a lost connection, a busy pool, a failover's read-only
/// moment), and a stream that gave up on it would lose its browser for good.
fn refusal(error: &sqlx::Error) -> Option<String> {
    crate::error::sqlstate_in(error, &["22", "23", "54"])
}

/// One page of history after `sent`, waiting for a catch-up permit first so
/// a reconnect storm queues here instead of exhausting the pool. The page is
/// one body chunk: every chunk costs a trip through the body's layers and
/// the connection, so a replay pays it per page, not per event.
async fn read_page(state: &AppState, recipient: &str, sent: i64) -> Result<Page, sqlx::Error> {
    let _reading = Held::new(&state.metrics.catch_up_in_flight);
    let _permit = state.catch_up.acquire().await;
    events::page(&state.pool, recipient, sent, PAGE).await
}

/// Runs `query` until it succeeds, or returns `None` on shutdown. A stream
/// rides out database trouble instead of failing: its client could only
/// reconnect and land here again.
async fn retry_until_shutdown<T, F, Fut>(state: &AppState, mut query: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::select! {
            result = query() => match result {
                Ok(value) => return Some(value),
                Err(error) => tracing::warn!(%error, "stream query failed; retrying"),
            },
            _ = state.shutdown.cancelled() => return None,
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = state.shutdown.cancelled() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
