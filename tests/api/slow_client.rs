//! A client that stops reading costs the server bounded memory, and gets
//! every event, once, when it reads again.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::binary::Binary;
use crate::helpers::cluster::{fresh_database, url_of};
use crate::helpers::sse::{seqs, SseClient};
use crate::helpers::SECRET;

#[tokio::test]
async fn a_stalled_client_does_not_grow_server_memory_and_later_gets_every_event_once() {
    let database = fresh_database().await.expect("database");
    let db = PgPool::connect_with(database.clone()).await.expect("pool");
    let server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("tidings");
    server.wait_until_ready().await.expect("ready");
    let token = tidings::http::auth::Keys::new(SECRET.as_bytes())
        .issue("alice", &[], Duration::from_secs(3600))
        .expect("token");
    let publish = |from: i64, to: i64| {
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind, payload)
             SELECT 'alice', 'bulk', jsonb_build_object('n', i, 'pad', repeat('x', 1000))
               FROM generate_series($1::int8, $2::int8) AS i",
        )
        .bind(from)
        .bind(to)
        .execute(&db)
    };
    let response = reqwest::Client::new()
        .get(format!("{}/v1/stream?last_event_id=0", server.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stream");

    // Warm up, then publish 50,000 events of ~1 KiB while nobody reads.
    publish(1, 2_000).await.expect("warm-up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();
    let sampler = server.sample_rss();
    for start in (2_001..=50_000).step_by(4_000) {
        publish(start, (start + 3_999).min(50_000))
            .await
            .expect("publish");
    }
    // Sampled through the publishing and 2 s after it: the peak counts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sampler.peak();

    // Buffering the backlog for this client would take ~50 MiB.
    let grown = after.saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "server RSS peaked {grown} KiB above {before} KiB"
    );

    let mut stream = SseClient::new(response);
    let events = stream.take(50_000).await;
    assert_eq!(seqs(&events), (1..=50_000).collect::<Vec<_>>());
}
