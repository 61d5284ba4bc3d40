//! Writers that behave like real apps, including the awkward ones: each
//! transaction inserts for one to three recipients (in recipient order, the
//! documented rule that keeps writers from deadlocking), some stay open a
//! while, one in eight rolls back, and now and then one marks rows read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::client::Rng;

#[derive(Default)]
pub struct WriterStats {
    pub committed: AtomicU64,
    pub rolled_back: AtomicU64,
    /// Transactions that failed (database restarting, ...): their outcome
    /// may be unknown, which is fine - the table is the judge.
    pub failed: AtomicU64,
}

pub async fn run(
    writer: usize,
    pool: PgPool,
    recipients: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
    pause: Duration,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (writer as u64 + 1));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let outcome = transaction(writer, n, &pool, &recipients, &mut rng).await;
        let counter = match outcome {
            Ok(true) => &stats.committed,
            Ok(false) => &stats.rolled_back,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                &stats.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
}

/// One transaction; `Ok(true)` if it committed, `Ok(false)` if it rolled back.
async fn transaction(
    writer: usize,
    n: u64,
    pool: &PgPool,
    recipients: &[String],
    rng: &mut Rng,
) -> Result<bool, sqlx::Error> {
    let mut chosen: Vec<&String> = (0..rng.between(1, 4))
        .map(|_| &recipients[rng.between(0, recipients.len() as u64) as usize])
        .collect();
    chosen.sort();
    chosen.dedup();
    let roll_back = rng.between(0, 8) == 0;
    let mut tx = pool.begin().await?;
    for (i, recipient) in chosen.iter().enumerate() {
        let tag = format!("w{writer}-t{n}-{i}");
        let kind = if roll_back { "rolled-back" } else { "soak" };
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, $2, $3)",
        )
        .bind(recipient)
        .bind(kind)
        .bind(json!({"tag": tag}))
        .execute(&mut *tx)
        .await?;
    }
    if rng.between(0, 10) == 0 {
        // Hold the recipients' locks a while: others queue behind us.
        tokio::time::sleep(Duration::from_millis(rng.between(5, 50))).await;
    }
    if rng.between(0, 6) == 0 {
        mark_some_read(chosen[0], &mut tx).await?;
    }
    if roll_back {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

async fn mark_some_read(recipient: &str, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tidings.reads (recipient, notification_ids)
         SELECT $1, array_agg(id) FROM (
             SELECT id FROM tidings.notifications WHERE recipient = $1 ORDER BY seq DESC LIMIT 3) latest
         HAVING count(*) > 0",
    )
    .bind(recipient)
    .execute(tx)
    .await?;
    Ok(())
}
