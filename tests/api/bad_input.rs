//! Bad input gets a clear 4xx problem document, and stores nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::checks::assert_problem;
use crate::helpers::SECRET;

async fn stream_with_last_event_id(app: &TestApp, value: &str) -> reqwest::Response {
    app.get("/v1/stream", "alice")
        .header("Last-Event-ID", value)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn a_malformed_last_event_id_is_a_400() {
    let app = spawn_app().await;
    for bad in ["abc", "-1", "1.5", "99999999999999999999999", "0x10", "+3"] {
        let response = stream_with_last_event_id(&app, bad).await;
        let problem = assert_problem(response, 400).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("Last-Event-ID"),
            "{bad}: {problem}"
        );
    }
    let query = app
        .get("/v1/stream?last_event_id=nope", "alice")
        .send()
        .await
        .expect("request");
    assert_problem(query, 400).await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sign(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn unsigned(claims: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[tokio::test]
async fn bad_tokens_are_a_401() {
    let app = spawn_app().await;
    let cases = [
        (
            "expired",
            sign(json!({"sub": "alice", "exp": now() - 3600}), SECRET),
        ),
        (
            "wrong signature",
            sign(
                json!({"sub": "alice", "exp": now() + 3600}),
                "another-secret",
            ),
        ),
        (
            "alg none",
            unsigned(json!({"sub": "alice", "exp": now() + 3600})),
        ),
        ("missing exp", sign(json!({"sub": "alice"}), SECRET)),
        (
            "empty sub",
            sign(json!({"sub": "", "exp": now() + 3600}), SECRET),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (case, token) in cases {
        for path in ["/v1/stream", "/v1/notifications"] {
            let response = app
                .client
                .get(format!("{}{path}", app.address))
                .bearer_auth(&token)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 401, "{case} on {path}");
            assert_problem(response, 401).await;
        }
    }
    let other_scheme = app
        .client
        .get(format!("{}/v1/notifications", app.address))
        .header("Authorization", "Basic YTpi")
        .send()
        .await
        .expect("request");
    assert_problem(other_scheme, 401).await;
}

#[tokio::test]
async fn bad_publish_bodies_are_a_400_and_store_nothing() {
    let app = spawn_app().await;
    let token = app.token_with("service", &[tidings::config::Role::Publisher]);
    let url = format!("{}/v1/notifications", app.address);
    let bodies = [
        "{not json",
        r#"{"recipient": "", "kind": "k"}"#,
        r#"{"recipient": "alice", "kind": ""}"#,
        r#"{"recipient": "alice"}"#,
        r#"{"recipient": "alice", "kind": "k", "idempotency_key": "not-a-uuid"}"#,
        r#"[{"recipient": "alice", "kind": "k"}, {"recipient": "", "kind": "k"}]"#,
        r#"[]"#,
        r#"{"recipient": "alice", "kind": "k", "payload": {"text": "nul \u0000"}}"#,
        // Text PostgreSQL cannot hold, refused by the database itself.
        r#"{"recipient": "nul \u0000", "kind": "k"}"#,
        r#"{"recipient": "alice", "kind": "k", "payload": {"lone": "\ud800"}}"#,
    ];
    for body in bodies {
        let response = app
            .client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400, "{body}");
        assert_problem(response, 400).await;
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn a_body_not_sent_as_json_is_a_415_and_stores_nothing() {
    // Arrange: a valid notification, sent as text.
    let app = spawn_app().await;
    let token = app.token_with("service", &[tidings::config::Role::Publisher]);

    // Act
    let as_text = app
        .client
        .post(format!("{}/v1/notifications", app.address))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(r#"{"recipient": "alice", "kind": "k"}"#)
        .send()
        .await
        .expect("post");

    // Assert
    assert_problem(as_text, 415).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tidings.notifications")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn publishing_needs_the_publisher_role() {
    let app = spawn_app().await;
    let response = app
        .post("/v1/notifications", "alice")
        .json(&json!({"recipient": "bob", "kind": "k"}))
        .send()
        .await
        .expect("post");
    assert_problem(response, 403).await;
}

#[tokio::test]
async fn unknown_notification_ids_are_a_404() {
    let app = spawn_app().await;
    for id in ["12345", "abc", "-1"] {
        let response = app
            .post(&format!("/v1/notifications/{id}/read"), "alice")
            .send()
            .await
            .expect("post");
        assert_problem(response, 404).await;
    }
}

#[tokio::test]
async fn bad_inbox_parameters_are_a_400() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=100000",
        "limit=x",
        "before=-2",
        "before=x",
        "limit=",
        "limit=1&limit=2",
    ] {
        let response = app
            .get(&format!("/v1/notifications?{query}"), "alice")
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 400, "{query}");
        assert_problem(response, 400).await;
    }
}

#[tokio::test]
async fn bad_audit_parameters_are_a_400() {
    let app = spawn_app().await;
    let auditor = app.token_with("auditor", &[tidings::config::Role::Auditor]);
    for query in [
        "events?type=",
        "events?type=other",
        "events?after=",
        "events?after=%2B1.n.1",
        "events?after=99999999999999999.n.1",
        "events?from=yesterday",
        "events?limit=",
        "events?limit=1&limit=2",
        "inbox?recipient=alice",
        "inbox?recipient=alice&at=",
    ] {
        let response = app
            .client
            .get(format!("{}/v1/audit/{query}", app.address))
            .bearer_auth(&auditor)
            .send()
            .await
            .expect("get");
        assert_problem(response, 400).await;
    }
}

/// `--max-request-head` bounds request line and headers (and with them
/// each connection's read buffer): beyond it, 431; raised, big cookies pass.
#[tokio::test]
async fn a_request_head_beyond_max_request_head_is_a_431() {
    let cookie = format!("host_app_session={}", "a".repeat(9000));
    let get_with_cookie = |app: &TestApp| {
        app.client
            .get(format!("{}/healthz", app.address))
            .header("cookie", cookie.clone())
            .send()
    };

    let default = spawn_app().await;
    let roomy = spawn_app_with(|settings| settings.max_request_head = 64 * 1024).await;

    let refused = get_with_cookie(&default).await.expect("request");
    let accepted = get_with_cookie(&roomy).await.expect("request");
    assert_eq!(refused.status(), 431);
    assert_eq!(accepted.status(), 200);
}
