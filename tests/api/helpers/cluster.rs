//! The suite's PostgreSQL: a throwaway embedded cluster started once per
//! test process (or the server `DATABASE_URL` names), a template database
//! with the migrations applied, a fresh copy of it per test, and what tests
//! watch in the database (sessions waiting for a lock, hints). It must
//! never hand two tests the same database, nor leave a cluster behind.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use tidings::embedded::{EmbeddedPostgres, Options};

/// The PostgreSQL every test in this process uses, and a template database
/// with the migrations applied, copied for each test.
struct TestCluster {
    admin: PgConnectOptions,
    /// The login tidings serves as: the embedded cluster's service login
    /// (`tidings_service`, no superuser), or `admin` on a server that
    /// `DATABASE_URL` names.
    service: PgConnectOptions,
    template: String,
    /// Kept alive for the process; its watchdog stops and removes it at exit.
    _embedded: Option<EmbeddedPostgres>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        // Own thread and runtime: the cluster outlives every test's runtime.
        std::thread::spawn(|| start_cluster().expect("test PostgreSQL cluster"))
            .join()
            .expect("test cluster thread")
    })
}

/// How the suite's own clusters run, with `settings` of a test's own on
/// top: their data is thrown away, so nothing waits for the disk (as
/// PostgreSQL's documentation advises for data that can be recreated),
/// and the cluster is removed when it stops or the test process ends.
pub fn throwaway(settings: &[(&str, &str)]) -> Options {
    let no_durability = [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
    ];
    Options {
        settings: no_durability
            .iter()
            .chain(settings)
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        remove_when_stopped: true,
    }
}

fn start_cluster() -> Result<TestCluster> {
    let (url, service_url, embedded) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url.clone(), url, None),
        Err(_) => {
            let dir = std::env::temp_dir()
                .join(format!("tidings-test-{}", uuid::Uuid::new_v4().simple()));
            let cluster = EmbeddedPostgres::start(&dir, &throwaway(&[]))?;
            (
                cluster.url().to_owned(),
                cluster.service_url(),
                Some(cluster),
            )
        }
    };
    let admin = PgConnectOptions::from_str(&url)?;
    let service = PgConnectOptions::from_str(&service_url)?;
    let template = format!("tidings_template_{}", uuid::Uuid::new_v4().simple());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut conn = PgConnection::connect_with(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {template}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let pool = tidings::db::pool(admin.clone().database(&template), 1);
        tidings::db::migrate(&pool).await?;
        pool.close().await;
        anyhow::Ok(())
    })?;
    Ok(TestCluster {
        admin,
        service,
        template,
        _embedded: embedded,
    })
}

/// Waits (5 s at most) until `count` of tidings' request sessions on
/// `db`'s database wait for a lock: how a test knows that what it started
/// is queued behind a lock the test holds.
pub async fn wait_for_sessions_waiting_for_a_lock(db: &PgPool, count: i64, what: &str) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                AND application_name = 'tidings' AND wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        if waiting >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}");
}

/// A fresh database, copied from the migrated template.
pub async fn fresh_database() -> Result<PgConnectOptions> {
    let cluster = cluster();
    let name = format!("tidings_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&cluster.admin).await?;
    sqlx::query(&format!(
        "CREATE DATABASE {name} TEMPLATE {}",
        cluster.template
    ))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(cluster.admin.clone().database(&name))
}

/// `database` (on the suite's cluster) as tidings' service login sees it.
pub fn as_service(database: &PgConnectOptions) -> PgConnectOptions {
    let name = database.get_database().unwrap_or("postgres");
    cluster().service.clone().database(name)
}

/// `database` (on the suite's cluster) as its superuser sees it.
pub fn as_owner(database: &PgConnectOptions) -> PgConnectOptions {
    let name = database.get_database().unwrap_or("postgres");
    cluster().admin.clone().database(name)
}

/// A database with nothing in it, not even the migrations.
pub async fn empty_database() -> Result<PgConnectOptions> {
    let cluster = cluster();
    let name = format!("tidings_empty_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&cluster.admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(cluster.admin.clone().database(&name))
}

/// A URL for `options`, for handing to the `tidings` binary.
pub fn url_of(options: &PgConnectOptions) -> String {
    use sqlx::ConnectOptions;
    options.to_url_lossy().to_string()
}

/// The next hint's payload on tidings' channel, if one comes within `wait`.
/// Skips the service's own listener checks (`check:<uuid>`, sent every
/// `listener_check`): they share the channel but are not hints.
pub async fn next_hint(hints: &mut sqlx::postgres::PgListener, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let hint = tokio::time::timeout_at(deadline, hints.recv()).await.ok()?;
        let payload = hint.expect("hint").payload().to_owned();
        if !payload.starts_with("check:") {
            return Some(payload);
        }
    }
}
