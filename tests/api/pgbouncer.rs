//! tidings through a real PgBouncer, as operators run it: in session mode
//! with the stock configuration it works (migrations, requests, streams,
//! hints); a pooler that drops the startup parameters it is given changes
//! none of tidings' settings nor where its migrations are recorded; a
//! pooler that shares sessions per transaction or statement is refused at
//! start with a message that says so, and never reported ready - while
//! apps keep publishing through such a pool.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::binary::Binary;
use crate::helpers::cluster::{empty_database, fresh_database};
use crate::helpers::pgbouncer::{database_of, PgBouncer};
use crate::helpers::SECRET;

/// The setting operators add so that a pooler passes clients which send
/// startup parameters it does not know: it then drops them silently.
const DROPS_STARTUP_OPTIONS: &str = "ignore_startup_parameters = extra_float_digits, options";

/// `tidings serve` with its database through `url`.
fn serve_through(url: &str) -> Binary {
    Binary::serve(&[("DATABASE_URL", url)]).expect("start tidings")
}

/// Waits (20 s at most) for the process to exit; its status and log.
fn exit_of(server: &mut Binary) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = server.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100)); // the log's last lines
            return (status.code(), server.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (None, server.lines().join("\n"))
}

/// `tidings migrate` with its database through `url`.
fn migrate_through(url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "tidings=info")
        .output()
        .expect("run tidings migrate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The versions in a sqlx bookkeeping table.
async fn versions(db: &mut PgConnection, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT version FROM {table} ORDER BY version"))
        .fetch_all(db)
        .await
        .unwrap_or_else(|error| panic!("reading {table}: {error}"))
}

async fn get_status(url: String) -> u16 {
    let token = tidings::http::auth::Keys::new(SECRET.as_bytes())
        .issue("alice", &[], Duration::from_secs(600))
        .expect("token");
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await;
    response.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test]
async fn tidings_runs_through_pgbouncer_in_session_mode_with_the_stock_configuration() {
    let database = empty_database().await.expect("database");
    let Some(pooler) = PgBouncer::start(&database, "session", "") else {
        return;
    };
    let name = database_of(&database);

    let server = serve_through(&pooler.url(&name));
    let ready = server.wait_until_ready().await;

    assert!(
        ready.is_ok(),
        "not ready through PgBouncer:\n{}\n--- PgBouncer:\n{}",
        server.lines().join("\n"),
        pooler.log()
    );
    let mut direct = PgConnection::connect_with(&database).await.expect("direct");
    assert_eq!(
        versions(&mut direct, "tidings_migrations._sqlx_migrations").await,
        tidings::db::MIGRATOR
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>(),
        "migrated through the pooler, bookkeeping in its own schema"
    );
    // Requests at once, each on a pooled session with prepared statements.
    let url = format!("{}/v1/notifications", server.address);
    let answers = futures_util::future::join_all((0..18).map(|_| get_status(url.clone()))).await;
    assert_eq!(answers, vec![200; 18], "{}", server.lines().join("\n"));
    // A stream gets a row inserted with SQL: hints flow through the pooler.
    let response = server.stream("alice").await;
    assert_eq!(response.status(), 200);
    let mut stream = crate::helpers::sse::SseClient::new(response);
    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ('alice', 'k', $1)",
    )
    .bind(json!({"through": "pgbouncer"}))
    .execute(&mut direct)
    .await
    .expect("insert");
    let event = stream
        .next_within(Duration::from_secs(5))
        .await
        .expect("the row, live");
    assert_eq!(event.json()["payload"], json!({"through": "pgbouncer"}));
}

#[tokio::test]
async fn sessions_keep_their_settings_through_a_pooler_that_drops_startup_parameters() {
    let database = fresh_database().await.expect("database");
    let Some(pooler) = PgBouncer::start(&database, "session", DROPS_STARTUP_OPTIONS) else {
        return;
    };
    let options = pooler.options(&database_of(&database));

    let requests = tidings::db::pool(options.clone(), 1);
    let hub = tidings::db::hub_pool(options);

    assert_eq!(show(&requests, "search_path").await, "public");
    assert_eq!(show(&hub, "search_path").await, "public");
    assert_eq!(
        show(&hub, "plan_cache_mode").await,
        "force_generic_plan",
        "the hub's generic plans"
    );
    assert_eq!(show(&requests, "plan_cache_mode").await, "auto");
}

async fn show(pool: &sqlx::PgPool, setting: &str) -> String {
    sqlx::query_scalar(&format!("SHOW {setting}"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("SHOW {setting}: {error}"))
}

#[tokio::test]
async fn migrations_through_a_pooler_that_drops_startup_parameters_keep_their_own_bookkeeping() {
    // An application's own sqlx migrations, in sqlx's default place.
    let database = empty_database().await.expect("database");
    let mut direct = PgConnection::connect_with(&database).await.expect("direct");
    sqlx::raw_sql(
        "CREATE TABLE public._sqlx_migrations (
             version BIGINT PRIMARY KEY, description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);
         INSERT INTO public._sqlx_migrations
             (version, description, success, checksum, execution_time)
         VALUES (20240101120000, 'create users', true, '\\x00', 1)",
    )
    .execute(&mut direct)
    .await
    .expect("the app's bookkeeping");
    let Some(pooler) = PgBouncer::start(&database, "session", DROPS_STARTUP_OPTIONS) else {
        return;
    };

    let (migrated, log) = migrate_through(&pooler.url(&database_of(&database)));
    let again = migrate_through(&pooler.url(&database_of(&database)));

    assert!(migrated, "{log}");
    assert!(again.0, "{}", again.1);
    assert_eq!(
        versions(&mut direct, "public._sqlx_migrations").await,
        vec![20240101120000],
        "the application's bookkeeping is untouched"
    );
    assert_eq!(
        versions(&mut direct, "tidings_migrations._sqlx_migrations").await,
        tidings::db::MIGRATOR
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>(),
        "tidings' bookkeeping is in its own schema"
    );
}

