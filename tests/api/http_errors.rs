//! The HTTP surface at its edges: unknown paths and methods get problem
//! documents, a server error is logged once, every log line of a request
//! carries its id but never its token, a recipient whose rows cannot be
//! read is named in an ERROR line, clients that make things up
//! or stall cannot grow or hold the server, and the server answers its
//! probes (and a demo link) from the moment it listens.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::app::{spawn_app, spawn_app_with};
use crate::helpers::binary::Binary;
use crate::helpers::checks::{assert_problem, header};
use crate::helpers::cluster::{fresh_database, url_of};
use crate::helpers::sse::SseClient;
use tidings::config::Role;

#[tokio::test]
async fn an_unknown_path_is_a_404_problem_document() {
    let app = spawn_app().await;

    let response = app.get("/v1/nope", "alice").send().await.expect("request");

    let problem = assert_problem(response, 404).await;
    assert_eq!(problem["type"], "urn:tidings:problem:not-found");
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_a_405_problem_document_with_allow() {
    let app = spawn_app().await;

    let response = app
        .client
        .put(format!("{}/v1/notifications", app.address))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .expect("request");

    let allow = header(&response, "allow");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let problem = assert_problem(response, 405).await;
    assert_eq!(problem["type"], "urn:tidings:problem:method-not-allowed");
}

#[tokio::test]
async fn made_up_methods_add_at_most_one_request_series() {
    let app = spawn_app().await;

    for n in 0..50 {
        let method = reqwest::Method::from_bytes(format!("A{n}").as_bytes()).expect("method");
        app.client
            .request(method, format!("{}/v1/notifications", app.address))
            .send()
            .await
            .expect("request");
    }
    let text = app.metrics().await;

    let series: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("tidings_http_requests_total{"))
        .collect();
    assert!(
        !series.iter().any(|line| line.contains("method=\"A")),
        "{text}"
    );
    let other: Vec<&&str> = series
        .iter()
        .filter(|line| line.contains("method=\"other\""))
        .collect();
    assert_eq!(other.len(), 1, "{text}");
    assert!(other[0].ends_with(" 50"), "{}", other[0]);
}

#[tokio::test]
async fn a_server_error_is_logged_once_with_its_cause() {
    // Arrange: the binary with its default log filter, over a database
    // whose audit view is gone, so the audit query fails.
    let (server, db) = binary_with_json_logs(None).await;
    lose_the_audit_view(&db).await;
    let token = token_for_binary("auditor", &[Role::Auditor]);

    // Act
    let response = reqwest::Client::new()
        .get(format!("{}/v1/audit/events", server.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");

    // Assert: a 500 whose body hides the cause, and one ERROR line with it.
    let problem = assert_problem(response, 500).await;
    assert!(!problem.to_string().contains("audit_log"), "{problem}");
    let is_error =
        |line: &str| serde_json::from_str::<Value>(line).is_ok_and(|line| line["level"] == "ERROR");
    server.lines_within(Duration::from_secs(5), is_error).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors: Vec<String> = server.lines().into_iter().filter(|l| is_error(l)).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("does not exist"), "{}", errors[0]);
}

#[tokio::test]
async fn a_client_that_sends_no_request_head_in_time_is_disconnected() {
    let app =
        spawn_app_with(|settings| settings.header_read_timeout = Duration::from_secs(1)).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let silent = TcpStream::connect(&address).await.expect("connect");
    let mut slow = TcpStream::connect(&address).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: tidings\r\n")
        .await
        .expect("part of a head");
    let mut slow_second = TcpStream::connect(&address).await.expect("connect");
    slow_second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tidings\r\n\r\n")
        .await
        .expect("a whole head");
    let mut response = [0; 512];
    let _ = slow_second.read(&mut response).await.expect("a response");
    slow_second
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("part of the next head");

    for (what, mut connection) in [
        ("silent", silent),
        ("slow", slow),
        ("slow second", slow_second),
    ] {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut rest)).await;

        assert!(closed.is_ok(), "the {what} connection is still open");
    }
}

