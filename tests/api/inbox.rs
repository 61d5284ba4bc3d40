//! The inbox lists notifications newest first with the unread count and a
//! position to stream from; read marks are events every stream receives.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::app::spawn_app;

#[tokio::test]
async fn the_inbox_lists_newest_first_with_unread_count_and_position() {
    let app = spawn_app().await;
    for n in 1..=3 {
        app.insert("alice", "k", json!({"n": n})).await;
    }

    let inbox = app.inbox("alice").await;

    let items = inbox["items"].as_array().expect("items");
    assert_eq!(
        items
            .iter()
            .map(|i| i["seq"].as_i64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(items[0]["payload"], json!({"n": 3}));
    assert_eq!(items[0]["read_at"], Value::Null);
    assert!(
        items[0]["id"].is_i64() && items[0]["kind"] == "k" && items[0]["created_at"].is_string()
    );
    assert_eq!(inbox["unread_count"], 3);
    assert_eq!(inbox["position"], 3);
}

#[tokio::test]
async fn the_inbox_pages_with_limit_and_before() {
    let app = spawn_app().await;
    app.insert_many("alice", 10).await;

    let page: Value = app
        .get("/v1/notifications?limit=3&before=8", "alice")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");

    let seqs: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["seq"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, vec![7, 6, 5]);
    assert_eq!(page["position"], 10);
}

#[tokio::test]
async fn loading_the_inbox_then_streaming_from_its_position_misses_nothing() {
    let app = spawn_app().await;
    app.insert_many("alice", 3).await;

    let inbox = app.inbox("alice").await;
    app.insert("alice", "between", json!({})).await; // after the list, before the stream
    let position = inbox["position"].as_i64().expect("position");
    let mut stream = app.stream("alice", Some(position)).await;
    app.insert("alice", "after", json!({})).await;

    let events = stream.take(2).await;
    assert_eq!(position, 3);
    assert_eq!(events[0].json()["kind"], "between");
    assert_eq!(events[1].json()["kind"], "after");
}

#[tokio::test]
async fn marking_read_emits_a_read_event_on_every_open_stream_once() {
    let app = spawn_app().await;
    let (first_id, _) = app.insert("alice", "k", json!({})).await;
    let (second_id, _) = app.insert("alice", "k", json!({})).await;
    let mut streams = [
        app.stream("alice", Some(2)).await,
        app.stream("alice", Some(2)).await,
    ];

    let marked = app
        .post(&format!("/v1/notifications/{first_id}/read"), "alice")
        .send()
        .await
        .expect("read");
    let again = app
        .post(&format!("/v1/notifications/{first_id}/read"), "alice")
        .send()
        .await
        .expect("read again");
    app.insert("alice", "later", json!({})).await;

    assert_eq!(marked.status(), 204);
    assert_eq!(again.status(), 204, "idempotent");
    for stream in &mut streams {
        let read = stream.next().await;
        assert_eq!((read.event.as_str(), read.seq()), ("read", 3));
        assert_eq!(read.json()["ids"], json!([first_id]));
        assert_eq!(read.json()["seq"], 3);
        let next = stream.next().await;
        assert_eq!(
            (next.event.as_str(), next.seq()),
            ("notification", 4),
            "the repeat appended nothing"
        );
    }
    let inbox = app.inbox("alice").await;
    assert_eq!(inbox["unread_count"], 2);
    let read_at = |id: i64| {
        inbox["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["id"] == id))
            .map(|i| i["read_at"].clone())
    };
    assert!(read_at(first_id).is_some_and(|r| r.is_string()));
    assert_eq!(read_at(second_id), Some(Value::Null));
}

#[tokio::test]
async fn read_all_marks_everything_unread_in_one_event() {
    let app = spawn_app().await;
    let (first, _) = app.insert("alice", "k", json!({})).await;
    let (second, _) = app.insert("alice", "k", json!({})).await;
    let (third, _) = app.insert("alice", "k", json!({})).await;
    app.post(&format!("/v1/notifications/{second}/read"), "alice")
        .send()
        .await
        .expect("read");
    let mut stream = app.stream("alice", Some(4)).await;

    let response = app
        .post("/v1/notifications/read-all", "alice")
        .send()
        .await
        .expect("read-all");
    let event = stream.next().await;
    let repeat = app
        .post("/v1/notifications/read-all", "alice")
        .send()
        .await
        .expect("read-all again");

    assert_eq!(response.status(), 204);
    assert_eq!(repeat.status(), 204);
    assert_eq!((event.event.as_str(), event.seq()), ("read", 5));
    assert_eq!(event.json()["ids"], json!([first, third]));
    assert!(
        stream.quiet_for(Duration::from_millis(300)).await,
        "nothing left to mark"
    );
    let inbox = app.inbox("alice").await;
    assert_eq!(inbox["unread_count"], 0);
    assert_eq!(inbox["position"], 5);
}

#[tokio::test]
async fn read_marks_replay_in_order_with_the_notifications() {
    let app = spawn_app().await;
    let (id, _) = app.insert("alice", "k", json!({})).await;
    app.post(&format!("/v1/notifications/{id}/read"), "alice")
        .send()
        .await
        .expect("read");
    app.insert("alice", "k", json!({})).await;

    let mut stream = app.stream("alice", Some(0)).await;
    let events = stream.take(3).await;

    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, vec!["notification", "read", "notification"]);
    assert_eq!(crate::helpers::sse::seqs(&events), vec![1, 2, 3]);
}
