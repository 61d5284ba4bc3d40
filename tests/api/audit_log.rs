//! The audit log API: filters, cursor paging that holds still under
//! inserts, NDJSON and CSV export in constant memory, and the inbox as it
//! stood at any moment.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::app::{spawn_app, spawn_app_with, TestApp};
use crate::helpers::binary::Binary;
use crate::helpers::checks::assert_problem;
use crate::helpers::cluster::{fresh_database, url_of};
use crate::helpers::SECRET;
use tidings::config::Role;

fn auditor(app: &TestApp, path: &str) -> reqwest::RequestBuilder {
    app.client
        .get(format!("{}{path}", app.address))
        .bearer_auth(app.token_with("auditor", &[Role::Auditor]))
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// The database's clock now, just after everything committed so far.
async fn mark(app: &TestApp) -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&app.db)
        .await
        .expect("now");
    tokio::time::sleep(Duration::from_millis(5)).await;
    now
}

fn seqs_of(page: &Value) -> Vec<(String, i64)> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["recipient"].as_str().unwrap_or("").to_owned(),
                        i["seq"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn events_filter_by_recipient_kind_type_and_time() {
    let app = spawn_app().await;
    app.insert("alice", "invoice", json!({})).await;
    app.insert("bob", "comment", json!({})).await;
    let middle = mark(&app).await;
    app.insert("alice", "comment", json!({})).await;
    app.post("/v1/notifications/1/read", "alice")
        .send()
        .await
        .expect("read");

    let all = json_of(auditor(&app, "/v1/audit/events")).await;
    let alice = json_of(auditor(&app, "/v1/audit/events?recipient=alice")).await;
    let comments = json_of(auditor(&app, "/v1/audit/events?kind=comment")).await;
    let reads = json_of(auditor(&app, "/v1/audit/events?type=read")).await;
    let middle = middle.to_rfc3339().replace('+', "%2B");
    let later = json_of(auditor(&app, &format!("/v1/audit/events?from={middle}"))).await;
    let earlier = json_of(auditor(&app, &format!("/v1/audit/events?to={middle}"))).await;

    assert_eq!(all["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        seqs_of(&alice),
        vec![
            ("alice".into(), 1),
            ("alice".into(), 2),
            ("alice".into(), 3)
        ]
    );
    assert_eq!(
        seqs_of(&comments),
        vec![("bob".into(), 1), ("alice".into(), 2)]
    );
    assert_eq!(reads["items"][0]["notification_ids"], json!([1]));
    assert_eq!(later["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(earlier["items"].as_array().map(Vec::len), Some(2));
    let first = &all["items"][0];
    assert_eq!(first["type"], "notification");
    assert!(
        first["read_at"].is_string() && first["read_seq"] == 3,
        "{first}"
    );
    assert_eq!(first["hash"].as_str().map(str::len), Some(64));
}

#[tokio::test]
async fn cursor_paging_neither_repeats_nor_skips_while_rows_are_inserted() {
    let app = spawn_app().await;
    for n in 0..25 {
        app.insert(&format!("r{}", n % 3), "k", json!({"n": n}))
            .await;
    }

    let mut seen = Vec::new();
    let mut path = "/v1/audit/events?limit=10".to_owned();
    for page_number in 0.. {
        let page = json_of(auditor(&app, &path)).await;
        seen.extend(seqs_of(&page));
        app.insert("r9", "during", json!({"page": page_number}))
            .await;
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/audit/events?limit=10&after={next}"),
            None => break,
        }
    }

    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    for n in 0..25 {
        let recipient = format!("r{}", n % 3);
        let seq = (n / 3 + 1) as i64;
        assert!(
            seen.contains(&(recipient.clone(), seq)),
            "{recipient}/{seq} was skipped"
        );
    }
}

#[tokio::test]
async fn bad_filters_are_a_400_and_other_roles_a_403() {
    let app = spawn_app().await;
    for query in [
        "type=mail",
        "from=yesterday",
        "to=2026-13-01",
        "after=garbage",
        "after=1.x.2",
        "limit=0",
        "limit=5000",
    ] {
        let response = auditor(&app, &format!("/v1/audit/events?{query}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{query}");
        assert_problem(response, 400).await;
    }
    for query in [
        "recipient=alice",
        "at=2026-01-01T00:00:00Z",
        "recipient=alice&at=noon",
    ] {
        let response = auditor(&app, &format!("/v1/audit/inbox?{query}"))
            .send()
            .await
            .expect("request");
        assert_problem(response, 400).await;
    }
    for path in [
        "/v1/audit/events",
        "/v1/audit/inbox?recipient=alice&at=2026-01-01T00:00:00Z",
    ] {
        let response = app.get(path, "alice").send().await.expect("request");
        assert_problem(response, 403).await;
    }
}

#[tokio::test]
async fn ndjson_export_streams_every_matching_row_as_one_json_object_per_line() {
    let app = spawn_app().await;
    app.insert_many("alice", 1500).await;
    app.insert("bob", "k", json!({})).await;

    let response = auditor(&app, "/v1/audit/events?recipient=alice")
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("export");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let text = response.text().await.expect("body");

    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1500, "the whole result, not one page");
    assert!(lines.iter().all(|l| l["recipient"] == "alice"));
    assert_eq!(lines[1499]["seq"], 1500);
}

#[tokio::test]
async fn csv_export_quotes_commas_quotes_and_newlines() {
    let app = spawn_app().await;
    let tricky = json!({"text": "a,b \"quoted\"\nsecond line\r\nthird"});
    app.insert("alice", "kind, with comma", tricky.clone())
        .await;

    let response = auditor(&app, "/v1/audit/events")
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("export");
    let text = response.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().expect("header").clone();
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();

    assert_eq!(&headers[0], "type");
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0][4], "kind, with comma");
    let payload: Value = serde_json::from_str(&records[0][5]).expect("payload JSON");
    assert_eq!(payload, tricky);
}

#[tokio::test]
async fn the_inbox_at_a_past_moment_is_derived_from_the_events() {
    let app = spawn_app().await;
    let (first, _) = app.insert("alice", "k", json!({"n": 1})).await;
    app.insert("alice", "k", json!({"n": 2})).await;
    let sent_two = mark(&app).await;
    app.post(&format!("/v1/notifications/{first}/read"), "alice")
        .send()
        .await
        .expect("read");
    let read_one = mark(&app).await;
    app.insert("alice", "k", json!({"n": 3})).await;
    let sent_three = mark(&app).await;
    app.post("/v1/notifications/read-all", "alice")
        .send()
        .await
        .expect("read-all");
    let all_read = mark(&app).await;
    let at = |time: DateTime<Utc>| {
        format!(
            "/v1/audit/inbox?recipient=alice&at={}",
            time.to_rfc3339().replace('+', "%2B")
        )
    };

    let states = [
        json_of(auditor(&app, &at(sent_two))).await,
        json_of(auditor(&app, &at(read_one))).await,
        json_of(auditor(&app, &at(sent_three))).await,
        json_of(auditor(&app, &at(all_read))).await,
    ];

    let summary: Vec<(usize, i64, i64)> = states
        .iter()
        .map(|s| {
            (
                s["items"].as_array().map_or(0, Vec::len),
                s["unread_count"].as_i64().unwrap_or(-1),
                s["position"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(summary, vec![(2, 2, 2), (2, 1, 3), (3, 2, 4), (3, 0, 5)]);
    assert_eq!(
        states[0]["items"][1]["read_at"],
        Value::Null,
        "not yet read then"
    );
    assert!(states[1]["items"][1]["read_at"].is_string(), "read by then");
}

#[tokio::test]
async fn the_recipient_and_kind_time_queries_use_their_indexes() {
    let app = spawn_app().await;
    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind)
         SELECT 'r' || (i % 500), 'kind' || (i % 50) FROM generate_series(1, 30000) AS i ORDER BY 1",
    )
    .execute(&app.db)
    .await
    .expect("rows");
    sqlx::query("ANALYZE tidings.notifications")
        .execute(&app.db)
        .await
        .expect("analyze");
    sqlx::query("ANALYZE tidings.reads")
        .execute(&app.db)
        .await
        .expect("analyze");

    for filter in ["recipient = 'r7'", "kind = 'kind7'"] {
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN SELECT * FROM tidings.audit_log WHERE {filter} AND created_at >= now() - interval '1 day'
              ORDER BY created_at, type, id LIMIT 100"
        ))
        .fetch_all(&app.db)
        .await
        .expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains("Index"), "{filter}:\n{plan}");
        assert!(
            !plan.contains("Seq Scan on notifications"),
            "{filter}:\n{plan}"
        );
    }
}

