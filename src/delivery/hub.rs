//! The hub: turns hints ("recipient X has new events") into events
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
//! overwrites the oldest burst, and a stream that misses events that way
//! notices (it sees a lag, or a jump in `seq`) and reads them from the table
//! at its own pace. So memory per recipient is bounded by the buffer, and a
//! slow client slows only itself.
//!
//! Nor may one recipient's rows stop everyone's: a fetch that fails because
//! of what it read (a damaged page, say) is split until the recipient
//! behind it stands alone, and that recipient is then fetched on its own,
//! with a growing pause, until its rows can be read again.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use super::events::{self, Event};
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
/// How long the fetcher rests after a failure that is not about rows (the
/// database is unreachable, say) before it tries again.
const PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between fetches of a recipient whose rows cannot be
/// read; the first is [`PAUSE`], and each failure doubles it.
const MAX_ISOLATED_PAUSE: Duration = Duration::from_secs(30);
/// Cheap to clone: every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// What every clone of the hub shares.
///
/// Lock order: `channels` before `pending`. Code that needs both takes
/// `channels` first (`hint`, `take_batch`, `Subscription::drop`); code
/// that holds `pending` never takes `channels` - so the two cannot
/// deadlock. Neither is held across an await.
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
    /// Where a fetch records the hints' lag (`hint_lag`).
    metrics: Arc<Metrics>,
}

/// One fetch's events for one recipient, in `seq` order, shared by all its
/// streams.
pub type Burst = Arc<[Arc<Event>]>;

struct Channel {
    /// The recipient's buffer of [`BUFFER`] bursts; each of its streams
    /// holds a receiver, so the receiver count is its stream count.
    sender: broadcast::Sender<Burst>,
    /// Everything up to here has been sent (or predates the first stream).
    fetched: i64,
}

#[derive(Default)]
struct Pending {
    /// Fetch for every recipient with a channel: set after the listener
    /// (re)connects, by the sweep, when a lapsed lease is held again, and
    /// by a `*` hint (see [`Hub::hint`]).
    everyone: bool,
    /// Recipients to fetch for in the next round: hinted at, subscribed
    /// (see `fetch_once`), or put back by an earlier round (beyond its
    /// [`BATCH`], with more to read, or after a failed fetch). One whose
    /// channel has gone since is skipped when the round is taken.
    recipients: HashSet<Arc<str>>,
    /// When the oldest hint still pending arrived: for the lag metric.
    since: Option<Instant>,
    /// Recipients whose rows could not be read: left out of every batch,
    /// and fetched alone when their pause is over.
    isolated: HashMap<Arc<str>, Retry>,
}

/// When to fetch an isolated recipient again, and how long it rested last.
struct Retry {
    at: Instant,
    pause: Duration,
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
    /// `None` only while the subscription is being dropped.
    receiver: Option<broadcast::Receiver<Burst>>,
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
        let Some(receiver) = self.receiver.as_mut() else {
            return Live::Closed;
        };
        match receiver.recv().await {
            Ok(burst) => Live::Events(burst),
            Err(broadcast::error::RecvError::Lagged(_)) => Live::Lagged,
            Err(broadcast::error::RecvError::Closed) => Live::Closed,
        }
    }
}

