//! Streams in the tests: tidings-sse's reader over a reqwest response,
//! with what a test wants on top - an event within 10 s or a failed test,
//! n events at once, an event's JSON and `seq` or a failed test. The
//! reading itself (and "quiet" being false on a dead stream) is the shared
//! crate's; this module must not parse anything of its own.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::Value;
use tidings_sse::{Event, ReadError, Reader};

/// One parsed Server-Sent Event; its fields are [`Event`]'s.
#[derive(Debug, Clone)]
pub struct SseEvent(pub Event);

impl std::ops::Deref for SseEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.0
    }
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }

    pub fn seq(&self) -> i64 {
        self.0.seq().expect("numeric id")
    }
}

/// A spec-following SSE reader over a streaming HTTP response.
pub struct SseClient {
    reader: Reader<BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
}

impl SseClient {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            reader: Reader::new(response.bytes_stream().boxed()),
        }
    }

    /// The latest `retry:` value, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.reader.retry()
    }

    /// Comment lines (heartbeats) seen so far.
    pub fn comments(&self) -> u64 {
        self.reader.comments()
    }

    /// The next event with data, or why none came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<SseEvent, ReadError> {
        self.reader.next_within(wait).await.map(SseEvent)
    }

    /// Whether `wait` passed with the stream still open and no event
    /// arriving; false for an event, and for a stream that ended or broke.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        self.reader.quiet_for(wait).await
    }

    /// Whether the server ended the stream cleanly (neither going quiet nor
    /// breaking the connection).
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        self.reader.ended_within(wait).await
    }

    pub async fn next(&mut self) -> SseEvent {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event")
    }

    /// `n` events, each within 10 s of the previous one.
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        self.take_within(n, Duration::from_secs(10)).await
    }

    /// `n` events, each within `wait` of the previous one.
    pub async fn take_within(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_within(wait).await.expect("an event"));
        }
        events
    }
}

/// Seqs of `events`, for comparing with an expected range.
pub fn seqs(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(SseEvent::seq).collect()
}
