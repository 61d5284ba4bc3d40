//! The service by privilege (I11): tidings serves as a login holding
//! `tidings_service`, which owns nothing. It publishes, marks read, reads
//! and takes hint leases; it cannot rewrite history, move a counter or
//! switch off the append-only triggers. Migrations run as the schema's
//! owner, and the embedded default is set up the same way.

use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::app::{spawn_app, spawn_app_with, test_settings};
use crate::helpers::binary::Binary;
use crate::helpers::checks::outcome;
use crate::helpers::cluster::{as_service, empty_database};

#[tokio::test]
async fn the_service_role_can_neither_rewrite_history_nor_switch_off_append_only() {
    // Arrange: a notification, streamed by the service (which leases).
    let app = spawn_app().await;
    app.insert("alice", "kept", json!({})).await;
    let mut stream = app.stream("alice", Some(0)).await;
    assert_eq!(stream.next().await.json()["kind"], "kept");
    let options = as_service(&app.db.connect_options());
    let mut service = PgConnection::connect_with(&options)
        .await
        .expect("the service's login");

    // Act and assert: each attempt is refused for want of privilege.
    let attempts = [
        "UPDATE tidings.notifications SET kind = 'forged'",
        "DELETE FROM tidings.notifications",
        "ALTER TABLE tidings.notifications DISABLE TRIGGER append_only",
        "ALTER TABLE tidings.notifications DISABLE TRIGGER assign_seq",
        "SET session_replication_role = replica",
        "UPDATE tidings.recipients SET last_seq = 100",
        "INSERT INTO tidings.recipients (recipient, last_seq) VALUES ('bob', 41)",
        "INSERT INTO tidings.notifications (recipient, kind, seq) VALUES ('alice', 'x', 9)",
        "SELECT tidings.set_hints(false)",
        "DROP TRIGGER append_only ON tidings.reads",
    ];
    for sql in attempts {
        assert_eq!(outcome(&mut service, sql).await, "42501", "{sql}");
    }
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM tidings.notifications ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .expect("history");
    assert_eq!(kinds, ["kept"]);
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut service)
            .await
            .expect("role");
    assert!(!superuser);
}

#[tokio::test]
async fn the_service_role_takes_leases_only_through_their_functions() {
    // Arrange
    let app = spawn_app().await;
    let options = as_service(&app.db.connect_options());
    let mut service = PgConnection::connect_with(&options)
        .await
        .expect("the service's login");

    // Act: a first lease makes the counter row at seq 0; one renewal.
    let position: i64 = sqlx::query_scalar("SELECT tidings.take_lease('carol', 60)")
        .fetch_one(&mut service)
        .await
        .expect("take a lease");
    let renewed: Vec<String> =
        sqlx::query_scalar("SELECT tidings.renew_leases(ARRAY['carol', 'nobody'], 60)")
            .fetch_all(&mut service)
            .await
            .expect("renew");

    // Assert
    assert_eq!(position, 0);
    assert_eq!(renewed, ["carol"]);
    let (last_seq, leased): (i64, bool) = sqlx::query_as(
        "SELECT last_seq, hints_until > now() FROM tidings.recipients WHERE recipient = 'carol'",
    )
    .fetch_one(&app.db)
    .await
    .expect("counter row");
    assert_eq!((last_seq, leased), (0, true));
    let verdict = tidings::audit::verify(&app.db, None).await.expect("verify");
    assert!(verdict.ok, "{:?}", verdict.broken);
}

#[tokio::test]
async fn a_service_role_that_may_not_migrate_stops_saying_how_and_starts_given_the_owner() {
    // Arrange: a database nobody has migrated.
    let owner = empty_database().await.expect("empty database");
    let service = as_service(&owner);

    // Act: the service's own login alone.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = tidings::service::serve(
        test_settings(service.clone()),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;

    // Assert: refused, naming the way out.
    let message = refused.expect_err("a start it cannot migrate").to_string();
    assert!(
        message.contains("run `tidings migrate` with the URL"),
        "{message}"
    );
    assert!(message.contains("as --migration-database-url"), "{message}");

    // Act: with the owner's URL to migrate.
    let app = spawn_app_with_migration(owner.clone()).await;

    // Assert: migrated by the owner, serving as the service.
    assert_eq!(app.readyz().await, 200);
    let pool = PgPool::connect_with(owner).await.expect("owner");
    let served_as: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'tidings'",
    )
    .fetch_all(&pool)
    .await
    .expect("sessions");
    assert_eq!(served_as, [options_user(&service)]);
}

fn options_user(options: &sqlx::postgres::PgConnectOptions) -> String {
    options.get_username().to_owned()
}

/// tidings on `owner`'s database as its service login, migrating as
/// `owner`.
async fn spawn_app_with_migration(
    owner: sqlx::postgres::PgConnectOptions,
) -> crate::helpers::app::TestApp {
    let service = as_service(&owner);
    spawn_app_with(move |settings| {
        settings.database = service;
        settings.migration_database = Some(owner);
    })
    .await
}

#[tokio::test]
async fn the_embedded_default_serves_as_a_login_that_is_no_superuser_and_refuses_tcp() {
    // Arrange
    let dir = std::env::temp_dir().join(format!("tidings-role-{}", uuid::Uuid::new_v4().simple()));
    let data_dir = dir.to_string_lossy().into_owned();

    // Act
    let mut server = Binary::serve_without(&["DATABASE_URL"], &[("TIDINGS_DATA_DIR", &data_dir)])
        .expect("tidings");
    server.wait_until_ready().await.expect("ready");
    let url = std::fs::read_to_string(dir.join("DATABASE_URL")).expect("DATABASE_URL file");
    let admin = PgPool::connect(url.trim()).await.expect("the superuser");

    // Assert: every session of the service is the non-superuser login.
    let sessions: Vec<(String, bool)> = sqlx::query_as(
        "SELECT DISTINCT a.usename::text, r.rolsuper
           FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename
          WHERE a.application_name LIKE 'tidings%'",
    )
    .fetch_all(&admin)
    .await
    .expect("sessions");
    assert_eq!(sessions, [("tidings".to_owned(), false)]);
    // And no TCP login is trusted, dormant or not.
    let trusted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_hba_file_rules
          WHERE type LIKE 'host%' AND auth_method NOT IN ('reject')",
    )
    .fetch_one(&admin)
    .await
    .expect("pg_hba_file_rules");
    assert_eq!(trusted, 0);
    admin.close().await;
    let status = server.terminate().expect("terminate");
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
