//! The listener hub: turns hints ("recipient X has new events") into events
//! fanned out to every open stream of X, fetching each row from the table
//! once per burst however many streams want it.
//!
//! Each recipient with at least one open stream has a [`Channel`]: a bounded
//! broadcast buffer shared by its streams, plus the `seq` up to which the hub
//! has fetched. The buffer holds one entry per fetch (a burst of events in
//! `seq` order), not one per event, so it can be tiny and an idle recipient
//! costs little. Hints only mark recipients as pending; one fetcher task turns
//! all pending recipients into a single query and sends what it read. One
//! query runs at a time: hints that arrive meanwhile pile up and the next
//! query takes them all, so under load many hints share one query, and in a
//! quiet spell a hint is fetched at once.
//!
//! The hub must never wait for a client: sending into a full buffer
//! overwrites the oldest event, and a stream that misses events that way
//! notices (it sees a lag, or a jump in `seq`) and reads them from the table
//! at its own pace. So memory per recipient is bounded by the buffer, and a
//! slow client slows only itself.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event};
use crate::metrics::Metrics;

/// Bursts buffered per recipient for its streams (up to `BUFFER *
/// FETCH_LIMIT` events). A stream further behind catches up from the table
/// instead. Small, because the buffer is allocated up front for every
/// recipient with an open stream.
const BUFFER: usize = 4;
/// Most events fetched per recipient per round; a recipient with more is
/// fetched again in the next round, so one busy recipient cannot hog a round.
const FETCH_LIMIT: i64 = 64;
/// Most recipients per fetch query, to keep each query short.
const BATCH: usize = 1000;
/// Cheap to clone: every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    /// The hub's own connection (`db::hub_pool`): generic plans, so a fetch
    /// is not planned afresh for every burst.
    pool: PgPool,
    /// Recipients with open streams. Locked briefly, never across an await.
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    /// Recipients hinted at but not fetched yet.
    pending: Mutex<Pending>,
    /// Wakes the fetcher; holds a permit if nobody waits, so no hint is lost.
    wake: Notify,
    metrics: Arc<Metrics>,
}

/// One fetch's events for one recipient, in `seq` order, shared by all its
/// streams.
pub type Burst = Arc<[Arc<Event>]>;

struct Channel {
    sender: broadcast::Sender<Burst>,
    /// Everything up to here has been sent (or predates the first stream).
    fetched: i64,
}

#[derive(Default)]
struct Pending {
    /// Set after a reconnect, a sweep, or an oversized hint: fetch for all.
    everyone: bool,
    recipients: HashSet<Arc<str>>,
    /// When the oldest hint still pending arrived: for the lag metric.
    since: Option<Instant>,
}

impl Pending {
    fn note_arrival(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }
}

/// One round of the fetcher: recipients with the seq to fetch after.
struct Batch {
    wanted: Vec<(Arc<str>, i64)>,
    /// When the oldest hint this round answers arrived.
    since: Option<Instant>,
}

/// One stream's registration with the hub. Dropping it unregisters; the last
/// one for a recipient removes the recipient's channel.
pub struct Subscription {
    recipient: Arc<str>,
    receiver: broadcast::Receiver<Burst>,
    hub: Arc<Shared>,
}

/// What a stream learns from its subscription.
pub enum Live {
    Events(Burst),
    /// The buffer overflowed before this stream read it: read the table.
    Lagged,
    /// The hub is gone (shutting down).
    Closed,
}

