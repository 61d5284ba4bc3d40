//! Integrity by privilege (I11): an app that publishes with SQL holds
//! `tidings_writer`, which may append and read back `id` and `seq`, and
//! nothing else. No session setting, explicit column or `OVERRIDING SYSTEM
//! VALUE` lets it leave a gap, repeat a seq, change a counter or take an
//! id: the triggers, as the schema's owner, number every row from its
//! recipient's counter row.

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::app::{spawn_app, TestApp};
use crate::helpers::checks::outcome;

/// A session with exactly the writer role's privileges.
async fn writer(app: &TestApp) -> PgConnection {
    let mut session = PgConnection::connect_with(&app.db.connect_options())
        .await
        .expect("connect");
    sqlx::query("SET ROLE tidings_writer")
        .execute(&mut session)
        .await
        .expect("SET ROLE tidings_writer");
    session
}

/// Every recipient's seqs are 1..n with no repeat, its counter row ends
/// its chain, and the chain verifies.
async fn assert_intact(app: &TestApp) {
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tidings.recipients r
          WHERE r.last_seq <> (SELECT count(*) FROM tidings.events e WHERE e.recipient = r.recipient)
             OR r.last_seq <> (SELECT coalesce(max(seq), 0) FROM tidings.events e WHERE e.recipient = r.recipient)
             OR r.notifications <> (SELECT count(*) FROM tidings.notifications n WHERE n.recipient = r.recipient)",
    )
    .fetch_one(&app.db)
    .await
    .expect("compare counters with the log");
    assert_eq!(
        broken, 0,
        "every counter row counts its recipient's dense log"
    );
    let verdict = tidings::audit::verify(&app.db, None).await.expect("verify");
    assert!(verdict.ok, "the chains verify: {:?}", verdict.broken);
}

#[tokio::test]
async fn a_writer_publishes_marks_read_and_reads_back_id_and_seq() {
    // Arrange
    let app = spawn_app().await;
    let mut session = writer(&app).await;

    // Act: a single row with RETURNING, a bulk insert, a keyed retry and a
    // read mark, all as the writer.
    let (id, seq): (i64, i64) = sqlx::query_as(
        "INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ('alice', 'k', '{}')
         RETURNING id, seq",
    )
    .fetch_one(&mut session)
    .await
    .expect("insert as the writer");
    sqlx::raw_sql(
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT 'r' || (i % 7), 'bulk' FROM generate_series(1, 700) i ORDER BY 1;
         INSERT INTO tidings.notifications (recipient, kind, idempotency_key)
         VALUES ('alice', 'keyed', '6f9619ff-8b86-d011-b42d-00c04fc964ff');
         INSERT INTO tidings.notifications (recipient, kind, idempotency_key)
         VALUES ('alice', 'keyed', '6f9619ff-8b86-d011-b42d-00c04fc964ff');",
    )
    .execute(&mut session)
    .await
    .expect("bulk and keyed inserts as the writer");
    let read_seq: i64 = sqlx::query_scalar(
        "INSERT INTO tidings.reads (recipient, notification_ids) VALUES ('alice', ARRAY[$1::int8])
         RETURNING seq",
    )
    .bind(id)
    .fetch_one(&mut session)
    .await
    .expect("mark read as the writer");

    // Assert
    assert_eq!(seq, 1);
    assert_eq!(
        read_seq, 3,
        "alice: the notification, the keyed one once, then the read"
    );
    assert_intact(&app).await;
}

#[tokio::test]
async fn a_writer_cannot_touch_counters_or_give_a_row_its_seq_id_hash_or_time() {
    // Arrange: bob has a log a writer could try to damage.
    let app = spawn_app().await;
    app.insert("bob", "first", json!({})).await;
    let mut session = writer(&app).await;
    let next_id: i64 = sqlx::query_scalar("SELECT max(id) + 1 FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("next id");

    // Act and assert: each attempt is refused for want of privilege.
    for sql in [
        "UPDATE tidings.recipients SET last_seq = 0 WHERE recipient = 'bob'".to_owned(),
        "INSERT INTO tidings.recipients (recipient, last_seq) VALUES ('carol', 100)".to_owned(),
        "INSERT INTO tidings.notifications (recipient, kind, seq) VALUES ('bob', 'k', 7)".to_owned(),
        "INSERT INTO tidings.notifications (recipient, kind, hash) VALUES ('bob', 'k', '\\x00')"
            .to_owned(),
        "INSERT INTO tidings.notifications (recipient, kind, created_at) VALUES ('bob', 'k', now())"
            .to_owned(),
        format!(
            "INSERT INTO tidings.notifications (id, recipient, kind) OVERRIDING SYSTEM VALUE
             VALUES ({next_id}, 'bob', 'k')"
        ),
        "INSERT INTO tidings.reads (recipient, notification_ids, seq) VALUES ('bob', '{1}', 9)"
            .to_owned(),
        "INSERT INTO tidings.read_marks (notification_id, recipient, read_seq, read_at)
         VALUES (1, 'bob', 1, now())"
            .to_owned(),
        "SELECT payload FROM tidings.notifications".to_owned(),
        "SELECT * FROM tidings.recipients".to_owned(),
        "SELECT tidings.lock_counter('bob')".to_owned(),
        "SELECT tidings.set_hints(false)".to_owned(),
    ] {
        assert_eq!(outcome(&mut session, &sql).await, "42501", "{sql}");
    }

    // Assert: bob's log and counter are as they were, and the ids the
    // writer reached for are still the sequence's to give.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tidings.notifications (recipient, kind) VALUES ('bob', 'next') RETURNING id",
    )
    .fetch_one(&app.db)
    .await
    .expect("the next append");
    assert!(id >= next_id);
    assert_intact(&app).await;
}

