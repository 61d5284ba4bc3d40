//! Cross-site request forgery: a browser attaches the `tidings_token`
//! cookie to requests any site makes, so a write authenticated by that
//! cookie alone must come from tidings' own origin or from one listed in
//! `--cors-origin`. The requests below carry the headers a browser sends
//! (`Origin`, `Sec-Fetch-Site`); Bearer and query-token callers, whose
//! token a foreign page cannot attach, are not held to it, nor are clients
//! that send neither header (curl, servers).

use axum::http::HeaderValue;
use serde_json::{json, Value};
use tidings::config::Role;

use crate::helpers::app::{spawn_app_with, TestApp};
use crate::helpers::checks::assert_problem;

const LISTED: &str = "https://app.example.com";
const FOREIGN: &str = "https://evil.example.net";

/// A tidings that lists [`LISTED`] as a CORS origin, with three unread
/// notifications for alice.
async fn app_with_unread() -> TestApp {
    let app = spawn_app_with(|s| s.cors_origins = vec![HeaderValue::from_static(LISTED)]).await;
    for _ in 0..3 {
        app.insert("alice", "k", json!({})).await;
    }
    app
}

/// How a browser request presents itself, beyond its cookie.
struct Browser<'a> {
    origin: Option<&'a str>,
    fetch_site: Option<&'a str>,
}

const CROSS_SITE: Browser = Browser {
    origin: Some(FOREIGN),
    fetch_site: Some("cross-site"),
};

impl Browser<'_> {
    fn dress(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(origin) = self.origin {
            request = request.header("Origin", origin);
        }
        if let Some(site) = self.fetch_site {
            request = request.header("Sec-Fetch-Site", site);
        }
        request
    }
}

/// `POST path` with alice's token in the `tidings_token` cookie only.
async fn post_with_cookie(app: &TestApp, path: &str, browser: &Browser<'_>) -> reqwest::Response {
    let request = app
        .client
        .post(format!("{}{path}", app.address))
        .header("Cookie", format!("tidings_token={}", app.token("alice")));
    browser.dress(request).send().await.expect("request")
}

async fn unread(app: &TestApp) -> i64 {
    app.inbox("alice").await["unread_count"]
        .as_i64()
        .expect("unread_count")
}

#[tokio::test]
async fn a_cross_site_cookie_write_is_a_403_and_marks_nothing_read() {
    let app = app_with_unread().await;
    let (id, _) = app.insert("alice", "k", json!({})).await;
    let cross_site = [
        ("a foreign origin", CROSS_SITE),
        (
            "a sibling site that is not listed",
            Browser {
                origin: Some("https://other.example.com"),
                fetch_site: Some("same-site"),
            },
        ),
        (
            "an opaque origin (sandboxed frame)",
            Browser {
                origin: Some("null"),
                fetch_site: Some("cross-site"),
            },
        ),
        (
            "a browser that sends only Origin",
            Browser {
                origin: Some(FOREIGN),
                fetch_site: None,
            },
        ),
        (
            "a browser that sends only Sec-Fetch-Site",
            Browser {
                origin: None,
                fetch_site: Some("cross-site"),
            },
        ),
    ];

    for (case, browser) in &cross_site {
        for path in [
            "/v1/notifications/read-all".to_owned(),
            format!("/v1/notifications/{id}/read"),
        ] {
            let response = post_with_cookie(&app, &path, browser).await;
            let problem = assert_problem(response, 403).await;
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("cookie"), "{case} {path}: {detail}");
        }
    }

    assert_eq!(unread(&app).await, 4, "nothing was marked read");
}

#[tokio::test]
async fn a_cross_site_cookie_publish_is_a_403_and_stores_nothing() {
    let app = app_with_unread().await;
    let publisher = app.token_with("service", &[Role::Publisher]);

    let response = app
        .client
        .post(format!("{}/v1/notifications", app.address))
        .header("Cookie", format!("tidings_token={publisher}"))
        .header("Origin", FOREIGN)
        .header("Sec-Fetch-Site", "cross-site")
        .json(&json!({"recipient": "alice", "kind": "forged"}))
        .send()
        .await
        .expect("request");

    assert_problem(response, 403).await;
    let forged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tidings.notifications WHERE kind = 'forged'")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(forged, 0);
}

#[tokio::test]
async fn same_origin_listed_origin_and_headerless_cookie_writes_pass() {
    let app = app_with_unread().await;
    let own_origin = app.address.clone();
    let passing = [
        (
            "Sec-Fetch-Site: same-origin",
            Browser {
                origin: Some(&own_origin),
                fetch_site: Some("same-origin"),
            },
        ),
        (
            "Sec-Fetch-Site: none (the user's own navigation)",
            Browser {
                origin: None,
                fetch_site: Some("none"),
            },
        ),
        (
            "Origin equal to tidings' own, without Sec-Fetch-Site",
            Browser {
                origin: Some(&own_origin),
                fetch_site: None,
            },
        ),
        (
            "an origin listed in --cors-origin",
            Browser {
                origin: Some(LISTED),
                fetch_site: Some("cross-site"),
            },
        ),
        (
            "neither header (not a browser)",
            Browser {
                origin: None,
                fetch_site: None,
            },
        ),
    ];

    for (case, browser) in &passing {
        app.insert("alice", "k", json!({})).await;

        let response = post_with_cookie(&app, "/v1/notifications/read-all", browser).await;

        assert_eq!(response.status(), 204, "{case}");
        assert_eq!(unread(&app).await, 0, "{case}");
    }
}

#[tokio::test]
async fn bearer_and_query_token_writes_are_not_held_to_the_origin() {
    let app = app_with_unread().await;
    let token = app.token("alice");
    let read_all = format!("{}/v1/notifications/read-all", app.address);

    let bearer = CROSS_SITE
        .dress(app.client.post(&read_all).bearer_auth(&token))
        .send()
        .await
        .expect("bearer");
    app.insert("alice", "k", json!({})).await;
    let query = CROSS_SITE
        .dress(app.client.post(format!("{read_all}?access_token={token}")))
        .send()
        .await
        .expect("query");

    assert_eq!(bearer.status(), 204);
    assert_eq!(query.status(), 204);
    assert_eq!(unread(&app).await, 0);
}

#[tokio::test]
async fn cookie_reads_from_any_site_still_answer() {
    // Reading is not forgery: CORS keeps a foreign page from seeing the
    // answer, and the stream and inbox must work from listed sites.
    let app = app_with_unread().await;
    let request = app
        .client
        .get(format!("{}/v1/notifications", app.address))
        .header("Cookie", format!("tidings_token={}", app.token("alice")));

    let response = CROSS_SITE.dress(request).send().await.expect("request");

    assert_eq!(response.status(), 200);
    let inbox: Value = response.json().await.expect("inbox");
    assert_eq!(inbox["unread_count"], 3);
}
