//! `GET /openapi.json`: the document covers the whole contract, is valid
//! OpenAPI 3.1, and the server behaves as it says - checked by schemathesis
//! (from PyPI), which generates thousands of requests, valid and invalid,
//! from the document and compares every answer with it.
//!
//! The validator and schemathesis are Python tools that `.ci/run` installs;
//! where one is missing locally its test says so and does not run (under CI
//! it fails instead).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::app::{spawn_app, TestApp};
use crate::helpers::checks::runnable;
use tidings::config::Role;

/// Every route the protocol (docs/protocol.md) names, and the client's
/// TypeScript declarations, as the document must list them.
const CONTRACT: &[&str] = &[
    "/",
    "/demo.js",
    "/tidings.js",
    "/tidings.d.ts",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/readyz",
    "/v1/audit/events",
    "/v1/audit/inbox",
    "/v1/audit/verify",
    "/v1/notifications",
    "/v1/notifications/read-all",
    "/v1/notifications/{id}/read",
    "/v1/stream",
];

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON document")
}

/// Whether a Python module can be imported (see `helpers::checks::runnable`).
fn python_has(module: &str) -> bool {
    let what = format!("Python module {module}");
    runnable(&what, "python3", &["-c", &format!("import {module}")])
}

#[tokio::test]
async fn openapi_document_lists_every_route_of_the_contract() {
    let app = spawn_app().await;

    let document = document(&app).await;

    assert_eq!(document["openapi"], "3.1.0");
    let paths: BTreeSet<&str> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(paths, CONTRACT.iter().copied().collect());
}

#[tokio::test]
async fn every_failure_an_operation_documents_is_a_problem_document() {
    let app = spawn_app().await;

    let document = document(&app).await;

    let problems = &document["components"]["responses"];
    // `/readyz` answers its 503 with the readiness report itself.
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths.iter().filter(|(path, _)| *path != "/readyz") {
        for (method, operation) in item.as_object().expect("operations") {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    let name = response["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/responses/"))
                        .unwrap_or_else(|| panic!("{method} {path} {status}: not a problem"));
                    assert!(
                        problems[name]["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}: {name} is not application/problem+json"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn protected_operations_document_401_and_answer_it_without_a_token() {
    let app = spawn_app().await;

    let document = document(&app).await;

    let public = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/",
        "/demo.js",
        "/tidings.js",
        "/tidings.d.ts",
    ];
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert!(schemes.contains_key("bearer") && schemes.contains_key("access_token"));
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let documents_401 = operation["responses"].get("401").is_some();
            let url = format!("{}{}", app.address, path.replace("{id}", "1"));
            let method = method.to_uppercase().parse().expect("a method");
            let answer = app
                .client
                .request(method, url)
                .send()
                .await
                .expect("request");
            let is_public = public.contains(&path.as_str());
            assert_eq!(documents_401, !is_public, "{path}: 401 documented wrongly");
            assert_eq!(
                answer.status() == 401,
                !is_public,
                "{path}: answered {}",
                answer.status()
            );
        }
    }
}

#[tokio::test]
async fn the_stream_operation_describes_its_event_types() {
    let app = spawn_app().await;

    let document = document(&app).await;

    let stream = &document["paths"]["/v1/stream"]["get"];
    let description = stream["description"].as_str().expect("a description");
    for event in ["`notification`", "`read`", "`reset`", "Last-Event-ID"] {
        assert!(description.contains(event), "no {event} in: {description}");
    }
    assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
}

/// The example problem document is one tidings really sends: the answer to
/// `Last-Event-ID: abc`, word for word.
#[tokio::test]
async fn the_example_problem_is_what_tidings_answers() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let example = document["components"]["schemas"]["Problem"]["example"].clone();

    let response = app
        .get("/v1/stream", "alice")
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .expect("GET /v1/stream");
    let answered: Value = response.json().await.expect("a problem document");

    assert_eq!(answered, example);
}

#[tokio::test]
async fn openapi_document_is_valid_openapi_3_1() {
    if !python_has("openapi_spec_validator") {
        return;
    }
    let app = spawn_app().await;
    let file = std::env::temp_dir().join(format!("tidings-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, document(&app).await.to_string()).expect("write the document");

    let output = tokio::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .await
        .expect("run openapi-spec-validator");

    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// schemathesis runs every check it has (server errors, status codes,
/// content types, headers, response schemas, invalid input accepted, valid
/// input rejected, authentication ignored) over generated requests.
///
/// Left out: `/v1/stream`, whose 200 answer never ends by design (its
/// status codes and events are covered by the stream tests), and NUL bytes
/// in generated strings, which PostgreSQL text cannot hold (tidings answers
/// them with a 400, as `bad_input` checks). The seed is fixed so CI is
/// repeatable; run with other seeds to explore further.
#[tokio::test]
async fn schemathesis_finds_no_failures() {
    if !python_has("schemathesis") {
        return;
    }
    let app = spawn_app().await;
    let token = app.token_with("alice", &[Role::Publisher, Role::Auditor]);
    app.insert(
        "alice",
        "seeded",
        serde_json::json!({"text": "so reads find one"}),
    )
    .await;

    let output = tokio::process::Command::new("python3")
        .args([
            "-c",
            "from schemathesis.cli import schemathesis; schemathesis()",
        ])
        .arg("run")
        .arg(format!("{}/openapi.json", app.address))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--exclude-path", "/v1/stream"])
        .args(["--generation-allow-x00", "false"])
        .args(["--max-examples", "60", "--seed", "20261121"])
        .args(["--request-timeout", "20", "--generation-database", "none"])
        .args(["--no-color"])
        .output()
        .await
        .expect("run schemathesis");

    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(" passed"), "nothing was tested:\n{report}");
}
