//! The integration examples in `examples/` run for real: publishing from
//! Python (psycopg), Node (pg) and PHP (PDO, Laravel-style) inside a
//! transaction, and consuming a stream from Node and from Python (httpx
//! and httpx-sse). Each needs its runtime (and its packages); `.ci/run`
//! installs them, and where one is missing locally the test says so and
//! does not run - under CI (`CI` set) it fails instead.

use std::process::Command;

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;

use crate::helpers::app::{spawn_app, spawn_app_with};
use crate::helpers::checks::runnable;
use crate::helpers::cluster::fresh_database;

/// The libpq variables every example (and the browser tests) read their
/// connection from.
pub fn libpq_env(options: &PgConnectOptions) -> Vec<(&'static str, String)> {
    let host = match options.get_socket() {
        Some(socket) => socket.to_string_lossy().into_owned(),
        None => options.get_host().to_owned(),
    };
    let mut env = vec![
        ("PGHOST", host),
        ("PGPORT", options.get_port().to_string()),
        ("PGUSER", options.get_username().to_owned()),
        (
            "PGDATABASE",
            options.get_database().unwrap_or("postgres").to_owned(),
        ),
    ];
    if let Ok(password) = std::env::var("PGPASSWORD") {
        env.push(("PGPASSWORD", password));
    }
    env
}

/// Runs a publishing example for a fresh recipient and checks the table:
/// the committed notification is there, the rolled-back one is not.
async fn publishes_inside_a_transaction(program: &str, script: &str, kind: &str) {
    let database = fresh_database().await.expect("database");
    let db = sqlx::PgPool::connect_with(database.clone())
        .await
        .expect("pool");
    let output = Command::new(program)
        .arg(script)
        .arg("carol")
        .envs(libpq_env(&database))
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM tidings.notifications WHERE recipient = 'carol' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .expect("kinds");
    assert_eq!(
        kinds,
        vec![kind.to_owned()],
        "only the committed notification"
    );
    assert!(
        stdout.contains("committed id=1 seq=1") && stdout.contains("rolled back"),
        "{stdout}"
    );
}

#[tokio::test]
async fn python_publishes_inside_a_transaction() {
    if runnable("Python with psycopg", "python3", &["-c", "import psycopg"]) {
        publishes_inside_a_transaction("python3", "examples/python/publish.py", "invoice.paid")
            .await;
    }
}

#[tokio::test]
async fn node_publishes_inside_a_transaction() {
    // Resolved from examples/node, as publish.mjs's `import pg` is.
    let has_pg = "require.resolve('pg', { paths: ['examples/node'] })";
    if runnable(
        "Node.js with examples/node's packages (`npm ci` there)",
        "node",
        &["-e", has_pg],
    ) {
        publishes_inside_a_transaction("node", "examples/node/publish.mjs", "order.shipped").await;
    }
}

#[tokio::test]
async fn php_publishes_inside_a_transaction_like_laravel() {
    let pdo_pgsql = "exit(extension_loaded('pdo_pgsql') ? 0 : 1);";
    if runnable("PHP with pdo_pgsql", "php", &["-r", pdo_pgsql]) {
        publishes_inside_a_transaction("php", "examples/php/publish.php", "comment.created").await;
    }
}

#[tokio::test]
async fn node_consumes_a_stream_and_resumes_from_last_event_id() {
    if !runnable("Node.js", "node", &["--version"]) {
        return;
    }
    let app = spawn_app().await;
    for n in 1..=3 {
        app.insert("dave", "k", json!({"n": n})).await;
    }

    let output = tokio::task::spawn_blocking({
        let (address, token) = (app.address.clone(), app.token("dave"));
        move || {
            Command::new("node")
                .args(["examples/node/consume.mjs", "2"])
                .env("TIDINGS_URL", address)
                .env("TIDINGS_TOKEN", token)
                .env("LAST_EVENT_ID", "1")
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run node");

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], "2");
    assert_eq!(events[1]["data"]["payload"], json!({"n": 3}));
    assert_eq!(events[1]["event"], "notification");
}

/// The Python consumer gets events between heartbeats and after the
/// `retry:` advice - blocks that httpx-sse hands out as data-less events,
/// which a consumer parsing every event as JSON would crash on.
#[tokio::test]
async fn python_consumes_a_stream_between_heartbeats_and_resumes_from_last_event_id() {
    if !runnable(
        "Python with httpx and httpx-sse",
        "python3",
        &["-c", "import httpx, httpx_sse"],
    ) {
        return;
    }
    let app = spawn_app_with(|settings| {
        settings.streams.heartbeat = std::time::Duration::from_millis(100);
    })
    .await;
    app.insert("erin", "k", json!({"n": 1})).await;

    let consumer = tokio::task::spawn_blocking({
        let (address, token) = (app.address.clone(), app.token("erin"));
        move || {
            Command::new("python3")
                .args(["examples/python/consume.py", "3"])
                .env("TIDINGS_URL", address)
                .env("TIDINGS_TOKEN", token)
                .env("LAST_EVENT_ID", "1")
                .output()
        }
    });
    for n in 2..=4 {
        // Several heartbeats before each row.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        app.insert("erin", "k", json!({"n": n})).await;
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), consumer)
        .await
        .expect("the consumer stops after 3 events")
        .expect("join")
        .expect("run python3");

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let ids: Vec<&Value> = events.iter().map(|event| &event["id"]).collect();
    assert_eq!(ids, [&json!("2"), &json!("3"), &json!("4")]);
    assert_eq!(events[2]["event"], "notification");
    assert_eq!(events[2]["data"]["payload"], json!({"n": 4}));
}
