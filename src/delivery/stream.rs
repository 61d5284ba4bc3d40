//! One stream's life: where it resumes, the history it missed read from
//! the table, then live events from the hub - without a gap or a duplicate.
//!
//! A stream registers with the hub *before* it reads history, so an event is
//! always either in what it reads or in what the hub sends it afterwards -
//! usually both, which is why it then sends only `seq = sent + 1` (see
//! [`Cursor`]): anything lower is a duplicate and dropped, anything higher
//! means it missed something and reads the table from `sent` on. The table
//! is the truth; the hub is only the fast path.
//!
//! Once the response has started, nothing here turns a database problem
//! into an end of the stream (a browser's EventSource gives up for good on
//! a non-200 when it reconnects): the stream waits and retries, and
//! heartbeats keep flowing. The exception is a database that refuses the
//! recipient itself, which no retry can change: such a stream ends, so that
//! the client's reconnect meets the refusal before the response starts.
//!
//! The body is written from each event's pre-rendered frame (see
//! [`super::events`]) rather than through axum's `Sse`, which re-encodes
//! every event for every connection: with shared frames, fan-out to N
//! streams costs N reference counts, not N allocations and copies.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;

use super::events::{self, Event, Page};
use super::hub::{Live, Subscription};
use super::slots::Slot;
use super::Delivery;
use crate::metrics::Held;

/// Events read from the table per query while replaying or catching up.
const PAGE: i64 = 500;

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
    /// The resume position: where a client asking to resume after the
    /// `seq` `resume_after` (`None`: only what comes next) starts, given
    /// the recipient's `latest` seq. A resume point beyond the log (say,
    /// after a restore) is reset to `latest`, and the client must be told
    /// with the returned event.
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
pub struct Registered {
    latest: i64,
    subscription: Subscription,
}

/// The database refuses the recipient itself (a value it cannot hold):
/// no retry can change that.
#[derive(Debug, thiserror::Error)]
#[error("the database refuses this recipient (SQLSTATE {code})")]
pub struct Refused {
    /// The SQLSTATE, which is all a client may learn of the refusal.
    pub code: String,
    #[source]
    pub cause: sqlx::Error,
}

/// Registers before the response starts if the database answers within
/// `wait`: "live from now on" should mean from this request, not from
/// whenever the client starts reading. A slow or unreachable database is
/// `None` (the stream registers later, on its own); a refusal is an
/// error, as a stream that answered would only retry it for good.
pub async fn open(
    delivery: &Delivery,
    recipient: &str,
    wait: Duration,
) -> Result<Option<Registered>, Refused> {
    match tokio::time::timeout(wait, register(delivery, recipient)).await {
        Ok(Ok(registered)) => Ok(Some(registered)),
        Ok(Err(cause)) => match refusal(&cause) {
            Some(code) => Err(Refused { code, cause }),
            None => Ok(None),
        },
        Err(_) => Ok(None),
    }
}

/// The body of one stream: the `retry:` advice, then a `reset` if the
/// client was ahead of the log, then history after `resume_after`, then
/// live - with a heartbeat whenever it has been quiet.
pub fn body(
    delivery: Delivery,
    recipient: String,
    resume_after: Option<i64>,
    registered: Option<Registered>,
    slot: Slot,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let heartbeat = delivery.streams.heartbeat;
    let frames = follow(delivery, recipient, resume_after, registered, slot);
    Heartbeat::new(frames, heartbeat)
}

