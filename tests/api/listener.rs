//! The LISTEN session can die at any time; no event is lost when it does,
//! and `/readyz` tells the truth meanwhile.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tidings::delivery::hub::{Hub, Live};
use tidings::metrics::Metrics;

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::sse::seqs;

async fn kill_listener(app: &TestApp) -> u64 {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'tidings-listener' AND datname = current_database()",
    )
    .execute(&app.db)
    .await
    .expect("terminate")
    .rows_affected()
}

/// Switches hints off or on: hints lost at the source.
async fn set_hints(app: &TestApp, on: bool) {
    try_set_hints(&app.db, on).await.expect("switch hints");
}

async fn try_set_hints(db: &sqlx::PgPool, on: bool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT tidings.set_hints($1)")
        .bind(on)
        .execute(db)
        .await
        .map(drop)
}

/// Waits until the hub's session has sat idle for several samples in a
/// row: no fetch is running (and none was queued behind the last one).
async fn wait_until_the_hub_is_idle(app: &TestApp) {
    let mut idle_samples = 0;
    for _ in 0..500 {
        let idle: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_and(state = 'idle'), false) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'tidings-hub'",
        )
        .fetch_one(&app.db)
        .await
        .expect("hub activity");
        idle_samples = if idle { idle_samples + 1 } else { 0 };
        if idle_samples == 5 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the hub's session never went idle");
}

