//! Writers that interleave badly: crossing lock orders, REPEATABLE READ,
//! and long transactions. The rules (insert in recipient order, or retry
//! on 40P01/40001) are in the schema's header and the README; these tests
//! hold the database to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::app::{spawn_app, spawn_app_with};
use crate::helpers::sse::seqs;

/// Runs `transaction` until it commits, retrying what the README tells
/// writers at `isolation` to retry: deadlocks (40P01) from their own
/// crossing lock orders and, above READ COMMITTED, serialization failures
/// (40001). READ COMMITTED writers "never see an error caused by tidings",
/// so a 40001 there fails the test.
async fn until_committed(db: &PgPool, isolation: &str, recipients: &[&str], retries: &AtomicU64) {
    let retryable: &[&str] = match isolation {
        "READ COMMITTED" => &["40P01"],
        _ => &["40P01", "40001"],
    };
    loop {
        match insert_once(db, isolation, recipients).await {
            Ok(()) => return,
            Err(sqlx::Error::Database(e))
                if e.code().is_some_and(|code| retryable.contains(&&*code)) =>
            {
                retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(other) => panic!("unexpected error at {isolation}: {other}"),
        }
    }
}

/// One transaction at `isolation` inserting a row for each of `recipients`,
/// in that order.
async fn insert_once(db: &PgPool, isolation: &str, recipients: &[&str]) -> sqlx::Result<()> {
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

#[tokio::test]
async fn read_committed_writers_never_fail_while_streams_churn_and_leases_renew() {
    // Arrange: one-second leases, so renewals run about every third of a
    // second, and streams of the written recipients opening and closing.
    let app = spawn_app_with(|s| s.hint_lease = Duration::from_secs(1)).await;
    let recipients = ["a", "b", "c"];
    let done = tokio_util::sync::CancellationToken::new();
    let churn = tokio::spawn({
        let (address, tokens, done) = (
            app.address.clone(),
            recipients.map(|r| app.token(r)),
            done.clone(),
        );
        async move { churn_streams(&address, &tokens, &done).await }
    });

    // Act: 8 READ COMMITTED writers, each transaction inserting for all
    // three recipients in recipient order, for about 3 s, never retrying.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let db = app.db.clone();
            tokio::spawn(async move {
                let mut committed = 0_i64;
                while tokio::time::Instant::now() < until {
                    if let Err(error) = insert_once(&db, "READ COMMITTED", &recipients).await {
                        panic!("a READ COMMITTED writer saw an error: {error}");
                    }
                    committed += 1;
                }
                committed
            })
        })
        .collect();
    let mut n = 0;
    for writer in writers {
        n += writer.await.expect("every insert succeeded");
    }
    done.cancel();
    let opened = churn.await.expect("churn");

    // Assert: every row is there, densely numbered, and delivered in order.
    assert!(
        opened > 0 && n > 0,
        "streams opened: {opened}, transactions: {n}"
    );
    for recipient in recipients {
        assert_eq!(
            all_seqs(&app.db, recipient).await,
            (1..=n).collect::<Vec<_>>()
        );
    }
    let mut stream = app.stream("a", Some(0)).await;
    assert_eq!(
        seqs(&stream.take(n as usize).await),
        (1..=n).collect::<Vec<_>>()
    );
}

/// Opens a stream for each of the recipients `tokens` belong to, holds them
/// briefly and closes them, over and over until `done`; how many it opened.
async fn churn_streams(
    address: &str,
    tokens: &[String],
    done: &tokio_util::sync::CancellationToken,
) -> usize {
    let client = reqwest::Client::new();
    let mut opened = 0;
    while !done.is_cancelled() {
        let mut open = Vec::new();
        for token in tokens {
            let response = client
                .get(format!("{address}/v1/stream"))
                .bearer_auth(token)
                .send()
                .await
                .expect("stream request");
            assert_eq!(response.status(), 200, "stream status");
            open.push(response);
            opened += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(open);
    }
    opened
}
