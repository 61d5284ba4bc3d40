//! Where the writers' statements spend their time, sampled from
//! `pg_stat_activity`: waiting for the NOTIFY lock, for the WAL flush, for
//! something else, or running. This is what limits a notifying commit: every
//! transaction that sends a NOTIFY takes one cluster-wide lock before its
//! commit record and holds it until after the flush, so such commits queue
//! behind each other one flush at a time.
//!
//! Sampling, not tracing: a query every [`EVERY`] costs PostgreSQL well
//! under 1 % of a core, and the shares are of every writer observed in a
//! statement at those instants.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::sync::oneshot;

/// The `application_name` the writers connect with, so they can be told
/// from tidings' own connections and from this sampler.
pub const WRITER: &str = "tidings-bench-writer";
/// How often `pg_stat_activity` is read.
const EVERY: Duration = Duration::from_millis(20);

/// A writer in a statement, as PostgreSQL reports it, by what it waits for.
/// `object` locks are the NOTIFY lock: `LockSharedObject` on database 0 is
/// the only object lock a writer's INSERT and COMMIT take.
const STATES: &str = "
SELECT CASE
         WHEN wait_event_type = 'Lock' AND wait_event = 'object' THEN 'notify_lock'
         WHEN wait_event IN ('WALSync', 'WALWrite', 'WALInsert') THEN 'wal'
         WHEN wait_event_type = 'Lock' THEN 'row_lock'
         WHEN wait_event_type IS NULL THEN 'running'
         ELSE 'other'
       END
  FROM pg_stat_activity
 WHERE application_name = $1 AND state = 'active'";

/// The kinds, in the order they are reported, with their names there.
const KINDS: [(&str, &str); 5] = [
    ("notify_lock", "NOTIFY lock"),
    ("wal", "WAL"),
    ("row_lock", "row lock"),
    ("running", "running"),
    ("other", "other"),
];

/// The writers' connection options: `connect`, named [`WRITER`].
pub fn writer(connect: &PgConnectOptions) -> PgConnectOptions {
    connect.clone().application_name(WRITER)
}

/// Runs `work` (writers writing) while sampling what the writers wait for.
pub async fn during<T>(db: &PgPool, work: impl Future<Output = Result<T>>) -> Result<(T, Tally)> {
    let (stop, stopped) = oneshot::channel();
    let sampling = tokio::spawn(sample(db.clone(), stopped));
    let done = work.await;
    let _ = stop.send(());
    let tally = sampling.await?;
    Ok((done?, tally))
}

async fn sample(db: PgPool, mut stopped: oneshot::Receiver<()>) -> Tally {
    let mut tally = Tally::default();
    while stopped.try_recv().is_err() {
        let states = sqlx::query_scalar::<_, String>(STATES)
            .bind(WRITER)
            .fetch_all(&db)
            .await;
        tally.queries += 1;
        match states {
            Ok(states) => {
                for state in states {
                    *tally.seen.entry(state).or_insert(0) += 1;
                }
            }
            // A lost sample must not cost the measurement it explains;
            // the summary says how many were lost.
            Err(_) => tally.failed += 1,
        }
        tokio::time::sleep(EVERY).await;
    }
    tally
}

/// What the samples saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Writers observed in a statement, by kind of wait.
    seen: BTreeMap<String, u64>,
    /// Queries the sampling ran: transactions that were not tidings'.
    pub queries: u64,
    /// Of those, how many failed (their instants are missing).
    failed: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        for (kind, n) in other.seen {
            *self.seen.entry(kind).or_insert(0) += n;
        }
        self.queries += other.queries;
        self.failed += other.failed;
    }

    /// One line: each kind's share of the writers' in-statement time.
    pub fn summary(&self) -> String {
        let total: u64 = self.seen.values().sum();
        let shares: Vec<String> = KINDS
            .iter()
            .map(|(kind, name)| {
                let seen = self.seen.get(*kind).copied().unwrap_or(0);
                format!("{name} {:.1} %", 100.0 * seen as f64 / total.max(1) as f64)
            })
            .collect();
        let lost = match self.failed {
            0 => String::new(),
            n => format!("; {n} samples failed"),
        };
        format!("{} (of {total} observations{lost})", shares.join(", "))
    }
}
