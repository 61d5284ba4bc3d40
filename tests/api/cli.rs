//! The command line: the embedded default, `migrate`, `token` and `verify`,
//! settings refused before anything is served, and signals, run as the real
//! binary.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::binary::Binary;
use crate::helpers::cluster::{empty_database, fresh_database, url_of};
use crate::helpers::sse::SseClient;
use crate::helpers::SECRET;

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
    let token = tidings::http::auth::Keys::new(SECRET.as_bytes())
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

    let claims = printed_claims(&output, SECRET);
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.roles, vec![tidings::config::Role::Publisher]);
}

/// The claims of the token `tidings token` printed, checked with `secret`.
fn printed_claims(output: &Output, secret: &str) -> tidings::http::auth::Claims {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    tidings::http::auth::Keys::new(secret.as_bytes())
        .verify(&token)
        .expect("valid token")
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
    let database = crate::helpers::cluster::fresh_database()
        .await
        .expect("database");
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

/// Runs `command` (stderr captured) to its end, or fails the test if it is
/// still running after `within`: a setting that should be refused was
/// served with instead.
pub async fn run_until_exit(mut command: Command, within: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tidings");
    tokio::task::spawn_blocking(move || wait_or_kill(child, within))
        .await
        .expect("wait")
}

fn wait_or_kill(mut child: std::process::Child, within: Duration) -> Output {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    panic!(
        "still running after {within:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `tidings serve` on a random port over a migrated database.
async fn serve_command() -> Command {
    let database = fresh_database().await.expect("database");
    let mut command = tidings();
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", url_of(&database))
        .env("TIDINGS_JWT_SECRET", SECRET);
    command
}

#[tokio::test]
async fn an_empty_or_short_jwt_secret_is_refused_before_serving() {
    for secret in ["", "short", "0123456789abcdef0123456789abcde"] {
        let mut command = serve_command().await;
        command.env("TIDINGS_JWT_SECRET", secret);

        let output = run_until_exit(command, Duration::from_secs(20)).await;

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{secret:?}: {stderr}");
        assert!(stderr.contains("--jwt-secret"), "{stderr}");
        assert!(stderr.contains("at least 32"), "{stderr}");
        assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
        assert!(!stderr.contains("serving on"), "{stderr}");
        if !secret.is_empty() {
            assert!(
                !stderr.contains(secret),
                "the refused secret is in: {stderr}"
            );
        }
    }
}

#[test]
fn token_refuses_to_sign_with_a_secret_shorter_than_32_bytes() {
    let output = tidings()
        .args(["token", "--sub", "alice", "--role", "publisher"])
        .env("TIDINGS_JWT_SECRET", "")
        .output()
        .expect("run");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "no token printed");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
}

#[test]
fn token_signs_with_a_secret_of_exactly_32_bytes() {
    let secret = "0123456789abcdef0123456789abcdef";

    let output = tidings()
        .args(["token", "--sub", "alice", "--jwt-secret", secret])
        .output()
        .expect("run");

    let claims = printed_claims(&output, secret);
    assert_eq!(claims.sub, "alice");
}

#[test]
fn token_takes_every_flag_from_the_environment() {
    let output = tidings()
        .arg("token")
        .env("TIDINGS_JWT_SECRET", SECRET)
        .env("TIDINGS_TOKEN_SUB", "billing")
        .env("TIDINGS_TOKEN_ROLES", "publisher,auditor")
        .env("TIDINGS_TOKEN_TTL", "5m")
        .output()
        .expect("run");

    let claims = printed_claims(&output, SECRET);
    assert_eq!(claims.sub, "billing");
    assert_eq!(
        claims.roles,
        vec![
            tidings::config::Role::Publisher,
            tidings::config::Role::Auditor
        ]
    );
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 240..=now + 360).contains(&(claims.exp as i64)),
        "exp {} is about 5 minutes from now",
        claims.exp
    );
}

