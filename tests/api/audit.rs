//! Tamper evidence: every event is chained to its predecessor by SHA-256 in
//! the database, and `tidings verify` / `GET /v1/audit/verify` find the
//! first broken link after a superuser edits, deletes or reorders history.

use std::process::Command;

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::helpers::app::{spawn_app, TestApp};
use crate::helpers::checks::assert_problem;
use crate::helpers::cluster::url_of;
use tidings::config::Role;

async fn history(app: &TestApp) {
    for n in 1..=4 {
        app.insert("alice", "k", json!({"n": n})).await;
    }
    app.insert("bob", "k", json!({})).await;
    app.post("/v1/notifications/1/read", "alice")
        .send()
        .await
        .expect("read");
    app.insert("alice", "k", json!({"n": 5})).await;
}

async fn verify_api(app: &TestApp, recipient: Option<&str>) -> Value {
    let mut url = format!("{}/v1/audit/verify", app.address);
    if let Some(recipient) = recipient {
        url.push_str(&format!("?recipient={recipient}"));
    }
    let token = app.token_with("auditor", &[Role::Auditor]);
    let response = app
        .client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("verify");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

fn verify_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let url = url_of(app.db.connect_options().as_ref());
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("verify")
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run tidings verify");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs `statement` as a superuser with the append-only guard switched off.
async fn tamper(app: &TestApp, statement: &str) {
    let mut tx = app.db.begin().await.expect("begin");
    for table in ["notifications", "reads", "read_marks"] {
        sqlx::query(&format!(
            "ALTER TABLE tidings.{table} DISABLE TRIGGER append_only"
        ))
        .execute(&mut *tx)
        .await
        .expect("disable");
    }
    sqlx::query(statement)
        .execute(&mut *tx)
        .await
        .expect("tamper");
    for table in ["notifications", "reads", "read_marks"] {
        sqlx::query(&format!(
            "ALTER TABLE tidings.{table} ENABLE TRIGGER append_only"
        ))
        .execute(&mut *tx)
        .await
        .expect("enable");
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_clean_history_verifies_through_the_api_and_the_cli() {
    let app = spawn_app().await;
    history(&app).await;

    let verdict = verify_api(&app, None).await;
    let (cli_ok, cli_out) = verify_cli(&app, &[]);

    assert_eq!(
        verdict,
        json!({"ok": true, "recipients": 2, "events": 7, "broken": null})
    );
    assert!(cli_ok, "{cli_out}");
    assert_eq!(verify_api(&app, Some("bob")).await["events"], 1);
}

/// Every way of appending at once, each through its own path in the
/// trigger: bulk statements sorted (runs of cache hits) and interleaved (a
/// miss per row), keys with repeats, a savepoint rolled back, reads, a
/// streamed recipient (whose appends hint), writers sharing recipients
/// concurrently, and HTTP publishes and read marks.
async fn load(app: &TestApp) {
    let _streamed = app.stream("streamed", None).await;
    for statement in [
        "INSERT INTO tidings.notifications (recipient, kind, payload)
         SELECT 'r' || (i % 40), 'sorted', jsonb_build_object('i', i)
           FROM generate_series(1, 2000) AS i ORDER BY 1",
        "INSERT INTO tidings.notifications (recipient, kind, payload)
         SELECT 'r' || (i % 40), 'interleaved', jsonb_build_object('i', i)
           FROM generate_series(1, 1000) AS i",
        "INSERT INTO tidings.notifications (recipient, kind, idempotency_key)
         SELECT 'k' || (i % 2), 'keyed', md5((i % 4)::text)::uuid
           FROM generate_series(1, 12) AS i ORDER BY 1",
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT 'streamed', 'run' FROM generate_series(1, 20)",
        "INSERT INTO tidings.reads (recipient, notification_ids)
         SELECT recipient, (array_agg(id ORDER BY id))[1:10]
           FROM tidings.notifications GROUP BY recipient ORDER BY recipient",
    ] {
        sqlx::query(statement)
            .execute(&app.db)
            .await
            .expect(statement);
    }
    let mut tx = app.db.begin().await.expect("begin");
    for statement in [
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT r, 'kept' FROM unnest('{r1,r1,r2}'::text[]) AS r",
        "SAVEPOINT s",
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT r, 'undone' FROM unnest('{r1,r2,r2}'::text[]) AS r",
        "ROLLBACK TO SAVEPOINT s",
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT r, 'after' FROM unnest('{r2,r1,streamed}'::text[]) AS r",
    ] {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .expect(statement);
    }
    tx.commit().await.expect("commit");
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let db = app.db.clone();
            tokio::spawn(async move {
                for n in 0..25 {
                    sqlx::query(
                        "INSERT INTO tidings.notifications (recipient, kind) VALUES ($1, 'concurrent')",
                    )
                    .bind(format!("r{}", (writer + n) % 5))
                    .execute(&db)
                    .await
                    .expect("a concurrent append");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let publisher = app.token_with("svc", &[Role::Publisher]);
    let published = app
        .client
        .post(format!("{}/v1/notifications", app.address))
        .bearer_auth(publisher)
        .json(&json!([
            {"recipient": "streamed", "kind": "http"},
            {"recipient": "r5", "kind": "http", "idempotency_key": uuid::Uuid::new_v4()},
        ]))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 201);
    let unread: i64 =
        sqlx::query_scalar("SELECT max(id) FROM tidings.notifications WHERE recipient = 'r5'")
            .fetch_one(&app.db)
            .await
            .expect("r5's latest");
    let read = app
        .post(&format!("/v1/notifications/{unread}/read"), "r5")
        .send()
        .await
        .expect("read");
    assert!(read.status().is_success(), "{}", read.status());
}

#[tokio::test]
async fn verify_is_clean_on_a_fresh_database_and_on_a_loaded_one() {
    let app = spawn_app().await;
    let fresh_api = verify_api(&app, None).await;
    let (fresh_cli_ok, fresh_cli_out) = verify_cli(&app, &[]);
    assert_eq!(
        fresh_api,
        json!({"ok": true, "recipients": 0, "events": 0, "broken": null})
    );
    assert!(fresh_cli_ok, "{fresh_cli_out}");

    load(&app).await;
    let (events, recipients): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT recipient) FROM tidings.events")
            .fetch_one(&app.db)
            .await
            .expect("what the load appended");

    let loaded_api = verify_api(&app, None).await;
    let (loaded_cli_ok, loaded_cli_out) = verify_cli(&app, &[]);

    assert!(events > 3000 && recipients > 40, "{events} / {recipients}");
    assert_eq!(
        loaded_api,
        json!({"ok": true, "recipients": recipients, "events": events, "broken": null})
    );
    assert!(loaded_cli_ok, "{loaded_cli_out}");
}

#[tokio::test]
async fn chains_of_awkward_text_verify_byte_for_byte() {
    // Arrange: the triggers build each event's canonical text one way and
    // the verifier another (docs/schema.md); any byte they disagree on
    // breaks the chain. So: quotes, backslashes, control characters,
    // non-ASCII, nesting, numbers jsonb normalizes, keys, single rows and
    // runs, and a read in between.
    let app = spawn_app().await;
    let awkward = [
        "tab\there \"quoted\" back\\slash",
        "\u{1}\u{1f}\u{7f} control",
        "é ü 中文 🦀 \u{2028}",
        "",
    ];
    for (n, text) in awkward.iter().enumerate() {
        let (recipient, kind) = (format!("r\"{text}"), format!("k{text}"));
        let mut payload = serde_json::Map::new();
        payload.insert(
            text.to_string(),
            json!([text, n, 1.50, 1e300, null, true, {"": {}}]),
        );
        payload.insert("z".into(), json!(-0.0));
        let payload = Value::Object(payload);
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind, payload, idempotency_key)
             SELECT $1, $2, $3, CASE WHEN i = 2 THEN gen_random_uuid() END
               FROM generate_series(1, 3) AS i",
        )
        .bind(&recipient)
        .bind(&kind)
        .bind(&payload)
        .execute(&app.db)
        .await
        .expect("a run of awkward rows");
        app.insert(&recipient, &kind, payload).await;
        sqlx::query(
            "INSERT INTO tidings.reads (recipient, notification_ids)
             SELECT recipient, array_agg(id) FROM tidings.notifications
              WHERE recipient = $1 AND seq <= 2 GROUP BY recipient",
        )
        .bind(&recipient)
        .execute(&app.db)
        .await
        .expect("a read");
        app.insert(&recipient, &kind, json!(text)).await;
    }

    // Act
    let verdict = verify_api(&app, None).await;

    // Assert
    assert_eq!(
        verdict,
        json!({"ok": true, "recipients": 4, "events": 4 * 6, "broken": null})
    );
}

#[tokio::test]
async fn an_edited_payload_is_caught_at_its_seq() {
    let app = spawn_app().await;
    history(&app).await;

    tamper(&app, "UPDATE tidings.notifications SET payload = '{\"n\": 200}' WHERE recipient = 'alice' AND seq = 2").await;
    let verdict = verify_api(&app, Some("alice")).await;
    let (cli_ok, cli_out) = verify_cli(&app, &["--recipient", "alice"]);

    assert_eq!(verdict["ok"], false);
    assert_eq!(verdict["broken"]["recipient"], "alice");
    assert_eq!(verdict["broken"]["seq"], 2);
    assert!(verdict["broken"]["problem"]
        .as_str()
        .unwrap_or_default()
        .contains("hash mismatch"));
    assert_ne!(verdict["broken"]["expected"], verdict["broken"]["found"]);
    assert!(!cli_ok);
    assert!(cli_out.contains("\"seq\": 2"), "{cli_out}");
}

#[tokio::test]
async fn a_deleted_event_is_caught() {
    let app = spawn_app().await;
    history(&app).await;

    tamper(
        &app,
        "DELETE FROM tidings.notifications WHERE recipient = 'alice' AND seq = 3",
    )
    .await;
    let verdict = verify_api(&app, None).await;

    assert_eq!(verdict["broken"]["seq"], 3);
    assert_eq!(verdict["broken"]["problem"], "event missing");
}

#[tokio::test]
async fn a_deleted_last_event_is_caught_by_the_counter() {
    let app = spawn_app().await;
    history(&app).await;

    tamper(
        &app,
        "DELETE FROM tidings.notifications WHERE recipient = 'alice' AND seq = 6",
    )
    .await;
    let verdict = verify_api(&app, Some("alice")).await;

    assert_eq!(verdict["broken"]["seq"], 6);
    assert_eq!(
        verdict["broken"]["problem"],
        "events missing at the end of the chain"
    );
}

/// The counter row is where the next append continues from (C1): any edit
/// that leaves it disagreeing with the chain's end is caught.
#[tokio::test]
async fn a_counter_row_that_does_not_continue_the_chain_is_caught() {
    // (edit, recipient, seq, problem, expected, found); alice has 5
    // notifications and 1 read mark (seq 1-6), bob 1 notification.
    let cases = [
        (
            "UPDATE tidings.recipients SET read = read + 1 WHERE recipient = 'alice'",
            "alice",
            6,
            "counter totals disagree with the chain (notifications, read)",
            "5, 1",
            "5, 2",
        ),
        (
            "UPDATE tidings.recipients SET last_seq = 5 WHERE recipient = 'alice'",
            "alice",
            6,
            "counter behind the chain",
            "6",
            "5",
        ),
        (
            "UPDATE tidings.recipients SET last_hash = '\\x00' WHERE recipient = 'alice'",
            "alice",
            6,
            "counter hash is not the chain's head",
            "",
            "00",
        ),
        (
            "DELETE FROM tidings.recipients WHERE recipient = 'bob'",
            "bob",
            1,
            "no counter row for a recipient with events",
            "1",
            "none",
        ),
    ];
    for (edit, recipient, seq, problem, expected, found) in cases {
        let app = spawn_app().await;
        history(&app).await;

        tamper(&app, edit).await;
        let broken = &verify_api(&app, None).await["broken"];

        assert_eq!(broken["recipient"], recipient, "{edit}");
        assert_eq!(broken["seq"], seq, "{edit}");
        assert_eq!(broken["problem"], problem, "{edit}");
        if !expected.is_empty() {
            assert_eq!(broken["expected"], expected, "{edit}");
        }
        assert_eq!(broken["found"], found, "{edit}");
    }
}

#[tokio::test]
async fn reordered_events_are_caught() {
    let app = spawn_app().await;
    history(&app).await;

    tamper(
        &app,
        "UPDATE tidings.notifications SET seq = -seq WHERE recipient = 'alice' AND seq IN (2, 3)",
    )
    .await;
    tamper(&app, "UPDATE tidings.notifications SET seq = 5 + seq WHERE recipient = 'alice' AND seq IN (-2, -3)").await;
    let verdict = verify_api(&app, Some("alice")).await;

    assert_eq!(verdict["ok"], false);
    assert_eq!(verdict["broken"]["seq"], 2);
}

#[tokio::test]
async fn verify_whose_reader_stops_early_keeps_its_verdict_and_does_not_panic() {
    // Arrange: heads to print, and a reader that is gone before the first.
    let app = spawn_app().await;
    history(&app).await;
    let url = url_of(app.db.connect_options().as_ref());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["verify", "--heads"])
        .env("DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tidings verify");

    // Act: the pipe's reading end closes (`| head -0`).
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");

    // Assert
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[tokio::test]
async fn a_chain_rewritten_to_its_end_verifies_again_but_its_head_changes() {
    let app = spawn_app().await;
    history(&app).await;
    let (_, heads_before) = verify_cli(&app, &["--heads"]);

    // A superuser edits seq 2 and recomputes every later link and the
    // counter's copy of the head: what the chain alone cannot catch, and
    // why the heads are kept elsewhere.
    tamper(&app, "UPDATE tidings.notifications SET payload = '{\"n\": 200}' WHERE recipient = 'alice' AND seq = 2").await;
    let rewrite = r#"
        DO $$
        DECLARE e record; previous bytea := '\x';
        BEGIN
          FOR e IN SELECT type, id FROM tidings.audit_log WHERE recipient = 'alice' ORDER BY seq LOOP
            IF e.type = 'notification' THEN
              UPDATE tidings.notifications n SET hash = sha256(previous || tidings.canonical(n)) WHERE n.id = e.id RETURNING hash INTO previous;
            ELSE
              UPDATE tidings.reads r SET hash = sha256(previous || tidings.canonical(r)) WHERE r.id = e.id RETURNING hash INTO previous;
            END IF;
          END LOOP;
          UPDATE tidings.recipients SET last_hash = previous WHERE recipient = 'alice';
        END $$"#;
    tamper(&app, rewrite).await;
    let verdict = verify_api(&app, None).await;
    let (_, heads_after) = verify_cli(&app, &["--heads"]);

    assert_eq!(verdict["ok"], true, "a full rewrite is consistent");
    let head = |heads: &str, who: &str| {
        heads
            .lines()
            .find(|l| l.starts_with(&format!("{who}\t")))
            .map(str::to_owned)
    };
    assert_ne!(
        head(&heads_before, "alice"),
        head(&heads_after, "alice"),
        "but alice's head moved"
    );
    assert_eq!(head(&heads_before, "bob"), head(&heads_after, "bob"));
    assert!(head(&heads_before, "alice").is_some_and(|h| h.split('\t').count() == 3));
}

#[tokio::test]
async fn verify_needs_the_auditor_role() {
    let app = spawn_app().await;
    let url = format!("{}/v1/audit/verify", app.address);

    let anonymous = app.client.get(&url).send().await.expect("request");
    let recipient = app
        .client
        .get(&url)
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .expect("request");

    assert_problem(anonymous, 401).await;
    assert_problem(recipient, 403).await;
}

#[tokio::test]
async fn the_tidings_auditor_role_reads_the_audit_log_and_nothing_else() {
    let app = spawn_app().await;
    history(&app).await;
    let login = format!("auditor_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE ROLE {login} LOGIN"))
        .execute(&app.db)
        .await
        .expect("create role");
    sqlx::query(&format!("GRANT tidings_auditor TO {login}"))
        .execute(&app.db)
        .await
        .expect("grant");

    let options: PgConnectOptions = app.db.connect_options().as_ref().clone().username(&login);
    let mut auditor = options.connect().await.expect("connect as the auditor");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.audit_log")
        .fetch_one(&mut auditor)
        .await
        .expect("read the view");
    let table = sqlx::query("SELECT * FROM tidings.notifications")
        .execute(&mut auditor)
        .await;
    let write =
        sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('x', 'y')")
            .execute(&mut auditor)
            .await;
    auditor.close().await.expect("close");

    assert_eq!(rows, 7);
    assert!(table.is_err(), "the tables themselves are not readable");
    assert!(write.is_err(), "nothing is writable");
}

#[tokio::test]
async fn redefining_the_databases_canonical_functions_does_not_hide_an_edit_from_verify() {
    // Arrange: a superuser edits alice's seq 2, then redefines the
    // functions the triggers encode events with, so that they print the
    // forged row as the original: recomputed by the database, its hash
    // matches again.
    let app = spawn_app().await;
    history(&app).await;
    tamper(&app, "UPDATE tidings.notifications SET payload = '{\"n\": 200}' WHERE recipient = 'alice' AND seq = 2").await;
    let forge = r#"
        CREATE OR REPLACE FUNCTION tidings.notification_text(recipient text, seq bigint, id bigint, kind text,
                payload jsonb, idempotency_key uuid, created_at timestamptz) RETURNS bytea
        LANGUAGE sql STABLE AS $$
            SELECT convert_to(json_build_array('notification', recipient, seq, id, kind,
                CASE WHEN payload = '{"n": 200}' THEN '{"n": 2}'::jsonb ELSE payload END,
                idempotency_key, (extract(epoch FROM created_at) * 1000000)::bigint)::text, 'UTF8');
        $$;
        CREATE OR REPLACE FUNCTION tidings.canonical(n tidings.notifications) RETURNS bytea
        LANGUAGE sql STABLE AS $$
            SELECT tidings.notification_text(n.recipient, n.seq, n.id, n.kind, n.payload,
                n.idempotency_key, n.created_at);
        $$;
    "#;
    sqlx::raw_sql(forge).execute(&app.db).await.expect("forge");
    let fooled: bool = sqlx::query_scalar(
        "SELECT n.hash = sha256(p.hash || tidings.canonical(n))
           FROM tidings.notifications n, tidings.notifications p
          WHERE n.recipient = 'alice' AND n.seq = 2 AND p.recipient = 'alice' AND p.seq = 1",
    )
    .fetch_one(&app.db)
    .await
    .expect("the database's own check");
    assert!(
        fooled,
        "the forgery fools anything that trusts these functions"
    );

    // Act
    let verdict = verify_api(&app, Some("alice")).await;
    let (cli_ok, cli_out) = verify_cli(&app, &["--recipient", "alice"]);

    // Assert
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["broken"]["seq"], 2, "{verdict}");
    assert!(!cli_ok);
    assert!(cli_out.contains("\"seq\": 2"), "{cli_out}");
}

