//! Shutting down ends open streams cleanly, so clients reconnect and resume;
//! and it ends a start still migrating, and a run whose embedded PostgreSQL
//! is already gone, without hanging or failing.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tidings::service::{self, Settings};

use crate::helpers::app::spawn_app;
use crate::helpers::binary::Binary;
use crate::helpers::cluster::{fresh_database, wait_for_sessions_waiting_for_a_lock};
use crate::startup::TempDir;

#[tokio::test]
async fn graceful_shutdown_ends_open_streams_and_the_server() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", None).await;

    app.shutdown.cancel();

    assert!(
        stream.ended_within(Duration::from_secs(5)).await,
        "the stream ended"
    );
    tokio::time::timeout(Duration::from_secs(5), app.server)
        .await
        .expect("server stopped")
        .expect("server task");
}

#[tokio::test]
async fn shutdown_ends_a_start_whose_migration_waits_for_a_lock() {
    let database = fresh_database().await.expect("database");
    let mut holder = PgConnection::connect_with(&database)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE tidings_migrations._sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = tokio::spawn(service::serve(
        settings(database.clone()),
        listener,
        shutdown.clone(),
    ));
    let watcher = sqlx::PgPool::connect_with(database.clone())
        .await
        .expect("connect");
    wait_for_sessions_waiting_for_a_lock(&watcher, 1, "the migration never waited for the lock")
        .await;

    shutdown.cancel();

    let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    stopped
        .expect("the server stopped while the migration waited")
        .expect("server task")
        .expect("serve");
}

#[tokio::test]
async fn sigterm_after_the_embedded_postgres_already_stopped_exits_cleanly() {
    let dir = TempDir::new();
    let mut server = Binary::serve(&[("TIDINGS_DATA_DIR", &dir.env())]).expect("start");
    server.wait_until_ready().await.expect("ready");
    let pid_file = dir.0.join("pgdata/postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid");
    // As systemd's KillMode=control-group does: the server is signalled too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("stop the postmaster");
    for _ in 0..200 {
        if !pid_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pid_file.exists(), "PostgreSQL did not stop");

    let status = server.terminate().expect("terminate");

    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.lines().join("\n")
    );
}

fn settings(database: sqlx::postgres::PgConnectOptions) -> Settings {
    Settings {
        pool_size: 4,
        ..crate::helpers::app::test_settings(database)
    }
}
