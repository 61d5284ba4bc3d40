//! Pressure: a reconnect storm must queue for the database rather than
//! exhaust it, and a 100,000-event burst at a client that has stopped
//! reading must cost bounded memory and nobody else's latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sqlx::PgPool;
use tidings::config::Role;

use crate::helpers::app::spawn_app_with;
use crate::helpers::binary::Binary;
use crate::helpers::cluster::{fresh_database, url_of};
use crate::helpers::sse::{seqs, SseClient};
use crate::helpers::SECRET;

#[tokio::test]
async fn a_reconnect_storm_of_2000_streams_all_catch_up_while_requests_still_get_connections() {
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
    let storming = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_connections(app.db.clone(), storming.clone()));
    let requests = tokio::spawn(requests_during(
        app.client.clone(),
        app.address.clone(),
        [
            app.token("bystander"),
            app.token_with("service", &[Role::Publisher]),
        ],
        storming.clone(),
    ));

    // History reads stall for longer than the pool's 5 s acquire timeout:
    // were they not limited, they would hold every connection that long.
    let mut stall = app.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE tidings.reads IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *stall)
        .await
        .expect("stall history reads");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        stall.rollback().await.expect("release history reads");
    });

    // 2000 streams, 10 per recipient, all resuming from 0 at once.
    let opened =
        join_all((0..2000).map(|i| app.stream_owned(format!("r{}", i % 200), Some(0)))).await;
    let caught_up = join_all(opened.into_iter().map(|mut stream| async move {
        seqs(&stream.take_within(50, Duration::from_secs(120)).await)
    }))
    .await;
    storming.store(false, Ordering::Relaxed);
    release.await.expect("released");
    let peak = sampler.await.expect("sampler");
    let answered = requests.await.expect("requests");

    assert!(caught_up
        .iter()
        .all(|got| *got == (1..=50).collect::<Vec<_>>()));
    println!("peak tidings connections by application_name: {peak:?}; request rounds: {answered}");
    // Proof the sampler saw tidings' real sessions (names and all).
    for name in ["tidings", "tidings-hub", "tidings-listener"] {
        assert!(
            peak.get(name).is_some_and(|n| *n >= 1),
            "no {name} session seen: {peak:?}"
        );
    }
    // The promise itself: history reads queue for a catch-up permit (the
    // stalled ones held theirs), so the pool still serves requests.
    let reads = peak.get("history reads").copied().unwrap_or(0);
    assert!(
        (1..=4).contains(&reads),
        "{reads} history reads at once; --catch-up-concurrency is 4"
    );
    assert!(answered >= 1, "no request round ran during the storm");
}

/// The most sessions of each of tidings' application names seen at once,
/// sampled until `storming` ends. A query that fails fails the test.
async fn sample_connections(db: PgPool, storming: Arc<AtomicBool>) -> HashMap<String, i64> {
    let mut peak = HashMap::new();
    while storming.load(Ordering::Relaxed) {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT application_name, count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE 'tidings%'
              GROUP BY application_name",
        )
        .fetch_all(&db)
        .await
        .expect("sampling pg_stat_activity");
        for (name, count) in counts {
            let seen = peak.entry(name).or_insert(0);
            *seen = count.max(*seen);
        }
        let reading: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'tidings'
                AND state = 'active' AND query LIKE '%FROM tidings.events%seq <= $2 + $3%'",
        )
        .fetch_one(&db)
        .await
        .expect("sampling history reads");
        let seen = peak.entry("history reads".into()).or_insert(0);
        *seen = reading.max(*seen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak
}

/// An inbox read and a publish, round after round until `storming` ends;
/// each must answer 200 / 201 (an exhausted pool makes them 503 after its
/// 5 s acquire timeout). How many rounds ran.
async fn requests_during(
    client: reqwest::Client,
    address: String,
    [reader, publisher]: [String; 2],
    storming: Arc<AtomicBool>,
) -> usize {
    let mut rounds = 0;
    while storming.load(Ordering::Relaxed) {
        let inbox = client
            .get(format!("{address}/v1/notifications"))
            .bearer_auth(&reader)
            .send();
        let publish = client
            .post(format!("{address}/v1/notifications"))
            .bearer_auth(&publisher)
            .json(&serde_json::json!({"recipient": "bystander", "kind": "during"}))
            .send();
        let (inbox, publish) = tokio::join!(inbox, publish);
        assert_eq!(
            inbox.expect("inbox answered").status(),
            200,
            "inbox during the storm"
        );
        assert_eq!(
            publish.expect("publish answered").status(),
            201,
            "publish during the storm"
        );
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rounds
}

#[tokio::test]
async fn a_stalled_client_in_a_100000_event_burst_costs_bounded_memory_and_no_one_elses_latency() {
    let database = fresh_database().await.expect("database");
    let db = PgPool::connect_with(database.clone()).await.expect("pool");
    let server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("tidings");
    server.wait_until_ready().await.expect("ready");
    let keys = tidings::http::auth::Keys::new(SECRET.as_bytes());
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
    let sampler = server.sample_rss();

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
    // Sampled through the burst and 2 s after it: the peak counts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = sampler.peak().saturating_sub(before);
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