impl Subscription {
    pub async fn next(&mut self) -> Live {
        match self.receiver.recv().await {
            Ok(burst) => Live::Events(burst),
            Err(broadcast::error::RecvError::Lagged(_)) => Live::Lagged,
            Err(broadcast::error::RecvError::Closed) => Live::Closed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = lock(&self.hub.channels);
        // Our own receiver is still alive here, hence `1`.
        let last = channels
            .get(&self.recipient)
            .is_some_and(|channel| channel.sender.receiver_count() <= 1);
        if last {
            channels.remove(&self.recipient);
        }
    }
}

impl Hub {
    pub fn new(pool: PgPool, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                metrics,
                channels: Mutex::new(HashMap::new()),
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// Registers a stream for `recipient`'s live events. `position` is the
    /// recipient's position as read *before* this call: if this is the first
    /// stream, the hub fetches from there, so nothing committed after that
    /// read can be missed. Events the stream already has are its to drop.
    ///
    /// A channel that has fetched less than `position` also fetches once:
    /// its streams opened without a lease (see [`crate::lease`]), so rows
    /// up to `position` may have committed without a hint.
    pub fn subscribe(&self, recipient: &str, position: i64) -> Subscription {
        let mut channels = lock(&self.shared.channels);
        let (recipient, receiver, fetch) = match channels.get_key_value(recipient) {
            Some((name, channel)) => (
                name.clone(),
                channel.sender.subscribe(),
                channel.fetched < position,
            ),
            None => {
                let name: Arc<str> = recipient.into();
                let (sender, receiver) = broadcast::channel(BUFFER);
                let channel = Channel {
                    sender,
                    fetched: position,
                };
                channels.insert(name.clone(), channel);
                (name, receiver, true)
            }
        };
        drop(channels);
        if fetch {
            self.fetch_once(recipient.clone());
        }
        Subscription {
            receiver,
            recipient,
            hub: self.shared.clone(),
        }
    }

    /// A fetch for one channel, hint or no hint. A new channel needs one:
    /// a row committed after the caller read `position` hints at once, and
    /// the hint may arrive before the channel exists - then the map lookup
    /// in [`Hub::hint`] drops it, and without this fetch the row would wait
    /// for the recipient's next hint or the sweep. Usually it finds nothing.
    fn fetch_once(&self, recipient: Arc<str>) {
        lock(&self.shared.pending).recipients.insert(recipient);
        self.shared.wake.notify_one();
    }

    /// Handles a NOTIFY payload: a JSON array of recipients, or `*` for all.
    /// Anything else (such as another instance's listener check) is ignored.
    ///
    /// Appends hint for every recipient with a lease, but some of those
    /// have no open stream here (another instance streams them, or the
    /// lease outlived the stream): those hints end at the map lookup,
    /// without waking the fetcher. Nor does a recipient already pending:
    /// the fetch that takes it starts after this hint's rows were committed.
    pub fn hint(&self, payload: &str) {
        if payload == "*" {
            return self.hint_everyone();
        }
        let Ok(recipients) = serde_json::from_str::<Vec<String>>(payload) else {
            return;
        };
        let channels = lock(&self.shared.channels);
        let mut pending = lock(&self.shared.pending);
        let (mut wanted, mut added) = (false, false);
        for recipient in recipients {
            if let Some((name, _)) = channels.get_key_value(recipient.as_str()) {
                wanted = true;
                added |= pending.recipients.insert(name.clone());
            }
        }
        if wanted {
            // Also for a recipient pending already (put back by a full
            // fetch, say): its next fetch answers this hint too.
            pending.note_arrival();
        }
        drop((channels, pending));
        if added {
            self.shared.wake.notify_one();
        }
    }

    /// The recipients with an open stream here.
    pub fn recipients(&self) -> Vec<Arc<str>> {
        lock(&self.shared.channels).keys().cloned().collect()
    }

    /// Makes every open stream's recipient be compared with the table: after
    /// the listener (re)connects, hints sent meanwhile are lost, and after
    /// a lapsed hint lease is held again, appends meanwhile sent none.
    pub fn hint_everyone(&self) {
        let mut pending = lock(&self.shared.pending);
        pending.everyone = true;
        pending.note_arrival();
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// The fetcher: runs until `shutdown`, turning pending hints into events.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            if !self.drain(&shutdown).await {
                break;
            }
        }
        // Dropping the senders ends every stream's wait.
        lock(&self.shared.channels).clear();
    }