/// I9 (migrations/0001_schema.sql): the auditor reads `tidings.audit_log`
/// and nothing else - not the tables and views behind it, not
/// `set_hints` (EXECUTE revoked from PUBLIC; the call would fail
/// anyway, on redefining `send_hint`) - and holds no privilege to write
/// through the view. (Writes to it fail with 55000
/// before privileges are checked, as a UNION view is not updatable; the
/// privilege check is what would still hold if it ever became so.)
#[tokio::test]
async fn the_tidings_auditor_role_may_not_read_the_tables_call_set_hints_or_write_the_view() {
    let app = spawn_app().await;
    history(&app).await;
    let login = format!("auditor_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {login} LOGIN; GRANT tidings_auditor TO {login}"
    ))
    .execute(&app.db)
    .await
    .expect("an auditor login");
    let hidden: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
          WHERE s.nspname = 'tidings' AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')
            AND c.relname <> 'audit_log' ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .expect("the schema's relations");
    for table in ["notifications", "reads", "read_marks", "recipients"] {
        assert!(hidden.iter().any(|h| h == table), "{table}: {hidden:?}");
    }
    let mut denied: Vec<String> = hidden
        .iter()
        .map(|relation| format!("SELECT * FROM tidings.{relation}"))
        .collect();
    denied.push("SELECT tidings.set_hints(false)".into());
    let writes = [
        "UPDATE tidings.audit_log SET kind = 'forged'",
        "DELETE FROM tidings.audit_log",
        "INSERT INTO tidings.audit_log (type, recipient, kind) VALUES ('notification', 'x', 'y')",
    ];

    let options: PgConnectOptions = app.db.connect_options().as_ref().clone().username(&login);
    let mut auditor = options.connect().await.expect("connect as the auditor");
    let mut allowed = Vec::new();
    for statement in &denied {
        let outcome = sqlx::query(statement).execute(&mut auditor).await;
        if sqlstate(&outcome).as_deref() != Some("42501") {
            allowed.push(format!("{statement}: {outcome:?}"));
        }
    }
    for statement in writes {
        let outcome = sqlx::query(statement).execute(&mut auditor).await;
        if outcome.is_ok() {
            allowed.push(format!("{statement}: {outcome:?}"));
        }
    }
    let held: (bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege(current_user, 'tidings.audit_log',
                    'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'),
                has_function_privilege(current_user, 'tidings.set_hints(boolean)', 'EXECUTE')",
    )
    .fetch_one(&mut auditor)
    .await
    .expect("privileges");
    auditor.close().await.expect("close");

    assert!(allowed.is_empty(), "not refused: {allowed:#?}");
    assert_eq!(
        held,
        (false, false),
        "(a write privilege on the view, EXECUTE on set_hints)"
    );
}

/// The SQLSTATE an outcome failed with, if it failed in the database.
fn sqlstate<T>(outcome: &Result<T, sqlx::Error>) -> Option<String> {
    outcome
        .as_ref()
        .err()
        .and_then(|error| error.as_database_error())
        .and_then(|error| error.code())
        .map(|code| code.into_owned())
}
