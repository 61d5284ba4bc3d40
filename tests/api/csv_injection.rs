//! CSV injection: a publisher chooses recipients and kinds, and an
//! auditor opens the export in a spreadsheet, which runs a cell beginning
//! with `=`, `+`, `-` or `@` (or a tab or carriage return) as a formula.
//! Those free-text cells get a leading `'` (and so do those that begin
//! with `'`, so that it can be dropped again); the cells tidings writes itself
//! (numbers, times, hashes) and the JSON payload stay exactly as they are,
//! and NDJSON carries every value untouched.

use serde_json::{json, Value};
use tidings::config::Role;

use crate::helpers::app::{spawn_app, TestApp};

/// Texts a spreadsheet would take for formulas, and harmless ones.
const FORMULAS: [&str; 6] = [
    "=HYPERLINK(\"https://evil.example.net\",\"open\")",
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
];
const HARMLESS: [&str; 3] = ["alice", "a=b", "'=quoted"];

fn export(app: &TestApp, accept: &str) -> reqwest::RequestBuilder {
    app.client
        .get(format!("{}/v1/audit/events", app.address))
        .bearer_auth(app.token_with("auditor", &[Role::Auditor]))
        .header("Accept", accept)
}

async fn csv_records(app: &TestApp) -> Vec<csv::StringRecord> {
    let response = export(app, "text/csv").send().await.expect("export");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader.records().map(|r| r.expect("record")).collect()
}

fn neutralised(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

#[tokio::test]
async fn recipients_and_kinds_that_a_spreadsheet_would_run_are_prefixed_with_a_quote() {
    let app = spawn_app().await;
    for text in FORMULAS.iter().chain(&HARMLESS) {
        let (id, _) = app.insert(text, text, json!({"text": text})).await;
        sqlx::query(
            "INSERT INTO tidings.reads (recipient, notification_ids) VALUES ($1, ARRAY[$2::int8])",
        )
        .bind(text)
        .bind(id)
        .execute(&app.db)
        .await
        .expect("read mark");
    }

    let records = csv_records(&app).await;

    assert_eq!(records.len(), 2 * (FORMULAS.len() + HARMLESS.len()));
    let sent: Vec<&str> = FORMULAS.iter().chain(&HARMLESS).copied().collect();
    for record in &records {
        let recipient = sent
            .iter()
            .find(|text| neutralised(text) == record[1])
            .unwrap_or_else(|| panic!("recipient cell {:?} is not as expected", &record[1]));
        if &record[0] == "notification" {
            assert_eq!(record[4], neutralised(recipient), "kind cell");
            let payload: Value = serde_json::from_str(&record[5]).expect("payload is JSON");
            assert_eq!(payload, json!({"text": recipient}), "payload untouched");
        }
    }
    let neutralised_cells = records
        .iter()
        .filter(|record| record[1].starts_with('\''))
        .count();
    assert_eq!(neutralised_cells, 2 * FORMULAS.len() + 2, "'=quoted too");
    let quoted = records.iter().filter(|record| &record[1] == "''=quoted");
    assert_eq!(
        quoted.count(),
        2,
        "a leading ' is doubled, so it can be dropped again"
    );
}

#[tokio::test]
async fn numbers_times_hashes_and_json_payloads_are_written_as_they_are() {
    let app = spawn_app().await;
    for payload in [json!(-5), json!(-0.5), json!("=1+1"), json!(["-1", "@x"])] {
        app.insert("alice", "k", payload).await;
    }

    let records = csv_records(&app).await;

    assert_eq!(records.len(), 4);
    let payloads: Vec<Value> = records
        .iter()
        .map(|record| serde_json::from_str(&record[5]).expect("payload is JSON"))
        .collect();
    assert_eq!(
        payloads,
        [json!(-5), json!(-0.5), json!("=1+1"), json!(["-1", "@x"])]
    );
    for record in &records {
        for (column, cell) in [(2, "seq"), (3, "id")] {
            assert!(
                record[column].bytes().all(|b| b.is_ascii_digit()),
                "{cell}: {:?}",
                &record[column]
            );
        }
        assert!(record[7].starts_with("20"), "created_at: {:?}", &record[7]);
        assert!(
            record[10].bytes().all(|b| b.is_ascii_hexdigit()),
            "hash: {:?}",
            &record[10]
        );
    }
}

#[tokio::test]
async fn ndjson_and_json_carry_the_same_texts_untouched() {
    let app = spawn_app().await;
    for text in FORMULAS {
        app.insert(text, text, json!({})).await;
    }

    let response = export(&app, "application/x-ndjson")
        .send()
        .await
        .expect("export");
    let ndjson = response.text().await.expect("body");
    let page: Value = export(&app, "application/json")
        .send()
        .await
        .expect("page")
        .json()
        .await
        .expect("json");

    let mut from_ndjson: Vec<String> = ndjson
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("event");
            event["recipient"].as_str().expect("recipient").to_owned()
        })
        .collect();
    let mut from_json: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["kind"].as_str().expect("kind").to_owned())
        .collect();
    let mut sent: Vec<String> = FORMULAS.iter().map(|t| (*t).to_owned()).collect();
    sent.sort();
    from_ndjson.sort();
    from_json.sort();
    assert_eq!(from_ndjson, sent);
    assert_eq!(from_json, sent);
}
