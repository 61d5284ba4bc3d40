//! When a token is valid: from `nbf` (and not before its `iat`) until
//! `exp`, each with the documented 5 s of leeway for clocks that disagree.
//! A token signed for later must not open anything now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::app::{spawn_app, TestApp};
use crate::helpers::checks::{assert_problem, header};
use crate::helpers::SECRET;

/// Seconds since the epoch, shifted by `offset`.
fn now_plus(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now + offset
}

/// A token for alice, valid for an hour, with `extra` claims added.
fn token_with(extra: Value) -> String {
    let mut claims = json!({"sub": "alice", "exp": now_plus(3600)});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn inbox_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/v1/notifications", app.address))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request")
}

/// A 401 whose problem says the token is invalid.
async fn assert_invalid_token(response: reqwest::Response, case: &str) {
    let problem = assert_problem(response, 401).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid token"),
        "{case}: {problem}"
    );
}

/// Each token, made from its claims, reads the inbox.
async fn assert_accepted<const N: usize>(app: &TestApp, accepted: [(&str, serde_json::Value); N]) {
    for (case, claims) in accepted {
        let response = inbox_with(app, &token_with(claims)).await;
        assert_eq!(response.status(), 200, "{case}");
    }
}

#[tokio::test]
async fn a_token_not_valid_before_a_later_time_is_a_401_until_then() {
    let app = spawn_app().await;
    let refused = [
        ("nbf in an hour", json!({"nbf": now_plus(3600)})),
        ("nbf a minute ahead", json!({"nbf": now_plus(60)})),
        ("nbf that is not a time", json!({"nbf": "soon"})),
    ];
    let accepted = [
        ("nbf passed", json!({"nbf": now_plus(-60)})),
        ("nbf within the leeway", json!({"nbf": now_plus(3)})),
    ];

    for (case, claims) in refused {
        let response = inbox_with(&app, &token_with(claims)).await;
        assert_eq!(header(&response, "www-authenticate"), "Bearer", "{case}");
        assert_invalid_token(response, case).await;
    }
    assert_accepted(&app, accepted).await;
}

#[tokio::test]
async fn a_token_issued_in_the_future_beyond_the_leeway_is_a_401() {
    let app = spawn_app().await;
    let refused = [
        ("iat in an hour", json!({"iat": now_plus(3600)})),
        ("iat a minute ahead", json!({"iat": now_plus(60)})),
        ("iat that is not a time", json!({"iat": "now"})),
    ];
    let accepted = [
        ("iat an hour ago", json!({"iat": now_plus(-3600)})),
        ("iat within the leeway", json!({"iat": now_plus(3)})),
        (
            "iat with a fraction",
            json!({"iat": now_plus(-10) as f64 + 0.5}),
        ),
    ];

    for (case, claims) in refused {
        let response = inbox_with(&app, &token_with(claims)).await;
        assert_invalid_token(response, case).await;
    }
    assert_accepted(&app, accepted).await;
}

#[tokio::test]
async fn an_expired_token_is_honoured_for_the_leeway_and_not_a_moment_longer() {
    let app = spawn_app().await;

    let within = inbox_with(&app, &token_with(json!({"exp": now_plus(-2)}))).await;
    let beyond = inbox_with(&app, &token_with(json!({"exp": now_plus(-30)}))).await;

    assert_eq!(within.status(), 200, "exp 2 s ago, leeway 5 s");
    assert_problem(beyond, 401).await;
}

#[tokio::test]
async fn a_stream_cannot_be_opened_with_a_token_not_valid_yet() {
    let app = spawn_app().await;
    let token = token_with(json!({"nbf": now_plus(3600)}));

    let response = app
        .client
        .get(format!("{}/v1/stream?access_token={token}", app.address))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request");

    assert_problem(response, 401).await;
}
