//! Hint leases: the database's record of which recipients some tidings
//! instance streams, so that appends for everyone else commit without a
//! NOTIFY (invariant I7). A notifying commit queues for PostgreSQL's
//! one notify lock across its WAL flush; a commit without one can share a
//! flush with others. Most notifications go to people with no stream open.
//!
//! A lease is the counter row's `hints_until`: appends to the recipient
//! hint while it lies ahead of their transaction's `now()`. A stream gets
//! its recipient's lease before it reads its position ([`Leases::position`]
//! does both in one statement), and the renewal task ([`Leases::run`])
//! keeps it ahead while the hub has a channel for the recipient.
//!
//! This module must never let a stream read its position before the lease
//! has committed, unless it has waited [`LOCK_WAIT`] for it: every append
//! locks the counter row, so an append either committed before the lease
//! (and the position covers it) or reads the lease and hints. A stream
//! without a lease (the wait ran out, the database restarted, a renewal
//! failed) costs latency, never an event: the sweep still compares every
//! open stream with the table, and once the renewal task holds a lapsed
//! lease again it has the hub fetch for everyone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::events;
use super::hub::Hub;

/// Most recipients renewed per statement, to keep each one short.
const BATCH: usize = 1000;
/// Longest a lease waits for an append holding its counter row (the
/// `lock_timeout` in [`Leases::take`]).
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// How often the renewal task looks for leases due or missing.
const RETRY: Duration = Duration::from_secs(2);

/// Cheap to clone: every clone shares the same leases.
#[derive(Clone)]
pub struct Leases {
    shared: Arc<Shared>,
}

struct Shared {
    /// The request pool: a stream's lease is taken on its way in.
    pool: PgPool,
    /// How long a lease lasts; each is renewed after a third of it.
    length: Duration,
    /// Until when each lease taken here holds, by this process's clock,
    /// counted from before the statement that took it was sent (the
    /// database's `now()` is later, so its lease lasts at least as long).
    held: Mutex<HashMap<Arc<str>, Instant>>,
    /// Wakes the renewal task at once: the listener reconnected, so the
    /// database may have restarted and lost leases.
    renew_now: Notify,
}

