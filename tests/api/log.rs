//! The log itself: append-only, gapless per recipient, idempotent on a key,
//! and writable over HTTP by publishers exactly as with SQL.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::app::spawn_app;
use tidings::config::Role;

#[tokio::test]
async fn update_delete_and_truncate_are_refused() {
    let app = spawn_app().await;
    let (id, _) = app.insert("alice", "k", json!({})).await;
    app.post(&format!("/v1/notifications/{id}/read"), "alice")
        .send()
        .await
        .expect("read");

    for statement in [
        "UPDATE tidings.notifications SET kind = 'changed'",
        "DELETE FROM tidings.notifications",
        "TRUNCATE tidings.notifications CASCADE",
        "UPDATE tidings.reads SET notification_ids = '{}'",
        "DELETE FROM tidings.reads",
        "TRUNCATE tidings.reads CASCADE",
        "UPDATE tidings.read_marks SET read_at = now()",
        "DELETE FROM tidings.read_marks",
        "TRUNCATE tidings.read_marks",
    ] {
        let refused = sqlx::query(statement).execute(&app.db).await;
        let message = refused.expect_err(statement).to_string();
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
    let kind: String = sqlx::query_scalar("SELECT kind FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("kind");
    assert_eq!(kind, "k");
    let (reads, marks): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tidings.reads), (SELECT count(*) FROM tidings.read_marks)",
    )
    .fetch_one(&app.db)
    .await
    .expect("counts");
    assert_eq!(
        (reads, marks),
        (1, 1),
        "the read and its mark are still there"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_twice_lands_once_without_a_gap() {
    let app = spawn_app().await;
    let key = Uuid::new_v4();
    let insert = "INSERT INTO tidings.notifications (recipient, kind, idempotency_key) VALUES ('alice', 'k', $1) RETURNING seq";

    let first: Option<i64> = sqlx::query_scalar(insert)
        .bind(key)
        .fetch_optional(&app.db)
        .await
        .expect("first");
    let retry: Option<i64> = sqlx::query_scalar(insert)
        .bind(key)
        .fetch_optional(&app.db)
        .await
        .expect("retry");
    let (_, next) = app.insert("alice", "k", json!({})).await;
    let other_recipient: i64 = sqlx::query_scalar(
        "INSERT INTO tidings.notifications (recipient, kind, idempotency_key) VALUES ('bob', 'k', $1) RETURNING seq",
    )
    .bind(key)
    .fetch_one(&app.db)
    .await
    .expect("same key, other recipient");

    assert_eq!(first, Some(1));
    assert_eq!(retry, None, "the retry is a no-op");
    assert_eq!(next, 2, "no seq was used by the retry");
    assert_eq!(other_recipient, 1, "keys are per recipient");
}

#[tokio::test]
async fn concurrent_inserts_with_one_idempotency_key_land_once() {
    let app = spawn_app().await;
    let key = Uuid::new_v4();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = app.db.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO tidings.notifications (recipient, kind, idempotency_key) VALUES ('alice', 'k', $1)")
                    .bind(key)
                    .execute(&db)
                    .await
                    .map(|r| r.rows_affected())
            })
        })
        .collect();
    let mut landed = 0;
    for task in tasks {
        landed += task.await.expect("task").expect("insert");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!((landed, rows), (1, 1));
}

#[tokio::test]
async fn a_rolled_back_insert_leaves_no_gap_and_given_seqs_are_ignored() {
    let app = spawn_app().await;
    let mut tx = app.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'gone')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");

    let seq: i64 = sqlx::query_scalar("INSERT INTO tidings.notifications (recipient, kind, seq) VALUES ('alice', 'k', 42) RETURNING seq")
        .fetch_one(&app.db)
        .await
        .expect("insert");

    assert_eq!(seq, 1);
}