#[tokio::test]
async fn no_session_setting_makes_a_writer_skip_or_repeat_a_seq_or_move_another_counter() {
    // Arrange: alice and bob have logs; a writer's session claims, at
    // session level, every kind of state a trigger might keep - a bulk
    // cache far ahead, and a counter row position pointing at bob's row.
    let app = spawn_app().await;
    for who in ["alice", "bob"] {
        app.insert_many(who, 6).await;
    }
    let bob_row: String =
        sqlx::query_scalar("SELECT ctid::text FROM tidings.recipients WHERE recipient = 'bob'")
            .fetch_one(&app.db)
            .await
            .expect("bob's counter row");
    let mut session = writer(&app).await;
    sqlx::raw_sql(&format!(
        "SET tidings.cached_recipient = 'alice'; SET tidings.cached_seq = '100';
         SET tidings.cached_hash = '00'; SET tidings.unwritten = '94';
         SET tidings.counter = '{bob_row} alice';"
    ))
    .execute(&mut session)
    .await
    .expect("settings by hand");

    // Act: single rows and a bulk run for alice in that session, one of
    // them changing the settings between rows.
    let mut seqs: Vec<i64> = Vec::new();
    for _ in 0..2 {
        seqs.push(
            sqlx::query_scalar(
                "INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'k') RETURNING seq",
            )
            .fetch_one(&mut session)
            .await
            .expect("a single row"),
        );
    }
    let bulk: Vec<i64> = sqlx::query_scalar(&format!(
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT 'alice', set_config('tidings.counter', '{bob_row} alice', true)
                      || set_config('tidings.unwritten', '50', true)
           FROM generate_series(1, 20)
         RETURNING seq"
    ))
    .fetch_all(&mut session)
    .await
    .expect("a bulk run that rewrites the settings between rows");
    seqs.extend(bulk);

    // Assert: alice's log went on from 6 with no gap; bob's is untouched.
    assert_eq!(seqs, (7..=28).collect::<Vec<i64>>());
    let bob: i64 =
        sqlx::query_scalar("SELECT last_seq FROM tidings.recipients WHERE recipient = 'bob'")
            .fetch_one(&app.db)
            .await
            .expect("bob's counter");
    assert_eq!(bob, 6);
    assert_intact(&app).await;
}

#[tokio::test]
async fn a_long_run_of_one_recipient_is_numbered_densely_across_savepoints() {
    // Arrange
    let app = spawn_app().await;
    let mut session = writer(&app).await;

    // Act: one recipient's run in one statement, a second run in a
    // savepoint that rolls back, a third after it, in one transaction.
    let mut tx = session.begin().await.expect("begin");
    for (rows, keep) in [(3000, true), (500, false), (1000, true)] {
        sqlx::query("SAVEPOINT run")
            .execute(&mut *tx)
            .await
            .expect("savepoint");
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind)
             SELECT 'alice', 'bulk' FROM generate_series(1, $1)",
        )
        .bind(rows)
        .execute(&mut *tx)
        .await
        .expect("a run");
        let end = if keep {
            "RELEASE SAVEPOINT run"
        } else {
            "ROLLBACK TO SAVEPOINT run"
        };
        sqlx::query(end)
            .execute(&mut *tx)
            .await
            .expect("end the savepoint");
    }
    tx.commit().await.expect("commit");

    // Assert
    let last: i64 =
        sqlx::query_scalar("SELECT last_seq FROM tidings.recipients WHERE recipient = 'alice'")
            .fetch_one(&app.db)
            .await
            .expect("alice's counter");
    assert_eq!(last, 4000);
    assert_intact(&app).await;
}
