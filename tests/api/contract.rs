//! Promises of the protocol (docs/protocol.md) no other module pins down:
//! the SQL table's own refusals and defaults, the auditor role, the command
//! line's defaults (whatever the environment), the inbox's default page and
//! the stream's refusal to be compressed.

use clap::{CommandFactory, FromArgMatches};
use serde_json::{json, Value};

use tidings::config::{Cli, Role};

use crate::helpers::app::spawn_app;

/// The SQLSTATE of a failed statement, or "" if it succeeded.
async fn sqlstate_of(app: &crate::helpers::app::TestApp, recipient: &str, kind: &str) -> String {
    let result = sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ($1, $2)")
        .bind(recipient)
        .bind(kind)
        .execute(&app.db)
        .await;
    match result {
        Ok(_) => String::new(),
        Err(error) => error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|code| code.into_owned())
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn sql_refuses_an_empty_recipient_or_kind() {
    let app = spawn_app().await;

    let empty_recipient = sqlstate_of(&app, "", "k").await;
    let empty_kind = sqlstate_of(&app, "alice", "").await;

    assert_eq!(empty_recipient, "23514", "check_violation for recipient ''");
    assert_eq!(empty_kind, "23514", "check_violation for kind ''");
    assert_eq!(app.inbox("alice").await["position"], 0, "nothing stored");
}

#[tokio::test]
async fn payload_defaults_to_an_empty_object_in_sql_and_over_http() {
    let app = spawn_app().await;
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'by-sql')")
        .execute(&app.db)
        .await
        .expect("insert without payload");
    let token = app.token_with("billing", &[Role::Publisher]);
    let published = app
        .client
        .post(format!("{}/v1/notifications", app.address))
        .bearer_auth(token)
        .json(&json!({"recipient": "alice", "kind": "by-http"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 201);

    let inbox = app.inbox("alice").await;

    let payloads: Vec<(&str, &Value)> = inbox["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| (item["kind"].as_str().unwrap_or(""), &item["payload"]))
        .collect();
    assert_eq!(
        payloads,
        vec![("by-http", &json!({})), ("by-sql", &json!({}))]
    );
}

#[tokio::test]
async fn the_auditor_role_exists_and_cannot_log_in() {
    let app = spawn_app().await;

    let can_login: Option<bool> =
        sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tidings_auditor'")
            .fetch_optional(&app.db)
            .await
            .expect("pg_roles");

    assert_eq!(can_login, Some(false));
}

#[tokio::test]
async fn the_inbox_returns_fifty_items_when_no_limit_is_given() {
    let app = spawn_app().await;
    app.insert_many("alice", 60).await;

    let inbox = app.inbox("alice").await;

    let items = inbox["items"].as_array().expect("items");
    assert_eq!(items.len(), 50);
    assert_eq!(items[0]["seq"], 60, "newest first");
    assert_eq!(inbox["position"], 60);
}

#[tokio::test]
async fn the_stream_is_never_compressed_even_when_the_client_asks() {
    let app = spawn_app().await;

    let response = app
        .get("/v1/stream", "alice")
        .header("Accept-Encoding", "gzip, deflate, br, zstd")
        .send()
        .await
        .expect("stream");

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("content-encoding"), None);
}

#[test]
fn a_bare_tidings_means_serve_with_the_documented_defaults() {
    // The defaults are what a user gets with nothing configured, so parse
    // with every flag's environment variable switched off: this process's
    // own environment (an operator's TIDINGS_LISTEN, say) must not decide
    // whether the check runs or what it sees.
    let command = Cli::command().mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["tidings"])
        .expect("a bare `tidings` parses");
    let cli = Cli::from_arg_matches(&matches).expect("into the config");

    assert!(cli.command.is_none(), "a bare `tidings` serves");
    assert_eq!(cli.serve.database.database_url, None, "embedded cluster");
    assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        cli.serve.database.data_dir,
        std::path::Path::new(".tidings")
    );
    assert_eq!(cli.serve.heartbeat, std::time::Duration::from_secs(15));
    assert_eq!(
        cli.serve.header_read_timeout,
        tidings::http::server::HEADER_READ_TIMEOUT
    );
    assert_eq!(
        cli.serve.export_stall_timeout,
        tidings::audit::EXPORT_STALL_TIMEOUT
    );
}