#[tokio::test]
async fn savepoints_rolled_back_inside_a_transaction_leave_no_gap() {
    let app = spawn_app().await;
    let mut tx = app.db.begin().await.expect("begin");
    let insert =
        "INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'k') RETURNING seq";
    let first: i64 = sqlx::query_scalar(insert)
        .fetch_one(&mut *tx)
        .await
        .expect("first");
    sqlx::query("SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .expect("savepoint");
    let undone: i64 = sqlx::query_scalar(insert)
        .fetch_one(&mut *tx)
        .await
        .expect("undone");
    sqlx::query("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .expect("rollback to");
    let second: i64 = sqlx::query_scalar(insert)
        .fetch_one(&mut *tx)
        .await
        .expect("second");
    tx.commit().await.expect("commit");

    assert_eq!((first, undone, second), (1, 2, 2));
}

#[tokio::test]
async fn publishers_insert_over_http_single_or_batch() {
    let app = spawn_app().await;
    let token = app.token_with("billing-service", &[Role::Publisher]);
    let url = format!("{}/v1/notifications", app.address);
    let mut stream = app.stream("alice", None).await;

    let single = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"recipient": "alice", "kind": "invoice.paid", "payload": {"amount": 5}}))
        .send()
        .await
        .expect("single");
    assert_eq!(single.status(), 201);
    let single: Value = single.json().await.expect("json");
    let batch = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .json(&json!([
            {"recipient": "zed", "kind": "k"},
            {"recipient": "alice", "kind": "k2"},
        ]))
        .send()
        .await
        .expect("batch");
    assert_eq!(batch.status(), 201);
    let batch: Value = batch.json().await.expect("json");

    assert_eq!(single["seq"], 1);
    assert!(single["id"].is_i64());
    assert_eq!(batch[0]["seq"], 1, "answers come back in request order");
    assert_eq!(batch[1]["seq"], 2);
    let event = stream.next().await;
    assert_eq!(event.json()["payload"], json!({"amount": 5}));
    assert_eq!(stream.next().await.json()["kind"], "k2");
}

#[tokio::test]
async fn publishing_twice_with_one_idempotency_key_returns_the_same_notification() {
    let app = spawn_app().await;
    let token = app.token_with("svc", &[Role::Publisher]);
    let body = json!({"recipient": "alice", "kind": "k", "idempotency_key": Uuid::new_v4()});
    let url = format!("{}/v1/notifications", app.address);

    let first: Value = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("first")
        .json()
        .await
        .expect("json");
    let retry: Value = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("retry")
        .json()
        .await
        .expect("json");

    assert_eq!(first, retry);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

/// How far the counter rows of `recipients` are from what their events say
/// (latest seq, totals, the latest event's hash), plus any gap in a
/// recipient's seqs: 0 when the log and its counters agree.
async fn disagreements(tx: &mut sqlx::PgConnection, recipients: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::text[]) AS who
           LEFT JOIN tidings.recipients r ON r.recipient = who
          WHERE (r.last_seq, r.notifications, r.read, r.last_hash) IS DISTINCT FROM (
                 (SELECT max(seq) FROM tidings.events WHERE recipient = who),
                 (SELECT count(*) FROM tidings.notifications WHERE recipient = who),
                 (SELECT count(*) FROM tidings.read_marks WHERE recipient = who),
                 (SELECT hash FROM (SELECT seq, hash FROM tidings.notifications WHERE recipient = who
                                    UNION ALL
                                    SELECT seq, hash FROM tidings.reads WHERE recipient = who) latest
                   ORDER BY seq DESC LIMIT 1))
             OR (SELECT count(*) <> max(seq) FROM tidings.events WHERE recipient = who)",
    )
    .bind(recipients)
    .fetch_one(tx)
    .await
    .expect("compare counters with events")
}