#[tokio::test]
async fn transaction_and_statement_pooling_are_refused_at_start_saying_why() {
    let database = fresh_database().await.expect("database");
    let name = database_of(&database);
    for mode in ["transaction", "statement"] {
        // Even told to pass what tidings sends, such a pool cannot carry it.
        let Some(pooler) = PgBouncer::start(&database, mode, DROPS_STARTUP_OPTIONS) else {
            return;
        };

        let mut server = serve_through(&pooler.url(&name));
        let (status, log) = exit_of(&mut server);
        let (migrated, migrate_log) = migrate_through(&pooler.url(&name));

        assert_eq!(
            status,
            Some(1),
            "serve must exit at start in {mode} mode:\n{log}"
        );
        for log in [&log, &migrate_log] {
            assert!(
                log.contains("not a session of its own") && log.contains("pool_mode = transaction"),
                "no clear refusal in {mode} mode:\n{log}"
            );
        }
        assert!(!migrated, "migrate must refuse {mode} mode");
    }
}

#[tokio::test]
async fn apps_publish_through_a_transaction_pool_to_a_tidings_on_a_session_pool() {
    let database = fresh_database().await.expect("database");
    let name = database_of(&database);
    let Some(sessions) = PgBouncer::start(&database, "session", "") else {
        return;
    };
    let Some(transactions) = PgBouncer::start(&database, "transaction", "") else {
        return;
    };
    let server = serve_through(&sessions.url(&name));
    server.wait_until_ready().await.expect("ready");
    let response = server.stream("bob").await;
    let mut stream = crate::helpers::sse::SseClient::new(response);

    // An app on the transaction pool: plain statements in a transaction,
    // as a driver without server-side prepared statements sends them.
    let app = transactions.options(&name).extra_float_digits(None);
    let mut app = PgConnection::connect_with(&app).await.expect("app");
    sqlx::raw_sql(
        "BEGIN;
         INSERT INTO tidings.notifications (recipient, kind) VALUES ('bob', 'one');
         INSERT INTO tidings.notifications (recipient, kind) VALUES ('bob', 'two');
         COMMIT;",
    )
    .execute(&mut app)
    .await
    .expect("publish through the transaction pool");

    let events = stream.take_within(2, Duration::from_secs(5)).await;
    let kinds: Vec<_> = events.iter().map(|e| e.json()["kind"].clone()).collect();
    assert_eq!(kinds, vec![json!("one"), json!("two")]);
}

#[tokio::test]
async fn readyz_never_says_ready_while_the_pooler_under_a_running_tidings_pools_by_transaction() {
    let database = fresh_database().await.expect("database");
    let name = database_of(&database);
    let Some(mut pooler) = PgBouncer::start(&database, "session", "") else {
        return;
    };
    let port = pooler.port;
    let server = serve_through(&pooler.url(&name));
    server
        .wait_until_ready()
        .await
        .expect("ready through the session pool");

    // The operator switches the pool to transaction mode under it.
    pooler.stop();
    let pooler = PgBouncer::start_on(port, &database, "transaction", "").expect("restart");
    let readyz = format!("{}/readyz", server.address);
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let status = match client.get(&readyz).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        seen.push(status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(
        !seen.contains(&200),
        "ready through a transaction pool ({} of {} probes):\n{}",
        seen.iter().filter(|s| **s == 200).count(),
        seen.len(),
        server.lines().join("\n")
    );
    // Back to session mode: ready again, on its own.
    drop(pooler);
    let _pooler = PgBouncer::start_on(port, &database, "session", "").expect("restart");
    server
        .wait_until_ready()
        .await
        .expect("ready again through the session pool");
}

#[tokio::test]
async fn tidings_waits_at_start_while_pgbouncer_cannot_reach_postgresql() {
    // PgBouncer accepts logins, but nothing listens where it points (a
    // PostgreSQL restarting behind it).
    let nowhere = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(crate::helpers::components::free_port())
        .username("postgres");
    let Some(pooler) = PgBouncer::start(&nowhere, "session", "") else {
        return;
    };
    let mut server = serve_through(&pooler.url("tidings"));

    // PgBouncer holds a login while it cannot reach its server (up to its
    // client_login_timeout, 60 s), so the first line comes only after the
    // pool's acquire timeout (5 s) and the direct attempt that explains it
    // (5 s more): 10 s when the machine is idle, later under load.
    let waiting = server
        .lines_within(Duration::from_secs(40), |line| {
            line.contains("not reachable yet")
        })
        .await;

    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "tidings exited instead of waiting:\n{}",
        server.lines().join("\n")
    );
    let Some(line) = waiting.first() else {
        panic!(
            "no line saying it waits:\n{}\n{}",
            server.lines().join("\n"),
            pooler.log()
        );
    };
    assert!(line.contains(&pooler.port.to_string()), "{line}");
}
