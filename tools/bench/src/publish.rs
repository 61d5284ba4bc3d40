//! The writers: M rows at R per second with plain SQL INSERTs, as an app
//! would send them, from W connections. Each payload carries its send time
//! (`{"t": epoch micros}`), taken just before the INSERT goes out.
//!
//! Row k goes to recipient k mod K and is due at k / R seconds: an open-loop
//! schedule, so a slow database shows as latency (and a lower achieved
//! rate), not as a quietly lighter load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;

use crate::fleet::epoch_micros;
use crate::scenarios::baseline::{BARE_NOTIFY, PLAIN};
use crate::waits;

/// Where the rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `tidings.notifications`, as an app writes it: the triggers give the seq.
    Tidings,
    /// The baseline table with only a bare `pg_notify` trigger; the writer
    /// gives the seq (the row's number in the plan, unique).
    BareNotify,
    /// The baseline table without triggers (no NOTIFY); seq as above.
    Plain,
}

impl Target {
    /// The target's name in metric names.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tidings => "tidings",
            Self::BareNotify => "bare_notify",
            Self::Plain => "plain",
        }
    }

    fn insert(self) -> String {
        match self {
            Self::Tidings => "INSERT INTO tidings.notifications (recipient, kind, payload) \
                 VALUES ($1, 'bench', jsonb_build_object('t', $2::int8)) RETURNING seq"
                .to_owned(),
            Self::BareNotify => Self::insert_with_seq(BARE_NOTIFY),
            Self::Plain => Self::insert_with_seq(PLAIN),
        }
    }

    /// Into a baseline table, which has no trigger to number the row.
    fn insert_with_seq(table: &str) -> String {
        format!(
            "INSERT INTO {table} (recipient, kind, payload, seq) \
             VALUES ($1, 'bench', jsonb_build_object('t', $2::int8), $3) RETURNING seq"
        )
    }
}

pub struct Plan {
    pub target: Target,
    pub rows: u64,
    /// Rows per second over all writers; 0 = as fast as they go.
    pub rate: f64,
    pub writers: usize,
    pub recipients: Arc<Vec<String>>,
}

#[derive(Debug, Default)]
pub struct Published {
    pub committed: u64,
    pub failed: u64,
    /// Committed rows per recipient index.
    pub per_recipient: Vec<u64>,
    pub elapsed: Duration,
    pub first_error: Option<String>,
    /// Round trip of each committed INSERT (send to commit acknowledged),
    /// in microseconds: the database's share of the delivery latency.
    pub commit_us: Vec<u32>,
    /// Each committed row, to be matched with its receipts.
    pub acks: Vec<Ack>,
    /// How late each row went out against its schedule, in microseconds
    /// (with a rate). Latency counts from the actual send, so a writer
    /// held up by its previous INSERT would hide that wait from it
    /// (coordinated omission); this shows whether any was hidden.
    pub send_late_us: Vec<u32>,
}

/// One committed row: its (recipient index, seq) and two instants in epoch
/// micros to measure its receipt from.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub recipient: usize,
    pub seq: i64,
    /// When it was due (its send time without a rate): latency from the
    /// schedule counts from here.
    pub due_us: i64,
    /// When its commit was acknowledged: to tell the database's share of
    /// latency from tidings'.
    pub acked_us: i64,
}

impl Published {
    pub fn rate(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn publish(connect: &PgConnectOptions, plan: &Plan) -> Result<Published> {
    let writers = plan.writers.max(1);
    // Connect every writer before the clock starts.
    let connect = waits::writer(connect);
    let mut connections = Vec::with_capacity(writers);
    for _ in 0..writers {
        connections.push(PgConnection::connect_with(&connect).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = JoinSet::new();
    for (w, conn) in connections.into_iter().enumerate() {
        let writer = Writer {
            target: plan.target,
            first: w as u64,
            step: writers as u64,
            rows: plan.rows,
            rate: plan.rate,
            recipients: plan.recipients.clone(),
        };
        tasks.spawn(writer.run(conn, start));
    }
    let mut total = Published {
        per_recipient: vec![0; plan.recipients.len()],
        ..Published::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let part = joined?;
        total.committed += part.committed;
        total.failed += part.failed;
        for (sum, n) in total.per_recipient.iter_mut().zip(&part.per_recipient) {
            *sum += n;
        }
        total.first_error = total.first_error.or(part.first_error);
        total.commit_us.extend_from_slice(&part.commit_us);
        total.acks.extend_from_slice(&part.acks);
        total.send_late_us.extend_from_slice(&part.send_late_us);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// One writer connection: rows first, first + step, first + 2 step, ...
struct Writer {
    target: Target,
    first: u64,
    step: u64,
    rows: u64,
    rate: f64,
    recipients: Arc<Vec<String>>,
}

impl Writer {
    async fn run(self, mut conn: PgConnection, start: Instant) -> Published {
        let mut done = Published {
            per_recipient: vec![0; self.recipients.len()],
            ..Published::default()
        };
        let statement = self.target.insert();
        let mut k = self.first;
        while k < self.rows {
            let due =
                (self.rate > 0.0).then(|| start + Duration::from_secs_f64(k as f64 / self.rate));
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            let recipient = (k % self.recipients.len() as u64) as usize;
            let (sent, sent_epoch) = (Instant::now(), epoch_micros());
            let late = due.map(|due| micros(sent.saturating_duration_since(due)));
            done.send_late_us.extend(late);
            let mut insert = sqlx::query_scalar(&statement)
                .bind(&self.recipients[recipient])
                .bind(sent_epoch);
            if self.target != Target::Tidings {
                insert = insert.bind(k as i64 + 1);
            }
            let inserted: Result<i64, _> = insert.fetch_one(&mut conn).await;
            match inserted {
                Ok(seq) => {
                    done.acks.push(Ack {
                        recipient,
                        seq,
                        due_us: sent_epoch - i64::from(late.unwrap_or(0)),
                        acked_us: epoch_micros(),
                    });
                    done.commit_us.push(micros(sent.elapsed()));
                    done.committed += 1;
                    done.per_recipient[recipient] += 1;
                }
                Err(error) => {
                    done.failed += 1;
                    done.first_error.get_or_insert_with(|| error.to_string());
                }
            }
            k += self.step;
        }
        let _ = conn.close().await;
        done
    }
}

/// A duration in whole microseconds, capped to fit.
fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}