async fn wait_for_readyz(app: &TestApp, status: u16) -> bool {
    for _ in 0..2000 {
        if app.readyz().await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test]
async fn killing_the_listener_backend_loses_nothing_and_readyz_goes_503_then_200() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", Some(0)).await;
    let writer = {
        let db = app.db.clone();
        tokio::spawn(async move {
            for n in 0..600 {
                sqlx::query("INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ('alice', 'k', $1)")
                    .bind(json!({"n": n}))
                    .execute(&db)
                    .await
                    .expect("insert");
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    let mut saw_503 = false;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(kill_listener(&app).await, 1, "one listener session");
        saw_503 |= wait_for_readyz(&app, 503).await;
        assert!(wait_for_readyz(&app, 200).await, "ready again");
    }
    writer.await.expect("writer");
    let events = stream.take(600).await;

    assert!(saw_503, "/readyz reported the listener down");
    assert_eq!(seqs(&events), (1..=600).collect::<Vec<_>>());
    assert!(
        stream.quiet_for(Duration::from_millis(300)).await,
        "no duplicate"
    );
}

#[tokio::test]
async fn rows_committed_while_the_listener_is_down_are_delivered_after_it_returns() {
    // No self-check during the test: on a loaded machine a late echo makes
    // the listener rebuild itself (and catch up) before we kill it.
    let app = spawn_app_with(|s| s.listener_check = Duration::from_secs(600)).await;
    let mut stream = app.stream("alice", None).await;
    // A hinted row first, then the hub's session idle: the fetches that
    // startup and this hint queued are over, so none can pick up the
    // unhinted row below.
    app.insert("alice", "hinted", json!({})).await;
    assert_eq!(stream.next().await.json()["kind"], "hinted");
    wait_until_the_hub_is_idle(&app).await;
    // Stop hints from reaching tidings at all by dropping them at the source.
    set_hints(&app, false).await;
    app.insert("alice", "unhinted", json!({})).await;
    set_hints(&app, true).await;
    assert!(
        stream.quiet_for(Duration::from_millis(300)).await,
        "no hint, no delivery yet"
    );

    kill_listener(&app).await;
    let event = stream
        .next_within(Duration::from_secs(5))
        .await
        .expect("caught up after reconnect");

    assert_eq!(event.json()["kind"], "unhinted");
}

#[tokio::test]
async fn the_sweep_delivers_rows_whose_hint_was_lost() {
    let app = spawn_app_with(|s| s.sweep_interval = Duration::from_millis(300)).await;
    let mut stream = app.stream("alice", None).await;
    set_hints(&app, false).await;

    app.insert("alice", "unhinted", json!({})).await;
    let event = stream
        .next_within(Duration::from_secs(3))
        .await
        .expect("swept");

    assert_eq!(event.json()["kind"], "unhinted");
}

/// A stream reads its recipient's position, then subscribes to the hub. A
/// row committed between the two hints before the hub knows the recipient,
/// and that hint is dropped; the hub's first fetch for a new recipient
/// picks the row up without it.
#[tokio::test]
async fn a_new_subscriber_gets_rows_committed_after_its_position_without_a_hint() {
    let app = spawn_app().await;
    let hub = Hub::new(app.db.clone(), Arc::new(Metrics::new()));
    tokio::spawn(hub.clone().run(app.shutdown.clone()));
    // Its position read: nothing yet. Then the row commits, unhinted (this
    // hub has no LISTEN session at all).
    let position = 0;
    app.insert("alice", "between", json!({})).await;

    let mut subscription = hub.subscribe("alice", position);
    let live = tokio::time::timeout(Duration::from_secs(3), subscription.next()).await;

    let Ok(Live::Events(burst)) = live else {
        panic!("no burst without a hint");
    };
    let seqs: Vec<i64> = burst.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, [1]);
    assert!(String::from_utf8_lossy(&burst[0].frame()).contains("\"between\""));
}

/// A stream that opened without a hint lease (its counter row was busy, see
/// `lease.rs`) follows a channel that appends may not hint. When another
/// stream of the recipient subscribes with a later position - it has
/// taken the lease, so every row up to that position may be unhinted - the
/// hub fetches, and the first stream gets those rows without the sweep.
#[tokio::test]
async fn a_subscriber_ahead_of_its_channel_makes_the_hub_fetch() {
    let app = spawn_app().await;
    let hub = Hub::new(app.db.clone(), Arc::new(Metrics::new()));
    tokio::spawn(hub.clone().run(app.shutdown.clone()));
    app.insert("alice", "first", json!({})).await;
    let mut first = hub.subscribe("alice", 0);
    let seqs_of = |live| match live {
        Ok(Live::Events(burst)) => burst.iter().map(|event| event.seq).collect::<Vec<i64>>(),
        _ => Vec::new(),
    };
    let live = tokio::time::timeout(Duration::from_secs(3), first.next()).await;
    assert_eq!(seqs_of(live), [1]);

    // Unhinted: this hub has no LISTEN session at all.
    app.insert("alice", "unhinted", json!({})).await;
    let _second = hub.subscribe("alice", 2);

    let live = tokio::time::timeout(Duration::from_secs(3), first.next()).await;
    assert_eq!(seqs_of(live), [2], "the first stream gets the row");
}

#[tokio::test]
async fn set_hints_called_from_many_sessions_at_once_never_fails() {
    // Arrange: eight sessions, each switching hints off and on 25 times.
    let app = spawn_app().await;
    let mut sessions = tokio::task::JoinSet::new();
    for session in 0..8 {
        let db = app.db.clone();
        sessions.spawn(async move {
            let mut failures = Vec::new();
            for call in 0..25 {
                let switched = try_set_hints(&db, (session + call) % 2 == 0).await;
                failures.extend(switched.err().map(|error| error.to_string()));
            }
            failures
        });
    }

    // Act
    let mut failures = Vec::new();
    while let Some(session) = sessions.join_next().await {
        failures.extend(session.expect("session task"));
    }

    // Assert: every call succeeded, and the next one still has its way.
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    set_hints(&app, true).await;
    let definition: String = sqlx::query_scalar(
        "SELECT prosrc FROM pg_proc WHERE oid = 'tidings.send_hint(text)'::regprocedure",
    )
    .fetch_one(&app.db)
    .await
    .expect("send_hint");
    assert!(definition.contains("pg_notify"), "{definition}");
}
