//! The stream fleet: N Server-Sent Events streams held open at once, each a
//! task that connects from one of several 127.0.0.x source addresses, reads
//! events, and keeps exact books - every `seq` it expected, received twice,
//! or received out of order, and the latency of each event whose payload
//! carries its send time.
//!
//! Connection setup is throttled (a burst of SYNs beyond the server's
//! accept backlog would measure the kernel, not tidings), except for
//! reconnects in storm mode, which are meant to arrive all at once.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde::Deserialize;
use tidings_sse::Event;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sse::{self, EventStream};

/// Longest wait for a connection and its response head.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A gap wider than this is counted, not itemized.
const MAX_HOLES: i64 = 100_000;

pub struct FleetConfig {
    pub server: SocketAddr,
    pub sources: Vec<IpAddr>,
    /// Most first connections in flight at once.
    pub connect_concurrency: usize,
    /// Reconnect (after this pause) when a stream ends, as a browser does.
    pub reconnect: Option<Duration>,
    pub measure_latency: bool,
}

/// One stream to open.
#[derive(Clone, Copy, Debug)]
pub struct StreamSpec {
    pub recipient: usize,
    /// Events this stream should end up with (all of them from position 0,
    /// sent as `Last-Event-ID`), when known up front.
    pub expect: u64,
}

impl StreamSpec {
    /// `streams` streams spread over `recipients` in turn, nothing expected
    /// up front.
    pub fn round_robin(streams: usize, recipients: usize) -> Vec<Self> {
        (0..streams)
            .map(|i| Self {
                recipient: i % recipients.max(1),
                expect: 0,
            })
            .collect()
    }
}

/// Shared counters, read while the fleet runs.
#[derive(Default)]
pub struct Progress {
    pub established: AtomicUsize,
    pub failed: AtomicUsize,
    pub live: AtomicUsize,
    pub reconnects: AtomicUsize,
    pub unique: AtomicU64,
    pub caught_up: AtomicUsize,
}

impl Progress {
    fn add(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }
}

/// Per-stream books: which seqs arrived, once, in order.
#[derive(Debug, Default)]
pub struct Tracker {
    after: i64,
    max_seq: i64,
    holes: BTreeSet<i64>,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Seqs skipped beyond `MAX_HOLES`, never itemized.
    pub unitemized_gap: u64,
    pub resets: u64,
}

impl Tracker {
    fn new(after: i64) -> Self {
        Self {
            after,
            max_seq: after,
            ..Self::default()
        }
    }

    /// Records `seq`; true if it is new.
    pub fn observe(&mut self, seq: i64) -> bool {
        if seq <= self.after {
            self.duplicates += 1;
            return false;
        }
        if seq > self.max_seq {
            let gap = seq - self.max_seq - 1;
            if gap > MAX_HOLES {
                self.unitemized_gap += gap as u64;
            } else {
                self.holes.extend(self.max_seq + 1..seq);
            }
            self.max_seq = seq;
            self.unique += 1;
            return true;
        }
        if self.holes.remove(&seq) {
            self.out_of_order += 1;
            self.unique += 1;
            return true;
        }
        self.duplicates += 1;
        false
    }

    /// The position to resume from: the last id received, as a browser does.
    pub fn last_id(&self) -> i64 {
        self.max_seq
    }
}

pub struct StreamOutcome {
    pub spec: StreamSpec,
    pub established: bool,
    pub error: Option<String>,
    pub tracker: Tracker,
    pub latencies_us: Vec<u32>,
    /// (seq, epoch micros received) of each new event, when measuring.
    pub receipts: Vec<(i64, i64)>,
    pub reconnects: u32,
    /// When `spec.expect` events had arrived.
    pub caught_up_at: Option<Instant>,
}

pub struct Fleet {
    tasks: JoinSet<StreamOutcome>,
    pub progress: Arc<Progress>,
    cancel: CancellationToken,
    pub requested: usize,
}

impl Fleet {
    /// Starts one task per spec; `tokens[spec.recipient]` authenticates it.
    pub fn open(config: FleetConfig, specs: Vec<StreamSpec>, tokens: Arc<Vec<String>>) -> Self {
        let config = Arc::new(config);
        let progress = Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let requested = specs.len();
        for (index, spec) in specs.into_iter().enumerate() {
            let stream = StreamTask {
                config: config.clone(),
                spec,
                source: config.sources[index % config.sources.len()],
                token: tokens[spec.recipient].clone(),
                progress: progress.clone(),
                cancel: cancel.clone(),
            };
            tasks.spawn(stream.run(permits.clone()));
        }
        Self {
            tasks,
            progress,
            cancel,
            requested,
        }
    }

    /// Waits until every stream is established or has failed.
    pub async fn wait_opened(&self, within: Duration) -> bool {
        let p = &self.progress;
        wait_for(within, || {
            Progress::get(&p.established) + Progress::get(&p.failed) >= self.requested
        })
        .await
    }

    /// Waits until `total` distinct events have arrived across the fleet.
    pub async fn wait_received(&self, total: u64, within: Duration) -> bool {
        wait_for(within, || self.progress.received() >= total).await
    }

    /// Waits until `n` streams have received all they expected.
    pub async fn wait_caught_up(&self, n: usize, within: Duration) -> bool {
        wait_for(within, || Progress::get(&self.progress.caught_up) >= n).await
    }

    /// Waits until `n` streams are connected right now.
    pub async fn wait_live(&self, n: usize, within: Duration) -> bool {
        wait_for(within, || Progress::get(&self.progress.live) >= n).await
    }

