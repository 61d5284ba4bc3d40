//! Which tokens are accepted, from where, and what their claims grant: the
//! protocol's "Authentication" section (docs/protocol.md), plus the limits
//! on a `sub` and on the interval flags that would otherwise stall or crash
//! a server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tidings::config::{Cli, Role};
use tidings::http::auth::MAX_RECIPIENT_CHARS;

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::checks::assert_problem;
use crate::helpers::SECRET;

fn sign(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(u64::MAX)
}

fn url(app: &TestApp, path: &str) -> String {
    format!("{}{path}", app.address)
}

/// `GET path` with `token` as a Bearer header.
async fn get_with(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(url(app, path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn a_non_bearer_authorization_header_falls_through_to_the_query_parameter_and_cookie() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let inbox = url(&app, "/v1/notifications");

    let with_query = app
        .client
        .get(format!("{inbox}?access_token={token}"))
        .header("Authorization", "Basic YTpi")
        .send()
        .await
        .expect("query");
    let with_cookie = app
        .client
        .get(&inbox)
        .header("Authorization", "Digest username=\"a\"")
        .header("Cookie", format!("tidings_token={token}"))
        .send()
        .await
        .expect("cookie");
    let alone = app
        .client
        .get(&inbox)
        .header("Authorization", "Basic YTpi")
        .send()
        .await
        .expect("alone");

    assert_eq!(with_query.status(), 200);
    assert_eq!(with_cookie.status(), 200);
    assert_problem(alone, 401).await;
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_case_insensitively() {
    let app = spawn_app().await;
    let token = app.token("alice");

    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let response = app
            .client
            .get(url(&app, "/v1/notifications"))
            .header("Authorization", format!("{scheme} {token}"))
            .send()
            .await
            .expect("request");

        assert_eq!(response.status(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn a_bad_bearer_token_is_a_401_even_beside_a_valid_query_token_or_cookie() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let inbox = url(&app, "/v1/notifications");

    let beside_query = app
        .client
        .get(format!("{inbox}?access_token={token}"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .expect("query");
    let beside_cookie = app
        .client
        .get(&inbox)
        .header("Authorization", "Bearer")
        .header("Cookie", format!("tidings_token={token}"))
        .send()
        .await
        .expect("cookie");

    assert_problem(beside_query, 401).await;
    assert_problem(beside_cookie, 401).await;
}

#[tokio::test]
async fn a_token_with_an_audience_is_accepted() {
    let app = spawn_app().await;

    for aud in [json!("https://api.example.com"), json!(["a", "b"])] {
        let token = sign(json!({"sub": "alice", "exp": in_an_hour(), "aud": aud}));

        let response = get_with(&app, "/v1/notifications", &token).await;

        assert_eq!(response.status(), 200, "aud {aud}");
    }
}

#[tokio::test]
async fn unknown_roles_grant_nothing_but_do_not_invalidate_the_token() {
    let app = spawn_app().await;
    let admin = sign(json!({"sub": "alice", "exp": in_an_hour(), "roles": ["admin"]}));
    let mixed = sign(json!({"sub": "svc", "exp": in_an_hour(), "roles": ["admin", "publisher"]}));
    let publish = |token: &str| {
        app.client
            .post(url(&app, "/v1/notifications"))
            .bearer_auth(token)
            .json(&json!({"recipient": "alice", "kind": "k"}))
            .send()
    };

    let own_inbox = get_with(&app, "/v1/notifications", &admin).await;
    let refused = publish(&admin).await.expect("publish as admin");
    let published = publish(&mixed).await.expect("publish as mixed");

    assert_eq!(own_inbox.status(), 200);
    assert_problem(refused, 403).await;
    assert_eq!(published.status(), 201);
}

#[tokio::test]
async fn a_sub_the_database_cannot_hold_is_a_401_that_names_the_sub() {
    let app = spawn_app().await;
    let cases = [
        ("U+0000", "nul\u{0}sub".to_owned()),
        ("3 KB", "x".repeat(3 * 1024)),
        (
            "one character over the limit",
            "é".repeat(MAX_RECIPIENT_CHARS + 1),
        ),
    ];

    for (case, sub) in cases {
        let token = sign(json!({"sub": sub, "exp": in_an_hour()}));
        for path in ["/v1/stream", "/v1/notifications"] {
            let response = get_with(&app, path, &token).await;

            let problem = assert_problem(response, 401).await;
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("sub"), "{case} on {path}: {detail}");
        }
    }
}

/// Recipients at the length limit, each the worst case for one of the
/// database's limits: index entries (about 2700 bytes) hold the UTF-8, four
/// bytes for these characters, varied so they do not compress; NOTIFY
/// payloads (8000 bytes) carry it JSON-escaped, six bytes for a control
/// character.
fn longest_recipients() -> [String; 2] {
    let wide = (0..MAX_RECIPIENT_CHARS as u32)
        .filter_map(|i| char::from_u32(0x1_0000 + i * 97))
        .collect();
    let escaped = "\u{1}".repeat(MAX_RECIPIENT_CHARS);
    [wide, escaped]
}

#[tokio::test]
async fn a_sub_at_the_length_limit_can_stream_and_be_published_to() {
    // Such tokens are bigger than the default request head allows.
    let app = spawn_app_with(|s| s.max_request_head = 65_536).await;
    let publisher = app.token_with("svc", &[Role::Publisher]);
    let publish = |recipient: String| {
        app.client
            .post(url(&app, "/v1/notifications"))
            .bearer_auth(&publisher)
            .json(&json!({"recipient": recipient, "kind": "at-limit"}))
            .send()
    };

    for recipient in longest_recipients() {
        assert_eq!(recipient.chars().count(), MAX_RECIPIENT_CHARS);
        let mut stream = app.stream(&recipient, None).await;

        let published = publish(recipient.clone()).await.expect("publish");
        let too_long = publish(format!("{recipient}x")).await.expect("publish");

        assert_eq!(published.status(), 201);
        assert_eq!(stream.next().await.json()["kind"], "at-limit");
        assert_problem(too_long, 400).await;
    }
}

#[tokio::test]
async fn the_openapi_document_states_the_recipient_length_limit() {
    let app = spawn_app().await;

    let document: Value = app
        .client
        .get(url(&app, "/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("JSON");

    let recipient =
        &document["components"]["schemas"]["NewNotification"]["properties"]["recipient"];
    assert_eq!(recipient["maxLength"], MAX_RECIPIENT_CHARS);
}

/// Makes the database refuse to lease `recipient` with `sqlstate` after
/// `delay` seconds, as it would refuse a value it cannot store.
async fn refuse_leases_for(app: &TestApp, recipient: &str, sqlstate: &str, delay: f64) {
    let function = format!(
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN
             PERFORM pg_sleep({delay});
             RAISE EXCEPTION 'refused by test' USING ERRCODE = '{sqlstate}';
         END $$"
    );
    let trigger = format!(
        "CREATE TRIGGER test_refuse BEFORE INSERT OR UPDATE ON tidings.recipients
         FOR EACH ROW WHEN (NEW.recipient = '{recipient}') EXECUTE FUNCTION test_refuse()"
    );
    for statement in [function, trigger] {
        sqlx::query(&statement)
            .execute(&app.db)
            .await
            .expect("arrange refusal");
    }
}

#[tokio::test]
async fn a_stream_the_database_refuses_for_good_is_an_error_not_an_endless_200() {
    let app = spawn_app().await;
    refuse_leases_for(&app, "mallory", "54000", 0.0).await;

    let response = get_with(&app, "/v1/stream", &app.token("mallory")).await;

    assert_problem(response, 400).await;
}

#[tokio::test]
async fn a_stream_refused_for_good_after_answering_200_ends_instead_of_retrying() {
    let app = spawn_app().await;
    // Slower than the stream waits before answering 200 anyway.
    refuse_leases_for(&app, "mallory", "54000", 2.5).await;

    let mut stream = app.stream("mallory", None).await;

    assert!(stream.ended_within(Duration::from_secs(15)).await);
}

#[tokio::test]
async fn a_stream_rides_out_a_database_error_that_can_clear() {
    let app = spawn_app().await;
    refuse_leases_for(&app, "carol", "40001", 0.0).await;

    let mut stream = app.stream("carol", Some(0)).await;
    sqlx::query("DROP TRIGGER test_refuse ON tidings.recipients")
        .execute(&app.db)
        .await
        .expect("clear the refusal");
    app.insert("carol", "after", json!({})).await;

    assert_eq!(stream.next().await.json()["kind"], "after");
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("tidings").chain(args.iter().copied()))
}

#[test]
fn interval_flags_refuse_zero_and_absurd_lengths_with_a_clear_error() {
    for flag in ["--heartbeat", "--listener-check", "--sweep-interval"] {
        for value in ["0s", "0ms", "1ns", "25h", "500000000000y"] {
            for args in [vec!["serve", flag, value], vec![flag, value]] {
                let error = parse(&args).expect_err(&format!("{args:?} was accepted"));

                let message = error.to_string();
                assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
                assert!(message.contains(flag), "{message}");
                assert!(message.contains("between 1ms and 24h"), "{message}");
            }
        }
    }
}

#[test]
fn interval_flags_accept_lengths_from_a_millisecond_to_a_day() {
    for value in ["1ms", "500ms", "15s", "24h"] {
        let cli = parse(&[
            "serve",
            "--heartbeat",
            value,
            "--listener-check",
            value,
            "--sweep-interval",
            value,
        ])
        .expect("parses");

        let Some(tidings::config::Command::Serve(serve)) = cli.command else {
            panic!("not serve");
        };
        let expected = humantime::parse_duration(value).expect("duration");
        assert_eq!(serve.heartbeat, expected);
        assert_eq!(serve.listener_check, expected);
        assert_eq!(serve.sweep_interval, expected);
    }
}
