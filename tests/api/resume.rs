//! A client that reconnects with a position gets exactly what it missed,
//! then live events, with no gap and no duplicate.

use std::time::Duration;

use serde_json::json;

use crate::helpers::app::spawn_app;
use crate::helpers::sse::{seqs, SseClient};

#[tokio::test]
async fn resume_with_last_event_id_header_replays_exactly_the_missed_rows() {
    let app = spawn_app().await;
    for n in 1..=5 {
        app.insert("alice", "k", json!({"n": n})).await;
    }

    let mut stream = app.stream("alice", Some(2)).await;
    let replayed = stream.take(3).await;
    app.insert("alice", "k", json!({"n": 6})).await;
    let live = stream.next().await;

    assert_eq!(seqs(&replayed), vec![3, 4, 5]);
    assert_eq!(live.seq(), 6);
}

#[tokio::test]
async fn resume_with_last_event_id_query_parameter_replays_exactly_the_missed_rows() {
    let app = spawn_app().await;
    for n in 1..=4 {
        app.insert("alice", "k", json!({"n": n})).await;
    }
    let url = format!(
        "{}/v1/stream?last_event_id=1&access_token={}",
        app.address,
        app.token("alice")
    );

    let response = app.client.get(url).send().await.expect("request");
    let mut stream = SseClient::new(response);

    assert_eq!(seqs(&stream.take(3).await), vec![2, 3, 4]);
}

#[tokio::test]
async fn the_last_event_id_header_wins_over_the_query_parameter() {
    let app = spawn_app().await;
    for n in 1..=4 {
        app.insert("alice", "k", json!({"n": n})).await;
    }
    let response = app
        .get("/v1/stream?last_event_id=0", "alice")
        .header("Last-Event-ID", "3")
        .send()
        .await
        .expect("request");
    let mut stream = SseClient::new(response);

    assert_eq!(stream.next().await.seq(), 4);
}

#[tokio::test]
async fn last_event_id_zero_replays_the_whole_history() {
    let app = spawn_app().await;
    app.insert_many("alice", 1200).await;

    let mut stream = app.stream("alice", Some(0)).await;

    assert_eq!(
        seqs(&stream.take(1200).await),
        (1..=1200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn without_a_position_only_new_events_are_sent() {
    let app = spawn_app().await;
    app.insert_many("alice", 3).await;

    let mut stream = app.stream("alice", None).await;
    app.insert("alice", "new", json!({})).await;

    assert_eq!(stream.next().await.seq(), 4);
}

#[tokio::test]
async fn rows_inserted_during_the_replay_arrive_once_and_in_order() {
    let app = spawn_app().await;
    app.insert_many("alice", 3000).await;

    let mut stream = app.stream("alice", Some(0)).await;
    let writer = {
        let db = app.db.clone();
        tokio::spawn(async move {
            for n in 0..300 {
                sqlx::query("INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ('alice', 'during', $1)")
                    .bind(json!({"n": n}))
                    .execute(&db)
                    .await
                    .expect("insert");
            }
        })
    };
    let events = stream.take(3300).await;
    writer.await.expect("writer");

    assert_eq!(seqs(&events), (1..=3300).collect::<Vec<_>>());
    assert!(
        stream.quiet_for(Duration::from_millis(300)).await,
        "no duplicate after the end"
    );
}

#[tokio::test]
async fn a_position_beyond_the_log_gets_a_reset_then_continues_from_the_latest() {
    let app = spawn_app().await;
    app.insert_many("alice", 3).await;

    let mut stream = app.stream("alice", Some(1_000_000_000_000)).await;
    let reset = stream.next().await;
    app.insert("alice", "k", json!({})).await;
    let next = stream.next().await;

    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json(), json!({"position": 3}));
    assert_eq!(
        reset.seq(),
        3,
        "the reset's id moves the browser's Last-Event-ID"
    );
    assert_eq!(next.seq(), 4);
}

#[tokio::test]
async fn replayed_frames_match_live_frames() {
    // Arrange: a stream that sees events live, including awkward text and
    // a read event.
    let app = spawn_app().await;
    let mut live = app.stream("alice", None).await;
    let (id, _) = app
        .insert(
            "alice",
            "k\"ind",
            json!({"text": "line\nbreak, \"quote\", é, \u{1F600}", "n": [1, 2.5, null]}),
        )
        .await;
    app.insert("alice", "plain", json!({})).await;
    sqlx::query("INSERT INTO tidings.reads (recipient, notification_ids) VALUES ('alice', $1)")
        .bind(vec![id])
        .execute(&app.db)
        .await
        .expect("read");
    let seen_live = live.take(3).await;

    // Act: a second stream replays the same events from the table.
    let mut replay = app.stream("alice", Some(0)).await;
    let replayed = replay.take(3).await;

    // Assert: byte for byte the same id, event name and data.
    let frames =
        |events: &[crate::helpers::sse::SseEvent]| -> Vec<(Option<String>, String, String)> {
            events
                .iter()
                .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
                .collect()
        };
    assert_eq!(frames(&replayed), frames(&seen_live));
    assert_eq!(seen_live[2].event, "read");
}
