//! Small checks shared by the test modules: a response's headers and
//! problem documents, and whether a runtime a test drives is installed
//! (never a silent skip under CI).

use serde_json::Value;

/// A response header as text ("" when absent or not text).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Whether `program args` runs successfully: the check for a runtime that
/// a test drives (Python, Node, PHP, Chromium's helpers). If it does not,
/// says which test did not run - or fails, under CI, which must run
/// everything (`.ci/run` installs it all).
pub fn runnable(what: &str, program: &str, args: &[&str]) -> bool {
    let ok = std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run every test, but {what} is missing"
        );
        eprintln!("NOT RUN: {what} is not installed here (.ci/run installs it)");
    }
    ok
}

/// Asserts `response` is a problem document with `status`.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// The SQLSTATE `sql` fails with in `session`, or "ok": what a role may
/// and may not do, one statement at a time.
pub async fn outcome(session: &mut sqlx::PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(&mut *session).await {
        Ok(_) => "ok".into(),
        Err(sqlx::Error::Database(error)) => error.code().unwrap_or_default().into_owned(),
        Err(error) => panic!("{sql}: {error}"),
    }
}
