//! tidings served in this test process: a real server on a random port
//! over a fresh database, with a client, a pool for arranging and checking
//! with SQL, and the keys that sign its tokens. It must never let a test
//! pass against a server that stopped on its own (see [`ServerWatch`]).

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tidings::config::Role;
use tidings::delivery::StreamSettings;
use tidings::http::auth::Keys;
use tidings::service::{self, Settings};

use super::cluster::{as_service, fresh_database};
use super::sse::SseClient;
use super::SECRET;

pub struct TestApp {
    pub address: String,
    /// A pool on this test's database, for arranging and checking with SQL.
    pub db: PgPool,
    pub keys: Keys,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<()>,
    /// Fails the test if the server stopped without `shutdown` being asked.
    _watch: ServerWatch,
}

/// Why the in-process server stopped on its own, if it did: a test whose
/// last check is "nothing arrives" must not pass against a dead server.
pub struct ServerWatch {
    shutdown: CancellationToken,
    stopped: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl ServerWatch {
    /// Why the server stopped without a requested shutdown, if it did.
    pub fn stopped_on_its_own(&self) -> Option<String> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        self.stopped.lock().ok()?.clone()
    }
}

impl Drop for ServerWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(why) = self.stopped_on_its_own() {
            panic!("the in-process tidings server stopped during the test: {why}");
        }
    }
}

/// Records how the server task ended; still armed when dropped, it ended by
/// panicking (or by being cancelled, which only happens after the test).
struct StopRecorder {
    stopped: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    outcome: String,
}

impl Drop for StopRecorder {
    fn drop(&mut self) {
        if let Ok(mut stopped) = self.stopped.lock() {
            *stopped = Some(std::mem::take(&mut self.outcome));
        }
    }
}

/// The settings every in-process test server starts from.
pub fn test_settings(database: PgConnectOptions) -> Settings {
    Settings {
        database,
        migration_database: None,
        pool_size: 8,
        jwt_secret: SECRET.as_bytes().to_vec(),
        streams: StreamSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(1),
            max_per_recipient: 0,
            max_streams: 0,
        },
        listener_check: Duration::from_secs(1),
        sweep_interval: Duration::from_secs(30),
        hint_lease: Duration::from_secs(300),
        catch_up_concurrency: 4,
        cors_origins: vec![],
        max_request_head: 8192,
        header_read_timeout: tidings::http::server::HEADER_READ_TIMEOUT,
        export_stall_timeout: tidings::audit::EXPORT_STALL_TIMEOUT,
        demo_mode: false,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts tidings on a random port over a fresh database; `tweak` may
/// change settings first. Returns once `/readyz` says ready.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let database = fresh_database().await.expect("fresh database");
    // As the service's own role, on a schema migrated by its owner.
    let mut settings = test_settings(as_service(&database));
    tweak(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = CancellationToken::new();
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(None));
    let server = tokio::spawn({
        // serve cancels the token it gets when it stops: a child token
        // keeps `shutdown` meaning "the test asked for it".
        let serving = shutdown.child_token();
        let mut recorder = StopRecorder {
            stopped: stopped.clone(),
            outcome: "the server task panicked".into(),
        };
        async move {
            let result = service::serve(settings, listener, serving).await;
            recorder.outcome = match &result {
                Ok(()) => "serve returned".into(),
                Err(error) => format!("serve failed: {error}"),
            };
            drop(recorder);
            result.expect("server")
        }
    });
    let app = TestApp {
        address,
        db: PgPool::connect_with(database.clone())
            .await
            .expect("test pool"),
        keys: Keys::new(SECRET.as_bytes()),
        client: reqwest::Client::new(),
        _watch: ServerWatch {
            shutdown: shutdown.clone(),
            stopped,
        },
        shutdown,
        server,
    };
    app.wait_until_ready().await.expect("tidings became ready");
    app
}

impl TestApp {
    pub async fn wait_until_ready(&self) -> Result<()> {
        for _ in 0..200 {
            if self.readyz().await == 200 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("not ready after 5 s")
    }

    pub async fn readyz(&self) -> u16 {
        match self
            .client
            .get(format!("{}/readyz", self.address))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub fn token(&self, recipient: &str) -> String {
        self.token_with(recipient, &[])
    }

    pub fn token_with(&self, recipient: &str, roles: &[Role]) -> String {
        self.keys
            .issue(recipient, roles, Duration::from_secs(3600))
            .expect("token")
    }

    /// Inserts one notification with plain SQL, as an app would.
    pub async fn insert(&self, recipient: &str, kind: &str, payload: Value) -> (i64, i64) {
        sqlx::query_as(
            "INSERT INTO tidings.notifications (recipient, kind, payload) VALUES ($1, $2, $3) RETURNING id, seq",
        )
        .bind(recipient)
        .bind(kind)
        .bind(payload)
        .fetch_one(&self.db)
        .await
        .expect("insert")
    }

    /// `n` notifications for `recipient` in one INSERT ... SELECT.
    pub async fn insert_many(&self, recipient: &str, n: i64) {
        sqlx::query(
            "INSERT INTO tidings.notifications (recipient, kind, payload)
             SELECT $1, 'bulk', jsonb_build_object('n', i) FROM generate_series(1, $2) AS i",
        )
        .bind(recipient)
        .bind(n)
        .execute(&self.db)
        .await
        .expect("insert_many");
    }

    pub fn get(&self, path: &str, recipient: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(self.token(recipient))
    }

    pub fn post(&self, path: &str, recipient: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(self.token(recipient))
    }

    /// `GET /metrics`, as text (it needs no token).
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("scrape");
        assert_eq!(response.status(), 200, "metrics status");
        response.text().await.expect("metrics body")
    }

    /// `GET /v1/notifications` for `recipient`, as JSON.
    pub async fn inbox(&self, recipient: &str) -> Value {
        let response = self
            .get("/v1/notifications", recipient)
            .send()
            .await
            .expect("inbox request");
        assert_eq!(response.status(), 200, "inbox status");
        response.json().await.expect("inbox JSON")
    }

    /// [`TestApp::stream`] for an owned recipient name (handy with `join_all`).
    pub async fn stream_owned(&self, recipient: String, last_event_id: Option<i64>) -> SseClient {
        self.stream(&recipient, last_event_id).await
    }

    /// Opens `/v1/stream` for `recipient`, resuming after `last_event_id`.
    pub async fn stream(&self, recipient: &str, last_event_id: Option<i64>) -> SseClient {
        let mut request = self.get("/v1/stream", recipient);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), 200, "stream status");
        SseClient::new(response)
    }
}
