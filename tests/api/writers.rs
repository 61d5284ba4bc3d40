//! Writers that interleave badly: crossing lock orders, REPEATABLE READ,
//! and long transactions. The rules (insert in recipient order, or retry
//! on 40P01/40001) are in the migration and the README; these tests hold
//! the database to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{seqs, spawn_app};

/// Runs `transaction` until it commits, retrying deadlocks (40P01) and
/// serialization failures (40001) as the README tells writers to.
async fn until_committed(db: &PgPool, isolation: &str, recipients: &[&str], retries: &AtomicU64) {
    loop {
        let attempt = async {
            let mut tx = db.begin().await?;
            sqlx::query(&format!("SET TRANSACTION ISOLATION LEVEL {isolation}"))
                .execute(&mut *tx)
                .await?;
            // Detect deadlocks in 20 ms instead of the default second.
            sqlx::query("SET LOCAL deadlock_timeout = '20ms'")
                .execute(&mut *tx)
                .await?;
            for recipient in recipients {
                sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ($1, 'k')")
                    .bind(recipient)
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx.commit().await
        };
        match attempt.await {
            Ok(()) => return,
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}

async fn all_seqs(db: &PgPool, recipient: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM tidings.notifications WHERE recipient = $1 ORDER BY seq")
        .bind(recipient)
        .fetch_all(db)
        .await
        .expect("seqs")
}

#[tokio::test]
async fn writers_locking_recipients_in_crossing_orders_all_land_when_they_retry_deadlocks() {
    let app = spawn_app().await;
    let mut a_stream = app.stream("a", Some(0)).await;
    let retries = Arc::new(AtomicU64::new(0));
    let orders: [&[&str]; 2] = [&["a", "b"], &["b", "a"]];
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (db, retries) = (app.db.clone(), retries.clone());
            let order = orders[w % 2];
            tokio::spawn(async move {
                for _ in 0..25 {
                    until_committed(&db, "READ COMMITTED", order, &retries).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }

    assert_eq!(all_seqs(&app.db, "a").await, (1..=100).collect::<Vec<_>>());
    assert_eq!(all_seqs(&app.db, "b").await, (1..=100).collect::<Vec<_>>());
    assert_eq!(
        seqs(&a_stream.take(100).await),
        (1..=100).collect::<Vec<_>>()
    );
    println!("deadlocks retried: {}", retries.load(Ordering::Relaxed));
}

#[tokio::test]
async fn writers_that_lock_recipients_in_sorted_order_never_deadlock() {
    let app = spawn_app().await;
    let retries = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (db, retries) = (app.db.clone(), retries.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    until_committed(&db, "READ COMMITTED", &["a", "b", "c"], &retries).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }

    assert_eq!(retries.load(Ordering::Relaxed), 0, "no deadlock, no retry");
    assert_eq!(all_seqs(&app.db, "c").await, (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn repeatable_read_writers_that_retry_serialization_failures_all_land_densely() {
    let app = spawn_app().await;
    let mut stream = app.stream("rr", Some(0)).await;
    let retries = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (db, retries) = (app.db.clone(), retries.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    until_committed(&db, "REPEATABLE READ", &["rr"], &retries).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }

    assert_eq!(all_seqs(&app.db, "rr").await, (1..=120).collect::<Vec<_>>());
    assert_eq!(seqs(&stream.take(120).await), (1..=120).collect::<Vec<_>>());
    println!(
        "serialization failures retried: {}",
        retries.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_long_open_transaction_for_one_recipient_does_not_hold_back_another() {
    let app = spawn_app().await;
    let mut slow = app.stream("slow", None).await;
    let mut fast = app.stream("fast", None).await;
    let mut held = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('slow', 'held')")
        .execute(&mut *held)
        .await
        .expect("insert");

    app.insert("fast", "quick", json!({})).await;
    let quick = fast
        .next_within(Duration::from_secs(5))
        .await
        .expect("delivered while the other transaction is open");
    held.commit().await.expect("commit");
    let late = slow.next().await;

    assert_eq!(quick.json()["kind"], "quick");
    assert_eq!(late.json()["kind"], "held");
}
