//! A committed row reaches every open stream of its recipient, intact,
//! exactly once, in seq order - whatever the writers do.

use std::time::Duration;

use serde_json::json;

use tidings::db;

use crate::helpers::app::spawn_app;
use crate::helpers::sse::seqs;

#[tokio::test]
async fn a_row_inserted_with_sql_reaches_a_connected_stream() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", None).await;

    let (id, seq) = app
        .insert("alice", "comment.created", json!({"text": "Hi"}))
        .await;
    let event = stream.next().await;

    assert_eq!(event.id.as_deref(), Some("1"));
    assert_eq!(seq, 1);
    assert_eq!(event.event, "notification");
    assert!(!event.data.contains('\n'));
    let data = event.json();
    assert_eq!(data["id"], id);
    assert_eq!(data["seq"], 1);
    assert_eq!(data["recipient"], "alice");
    assert_eq!(data["kind"], "comment.created");
    assert_eq!(data["payload"], json!({"text": "Hi"}));
    let created_at = data["created_at"].as_str().expect("created_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "{created_at}"
    );
}

#[tokio::test]
async fn the_stream_has_sse_headers_and_suggests_a_retry_delay() {
    let app = spawn_app().await;
    let response = app
        .get("/v1/stream", "alice")
        .send()
        .await
        .expect("request");

    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    assert_eq!(header("content-encoding"), None);
    let mut stream = crate::helpers::sse::SseClient::new(response);
    app.insert("alice", "k", json!({})).await;
    stream.next().await;
    assert_eq!(stream.retry(), Some(1000));
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let app =
        crate::helpers::app::spawn_app_with(|s| s.streams.heartbeat = Duration::from_millis(200))
            .await;
    let mut stream = app.stream("alice", None).await;

    let quiet = stream.quiet_for(Duration::from_millis(900)).await;

    assert!(quiet, "no event expected");
    assert!(
        stream.comments() >= 2,
        "heartbeats seen: {}",
        stream.comments()
    );
}

#[tokio::test]
async fn every_stream_of_a_recipient_gets_each_event() {
    let app = spawn_app().await;
    let mut first = app.stream("alice", None).await;
    let mut second = app.stream("alice", None).await;

    for n in 0..20 {
        app.insert("alice", "k", json!({"n": n})).await;
    }

    assert_eq!(seqs(&first.take(20).await), (1..=20).collect::<Vec<_>>());
    assert_eq!(seqs(&second.take(20).await), (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_writers_get_dense_seqs_and_streams_see_each_committed_row_once_in_order() {
    let app = spawn_app().await;
    let mut streams = vec![
        app.stream("alice", Some(0)).await,
        app.stream("alice", Some(0)).await,
    ];

    // 16 writers x 200 transactions; every 7th rolls back, every 5th stays
    // open a while so that others queue behind it and commit around it.
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let db = app.db.clone();
            tokio::spawn(async move {
                for n in 0..200 {
                    let mut tx = db.begin().await.expect("begin");
                    let kind = if n % 7 == 3 { "rolled-back" } else { "kept" };
                    sqlx::query("INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ('alice', $1, $2)")
                        .bind(kind)
                        .bind(serde_json::json!({"writer": writer, "n": n}))
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    if n % 5 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if kind == "rolled-back" {
                        tx.rollback().await.expect("rollback");
                    } else {
                        tx.commit().await.expect("commit");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }

    let committed: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM tidings.notifications WHERE recipient = 'alice' ORDER BY seq",
    )
    .fetch_all(&app.db)
    .await
    .expect("seqs");
    let n = committed.len() as i64;
    assert_eq!(n, 16 * (200 - 29), "one in seven rolled back");
    assert_eq!(committed, (1..=n).collect::<Vec<_>>(), "dense, no gaps");
    for stream in &mut streams {
        let events = stream.take(n as usize).await;
        assert_eq!(seqs(&events), (1..=n).collect::<Vec<_>>());
        assert!(
            events.iter().all(|e| e.json()["kind"] == "kept"),
            "a rolled-back row was delivered"
        );
        assert!(
            stream.quiet_for(Duration::from_millis(300)).await,
            "nothing more"
        );
    }
}

#[tokio::test]
async fn a_100_kb_payload_is_delivered_intact() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", None).await;
    let text: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let payload = json!({"text": text, "quote": "line1\nline2 \"q\" \r\n<b>&</b> é ✓"});

    app.insert("alice", "big", payload.clone()).await;
    let event = stream.next().await;

    assert_eq!(event.json()["payload"], payload);
}

#[tokio::test]
async fn an_insert_select_of_10000_rows_across_100_recipients_delivers_every_row_once() {
    let app = spawn_app().await;
    let mut streams = Vec::new();
    for r in 0..100 {
        streams.push(app.stream(&format!("r{r}"), Some(0)).await);
    }

    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind, payload)
         SELECT 'r' || (i % 100), 'bulk', jsonb_build_object('i', i) FROM generate_series(1, 10000) AS i",
    )
    .execute(&app.db)
    .await
    .expect("bulk insert");

    for stream in &mut streams {
        let events = stream.take(100).await;
        assert_eq!(seqs(&events), (1..=100).collect::<Vec<_>>());
        assert!(
            stream.quiet_for(Duration::from_millis(50)).await,
            "no duplicate"
        );
    }
}

#[tokio::test]
async fn nothing_is_delivered_before_commit_and_a_rollback_delivers_nothing() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", None).await;

    let mut tx = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'pending')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    assert!(
        stream.quiet_for(Duration::from_millis(300)).await,
        "delivered before commit"
    );
    tx.rollback().await.expect("rollback");
    app.insert("alice", "after", json!({})).await;

    let event = stream.next().await;
    assert_eq!(
        (event.seq(), event.json()["kind"].clone()),
        (1, json!("after"))
    );
}

/// The hub fetches for every stream on one connection of its own. Its pool
/// (`db::hub_pool`, checked directly: another session's settings cannot be
/// read) plans once, generically, as the fetch runs for every burst; the
/// request pool keeps plans made for their parameters.
#[tokio::test]
async fn the_hub_has_one_connection_of_its_own_and_only_its_pool_forces_generic_plans() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", None).await;
    // The first event may reach the stream through its own opening read of
    // the table (if it commits before that read), and its hint before the
    // stream has registered with the hub. Once the first is in, the stream
    // is registered and reading live: the second comes from the hub.
    app.insert("alice", "comment.created", json!({})).await;
    stream.next().await;

    let (_, seq) = app.insert("alice", "comment.created", json!({})).await;
    let event = stream.next().await;

    assert_eq!(event.seq(), seq);
    let hub_sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'tidings-hub'",
    )
    .fetch_one(&app.db)
    .await
    .expect("count the hub's sessions");
    assert_eq!(hub_sessions, 1);
    let options = app.db.connect_options().as_ref().clone();
    assert_eq!(
        plan_cache_mode(&db::hub_pool(options.clone())).await,
        "force_generic_plan"
    );
    assert_eq!(plan_cache_mode(&db::pool(options, 2)).await, "auto");
}

async fn plan_cache_mode(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(pool)
        .await
        .expect("read plan_cache_mode")
}
