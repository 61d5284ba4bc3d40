//! The command line: the embedded default, `migrate` and `token`, run as the
//! real binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{empty_database, url_of, Binary, SseClient, SECRET};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("tidings-cli-{}", uuid::Uuid::new_v4().simple())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tidings() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("TIDINGS_JWT_SECRET");
    command
}

#[tokio::test]
async fn serve_without_database_url_runs_its_own_postgres_and_keeps_data_across_restarts() {
    let dir = TempDir::new();
    let data_dir = dir.0.to_string_lossy().into_owned();
    let token = tidings::auth::Keys::new(SECRET.as_bytes())
        .issue("alice", &[], Duration::from_secs(600))
        .expect("token");
    let client = reqwest::Client::new();

    // First run: start, publish with SQL through the URL it wrote, stream it.
    let mut first = Binary::serve(&[("TIDINGS_DATA_DIR", &data_dir)]).expect("first start");
    first.wait_until_ready().await.expect("ready");
    let url = std::fs::read_to_string(dir.0.join("DATABASE_URL")).expect("DATABASE_URL file");
    let db = PgPool::connect(url.trim())
        .await
        .expect("connect to the embedded cluster");
    sqlx::query("INSERT INTO tidings.notifications (recipient, kind) VALUES ('alice', 'kept')")
        .execute(&db)
        .await
        .expect("insert");
    db.close().await;
    let response = client
        .get(format!("{}/v1/stream", first.address))
        .bearer_auth(&token)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("stream");
    let mut stream = SseClient::new(response);
    assert_eq!(stream.next().await.json()["kind"], "kept");

    if nix::unistd::Uid::effective().is_root() {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir.0.join("pgdata"))
            .expect("pgdata")
            .uid();
        assert_ne!(owner, 0, "PostgreSQL must not run as root");
    }

    // SIGTERM: streams end cleanly, the cluster stops, the process exits 0.
    let status = first.terminate().expect("terminate");
    assert!(
        stream.ended_within(Duration::from_secs(5)).await,
        "the stream ended cleanly"
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        !dir.0.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL stopped"
    );

    // Second run on the same directory: the data is still there.
    let second = Binary::serve(&[("TIDINGS_DATA_DIR", &data_dir)]).expect("second start");
    second.wait_until_ready().await.expect("ready again");
    let inbox: Value = client
        .get(format!("{}/v1/notifications", second.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("inbox")
        .json()
        .await
        .expect("json");
    assert_eq!(inbox["items"][0]["kind"], "kept");
    assert_eq!(inbox["position"], 1);
}

#[tokio::test]
async fn a_killed_tidings_leaves_no_postgres_behind_and_restarts_cleanly() {
    let dir = TempDir::new();
    let data_dir = dir.0.to_string_lossy().into_owned();
    let mut first = Binary::serve(&[("TIDINGS_DATA_DIR", &data_dir)]).expect("first start");
    first.wait_until_ready().await.expect("ready");
    let pid_file = dir.0.join("pgdata/postmaster.pid");
    assert!(pid_file.exists());

    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");
    let mut stopped = false;
    for _ in 0..100 {
        if !pid_file.exists() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "the watchdog stopped PostgreSQL");

    let second = Binary::serve(&[("TIDINGS_DATA_DIR", &data_dir)]).expect("restart");
    second
        .wait_until_ready()
        .await
        .expect("ready after restart");
}

#[tokio::test]
async fn migrate_applies_the_migrations_and_exits() {
    let database = empty_database().await.expect("database");

    let output = tidings()
        .arg("migrate")
        .env("DATABASE_URL", url_of(&database))
        .output()
        .expect("run");

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let db = PgPool::connect_with(database).await.expect("pool");
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'tidings'")
            .fetch_one(&db)
            .await
            .expect("count");
    assert!(tables >= 3);
}

#[test]
fn token_prints_a_jwt_the_service_accepts() {
    let output = tidings()
        .args([
            "token",
            "--sub",
            "alice",
            "--role",
            "publisher",
            "--ttl",
            "5m",
        ])
        .env("TIDINGS_JWT_SECRET", SECRET)
        .output()
        .expect("run");

    assert!(output.status.success());
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let claims = tidings::auth::Keys::new(SECRET.as_bytes())
        .verify(&token)
        .expect("valid token");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.roles, vec![tidings::config::Role::Publisher]);
}

#[test]
fn token_without_a_secret_is_a_clear_error() {
    let output = tidings()
        .args(["token", "--sub", "alice"])
        .output()
        .expect("run");

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--jwt-secret"));
}

#[test]
fn help_explains_every_flag() {
    let output = tidings().args(["serve", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&output.stdout);

    for flag in [
        "--database-url",
        "--data-dir",
        "--listen",
        "--jwt-secret",
        "DATABASE_URL",
        "TIDINGS_DATA_DIR",
        "TIDINGS_LISTEN",
        "TIDINGS_JWT_SECRET",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let database = crate::helpers::fresh_database().await.expect("database");
    let server = Binary::serve(&[
        ("DATABASE_URL", &url_of(&database)),
        ("TIDINGS_LOG_FORMAT", "json"),
    ])
    .expect("start");
    server.wait_until_ready().await.expect("ready");

    let lines = server
        .log
        .lock()
        .map(|lines| lines.clone())
        .unwrap_or_default();

    assert!(!lines.is_empty());
    for line in &lines {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn a_pool_of_fewer_than_two_connections_is_a_clear_error() {
    let output = tidings()
        .args(["serve", "--db-pool-size", "1"])
        .output()
        .expect("run");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--db-pool-size"), "{stderr}");
}

#[test]
fn a_hint_lease_outside_one_second_to_a_day_is_a_clear_error() {
    for lease in ["0s", "500ms", "25h", "1000000000y"] {
        let output = tidings()
            .args(["serve", "--hint-lease", lease])
            .output()
            .expect("run");

        assert!(!output.status.success(), "{lease} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--hint-lease"), "{stderr}");
    }
}
