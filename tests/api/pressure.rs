//! Pressure: a reconnect storm must queue for the database rather than
//! exhaust it, and a 100,000-event burst at a client that has stopped
//! reading must cost bounded memory and nobody else's latency.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sqlx::PgPool;

use crate::helpers::{fresh_database, seqs, spawn_app_with, url_of, Binary, SseClient, SECRET};

#[tokio::test]
async fn a_reconnect_storm_of_2000_streams_all_catch_up_without_exceeding_the_pool() {
    let app = spawn_app_with(|s| {
        s.pool_size = 8;
        s.catch_up_concurrency = 4;
    })
    .await;
    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT 'r' || (i % 200), 'missed' FROM generate_series(1, 10000) AS i ORDER BY 1",
    )
    .execute(&app.db)
    .await
    .expect("missed rows");
    let peak = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_connections(
        app.db.clone(),
        peak.clone(),
        sampling.clone(),
    ));

    // 2000 streams, 10 per recipient, all resuming from 0 at once.
    let opened =
        join_all((0..2000).map(|i| app.stream_owned(format!("r{}", i % 200), Some(0)))).await;
    let caught_up = join_all(opened.into_iter().map(|mut stream| async move {
        seqs(&stream.take_within(50, Duration::from_secs(120)).await)
    }))
    .await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");

    assert!(caught_up
        .iter()
        .all(|got| *got == (1..=50).collect::<Vec<_>>()));
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= 8 + 1,
        "tidings used {peak} connections; pool is 8 (requests and hub), plus the listener"
    );
    println!("peak tidings connections during the storm: {peak}");
}

async fn sample_connections(db: PgPool, peak: Arc<AtomicI64>, sampling: Arc<AtomicBool>) {
    while sampling.load(Ordering::Relaxed) {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name IN ('tidings', 'tidings-hub', 'tidings-listener')",
        )
        .fetch_one(&db)
        .await
        .unwrap_or(0);
        peak.fetch_max(count, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stalled_client_in_a_100000_event_burst_costs_bounded_memory_and_no_one_elses_latency() {
    let database = fresh_database().await.expect("database");
    let db = PgPool::connect_with(database.clone()).await.expect("pool");
    let server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("tidings");
    server.wait_until_ready().await.expect("ready");
    let keys = tidings::auth::Keys::new(SECRET.as_bytes());
    let open = |recipient: &str, position: &str| {
        let token = keys
            .issue(recipient, &[], Duration::from_secs(3600))
            .expect("token");
        reqwest::Client::new()
            .get(format!("{}/v1/stream", server.address))
            .bearer_auth(token)
            .header("Last-Event-ID", position)
            .send()
    };
    let stalled = open("stalled", "0").await.expect("stalled stream");
    let mut bystander = SseClient::new(open("bystander", "0").await.expect("bystander stream"));
    let before = server.rss_kib();

    // The burst: 100,000 events of ~1 KiB in ten statements, while a
    // bystander's event is published in the middle of it.
    let mut queue_usage: f64 = 0.0;
    let mut bystander_latency = Duration::ZERO;
    for batch in 0..10i64 {
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind, payload)
             SELECT 'stalled', 'burst', jsonb_build_object('n', i, 'pad', repeat('x', 1000))
               FROM generate_series($1::int8, $1::int8 + 9999) AS i",
        )
        .bind(batch * 10_000 + 1)
        .execute(&db)
        .await
        .expect("burst");
        let usage: f64 = sqlx::query_scalar("SELECT pg_notification_queue_usage()")
            .fetch_one(&db)
            .await
            .expect("usage");
        queue_usage = queue_usage.max(usage);
        if batch == 5 {
            let sent = Instant::now();
            sqlx::query(
                "INSERT INTO tidings.notifications (recipient, kind) VALUES ('bystander', 'hello')",
            )
            .execute(&db)
            .await
            .expect("bystander insert");
            let event = bystander
                .next_within(Duration::from_secs(10))
                .await
                .expect("the bystander is served mid-burst");
            bystander_latency = sent.elapsed();
            assert_eq!(event.json()["kind"], "hello");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = server.rss_kib().saturating_sub(before);
    println!("bystander latency mid-burst: {bystander_latency:?}; RSS growth: {grown} KiB; peak NOTIFY queue usage: {queue_usage}");

    assert!(
        grown < 40 * 1024,
        "buffering the burst would take ~100 MiB; grew {grown} KiB"
    );
    assert!(queue_usage < 0.001, "NOTIFY queue usage {queue_usage}");
    let mut stalled = SseClient::new(stalled);
    let events = stalled.take(100_000).await;
    assert_eq!(seqs(&events), (1..=100_000).collect::<Vec<_>>());
}