    /// Fetches until nothing is pending, one query at a time, each taking
    /// every hint that arrived while the one before ran. (Sessions 4-5
    /// also spaced queries at least 1 ms apart: at 2,000 events/s, 0.24
    /// instead of about 0.9 queries per event, for about 1.4 ms more in
    /// tidings' median after the commit; BENCHMARKS.md, session 6.) False
    /// once `shutdown` has come.
    async fn drain(&self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            let Some(batch) = self.take_batch() else {
                return true;
            };
            if !self.fetch_or_requeue(batch, shutdown).await {
                return false;
            }
        }
    }

    /// One batch fetched and sent, or put back and retried after a pause.
    /// False if `shutdown` came during the pause.
    async fn fetch_or_requeue(&self, batch: Batch, shutdown: &CancellationToken) -> bool {
        let fetched = self.fetch(&batch).await;
        let Err(error) = fetched else {
            return true;
        };
        tracing::warn!(%error, "fetching events failed; retrying");
        self.requeue(batch.wanted);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Up to [`BATCH`] pending recipients that still have streams, each with
    /// the seq to fetch after.
    fn take_batch(&self) -> Option<Batch> {
        let channels = lock(&self.shared.channels);
        let mut pending = lock(&self.shared.pending);
        let since = pending.since.take();
        let wanted: Vec<Arc<str>> = if mem::take(&mut pending.everyone) {
            pending.recipients.clear();
            channels.keys().cloned().collect()
        } else {
            pending.recipients.drain().collect()
        };
        let mut batch: Vec<(Arc<str>, i64)> = wanted
            .into_iter()
            .filter_map(|name| channels.get(&name).map(|c| (name, c.fetched)))
            .collect();
        if batch.len() > BATCH {
            pending
                .recipients
                .extend(batch.drain(BATCH..).map(|(name, _)| name));
        }
        (!batch.is_empty()).then_some(Batch {
            wanted: batch,
            since,
        })
    }

    fn requeue(&self, batch: Vec<(Arc<str>, i64)>) {
        lock(&self.shared.pending)
            .recipients
            .extend(batch.into_iter().map(|(name, _)| name));
    }

    /// One query for the whole batch; each event is sent once into its
    /// recipient's channel, to be shared by all that recipient's streams.
    /// The hint's lag is observed before the sends, so that whoever sees
    /// an event also sees it counted.
    async fn fetch(&self, batch: &Batch) -> Result<(), sqlx::Error> {
        let (batch, since) = (&batch.wanted[..], batch.since);
        let names: Vec<String> = batch.iter().map(|(name, _)| name.to_string()).collect();
        let after: Vec<i64> = batch.iter().map(|(_, fetched)| *fetched).collect();
        let rows = events::after(&self.shared.pool, &names, &after, FETCH_LIMIT).await?;
        if let Some(since) = since {
            self.shared
                .metrics
                .hint_lag
                .observe(since.elapsed().as_secs_f64());
        }

        let mut channels = lock(&self.shared.channels);
        for (recipient, burst) in bursts(rows) {
            let Some(channel) = channels.get_mut(recipient.as_str()) else {
                continue;
            };
            let fresh: Burst = burst
                .into_iter()
                .filter(|event| event.seq > channel.fetched)
                .collect();
            if let Some(last) = fresh.last() {
                channel.fetched = last.seq;
                // An error only means no stream is listening right now.
                let _ = channel.sender.send(fresh);
            }
        }
        // `seq` is dense and each fetch reads `after + 1 ..= after + limit`,
        // so a recipient that reached `after + limit` may have more: go again.
        let more: Vec<Arc<str>> = batch
            .iter()
            .filter(|(name, after)| {
                channels
                    .get(name)
                    .is_some_and(|c| c.fetched >= after + FETCH_LIMIT)
            })
            .map(|(name, _)| name.clone())
            .collect();
        drop(channels);
        lock(&self.shared.pending).recipients.extend(more);
        Ok(())
    }
}

/// Rows of many recipients, ordered by recipient and `seq` (as
/// `events::after` returns them), as one burst per recipient.
fn bursts(rows: Vec<(String, Arc<Event>)>) -> Vec<(String, Vec<Arc<Event>>)> {
    let mut bursts: Vec<(String, Vec<Arc<Event>>)> = Vec::new();
    for (recipient, event) in rows {
        match bursts.last_mut() {
            Some((last, events)) if *last == recipient => events.push(event),
            _ => bursts.push((recipient, vec![event])),
        }
    }
    bursts
}

/// The hub's locks guard plain maps that no panic can leave half-updated,
/// so a poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