#[tokio::test]
async fn exporting_a_million_rows_takes_constant_memory() {
    let database = fresh_database().await.expect("database");
    let db = sqlx::PgPool::connect_with(database.clone())
        .await
        .expect("pool");
    for batch in 0..10 {
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind, payload)
             SELECT 'r' || (i % 1000), 'bulk', jsonb_build_object('i', i) FROM generate_series($1::int8, $1::int8 + 99999) AS i ORDER BY 1",
        )
        .bind(batch * 100_000)
        .execute(&db)
        .await
        .expect("rows");
    }
    let server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("tidings");
    server.wait_until_ready().await.expect("ready");
    let token = tidings::http::auth::Keys::new(SECRET.as_bytes())
        .issue("auditor", &[Role::Auditor], Duration::from_secs(3600))
        .expect("token");
    let before = server.rss_kib();

    let response = reqwest::Client::new()
        .get(format!("{}/v1/audit/events", server.address))
        .bearer_auth(token)
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("export");
    let mut body = response.bytes_stream();
    let (mut lines, mut peak) = (0u64, 0u64);
    while let Some(chunk) = body.next().await {
        lines += chunk
            .expect("chunk")
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        if lines % 50_000 < 200 {
            peak = peak.max(server.rss_kib());
        }
    }

    assert_eq!(lines, 1_000_000);
    let grown = peak.saturating_sub(before);
    println!("export RSS: {before} KiB before, {peak} KiB peak");
    assert!(
        grown < 64 * 1024,
        "the export held rows in memory: grew {grown} KiB (the result is ~200 MiB)"
    );
}