#[tokio::test]
async fn a_stream_lives_on_past_the_request_head_timeout() {
    let app =
        spawn_app_with(|settings| settings.header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = app.stream("alice", None).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.insert("alice", "late", json!({})).await;

    assert_eq!(stream.next().await.json()["kind"], "late");
}

#[tokio::test]
async fn without_a_jwt_secret_a_demo_link_with_the_bound_address_is_logged_and_works() {
    // Arrange
    let database = fresh_database().await.expect("database");
    let data_dir = DataDir::new();
    let server = demo_server(&database, &data_dir);
    server.wait_until_ready().await.expect("ready");
    let db = sqlx::PgPool::connect_with(database).await.expect("pool");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('demo', 'hello')")
        .execute(&db)
        .await
        .expect("insert");

    // Act
    let warnings = server
        .lines_within(Duration::from_secs(5), |l| l.contains("WARN"))
        .await;
    let links = server
        .lines_within(Duration::from_secs(5), |l| l.contains("access_token="))
        .await;
    let link = links.first().expect("a logged demo link");
    let token = token_in(link);
    let inbox = reqwest::Client::new()
        .get(format!("{}/v1/notifications", server.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("inbox");

    // Assert
    assert!(
        warnings.iter().any(|l| l.contains("jwt-secret")),
        "{warnings:#?}"
    );
    assert!(
        link.contains(&format!("{}/?access_token=", server.address)),
        "the link names the bound address {}: {link}",
        server.address
    );
    assert_eq!(inbox.status(), 200);
    let inbox: Value = inbox.json().await.expect("json");
    assert_eq!(inbox["items"][0]["kind"], "hello", "{inbox}");
}

#[tokio::test]
async fn a_demo_token_outlives_a_restart_and_the_demo_secret_is_its_owners_alone() {
    // Arrange: a demo start, its logged token.
    use std::os::unix::fs::MetadataExt;
    let database = fresh_database().await.expect("database");
    let data_dir = DataDir::new();
    let mut first = demo_server(&database, &data_dir);
    first.wait_until_ready().await.expect("ready");
    let token = demo_token(&first).await;
    first.terminate().expect("stop");

    // Act: a second start on the same data directory.
    let second = demo_server(&database, &data_dir);
    second.wait_until_ready().await.expect("ready again");
    let inbox = reqwest::Client::new()
        .get(format!("{}/v1/notifications", second.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("inbox");

    // Assert: the first start's token is still good; the secret's file
    // is readable by its owner only.
    assert_eq!(inbox.status(), 200);
    let secret = std::fs::metadata(data_dir.0.join("demo_jwt_secret")).expect("secret file");
    assert_eq!(secret.mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_demo_secret_that_others_may_read_is_refused() {
    // Arrange: a kept secret made readable by everyone.
    use std::os::unix::fs::PermissionsExt;
    let database = fresh_database().await.expect("database");
    let data_dir = DataDir::new();
    std::fs::create_dir_all(&data_dir.0).expect("data dir");
    let path = data_dir.0.join("demo_jwt_secret");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // Act
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("serve")
        .env_remove("TIDINGS_JWT_SECRET")
        .env("DATABASE_URL", url_of(&database))
        .env("TIDINGS_DATA_DIR", &data_dir.0)
        .env("TIDINGS_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run tidings");

    // Assert
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("chmod 600"), "{said}");
}

/// A data directory of the test's own, removed when it ends.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new() -> Self {
        let name = format!("tidings-demo-{}", uuid::Uuid::new_v4().simple());
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// tidings in demo mode (no secret given) on `database`.
fn demo_server(database: &sqlx::postgres::PgConnectOptions, data_dir: &DataDir) -> Binary {
    let data_dir = data_dir.0.to_string_lossy().into_owned();
    Binary::serve_without(
        &["TIDINGS_JWT_SECRET"],
        &[
            ("DATABASE_URL", &url_of(database)),
            ("TIDINGS_DATA_DIR", &data_dir),
        ],
    )
    .expect("tidings")
}

async fn demo_token(server: &Binary) -> String {
    let links = server
        .lines_within(Duration::from_secs(5), |l| l.contains("access_token="))
        .await;
    token_in(links.first().expect("a logged demo link"))
}

fn token_in(link: &str) -> String {
    link.split("access_token=")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect()
}

#[tokio::test]
async fn probes_answer_while_the_database_is_unreachable_and_other_requests_wait() {
    // Arrange: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let url = format!("postgres://tidings@127.0.0.1:{port}/tidings");
    let mut server = Binary::serve(&[("DATABASE_URL", &url)]).expect("tidings");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let get = |path: &str| client.get(format!("{}{path}", server.address)).send();

    // Act
    let alive = get("/healthz").await.expect("healthz");
    let ready = get("/readyz").await.expect("readyz");
    let mut other = tokio::spawn(get("/v1/notifications"));
    let waited = tokio::time::timeout(Duration::from_secs(1), &mut other).await;
    let status = server.terminate().expect("stops on SIGTERM");
    let other = other.await.expect("join").expect("answered once stopping");

    // Assert: an EventSource would give up for good on a 503, so requests
    // wait for the app - and get a problem only if it never starts.
    assert_eq!(alive.status(), 200);
    assert_eq!(ready.status(), 503);
    let readiness: Value = ready.json().await.expect("json");
    assert_eq!(readiness["ready"], false);
    assert!(
        waited.is_err(),
        "answered before the app started: {waited:?}"
    );
    assert_problem(other, 503).await;
    assert!(status.success(), "{status}");
}

/// The JSON log lines of a request to `path`: those whose span is the
/// request span (`app::request_span`) with that path.
/// tidings as a process, logging JSON, over a fresh database (and a pool
/// on it): `log_filter` is its `RUST_LOG`, `None` its default filter.
async fn binary_with_json_logs(log_filter: Option<&str>) -> (Binary, sqlx::PgPool) {
    let database = fresh_database().await.expect("database");
    let url = url_of(&database);
    let mut env = vec![
        ("DATABASE_URL", url.as_str()),
        ("TIDINGS_LOG_FORMAT", "json"),
    ];
    env.extend(log_filter.map(|filter| ("RUST_LOG", filter)));
    let unset: &[&str] = if log_filter.is_none() {
        &["RUST_LOG"]
    } else {
        &[]
    };
    let server = Binary::serve_without(unset, &env).expect("tidings");
    server.wait_until_ready().await.expect("ready");
    let db = sqlx::PgPool::connect_with(database).await.expect("pool");
    (server, db)
}

/// Makes every audit query fail (a 500 whose cause is logged).
async fn lose_the_audit_view(db: &sqlx::PgPool) {
    sqlx::query("ALTER VIEW tidings.audit_log RENAME TO audit_log_gone")
        .execute(db)
        .await
        .expect("rename");
}

/// A token a [`Binary`] accepts (it runs with the tests' secret).
fn token_for_binary(recipient: &str, roles: &[Role]) -> String {
    tidings::http::auth::Keys::new(crate::helpers::SECRET.as_bytes())
        .issue(recipient, roles, Duration::from_secs(600))
        .expect("token")
}

fn lines_of_request(lines: &[String], path: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["span"]["name"] == "request" && line["span"]["path"] == path)
        .collect()
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id_and_never_its_query_string() {
    // Arrange: JSON logs with tower_http's own per-request lines on, over a
    // database whose audit view is gone (so the request logs an ERROR);
    // the token comes in the query string, as a browser's EventSource
    // sends it.
    let (server, db) = binary_with_json_logs(Some("debug")).await;
    lose_the_audit_view(&db).await;
    let token = token_for_binary("auditor", &[Role::Auditor]);

    // Act
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/audit/events?access_token={token}&kind=k",
            server.address
        ))
        .header("x-request-id", "rid-1")
        .send()
        .await
        .expect("request");
    assert_problem(response, 500).await;
    let is_error =
        |line: &str| serde_json::from_str::<Value>(line).is_ok_and(|line| line["level"] == "ERROR");
    server.lines_within(Duration::from_secs(5), is_error).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = server.lines();

    // Assert: the request's lines (its ERROR among them) all name rid-1,
    // and no line anywhere holds the token or the query string.
    let of_request = lines_of_request(&lines, "/v1/audit/events");
    assert!(
        of_request.iter().any(|line| line["level"] == "ERROR"),
        "the ERROR is logged within the request's span: {lines:#?}"
    );
    for line in &of_request {
        assert_eq!(line["span"]["id"], "rid-1", "{line}");
    }
    let leaks: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(&token) || line.contains("access_token"))
        .collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
}

#[tokio::test]
async fn a_recipient_whose_rows_cannot_be_read_is_named_in_an_error_log_line() {
    // Arrange: the binary with JSON logs; a live stream for mallory, whose
    // rows then become unreadable.
    let (server, db) = binary_with_json_logs(Some("tidings=info")).await;
    let response = server.stream("mallory").await;
    assert_eq!(response.status(), 200);
    let mut stream = SseClient::new(response);
    let insert = "INSERT INTO tidings.notifications (recipient, kind) VALUES ('mallory', 'k')";
    sqlx::query(insert).execute(&db).await.expect("insert");
    stream.next().await;
    crate::payloads::damage(&db, "mallory").await;

    // Act
    sqlx::query(insert).execute(&db).await.expect("insert");
    let errors = server
        .lines_within(Duration::from_secs(10), |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|line| line["level"] == "ERROR")
        })
        .await;

    // Assert
    let error: Value = serde_json::from_str(errors.first().expect("an ERROR line")).expect("json");
    assert_eq!(error["recipient"], "mallory", "{error}");
    assert!(
        error.to_string().contains("invalid page"),
        "with its cause: {error}"
    );
}