#[tokio::test]
async fn counters_and_chain_heads_match_the_log_after_every_statement_of_a_mixed_transaction() {
    // Arrange: statements that hit and miss the per-transaction cache in
    // every way - interleaved recipients, runs of one recipient, a read in
    // between, a savepoint rolled back, a run continued by the next
    // statement, and a run with idempotency keys, one of them repeated.
    let app = spawn_app().await;
    let who = ["alice", "bob"];
    let statements = [
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT r, 'interleaved' FROM unnest('{alice,bob,alice,bob,alice}'::text[]) AS r",
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT 'alice', 'run' FROM generate_series(1, 3)",
        "INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'continued')",
        "INSERT INTO tidings.notifications (recipient, kind, idempotency_key)
         SELECT 'bob', 'keyed', k FROM unnest(ARRAY[
             '00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002',
             '00000000-0000-0000-0000-000000000001']::uuid[]) AS k",
        "SAVEPOINT s",
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT r, 'undone' FROM unnest('{alice,alice,bob}'::text[]) AS r",
        "ROLLBACK TO SAVEPOINT s",
        "INSERT INTO tidings.reads (recipient, notification_ids)
         SELECT 'alice', array_agg(id) FROM tidings.notifications WHERE recipient = 'alice' AND seq <= 2",
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT r, 'after the read' FROM unnest('{alice,alice,bob,bob}'::text[]) AS r",
    ];

    // Act and assert: the counters agree with the events at every
    // statement boundary, inside the transaction and after it.
    let mut tx = app.db.begin().await.expect("begin");
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .expect(statement);
        assert_eq!(disagreements(&mut tx, &who).await, 0, "after {statement}");
    }
    tx.commit().await.expect("commit");
    let mut conn = app.db.acquire().await.expect("connection");
    assert_eq!(disagreements(&mut conn, &who).await, 0, "after commit");

    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT recipient, last_seq, read FROM tidings.recipients ORDER BY recipient",
    )
    .fetch_all(&app.db)
    .await
    .expect("counters");
    assert_eq!(
        counts,
        [("alice".into(), 9 + 1, 2), ("bob".into(), 2 + 2 + 2, 0)],
        "alice: 3 + 3 + 1 + 2 notifications and a read; bob: 2 + 2 keyed (one repeated key skipped) + 2"
    );
    let verdict = tidings::audit::verify(&app.db, None).await.expect("verify");
    assert!(verdict.ok, "the hash chain verifies: {:?}", verdict.broken);
}

#[tokio::test]
async fn settings_set_by_hand_in_the_session_cannot_skip_a_seq_or_a_hint() {
    // Arrange: alice has a counter row; a session claims, at session level,
    // to have appended to her last, at a seq far ahead (the settings an
    // older bulk cache trusted; writer_role.rs tries every other kind).
    let app = spawn_app().await;
    app.insert("alice", "first", json!({})).await;
    // Appends hint only recipients someone streams (I7): lease alice.
    sqlx::query("UPDATE tidings.recipients SET hints_until = 'infinity' WHERE recipient = 'alice'")
        .execute(&app.db)
        .await
        .expect("lease");
    let mut hints = sqlx::postgres::PgListener::connect_with(&app.db)
        .await
        .expect("listener");
    hints.listen("tidings").await.expect("listen");
    let mut session = app.db.acquire().await.expect("connection");
    sqlx::raw_sql("SET tidings.cached_recipient = 'alice'; SET tidings.cached_seq = '41'")
        .execute(&mut *session)
        .await
        .expect("set the cache by hand");

    // Act: two single-row transactions in that session.
    let mut seqs = Vec::new();
    for _ in 0..2 {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'k') RETURNING seq",
        )
        .fetch_one(&mut *session)
        .await
        .expect("insert");
        seqs.push(seq);
    }

    // Assert: the seqs continue the log, the counter and chain agree, and
    // each commit hinted.
    assert_eq!(seqs, [2, 3]);
    assert_eq!(disagreements(&mut session, &["alice"]).await, 0);
    for _ in 0..2 {
        let hint =
            crate::helpers::cluster::next_hint(&mut hints, std::time::Duration::from_secs(5)).await;
        assert_eq!(hint.as_deref(), Some(r#"["alice"]"#), "a hint within 5 s");
    }
}
