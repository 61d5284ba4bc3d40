//! `/readyz` says ready only when this instance can deliver: a query like
//! every request's works through the request pool, and the LISTEN session
//! hears what is sent through that pool. A database that answers
//! `SELECT 1` while every request fails is not ready. (Through a pooler
//! switched to transaction mode, see `pgbouncer`; a LISTEN session that
//! dies, see `listener`.)

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::app::{spawn_app_with, TestApp};
use crate::helpers::cluster::fresh_database;

async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readiness JSON"))
}

async fn wait_for_readyz(app: &TestApp, status: u16) -> (u16, Value) {
    let mut last = readiness(app).await;
    for _ in 0..100 {
        if last.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = readiness(app).await;
    }
    last
}

#[tokio::test]
async fn readyz_is_503_while_requests_cannot_read_tidings_tables_though_the_database_answers() {
    // tidings runs as a role of its own, granted what it needs.
    let database = fresh_database().await.expect("database");
    let admin = PgPool::connect_with(database.clone()).await.expect("admin");
    let role = format!("tidings_ready_{}", uuid::Uuid::new_v4().simple());
    let grant = format!(
        "GRANT ALL ON ALL TABLES IN SCHEMA tidings, tidings_migrations TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA tidings TO {role};"
    );
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'ready';
         GRANT USAGE, CREATE ON SCHEMA tidings, tidings_migrations TO {role};
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tidings TO {role};
         {grant}"
    ))
    .execute(&admin)
    .await
    .expect("the role");
    let app = spawn_app_with(|settings| {
        settings.database = database.clone().username(&role).password("ready");
    })
    .await;

    // A grant goes missing: every request fails, `SELECT 1` still answers.
    sqlx::raw_sql(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA tidings FROM {role}"
    ))
    .execute(&admin)
    .await
    .expect("revoke");
    let inbox = app
        .get("/v1/notifications", "alice")
        .send()
        .await
        .expect("inbox");
    let (status, body) = wait_for_readyz(&app, 503).await;

    assert_eq!(inbox.status(), 500, "requests fail");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "down");
    assert_eq!(body["ready"], false);
    // The grant is back: ready again, by itself.
    sqlx::raw_sql(&grant).execute(&admin).await.expect("grant");
    let (status, body) = wait_for_readyz(&app, 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], "up");
    assert_eq!(body["listener"], "up");
}
