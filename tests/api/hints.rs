//! Appends NOTIFY only for recipients someone streams (invariant I7):
//! a stream's recipient holds a hint lease from before the stream reads its
//! position until after it closes, and nobody else's appends queue for
//! PostgreSQL's notify lock.

use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgListener;

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::cluster::{next_hint, wait_for_sessions_waiting_for_a_lock};

/// A session listening on tidings' channel, as the service's own does.
async fn listen(app: &TestApp) -> PgListener {
    let mut hints = PgListener::connect_with(&app.db).await.expect("listener");
    hints.listen("tidings").await.expect("listen");
    hints
}

/// No sweep within any test's time: only hints can deliver live events.
fn no_sweep(app: &mut tidings::service::Settings) {
    app.sweep_interval = Duration::from_secs(600);
}

#[tokio::test]
async fn an_append_hints_only_if_its_recipient_has_a_stream() {
    let app = spawn_app_with(no_sweep).await;
    let mut hints = listen(&app).await;
    let mut alice = app.stream("alice", Some(0)).await;
    // A first event: alice's stream has surely taken its lease by then.
    app.insert("alice", "hello", json!({})).await;
    assert_eq!(alice.next().await.json()["kind"], "hello");
    assert_eq!(
        next_hint(&mut hints, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(r#"["alice"]"#)
    );

    app.insert("bob", "unwatched", json!({})).await;
    app.insert("alice", "watched", json!({})).await;

    assert_eq!(
        next_hint(&mut hints, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(r#"["alice"]"#),
        "bob has no stream, so his append sent no hint before alice's"
    );
    assert_eq!(alice.next().await.json()["kind"], "watched");
}

#[tokio::test]
async fn a_stream_keeps_its_recipient_hinted_for_longer_than_a_lease() {
    let app = spawn_app_with(|s| {
        no_sweep(s);
        s.hint_lease = Duration::from_secs(1);
    })
    .await;
    let mut alice = app.stream("alice", None).await;

    // Three lease lengths: only renewals keep the lease alive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.insert("alice", "late", json!({})).await;

    let event = alice
        .next_within(Duration::from_secs(3))
        .await
        .expect("hinted, not left for the sweep");
    assert_eq!(event.json()["kind"], "late");
}

#[tokio::test]
async fn a_lease_lapses_once_its_last_stream_has_closed() {
    let app = spawn_app_with(|s| s.hint_lease = Duration::from_secs(1)).await;
    let mut alice = app.stream("alice", Some(0)).await;
    app.insert("alice", "first", json!({})).await;
    assert_eq!(alice.next().await.json()["kind"], "first");

    drop(alice);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut hints = listen(&app).await;
    app.insert("alice", "unwatched", json!({})).await;

    assert_eq!(
        next_hint(&mut hints, Duration::from_millis(500)).await,
        None
    );
    let lapsed: bool = sqlx::query_scalar(
        "SELECT hints_until < now() FROM tidings.recipients WHERE recipient = 'alice'",
    )
    .fetch_one(&app.db)
    .await
    .expect("lease");
    assert!(lapsed);
}

#[tokio::test]
async fn a_stream_opened_while_an_append_holds_its_counter_row_gets_that_append() {
    let app = spawn_app_with(no_sweep).await;
    app.insert("alice", "before", json!({})).await;
    let append = uncommitted_append(&app, "alice", "racing").await;

    // The stream's lease waits for the append's row lock...
    let opening = tokio::spawn({
        let (address, token) = (app.address.clone(), app.token("alice"));
        async move {
            reqwest::Client::new()
                .get(format!("{address}/v1/stream?last_event_id=1"))
                .bearer_auth(token)
                .send()
                .await
                .expect("stream")
        }
    });
    // The stream's lease, queued behind the append's row lock.
    wait_for_sessions_waiting_for_a_lock(
        &app.db,
        1,
        "the stream's lease never waited for the append's row lock",
    )
    .await;
    append.commit().await.expect("commit");
    let mut alice = crate::helpers::sse::SseClient::new(opening.await.expect("opened"));

    // ...so its position covers it, or its lease made it hint.
    let event = alice
        .next_within(Duration::from_secs(5))
        .await
        .expect("delivered");
    assert_eq!(
        (event.seq(), event.json()["kind"].clone()),
        (2, json!("racing"))
    );
}

#[tokio::test]
async fn the_leases_of_many_streamed_recipients_are_renewed_together() {
    // Arrange: 50 streamed recipients, each lease taken as its stream opened.
    let app = spawn_app_with(|s| s.hint_lease = Duration::from_secs(1)).await;
    let names: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    let mut streams = Vec::new();
    for name in &names {
        streams.push(app.stream(name, None).await);
    }
    let taken = leases(&app, &names).await;
    assert_eq!(taken.len(), 50, "every stream took a lease: {taken:?}");

    // Act: let renewals run until one pass has renewed them all.
    let mut renewed = taken.clone();
    for _ in 0..300 {
        renewed = leases(&app, &names).await;
        let all_grew = renewed.iter().zip(&taken).all(|(new, old)| new > old);
        if all_grew && renewed.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert: every lease grew, and all in one UPDATE (one now()).
    assert!(
        renewed.iter().zip(&taken).all(|(new, old)| new > old),
        "every lease was renewed"
    );
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT hints_until) FROM tidings.recipients WHERE recipient = ANY($1)",
    )
    .bind(&names)
    .fetch_one(&app.db)
    .await
    .expect("distinct");
    assert_eq!(distinct, 1, "renewed together: {renewed:?}");
    drop(streams);
}

/// The `hints_until` of `names`, in the order of `names` (leased ones only).
async fn leases(app: &TestApp, names: &[String]) -> Vec<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar(
        "SELECT r.hints_until FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
           JOIN tidings.recipients r ON r.recipient = n.name
          WHERE r.hints_until IS NOT NULL ORDER BY n.i",
    )
    .bind(names)
    .fetch_all(&app.db)
    .await
    .expect("leases")
}

#[tokio::test]
async fn hint_leases_survive_a_listener_reconnect() {
    let app = spawn_app().await;
    let mut alice = app.stream("alice", None).await;
    // Lose every lease, as a database restored from a backup would.
    sqlx::query("UPDATE tidings.recipients SET hints_until = NULL")
        .execute(&app.db)
        .await
        .expect("drop leases");

    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'tidings-listener' AND datname = current_database()",
    )
    .execute(&app.db)
    .await
    .expect("terminate");
    let mut leased = false;
    for _ in 0..100 {
        leased = sqlx::query_scalar(
            "SELECT coalesce(hints_until > now(), false) FROM tidings.recipients WHERE recipient = 'alice'",
        )
        .fetch_one(&app.db)
        .await
        .expect("lease");
        if leased {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leased, "the lease was taken again after the reconnect");
    app.insert("alice", "after", json!({})).await;
    assert_eq!(alice.next().await.json()["kind"], "after");
}

#[tokio::test]
async fn a_long_transaction_holding_the_counter_row_does_not_hold_up_a_new_stream() {
    let app = spawn_app_with(no_sweep).await;
    app.insert("alice", "before", json!({})).await;
    let append = uncommitted_append(&app, "alice", "long").await;

    // The stream opens and replays while the append still holds the row...
    let mut alice = app.stream("alice", Some(0)).await;
    let history = alice
        .next_within(Duration::from_secs(3))
        .await
        .expect("history while the transaction is open");
    assert_eq!(history.seq(), 1);

    // ...and once it commits, the lease is taken and the append fetched.
    append.commit().await.expect("commit");
    let event = alice
        .next_within(Duration::from_secs(6))
        .await
        .expect("delivered without the sweep");
    assert_eq!(
        (event.seq(), event.json()["kind"].clone()),
        (2, json!("long"))
    );
}

/// An append to `recipient` whose transaction is still open: it holds the
/// recipient's counter row until it commits or rolls back.
async fn uncommitted_append(
    app: &TestApp,
    recipient: &str,
    kind: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut append = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ($1, $2)")
        .bind(recipient)
        .bind(kind)
        .execute(&mut *append)
        .await
        .expect("insert");
    append
}