#[tokio::test]
async fn an_empty_database_url_is_refused_before_serving() {
    let mut command = serve_command().await;
    command.env("DATABASE_URL", "");

    let output = run_until_exit(command, Duration::from_secs(20)).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("serving on"), "{stderr}");
}

/// `tidings verify` over `database` with `env`: its exit code and stdout.
fn verify(database_url: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = tidings()
        .arg("verify")
        .env("DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .output()
        .expect("run tidings verify");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn verify_exits_1_for_a_broken_chain_and_0_for_an_intact_one() {
    let database = fresh_database().await.expect("database");
    let db = PgPool::connect_with(database.clone()).await.expect("pool");
    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind)
         VALUES ('alice', 'a'), ('bob', 'b1'), ('bob', 'b2')",
    )
    .execute(&db)
    .await
    .expect("history");
    let mut tx = db.begin().await.expect("begin");
    for statement in [
        "ALTER TABLE tidings.notifications DISABLE TRIGGER append_only",
        "UPDATE tidings.notifications SET kind = 'forged' WHERE recipient = 'bob' AND seq = 1",
        "ALTER TABLE tidings.notifications ENABLE TRIGGER append_only",
    ] {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .expect(statement);
    }
    tx.commit().await.expect("commit");
    db.close().await;
    let url = url_of(&database);

    let (everyone, report) = verify(&url, &[]);
    let (alice, _) = verify(&url, &[("TIDINGS_VERIFY_RECIPIENT", "alice")]);

    assert_eq!(everyone, Some(1), "a broken link: {report}");
    assert!(report.contains("bob"), "names the broken chain: {report}");
    assert_eq!(alice, Some(0), "alice's chain is intact");
}

#[test]
fn verify_exits_2_when_it_cannot_reach_the_database() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let unreachable = "postgres://tidings@127.0.0.1:1/tidings";

    let (status, _) = verify(unreachable, &[]);
    let (heads, _) = verify(unreachable, &[("TIDINGS_VERIFY_HEADS", "true")]);

    assert_eq!(status, Some(2), "could not verify is not tampering");
    assert_eq!(heads, Some(2));
}

#[test]
fn verify_help_documents_its_exit_statuses() {
    let output = tidings().args(["verify", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&output.stdout);

    assert!(help.contains("Exit status"), "{help}");
    assert!(
        help.contains("2 the history could not be verified"),
        "{help}"
    );
    for variable in ["TIDINGS_VERIFY_RECIPIENT", "TIDINGS_VERIFY_HEADS"] {
        assert!(help.contains(variable), "--help lacks {variable}");
    }
}

/// A publish whose body never comes: shutdown's drain waits for it (up to
/// 30 s), as it would for any response still under way.
async fn hold_a_request_open(address: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let token = tidings::http::auth::Keys::new(SECRET.as_bytes())
        .issue(
            "billing",
            &[tidings::config::Role::Publisher],
            Duration::from_secs(600),
        )
        .expect("token");
    let host = address.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    let head = format!(
        "POST /v1/notifications HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"recipient\":"
    );
    socket.write_all(head.as_bytes()).await.expect("send head");
    socket
}

fn interrupt(server: &Binary) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    kill(Pid::from_raw(server.child.id() as i32), Signal::SIGINT).expect("SIGINT");
}

#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once_with_status_130() {
    let database = fresh_database().await.expect("database");
    let mut server = Binary::serve(&[("DATABASE_URL", &url_of(&database))]).expect("start");
    server.wait_until_ready().await.expect("ready");
    let _held = hold_a_request_open(&server.address).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    interrupt(&server);
    let draining = server
        .lines_within(Duration::from_secs(10), |l| l.contains("shutting down"))
        .await;
    assert!(!draining.is_empty(), "the first signal starts the shutdown");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "still draining the held request"
    );
    interrupt(&server);
    let mut status = None;
    for _ in 0..200 {
        status = server.child.try_wait().expect("try_wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = status.expect("exited within 10 s of the second signal (the drain lasts 30 s)");
    assert_eq!(status.code(), Some(130), "{status}");
}
