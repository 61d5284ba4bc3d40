//! Test harness: a real PostgreSQL (a throwaway embedded cluster, or the one
//! `DATABASE_URL` names), a fresh database per test, and a real tidings
//! server on a random port.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tidings::app::{self, Settings, StreamSettings};
use tidings::auth::Keys;
use tidings::config::Role;
use tidings::embedded::{EmbeddedPostgres, Options};

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// The PostgreSQL every test in this process uses, and a template database
/// with the migrations applied, copied for each test.
struct TestCluster {
    admin: PgConnectOptions,
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

fn start_cluster() -> Result<TestCluster> {
    let (url, embedded) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = std::env::temp_dir()
                .join(format!("tidings-test-{}", uuid::Uuid::new_v4().simple()));
            let options = Options {
                fast_and_unsafe: true,
                remove_when_stopped: true,
                tcp_port: None,
            };
            let cluster = EmbeddedPostgres::start(&dir, &options)?;
            (cluster.url().to_owned(), Some(cluster))
        }
    };
    let admin = PgConnectOptions::from_str(&url)?;
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
        template,
        _embedded: embedded,
    })
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

pub struct TestApp {
    pub address: String,
    /// A pool on this test's database, for arranging and checking with SQL.
    pub db: PgPool,
    pub keys: Keys,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts tidings on a random port over a fresh database; `tweak` may
/// change settings first. Returns once `/readyz` says ready.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let database = fresh_database().await.expect("fresh database");
    let mut settings = Settings {
        database: database.clone(),
        pool_size: 8,
        jwt_secret: SECRET.as_bytes().to_vec(),
        streams: StreamSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(1),
            max_per_recipient: 0,
        },
        listener_check: Duration::from_secs(1),
        sweep_interval: Duration::from_secs(30),
        hint_lease: Duration::from_secs(300),
        catch_up_concurrency: 4,
        cors_origins: vec![],
        max_request_head: 8192,
        header_read_timeout: tidings::http::HEADER_READ_TIMEOUT,
        export_stall_timeout: tidings::audit::EXPORT_STALL_TIMEOUT,
        demo_mode: false,
    };
    tweak(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            app::serve(settings, listener, shutdown)
                .await
                .expect("server")
        }
    });
    let app = TestApp {
        address,
        db: PgPool::connect_with(database.clone())
            .await
            .expect("test pool"),
        keys: Keys::new(SECRET.as_bytes()),
        client: reqwest::Client::new(),
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

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }

    pub fn seq(&self) -> i64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("numeric id")
    }
}

/// A spec-following SSE reader over a streaming HTTP response.
pub struct SseClient {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pub retry: Option<u64>,
    pub comments: usize,
}

impl SseClient {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            retry: None,
            comments: 0,
        }
    }

    /// The next event with data, or an error after `wait` or at end of stream.
    pub async fn next_within(&mut self, wait: Duration) -> Result<SseEvent> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .context("no event in time")?
    }

    pub async fn next(&mut self) -> SseEvent {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event")
    }

    /// `n` events, each within 10 s of the previous one.
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        self.take_within(n, Duration::from_secs(10)).await
    }

    /// `n` events, each within `wait` of the previous one.
    pub async fn take_within(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_within(wait).await.expect("an event"));
        }
        events
    }

    /// Whether the server ended the stream cleanly (neither going quiet nor
    /// breaking the connection).
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.next_event()).await {
            Ok(Err(error)) => error.to_string() == "stream ended",
            _ => false,
        }
    }

    async fn next_event(&mut self) -> Result<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse_block(&block) {
                    return Ok(event);
                }
            }
            match self.body.next().await {
                Some(chunk) => self.buffer.push_str(std::str::from_utf8(&chunk?)?),
                None => bail!("stream ended"),
            }
        }
    }

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = SseEvent {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut has_data = false;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = value.to_owned(),
                "retry" => self.retry = value.parse().ok(),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        has_data.then_some(event)
    }
}

/// Seqs of `events`, for comparing with an expected range.
pub fn seqs(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(SseEvent::seq).collect()
}

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

/// A URL for `options`, for handing to the `tidings` binary.
pub fn url_of(options: &PgConnectOptions) -> String {
    use sqlx::ConnectOptions;
    options.to_url_lossy().to_string()
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

/// The real `tidings` binary, run as a child process.
pub struct Binary {
    pub child: std::process::Child,
    pub address: String,
    /// Every line it has written to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    /// Runs `tidings serve` with `env` (plus a test secret and a random
    /// port) and waits until it says where it serves.
    pub fn serve(env: &[(&str, &str)]) -> Result<Self> {
        Self::serve_without(&[], env)
    }

    /// [`Binary::serve`], with the variables in `unset` removed from what
    /// it would set (`TIDINGS_JWT_SECRET`, say, or `RUST_LOG` for the
    /// binary's default log filter) before `env` is applied.
    pub fn serve_without(unset: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("TIDINGS_JWT_SECRET", SECRET)
            .env("TIDINGS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "tidings=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for key in unset {
            command.env_remove(key);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (found, address) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find("serving on http://") {
                    let url: String = line[at + "serving on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = found.send(url);
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        match address.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => Ok(Self {
                child,
                address,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("tidings did not start:\n{log}")
            }
        }
    }

    pub async fn wait_until_ready(&self) -> Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(response) = client.get(format!("{}/readyz", self.address)).send().await {
                if response.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("not ready after 20 s")
    }

    /// Every line it has written to stderr so far.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|lines| lines.clone())
            .unwrap_or_default()
    }

    /// The lines written so far that satisfy `wanted`, once there is at
    /// least one (or after `wait`, maybe none): logs arrive through a pipe.
    pub async fn lines_within(&self, wait: Duration, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let found: Vec<String> = self.lines().into_iter().filter(|l| wanted(l)).collect();
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        bail!("tidings did not exit within 30 s of SIGTERM")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