impl Leases {
    /// `length` is at least a second: renewing more often than every third
    /// of one would be busy work (and a zero interval cannot tick).
    pub fn new(pool: PgPool, length: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                length: length.max(Duration::from_secs(1)),
                held: Mutex::new(HashMap::new()),
                renew_now: Notify::new(),
            }),
        }
    }

    /// `recipient`'s position, read once appends to it hint this instance:
    /// where a new stream of it starts following the hub.
    ///
    /// An append holding the counter row past [`LOCK_WAIT`] (a long app
    /// transaction) must not hold up the stream: it opens on the plain
    /// position, unleased, and the renewal task keeps trying for the lease
    /// every [`RETRY`]. Whoever takes it then - the renewal task, or
    /// another stream's open - makes the hub fetch, which catches whatever
    /// was appended unhinted meanwhile.
    pub async fn position(&self, recipient: &str) -> Result<i64, sqlx::Error> {
        if self.holds(recipient) {
            return events::position(&self.shared.pool, recipient).await;
        }
        match self.lease(recipient.into()).await {
            Ok((position, _)) => Ok(position),
            Err(error) if is_lock_timeout(&error) => {
                tracing::debug!(%recipient, "counter row busy; streaming before the lease");
                events::position(&self.shared.pool, recipient).await
            }
            Err(error) => Err(error),
        }
    }

    /// Forgets every lease: after the LISTEN session reconnects, the
    /// database may be a restarted (or restored) one. The renewal task
    /// takes them all again at once, then has the hub fetch for everyone.
    pub fn forget_all(&self) {
        lock(&self.shared.held).clear();
        self.shared.renew_now.notify_one();
    }

    /// Renews the lease of every recipient the hub has a channel for when
    /// a third of it has passed, and takes missing ones, until `shutdown`.
    pub async fn run(self, hub: Hub, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval((self.shared.length / 3).min(RETRY));
        // A pass slowed by busy rows must not be followed by a burst of them.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.shared.renew_now.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.renew(hub.recipients()).await {
                hub.hint_everyone();
            }
        }
    }

    /// Renews those of `recipients`' leases that are due, takes missing
    /// ones, and forgets the leases of everyone else. True if one of them
    /// had lapsed here and is now held again: appends may have gone
    /// unhinted meanwhile, and from now on would be hinted.
    async fn renew(&self, recipients: Vec<Arc<str>>) -> bool {
        let asked = Instant::now();
        let (mut relapsed, mut skipped) = (false, Vec::new());
        for batch in self.due(&recipients, asked).chunks(BATCH) {
            let renewed = self.renew_batch(batch).await;
            for recipient in batch {
                if renewed.contains(recipient) {
                    relapsed |= self.note(recipient.clone(), asked);
                } else if !self.holds(recipient) {
                    skipped.push(recipient.clone());
                }
            }
        }
        self.retake(skipped, asked + RETRY).await || relapsed
    }

    /// Which of `recipients` need their lease renewed or taken: a third of
    /// it gone, or none here. Forgets the leases of recipients no longer
    /// streamed here.
    fn due(&self, recipients: &[Arc<str>], now: Instant) -> Vec<Arc<str>> {
        let mut held = lock(&self.shared.held);
        let wanted: HashSet<&Arc<str>> = recipients.iter().collect();
        held.retain(|recipient, _| wanted.contains(recipient));
        let renew_before = now + self.shared.length * 2 / 3;
        recipients
            .iter()
            .filter(|r| held.get(*r).is_none_or(|until| *until < renew_before))
            .cloned()
            .collect()
    }

    /// The recipients of `batch` whose lease the database extended. Rows an
    /// append has locked are skipped (and retaken one by one, each waiting
    /// at most [`LOCK_WAIT`], if their lease runs low or is missing): a
    /// statement that waited on many rows could deadlock with a transaction
    /// appending to several recipients.
    async fn renew_batch(&self, batch: &[Arc<str>]) -> Vec<Arc<str>> {
        let names: Vec<String> = batch.iter().map(|name| name.to_string()).collect();
        let renewed = sqlx::query_scalar!(
            r#"SELECT tidings.renew_leases($1, $2) AS "recipient!"
                 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS soft_commit"#,
            &names,
            self.shared.length.as_secs_f64(),
        )
        .fetch_all(&self.shared.pool)
        .await;
        match renewed {
            Ok(renewed) => {
                let renewed: HashSet<String> = renewed.into_iter().collect();
                batch
                    .iter()
                    .filter(|name| renewed.contains(&***name))
                    .cloned()
                    .collect()
            }
            Err(error) => {
                tracing::warn!(%error, "renewing hint leases failed; retrying one by one");
                Vec::new()
            }
        }
    }

    /// Takes the leases the batches skipped, one by one, until `deadline`:
    /// rows held by long transactions must not keep the next pass, and the
    /// other leases' renewals, waiting. True if one it took had lapsed.
    async fn retake(&self, recipients: Vec<Arc<str>>, deadline: Instant) -> bool {
        let mut relapsed = false;
        for recipient in recipients {
            if Instant::now() >= deadline {
                break;
            }
            match self.lease(recipient.clone()).await {
                Ok((_, lapsed)) => relapsed |= lapsed,
                Err(error) if is_lock_timeout(&error) => {
                    tracing::debug!(%recipient, "counter row busy; lease retried later");
                }
                Err(error) => tracing::warn!(%error, %recipient, "renewing a hint lease failed"),
            }
        }
        relapsed
    }

    /// Takes or extends `recipient`'s lease and records it here: its
    /// position, and whether the lease it replaces had lapsed.
    async fn lease(&self, recipient: Arc<str>) -> Result<(i64, bool), sqlx::Error> {
        let asked = Instant::now();
        let position = self.take(&recipient).await?;
        Ok((position, self.note(recipient, asked)))
    }

    /// Takes or extends one recipient's lease, and reads its position under
    /// the same row lock, waiting for it at most [`LOCK_WAIT`].
    /// `synchronous_commit` off for this transaction only: the lease is
    /// visible once committed, which is all the order above needs, and a
    /// crash that loses it is a reconnect, after which every lease is taken
    /// again. `tidings.take_lease` writes the row with the schema owner's
    /// rights: the service's role may not update counter rows itself.
    async fn take(&self, recipient: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT tidings.take_lease($1, $2) AS "position!"
                 FROM (SELECT set_config('synchronous_commit', 'off', true),
                              set_config('lock_timeout', $3, true)) AS settings"#,
            recipient,
            self.shared.length.as_secs_f64(),
            format!("{}ms", LOCK_WAIT.as_millis()),
        )
        .fetch_one(&self.shared.pool)
        .await
    }

    /// Whether a lease taken here holds for at least another third of its
    /// length, so the renewal task will extend it before it lapses.
    fn holds(&self, recipient: &str) -> bool {
        let margin = Instant::now() + self.shared.length / 3;
        lock(&self.shared.held)
            .get(recipient)
            .is_some_and(|until| *until > margin)
    }

    /// Records a lease taken or extended by a statement sent at `asked`.
    /// True if the one it replaces had lapsed by now (or there was none):
    /// appends may have gone unhinted until this one.
    fn note(&self, recipient: Arc<str>, asked: Instant) -> bool {
        let until = asked + self.shared.length;
        let before = lock(&self.shared.held).insert(recipient, until);
        before.is_none_or(|until| until <= Instant::now())
    }
}

/// PostgreSQL's `lock_not_available`: the lock timeout expired.
fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03"))
}

/// The map has no invariant a panic could break half-way.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
