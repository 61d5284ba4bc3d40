//! Starting up: migrations made by a newer tidings, the embedded cluster in
//! an operator's environment (PG* variables, root, an older owner, a broken
//! configuration, a second tidings), and an unreachable database - each run
//! as the real binary.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::helpers::binary::Binary;
use crate::helpers::cluster::{fresh_database, url_of};

/// A scratch `--data-dir`, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        Self(
            std::env::temp_dir().join(format!("tidings-startup-{}", uuid::Uuid::new_v4().simple())),
        )
    }

    pub fn env(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tidings <args>` with nothing of the test's environment that would pick
/// its database, plus `env`.
fn tidings(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TIDINGS_JWT_SECRET")
        .env("RUST_LOG", "tidings=info");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run tidings")
}

fn migrate_in(dir: &TempDir) -> Output {
    tidings(&["migrate"], &[("TIDINGS_DATA_DIR", &dir.env())])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn is_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("NOT RUN: this test needs root");
    }
    root
}

fn chown_recursively(path: &Path, owner: &str) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(owner)
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown -R {owner} {}", path.display());
}

/// A fresh database on which `sql` has run.
async fn database_after(sql: &str) -> PgConnectOptions {
    let database = fresh_database().await.expect("database");
    let mut conn = PgConnection::connect_with(&database)
        .await
        .expect("connect");
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    conn.close().await.expect("close");
    database
}

/// What is in a sqlx bookkeeping table: (version, description) in order.
async fn bookkeeping(database: &PgConnectOptions, table: &str) -> Vec<(i64, String)> {
    let mut conn = PgConnection::connect_with(database).await.expect("connect");
    let rows = sqlx::query_as(&format!(
        "SELECT version, description FROM {table} ORDER BY version"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("read bookkeeping");
    conn.close().await.expect("close");
    rows
}

#[tokio::test]
async fn an_older_tidings_migrates_a_database_with_newer_migrations_and_warns_naming_them() {
    let database = database_after(
        "INSERT INTO tidings_migrations._sqlx_migrations
             (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer tidings', true, '\\x00', 1)",
    )
    .await;

    let output = tidings(&["migrate"], &[("DATABASE_URL", &url_of(&database))]);

    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    let warning = log
        .lines()
        .find(|line| line.contains("WARN") && line.contains("9999"));
    assert!(warning.is_some(), "no warning naming 9999 in:\n{log}");
}

#[tokio::test]
async fn an_applications_own_sqlx_migrations_live_beside_tidings_in_one_database() {
    // Arrange: the app's sqlx migrations (sqlx's default table, in public).
    let database = database_after(
        "CREATE TABLE public._sqlx_migrations
             (LIKE tidings_migrations._sqlx_migrations INCLUDING ALL);
         INSERT INTO public._sqlx_migrations
             (version, description, success, checksum, execution_time)
         VALUES (20240101120000, 'create users', true, '\\x00', 1)",
    )
    .await;
    let tidings_before = bookkeeping(&database, "tidings_migrations._sqlx_migrations").await;

    // Act: tidings starts on that database again.
    let output = tidings(&["migrate"], &[("DATABASE_URL", &url_of(&database))]);

    // Assert: each keeps its own, untouched by the other.
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        bookkeeping(&database, "public._sqlx_migrations").await,
        vec![(20240101120000, "create users".to_owned())]
    );
    assert_eq!(
        bookkeeping(&database, "tidings_migrations._sqlx_migrations").await,
        tidings_before
    );
}

#[tokio::test]
async fn a_pgport_in_the_environment_does_not_move_the_embedded_cluster() {
    let dir = TempDir::new();

    let server = Binary::serve(&[
        ("TIDINGS_DATA_DIR", &dir.env()),
        ("PGPORT", "6543"),
        ("PGHOST", "/nonexistent"),
    ])
    .expect("start");

    server
        .wait_until_ready()
        .await
        .unwrap_or_else(|error| panic!("{error}:\n{}", server.lines().join("\n")));
}

#[test]
fn a_failed_embedded_start_names_the_server_log_and_quotes_its_end() {
    let dir = TempDir::new();
    let first = migrate_in(&dir);
    assert!(first.status.success(), "{}", stderr(&first));
    let conf = dir.0.join("pgdata/postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
    text.push_str("\nthis line = is = broken\n");
    std::fs::write(&conf, text).expect("break postgresql.conf");

    let output = migrate_in(&dir);

    let log = stderr(&output);
    assert!(!output.status.success(), "started with a broken config");
    let log_path = dir.0.canonicalize().expect("dir").join("postgres.log");
    assert!(
        log.contains(&log_path.display().to_string()),
        "the error does not name {}:\n{log}",
        log_path.display()
    );
    assert!(
        log.contains("contains errors"),
        "the error does not quote the log:\n{log}"
    );
}

#[test]
fn as_root_an_existing_cluster_runs_as_its_owner_who_keeps_every_file() {
    if !is_root() {
        return;
    }
    let dir = TempDir::new();
    let first = migrate_in(&dir);
    assert!(first.status.success(), "{}", stderr(&first));
    // As if a normal user had made it: everything theirs.
    chown_recursively(&dir.0, "nobody:");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("users")
        .expect("a nobody user")
        .uid
        .as_raw();

    let output = migrate_in(&dir);

    assert!(output.status.success(), "{}", stderr(&output));
    for entry in std::fs::read_dir(&dir.0).expect("list data dir") {
        let entry = entry.expect("entry");
        let owner = entry.metadata().expect("metadata").uid();
        assert_eq!(owner, nobody, "{} changed owner", entry.path().display());
    }
}

#[test]
fn as_root_a_cluster_owned_by_root_is_refused_with_the_chown_that_fixes_it() {
    if !is_root() {
        return;
    }
    let dir = TempDir::new();
    let first = migrate_in(&dir);
    assert!(first.status.success(), "{}", stderr(&first));
    chown_recursively(&dir.0.join("pgdata"), "root:");

    let output = migrate_in(&dir);

    let log = stderr(&output);
    assert!(!output.status.success(), "ran on a root-owned cluster");
    assert!(
        log.contains("owned by root") && log.contains("chown -R"),
        "{log}"
    );
}

#[test]
fn as_root_a_symbolic_link_in_the_data_dir_is_neither_followed_nor_given_away() {
    if !is_root() {
        return;
    }
    // Arrange: someone who can write the data dir plants links to a file
    // of root's where tidings keeps its log and its URL file.
    let dir = TempDir::new();
    let first = migrate_in(&dir);
    assert!(first.status.success(), "{}", stderr(&first));
    let precious = dir.0.join("precious");
    std::fs::write(&precious, "root's\n").expect("write");
    for name in ["postgres.log", "DATABASE_URL"] {
        let link = dir.0.join(name);
        std::fs::remove_file(&link).expect("remove");
        std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    }

    // Act
    let output = migrate_in(&dir);

    // Assert: refused, and the file behind the links is as it was.
    assert!(
        !output.status.success(),
        "followed a link: {}",
        stderr(&output)
    );
    let metadata = std::fs::metadata(&precious).expect("metadata");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&metadata),
        0,
        "given away"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("read"),
        "root's\n"
    );
}

#[tokio::test]
async fn a_second_tidings_on_a_busy_data_dir_is_told_how_to_reach_the_running_cluster() {
    let dir = TempDir::new();
    let server = Binary::serve(&[("TIDINGS_DATA_DIR", &dir.env())]).expect("start");
    server.wait_until_ready().await.expect("ready");
    let url_file = dir.0.canonicalize().expect("dir").join("DATABASE_URL");

    let refused = migrate_in(&dir);
    let url = std::fs::read_to_string(&url_file).expect("DATABASE_URL file");
    let suggested = tidings(&["migrate"], &[("DATABASE_URL", url.trim())]);

    let log = stderr(&refused);
    assert!(!refused.status.success(), "{log}");
    let hint = format!("--database-url \"$(cat {})\"", url_file.display());
    assert!(log.contains(&hint), "no `{hint}` in:\n{log}");
    assert!(suggested.status.success(), "{}", stderr(&suggested));
}

#[tokio::test]
async fn an_unreachable_database_is_logged_with_its_address_and_the_real_cause() {
    // Port 1 on loopback: nothing listens there, connections are refused.
    let server = Binary::serve(&[("DATABASE_URL", "postgres://tidings@127.0.0.1:1/tidings")])
        .expect("start");

    let lines = server
        .lines_within(Duration::from_secs(20), |line| {
            line.contains("not reachable yet")
        })
        .await;

    let line = lines
        .first()
        .expect("a line saying the database is not reachable");
    assert!(line.contains("127.0.0.1:1"), "no address in: {line}");
    assert!(
        line.to_lowercase().contains("refused"),
        "not the real cause in: {line}"
    );
}
