//! One recipient's token never yields another recipient's rows: not in the
//! stream, not in the inbox, not through read marks.

use std::time::Duration;

use serde_json::json;

use crate::helpers::app::spawn_app;
use crate::helpers::checks::assert_problem;

#[tokio::test]
async fn a_token_never_yields_another_recipients_rows() {
    let app = spawn_app().await;
    let (alice_id, _) = app.insert("alice", "secret", json!({"for": "alice"})).await;
    app.insert("bob", "mine", json!({"for": "bob"})).await;
    let mut bob_stream = app.stream("bob", Some(0)).await;

    let first = bob_stream.next().await;
    app.insert("alice", "secret", json!({"for": "alice"})).await;
    let quiet = bob_stream.quiet_for(Duration::from_millis(300)).await;
    let inbox = app.inbox("bob").await;
    let foreign_read = app
        .post(&format!("/v1/notifications/{alice_id}/read"), "bob")
        .send()
        .await
        .expect("read");

    assert_eq!(first.json()["recipient"], "bob");
    assert!(quiet, "bob received an event not his (see above)");
    assert_eq!(inbox["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(inbox["items"][0]["payload"], json!({"for": "bob"}));
    assert_problem(foreign_read, 404).await;
    let alice = app.inbox("alice").await;
    assert_eq!(
        alice["unread_count"], 2,
        "bob could not mark alice's notification read"
    );
}

#[tokio::test]
async fn a_read_event_inserted_with_sql_never_marks_another_recipients_notification() {
    let app = spawn_app().await;
    let (alice_id, _) = app.insert("alice", "k", json!({})).await;
    app.insert("bob", "k", json!({})).await;

    let appended = sqlx::query(
        "INSERT INTO tidings.reads (recipient, notification_ids) VALUES ('bob', ARRAY[$1::int8])",
    )
    .bind(alice_id)
    .execute(&app.db)
    .await
    .expect("insert read");

    assert_eq!(appended.rows_affected(), 0);
    let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.read_marks")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(marks, 0);
}

#[tokio::test]
async fn tokens_are_accepted_from_header_query_and_cookie() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let url = format!("{}/v1/notifications", app.address);

    let header = app
        .client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("header");
    let query = app
        .client
        .get(format!("{url}?access_token={token}"))
        .send()
        .await
        .expect("query");
    let cookie = app
        .client
        .get(&url)
        .header("Cookie", format!("other=1; tidings_token={token}"))
        .send()
        .await
        .expect("cookie");
    let none = app.client.get(&url).send().await.expect("none");

    assert_eq!(header.status(), 200);
    assert_eq!(query.status(), 200);
    assert_eq!(cookie.status(), 200);
    assert_problem(none, 401).await;
}

#[tokio::test]
async fn a_recipient_over_the_stream_cap_gets_a_429_until_one_of_its_streams_closes() {
    let app = crate::helpers::app::spawn_app_with(|s| s.streams.max_per_recipient = 2).await;
    let first = app.stream("alice", None).await;
    let _second = app.stream("alice", None).await;
    let _other_recipient = app.stream("bob", None).await;

    let refused = app
        .get("/v1/stream", "alice")
        .send()
        .await
        .expect("request");
    assert_problem(refused, 429).await;

    drop(first);
    let mut admitted = false;
    for _ in 0..100 {
        if app
            .get("/v1/stream", "alice")
            .send()
            .await
            .expect("request")
            .status()
            == 200
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a freed place can be taken again");
}