fn follow(
    delivery: Delivery,
    recipient: String,
    resume_after: Option<i64>,
    registered: Option<Registered>,
    slot: Slot,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let _slot = slot;
        let _open = Held::new(&delivery.metrics.open_streams);
        yield Bytes::from(format!("retry: {}\n\n", delivery.streams.retry.as_millis()));
        let registered = match registered {
            Some(registered) => Some(registered),
            None => register_late(&delivery, &recipient).await,
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
                let page = Box::pin(retry_until_shutdown(&delivery, || read_page(&delivery, &recipient, sent))).await;
                let Some(page) = page else { return };
                let complete = (page.events as i64) < PAGE;
                if let Some(last_seq) = page.last_seq {
                    cursor.advance(last_seq);
                    delivery.metrics.replayed.inc_by(page.events as u64);
                    delivery.metrics.delivered.inc_by(page.events as u64);
                    yield page.frames;
                }
                if complete { break }
            }
            // ...then follow the hub until it skips something.
            'live: loop {
                let live = tokio::select! {
                    live = subscription.next() => live,
                    _ = delivery.shutdown.cancelled() => return,
                };
                let burst = match live {
                    Live::Events(burst) => burst,
                    Live::Lagged => break,
                    Live::Closed => return,
                };
                for event in burst.iter() {
                    match cursor.offer(event.seq) {
                        Offer::Send => {
                            delivery.metrics.delivered.inc();
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

/// Takes the recipient's hint lease and reads its position, then registers
/// with the hub - in that order: every append committed after the read
/// hints (unless the lease could not be had in time, see
/// [`super::lease::Leases::position`]), and the hub fetches everything
/// after the position.
async fn register(delivery: &Delivery, recipient: &str) -> Result<Registered, sqlx::Error> {
    let latest = delivery.leases.position(recipient).await?;
    let subscription = delivery.hub.subscribe(recipient, latest);
    Ok(Registered {
        latest,
        subscription,
    })
}

/// [`register`], for a stream that has answered already: a refusal is
/// `None`, which ends the stream instead of retrying it for good; the
/// client's reconnect then meets it in [`open`], before its response.
async fn register_unless_refused(
    delivery: &Delivery,
    recipient: &str,
) -> Result<Option<Registered>, sqlx::Error> {
    match register(delivery, recipient).await {
        Err(error) if refusal(&error).is_some() => {
            tracing::warn!(%error, "the database refuses a stream's recipient; ending it");
            Ok(None)
        }
        result => result.map(Some),
    }
}

/// The registration of a stream that answered without one (the database
/// was slow or unreachable): retried until it succeeds, or `None` on
/// shutdown or a refusal. The retries are boxed, like a page read, so
/// they do not size the state a stream keeps for its whole life.
async fn register_late(delivery: &Delivery, recipient: &str) -> Option<Registered> {
    let attempt = || register_unless_refused(delivery, recipient);
    Box::pin(retry_until_shutdown(delivery, attempt))
        .await
        .flatten()
}

/// The SQLSTATE of an error that retrying cannot clear: the database
/// refusing a value (class 22, data exception; 23, integrity constraint;
/// 54, program limit - a recipient too long to index, say). Anything else
/// may pass (a lost connection, a busy pool, a failover's read-only
/// moment), and a stream that gave up on it would lose its browser for good.
fn refusal(error: &sqlx::Error) -> Option<String> {
    crate::db::sqlstate_in(error, &["22", "23", "54"])
}

/// One page of history after `sent`, waiting for a catch-up permit first so
/// a reconnect storm queues here instead of exhausting the pool. The page is
/// one body chunk: every chunk costs a trip through the body's layers and
/// the connection, so a replay pays it per page, not per event.
async fn read_page(delivery: &Delivery, recipient: &str, sent: i64) -> Result<Page, sqlx::Error> {
    let _reading = Held::new(&delivery.metrics.catch_up_in_flight);
    let _permit = delivery.catch_up.acquire().await;
    events::page(&delivery.pool, recipient, sent, PAGE).await
}

/// Runs `query` until it succeeds, or returns `None` on shutdown. A stream
/// rides out database trouble instead of failing: its client could only
/// reconnect and land here again.
async fn retry_until_shutdown<T, F, Fut>(delivery: &Delivery, mut query: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::select! {
            result = query() => match result {
                Ok(value) => return Some(value),
                Err(error) => tracing::warn!(%error, "stream query failed; retrying"),
            },
            _ = delivery.shutdown.cancelled() => return None,
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = delivery.shutdown.cancelled() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
