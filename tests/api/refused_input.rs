//! What PostgreSQL refuses in a notification, walked class by class: each
//! case is first inserted with plain SQL, to pin down the SQLSTATE the
//! database gives for it (22 data exception, 23 integrity constraint, 54
//! program limit), then published over HTTP, where it must be a 400 problem
//! document - never a 500 - and store nothing.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tidings::config::Role;

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::checks::{assert_problem, header};
use crate::helpers::cluster::as_owner;

/// One notification PostgreSQL refuses, and the SQLSTATE it refuses it with.
struct Case {
    what: &'static str,
    recipient: String,
    kind: String,
    /// JSON text.
    payload: String,
    sqlstate: &'static str,
}

fn case(what: &'static str, payload: String, sqlstate: &'static str) -> Case {
    Case {
        what,
        recipient: "alice".into(),
        kind: "k".into(),
        payload,
        sqlstate,
    }
}

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Objects with an empty key: short enough when printed (6 bytes a level)
/// that only the depth is refused, not the size.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"": "#.repeat(depth), "}".repeat(depth))
}

fn cases() -> Vec<Case> {
    vec![
        case("arrays nested 20,000 deep", nested_arrays(20_000), "54001"),
        case(
            "objects nested 20,000 deep",
            nested_objects(20_000),
            "54001",
        ),
        case(
            "a number beyond numeric's scale",
            "[1e-20000]".into(),
            "22003",
        ),
        case("a number too large to print", "[1e999999]".into(), "22003"),
        case("U+0000 in a string", r#"{"a": "\u0000"}"#.into(), "22P05"),
        case(
            "a lone high surrogate",
            r#"{"a": "\ud800"}"#.into(),
            "22P02",
        ),
        case("a lone low surrogate", r#"["\udc00"]"#.into(), "22P02"),
        case(
            "a payload printing over 128 KiB",
            "[1e131070]".into(),
            "23514",
        ),
        Case {
            kind: "k\0".into(),
            ..case("U+0000 in the kind", "{}".into(), "22021")
        },
        Case {
            recipient: "nul\0".into(),
            ..case("U+0000 in the recipient", "{}".into(), "22021")
        },
        Case {
            // Random, so that PostgreSQL cannot compress it to fit.
            recipient: (0..300)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect(),
            ..case("a recipient too long to index", "{}".into(), "54000")
        },
    ]
}

/// The SQLSTATE PostgreSQL refuses `case` with, inserted as an app would.
async fn sqlstate_of_sql_insert(db: &PgPool, case: &Case) -> String {
    let inserted = sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, $2, $3::jsonb)",
    )
    .bind(&case.recipient)
    .bind(&case.kind)
    .bind(&case.payload)
    .execute(db)
    .await;
    match inserted {
        Err(sqlx::Error::Database(refused)) => refused.code().unwrap_or_default().into_owned(),
        other => panic!("{}: not refused by the database: {other:?}", case.what),
    }
}

/// `POST /v1/notifications` with `body`, as a publisher.
async fn publish(app: &TestApp, body: String) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/notifications", app.address))
        .bearer_auth(app.token_with("service", &[Role::Publisher]))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("post")
}

fn body_of(case: &Case) -> String {
    format!(
        r#"{{"recipient": {}, "kind": {}, "payload": {}}}"#,
        json!(case.recipient),
        json!(case.kind),
        case.payload
    )
}

/// Nothing stored and no recipient's counter moved.
async fn assert_nothing_stored(db: &PgPool) {
    let (notifications, counters): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tidings.notifications),
                (SELECT count(*) FROM tidings.recipients WHERE last_seq > 0)",
    )
    .fetch_one(db)
    .await
    .expect("counts");
    assert_eq!((notifications, counters), (0, 0), "something was stored");
}

