//! `GET /metrics` reports what operators need, in Prometheus' text format.

use std::time::Duration;

use serde_json::json;

use crate::helpers::app::{spawn_app, TestApp};
use crate::helpers::checks::header;

async fn scrape(app: &TestApp) -> String {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = header(&response, "content-type");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.expect("body")
}

/// Scrapes until `series` satisfies `wanted`, for up to 2 s, and returns
/// the last scrape: a metric may trail an event the client has already
/// seen (the row came by an earlier read than the one it counts).
async fn scrape_until(app: &TestApp, series: &str, wanted: impl Fn(f64) -> bool) -> String {
    let mut text = scrape(app).await;
    for _ in 0..100 {
        if sample(&text, series).is_some_and(&wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(app).await;
    }
    text
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_streams_deliveries_replays_and_requests() {
    let app = spawn_app().await;
    app.insert("alice", "old", json!({})).await;
    app.insert("alice", "old", json!({})).await;
    let mut stream = app.stream("alice", Some(0)).await;
    stream.take(2).await;
    app.insert("alice", "new", json!({})).await;
    stream.next().await;

    // The row can reach the stream by the hub's first read for a new
    // recipient, before the hint's own read is counted.
    let text = scrape_until(&app, "tidings_hint_to_delivery_seconds_count", |n| n >= 1.0).await;

    assert_eq!(sample(&text, "tidings_open_streams"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tidings_events_delivered_total"), Some(3.0));
    assert_eq!(sample(&text, "tidings_events_replayed_total"), Some(2.0));
    assert_eq!(sample(&text, "tidings_listener_up"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"tidings_http_requests_total{route="/v1/stream",method="GET",status="200"}"#
        ),
        Some(1.0)
    );
    assert!(sample(&text, "tidings_hint_to_delivery_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "tidings_db_pool_connections").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "tidings_pg_notification_queue_usage").is_some());
    assert_eq!(sample(&text, "tidings_catch_up_reads_in_flight"), Some(0.0));

    drop(stream);
    let text = scrape_until(&app, "tidings_open_streams", |n| n == 0.0).await;
    assert_eq!(
        sample(&text, "tidings_open_streams"),
        Some(0.0),
        "a closed stream is no longer counted"
    );
}

#[tokio::test]
async fn request_metrics_use_route_templates_not_raw_paths() {
    let app = spawn_app().await;
    for id in [1, 2, 3] {
        app.post(&format!("/v1/notifications/{id}/read"), "alice")
            .send()
            .await
            .expect("post");
    }

    let text = scrape(&app).await;

    let series = r#"tidings_http_requests_total{route="/v1/notifications/{id}/read",method="POST",status="404"}"#;
    assert_eq!(sample(&text, series), Some(3.0), "{text}");
}

#[tokio::test]
async fn listener_reconnects_are_counted() {
    let app = spawn_app().await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tidings-listener' AND datname = current_database()")
        .execute(&app.db)
        .await
        .expect("terminate");

    let mut counted = false;
    for _ in 0..200 {
        let text = scrape(&app).await;
        if sample(&text, "tidings_listener_reconnects_total") == Some(1.0)
            && sample(&text, "tidings_listener_up") == Some(1.0)
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(counted);
}