    /// Ends every stream and returns their books.
    pub async fn stop(mut self) -> Vec<StreamOutcome> {
        self.cancel.cancel();
        let mut outcomes = Vec::with_capacity(self.requested);
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(outcome) = joined {
                outcomes.push(outcome);
            }
        }
        outcomes
    }
}

/// Polls `done` every 5 ms until it holds or `within` passes.
pub async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct StreamTask {
    config: Arc<FleetConfig>,
    spec: StreamSpec,
    source: IpAddr,
    token: String,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

enum Ended {
    Cancelled,
    Closed,
    Failed(anyhow::Error),
}

impl StreamTask {
    async fn run(self, permits: Arc<Semaphore>) -> StreamOutcome {
        let mut outcome = StreamOutcome {
            spec: self.spec,
            established: false,
            error: None,
            tracker: Tracker::new(0),
            latencies_us: Vec::new(),
            receipts: Vec::new(),
            reconnects: 0,
            caught_up_at: None,
        };
        loop {
            let opened = tokio::select! {
                opened = self.open(&permits, outcome.established, outcome.tracker.last_id()) => opened,
                _ = self.cancel.cancelled() => return outcome,
            };
            let ended = match opened {
                Ok(stream) => {
                    if outcome.established {
                        outcome.reconnects += 1;
                        Progress::add(&self.progress.reconnects);
                    } else {
                        outcome.established = true;
                        Progress::add(&self.progress.established);
                    }
                    Progress::add(&self.progress.live);
                    let ended = self.follow(stream, &mut outcome).await;
                    self.progress.live.fetch_sub(1, Ordering::Relaxed);
                    ended
                }
                Err(error) => Ended::Failed(error),
            };
            let error = match ended {
                Ended::Cancelled => return outcome,
                Ended::Closed => anyhow::anyhow!("the server ended the stream"),
                Ended::Failed(error) => error,
            };
            let Some(pause) = self.config.reconnect else {
                if !outcome.established {
                    Progress::add(&self.progress.failed);
                }
                outcome.error = Some(format!("{error:#}"));
                return outcome;
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.cancel.cancelled() => return outcome,
            }
        }
    }

    /// Connects and sends the request; first connections wait for a permit.
    async fn open(&self, permits: &Semaphore, reconnect: bool, after: i64) -> Result<EventStream> {
        let _permit = match reconnect {
            true => None,
            false => Some(permits.acquire().await?),
        };
        let headers = [
            ("Authorization", format!("Bearer {}", self.token)),
            ("Last-Event-ID", after.to_string()),
        ];
        let server = self.config.server;
        let request = async {
            let tcp = sse::connect(server, self.source).await?;
            sse::get_stream(tcp, &server, "/v1/stream", &headers).await
        };
        match tokio::time::timeout(OPEN_TIMEOUT, request).await?? {
            (_, Some(stream)) => Ok(stream),
            (status, None) => bail!("HTTP {status}"),
        }
    }

    async fn follow(&self, mut stream: EventStream, outcome: &mut StreamOutcome) -> Ended {
        let mut events = Vec::new();
        loop {
            let more = tokio::select! {
                more = stream.read_events(&mut events) => more,
                _ = self.cancel.cancelled() => return Ended::Cancelled,
            };
            let now = epoch_micros();
            for event in events.drain(..) {
                self.record(&event, now, outcome);
            }
            match more {
                Ok(true) => {}
                Ok(false) => return Ended::Closed,
                Err(error) => return Ended::Failed(error),
            }
        }
    }

    fn record(&self, event: &Event, now_us: i64, outcome: &mut StreamOutcome) {
        match event.event.as_str() {
            "notification" => {}
            "reset" => return outcome.tracker.resets += 1,
            _ => return,
        }
        let Some(seq) = event.seq() else {
            return;
        };
        if !outcome.tracker.observe(seq) {
            return;
        }
        self.progress.unique.fetch_add(1, Ordering::Relaxed);
        if self.spec.expect > 0 && outcome.tracker.unique == self.spec.expect {
            outcome.caught_up_at = Some(Instant::now());
            Progress::add(&self.progress.caught_up);
        }
        if self.config.measure_latency {
            outcome.receipts.push((seq, now_us));
            if let Some(sent) = sent_at(&event.data) {
                let micros = (now_us - sent).clamp(0, i64::from(u32::MAX));
                outcome.latencies_us.push(micros as u32);
            }
        }
    }
}

/// The send time the bench put in the payload (`{"t": epoch micros}`).
fn sent_at(data: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Data {
        payload: Payload,
    }
    #[derive(Deserialize)]
    struct Payload {
        t: Option<i64>,
    }
    serde_json::from_str::<Data>(data).ok()?.payload.t
}

/// Wall-clock microseconds: payloads carry it, so it is comparable across
/// the writer and stream tasks of this process.
pub fn epoch_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn books_count_duplicates_gaps_and_late_arrivals() {
        let mut books = Tracker::new(10);
        assert!(!books.observe(10)); // before the resume point
        assert!(books.observe(11));
        assert!(books.observe(13)); // 12 skipped
        assert!(!books.observe(13));
        assert!(books.observe(12)); // late
        assert_eq!(
            (books.unique, books.duplicates, books.out_of_order),
            (3, 2, 1)
        );
        assert_eq!(books.last_id(), 13);
    }

    #[test]
    fn the_send_time_is_read_from_the_payload() {
        let data =
            r#"{"id":1,"seq":1,"recipient":"a","kind":"k","payload":{"t":42},"created_at":"x"}"#;
        assert_eq!(sent_at(data), Some(42));
        assert_eq!(sent_at("{}"), None);
    }
}