impl Drop for Subscription {
    /// Receivers are made under the channels' lock (in `subscribe`) and
    /// dropped under it, here, so the count read here is exact. Were the
    /// receiver dropped after the lock - as a field is, once `drop`
    /// returns - two streams of one recipient ending at once on two threads
    /// could both count two receivers, and neither would remove the
    /// channel: it would stay, with its hint lease renewed, for good.
    fn drop(&mut self) {
        let mut channels = lock(&self.hub.channels);
        drop(self.receiver.take());
        let last = channels
            .get(&self.recipient)
            .is_some_and(|channel| channel.sender.receiver_count() == 0);
        if last {
            channels.remove(&self.recipient);
            lock(&self.hub.pending).isolated.remove(&self.recipient);
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
    /// its streams opened without a lease (see [`super::lease`]), so rows
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
            receiver: Some(receiver),
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
    /// No trigger sends `*` (each append hints `["recipient"]`, invariant
    /// I7), but the protocol documents it as "look at every recipient", so
    /// an operator's or a writer's own `NOTIFY tidings, '*'` makes every
    /// open stream's recipient be compared with the table.
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

    /// The fetcher: runs until `shutdown`, turning pending hints into events
    /// (and retrying isolated recipients when their pause is over).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let retry = self.next_retry();
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = until(retry) => {}
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
    /// every hint that arrived while the one before ran. (Spacing queries
    /// at least 1 ms apart was tried: at 2,000 events/s, 0.24 instead of
    /// about 0.9 queries per event, for about 1.4 ms more in tidings'
    /// median after the commit; dropped at 325a563, 2026-11-22.) False
    /// once `shutdown` has come.
    async fn drain(&self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            let Some(batch) = self.take_batch() else {
                return true;
            };
            if !self.fetch_round(batch, shutdown).await {
                return false;
            }
        }
    }

    /// One batch fetched and sent. If the database refuses it because of
    /// rows it read, the batch is split in halves until the recipients
    /// whose rows fail stand alone: they are isolated, the others fetched.
    /// Any other failure puts the batch back for after a pause. False if
    /// `shutdown` came during the pause.
    async fn fetch_round(&self, batch: Batch, shutdown: &CancellationToken) -> bool {
        let mut parts = vec![batch.wanted];
        while let Some(mut part) = parts.pop() {
            let Err(error) = self.fetch(&part, batch.since).await else {
                continue;
            };
            if !is_about_rows(&error) {
                tracing::warn!(%error, "fetching events failed; retrying");
                self.requeue(part.into_iter().chain(parts.into_iter().flatten()));
                return self.pause(shutdown).await;
            }
            if part.len() == 1 {
                self.isolate(part.swap_remove(0).0, &error);
            } else {
                let right = part.split_off(part.len() / 2);
                parts.extend([right, part]);
            }
        }
        true
    }

    async fn pause(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Leaves `recipient` out of every batch, to be fetched alone after a
    /// pause that doubles with each failure.
    fn isolate(&self, recipient: Arc<str>, error: &sqlx::Error) {
        let mut pending = lock(&self.shared.pending);
        let retry = pending
            .isolated
            .entry(recipient.clone())
            .and_modify(|retry| retry.pause = (retry.pause * 2).min(MAX_ISOLATED_PAUSE))
            .or_insert(Retry {
                at: Instant::now(),
                pause: PAUSE,
            });
        retry.at = Instant::now() + retry.pause;
        tracing::error!(%recipient, %error, retry_in = ?retry.pause,
            "this recipient's events cannot be read; fetching everyone else's without it");
    }

    /// When the next isolated recipient is due, if any is isolated.
    fn next_retry(&self) -> Option<Instant> {
        let pending = lock(&self.shared.pending);
        pending.isolated.values().map(|retry| retry.at).min()
    }

    /// An isolated recipient whose pause is over, alone; or else up to
    /// [`BATCH`] pending recipients that still have streams and are not
    /// isolated, each with the seq to fetch after.
    fn take_batch(&self) -> Option<Batch> {
        let channels = lock(&self.shared.channels);
        let mut pending = lock(&self.shared.pending);
        // A fetch that failed as the last stream ended isolates a recipient
        // with no channel, never to be fetched: forget it.
        pending
            .isolated
            .retain(|name, _| channels.contains_key(name));
        if let Some(retry) = due_retry(&channels, &pending) {
            return Some(retry);
        }
        let since = pending.since.take();
        let wanted: Vec<Arc<str>> = if mem::take(&mut pending.everyone) {
            pending.recipients.clear();
            channels.keys().cloned().collect()
        } else {
            pending.recipients.drain().collect()
        };
        let mut batch: Vec<(Arc<str>, i64)> = wanted
            .into_iter()
            .filter(|name| !pending.isolated.contains_key(name))
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

    fn requeue(&self, batch: impl Iterator<Item = (Arc<str>, i64)>) {
        lock(&self.shared.pending)
            .recipients
            .extend(batch.map(|(name, _)| name));
    }

    /// One fetch round's query and what follows it: the batch's events
    /// read in one query, sent ([`Hub::deliver`]), then the pending state
    /// brought up to date ([`Hub::note_fetched`]). The hint's lag is
    /// observed before the sends, so that whoever sees an event also sees
    /// it counted.
    async fn fetch(
        &self,
        batch: &[(Arc<str>, i64)],
        since: Option<Instant>,
    ) -> Result<(), sqlx::Error> {
        let names: Vec<String> = batch.iter().map(|(name, _)| name.to_string()).collect();
        let after: Vec<i64> = batch.iter().map(|(_, fetched)| *fetched).collect();
        let rows = events::after(&self.shared.pool, &names, &after, FETCH_LIMIT).await?;
        if let Some(since) = since {
            self.shared
                .metrics
                .hint_lag
                .observe(since.elapsed().as_secs_f64());
        }
        let more = self.deliver(batch, rows);
        self.note_fetched(batch, more);
        Ok(())
    }

    /// Sends each recipient's new events once into its channel, to be
    /// shared by all its streams, and returns the recipients of `batch`
    /// that may have more to read.
    fn deliver(&self, batch: &[(Arc<str>, i64)], rows: Vec<(String, Arc<Event>)>) -> Vec<Arc<str>> {
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
        batch
            .iter()
            .filter(|(name, after)| {
                channels
                    .get(name)
                    .is_some_and(|c| c.fetched >= after + FETCH_LIMIT)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// After a fetch that succeeded: an isolated recipient in `batch` is
    /// isolated no more, and those with `more` to read are pending again.
    fn note_fetched(&self, batch: &[(Arc<str>, i64)], more: Vec<Arc<str>>) {
        let mut pending = lock(&self.shared.pending);
        if !pending.isolated.is_empty() {
            for (name, _) in batch {
                if pending.isolated.remove(name).is_some() {
                    tracing::info!(recipient = %name, "this recipient's events can be read again");
                }
            }
        }
        pending.recipients.extend(more);
    }
}

/// The first isolated recipient whose pause is over and that still has a
/// channel, as a batch of its own.
fn due_retry(channels: &HashMap<Arc<str>, Channel>, pending: &Pending) -> Option<Batch> {
    let now = Instant::now();
    let (name, channel) = pending
        .isolated
        .iter()
        .filter(|(_, retry)| retry.at <= now)
        .find_map(|(name, _)| channels.get_key_value(name))?;
    Some(Batch {
        wanted: vec![(name.clone(), channel.fetched)],
        since: None,
    })
}

/// Waits until `at`, or forever without one: no timer is set on the
/// fetcher's every round while no recipient is isolated.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether a failed fetch may be the fault of rows it read - bad data (22),
/// a limit (54), an I/O error reading a page (58), corruption (XX), an
/// error raised by a function (P0), or a value tidings cannot decode - so
/// that fetching fewer recipients can get around it. Anything else (the
/// connection, resources, permissions, the schema) fails for every batch
/// alike, and splitting would only multiply the queries.
fn is_about_rows(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)
    ) || crate::db::sqlstate_in(error, &["22", "54", "58", "XX", "P0"]).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    /// A stress test, not a proof: the race it looks for (see `Subscription`'s
    /// `drop`) spans a few instructions. Before the fix it found a leaked
    /// channel within 20,000 rounds in two runs of three.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_streams_of_a_recipient_ending_at_once_leave_no_channel() -> anyhow::Result<()> {
        // Never connects: these subscriptions fetch nothing.
        let pool = PgPoolOptions::new().connect_lazy("postgres://nobody@localhost/nothing")?;
        let hub = Hub::new(pool, Arc::new(Metrics::new()));
        for round in 0..20_000 {
            let (first, second) = (hub.subscribe("alice", 0), hub.subscribe("alice", 0));
            let start = Arc::new(std::sync::Barrier::new(2));
            let other = std::thread::spawn({
                let start = start.clone();
                move || {
                    start.wait();
                    drop(first);
                }
            });
            start.wait();
            drop(second);
            other
                .join()
                .map_err(|_| anyhow::anyhow!("the other thread panicked"))?;

            assert!(
                hub.recipients().is_empty(),
                "a channel leaked in round {round}"
            );
        }
        Ok(())
    }
}