#[tokio::test]
async fn an_export_whose_query_the_database_refuses_is_a_400_not_a_cut_off_200() {
    let app = spawn_app().await;

    for accept in ["application/x-ndjson", "text/csv"] {
        let response = auditor(&app, "/v1/audit/events?recipient=%00")
            .header("Accept", accept)
            .send()
            .await
            .expect("export");

        assert_problem(response, 400).await;
    }
}

/// 10,000 rows of ~4 KB for alice: an export of them (~40 MB) is far more
/// than the buffers between the export's query and its client hold.
async fn insert_40_mb_for_alice(app: &TestApp) {
    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind, payload)
         SELECT 'alice', 'big', jsonb_build_object('pad', repeat('x', 4000)) FROM generate_series(1, 10000)",
    )
    .execute(&app.db)
    .await
    .expect("rows");
}

#[tokio::test]
async fn exports_beyond_the_limit_are_a_503_and_a_stalled_one_ends_and_lets_go() {
    // Arrange: a pool of 8 allows one export at a time; a client that
    // reads nothing for a second loses its export. The result (~40 MB) is
    // far more than the socket buffers between server and client hold.
    let app = spawn_app_with(|settings| {
        settings.pool_size = 8;
        settings.export_stall_timeout = Duration::from_secs(1);
    })
    .await;
    insert_40_mb_for_alice(&app).await;
    let export = || {
        auditor(&app, "/v1/audit/events")
            .header("Accept", "application/x-ndjson")
            .send()
    };

    // Act: one export that is never read, another at once, then more
    // until one gets through.
    let stalled = export().await.expect("export");
    let refused = export().await.expect("export");
    let mut let_go = false;
    for _ in 0..150 {
        if export().await.expect("export").status() == 200 {
            let_go = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert
    assert_eq!(stalled.status(), 200);
    assert_problem(refused, 503).await;
    assert!(let_go, "the stalled export still holds its slot after 15 s");
    assert!(
        stalled.bytes().await.is_err(),
        "the stalled export broke off instead of ending as if complete"
    );
}

#[tokio::test]
async fn an_export_is_one_snapshot_that_rows_inserted_midway_do_not_join() {
    // Arrange: a result (~40 MB) far larger than the buffers between the
    // export's query and the client, so the query is still running when
    // the first line arrives.
    let app = spawn_app().await;
    insert_40_mb_for_alice(&app).await;
    let response = auditor(&app, "/v1/audit/events?recipient=alice")
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    while !text.contains(&b'\n') {
        text.extend_from_slice(&body.next().await.expect("a chunk").expect("chunk"));
    }

    // Act: more rows for alice while the export's query runs.
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND state = 'active' AND query LIKE '%FROM tidings.audit_log%'",
    )
    .fetch_one(&app.db)
    .await
    .expect("activity");
    app.insert_many("alice", 100).await;
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(&chunk.expect("chunk"));
    }

    // Assert
    assert_eq!(running, 1, "the export was still running at the inserts");
    let lines: Vec<Value> = String::from_utf8_lossy(&text)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 10_000, "the rows as they stood at the start");
    assert_eq!(lines[9_999]["seq"], 10_000);
}