#[tokio::test]
async fn every_sqlstate_class_a_notification_can_cause_is_a_400_that_stores_nothing() {
    let app = spawn_app().await;
    let mut wrong = Vec::new();

    for case in cases() {
        let sqlstate = sqlstate_of_sql_insert(&app.db, &case).await;
        let response = publish(&app, body_of(&case)).await;

        let (status, kind) = (response.status(), header(&response, "content-type"));
        let detail = response.text().await.unwrap_or_default();
        println!("{} (SQL: {sqlstate}): HTTP {status} {detail}", case.what);
        if sqlstate != case.sqlstate || status != 400 || kind != "application/problem+json" {
            wrong.push(format!("{}: SQLSTATE {sqlstate}, HTTP {status}", case.what));
        }
    }

    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_nothing_stored(&app.db).await;
}

#[tokio::test]
async fn a_payload_too_deep_for_the_databases_stack_is_a_400_not_a_500() {
    // A database whose stack is smaller than usual (`max_stack_depth` is
    // the server's to set; here, for tidings' connections only, which only
    // a superuser may, so they log in as one) refuses nesting the
    // publisher lets through: its refusal (54001) must still be the
    // client's 400.
    let app = spawn_app_with(|s| {
        s.database = as_owner(&s.database).options([("max_stack_depth", "100kB")]);
    })
    .await;
    for payload in [nested_arrays(5_000), nested_objects(5_000)] {
        let body = format!(r#"{{"recipient": "alice", "kind": "k", "payload": {payload}}}"#);

        let response = publish(&app, body).await;

        let problem = assert_problem(response, 400).await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("stack depth"), "{detail}");
    }
    assert_nothing_stored(&app.db).await;
}

#[tokio::test]
async fn the_publisher_refuses_nesting_beyond_its_bound_before_the_database_and_accepts_it_up_to_there(
) {
    let app = spawn_app().await;
    let max = tidings::http::publish::MAX_PAYLOAD_DEPTH;
    let at_bound = format!(
        r#"{{"recipient": "alice", "kind": "k", "payload": {}}}"#,
        nested_arrays(max)
    );
    // Brackets inside strings are text, not nesting.
    let in_strings = format!(
        r#"{{"recipient": "alice", "kind": "k", "payload": ["{}", "\"]["]}}"#,
        "[".repeat(max + 1)
    );
    let beyond = format!(
        r#"[{{"recipient": "alice", "kind": "k"}}, {{"recipient": "bob", "kind": "k", "payload": {}}}]"#,
        nested_objects(max + 1)
    );

    let accepted = publish(&app, at_bound).await;
    let with_brackets_in_strings = publish(&app, in_strings).await;
    let refused = publish(&app, beyond).await;

    assert_eq!(accepted.status(), 201);
    assert_eq!(with_brackets_in_strings.status(), 201);
    let problem = assert_problem(refused, 400).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("notification 1: "), "{detail}");
    assert!(detail.contains(&format!("{max} levels")), "{detail}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(stored, 2, "the refused batch stored nothing");
}

#[tokio::test]
async fn a_body_beyond_the_request_limit_is_a_413_problem() {
    let app = spawn_app().await;
    let payload = json!({"pad": "x".repeat(3 * 1024 * 1024)});
    let body = format!(r#"{{"recipient": "alice", "kind": "k", "payload": {payload}}}"#);

    let response = publish(&app, body).await;

    assert_problem(response, 413).await;
    assert_nothing_stored(&app.db).await;
}

#[tokio::test]
async fn read_marks_for_the_longest_recipients_and_any_id_never_fail_with_a_5xx() {
    let app = spawn_app().await;
    let longest = "\u{1D11E}".repeat(tidings::http::auth::MAX_RECIPIENT_CHARS);
    let (id, _) = app.insert(&longest, "k", json!({})).await;

    let read_all = app.post("/v1/notifications/read-all", &longest).send();
    let read_one = app
        .post(&format!("/v1/notifications/{id}/read"), &longest)
        .send();
    let (read_all, read_one) = tokio::join!(read_all, read_one);
    assert_eq!(read_all.expect("read-all").status(), 204);
    assert_eq!(read_one.expect("read").status(), 204);
    for id in [
        "9223372036854775807",
        "9223372036854775808",
        "-0",
        "1e3",
        "%00",
    ] {
        let response = app
            .post(&format!("/v1/notifications/{id}/read"), &longest)
            .send()
            .await
            .expect("read");
        assert_problem(response, 404).await;
    }
}
