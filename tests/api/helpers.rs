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

use tidings::config::Role;
use tidings::delivery::StreamSettings;
use tidings::embedded::{EmbeddedPostgres, Options};
use tidings::http::auth::Keys;
use tidings::service::{self, Settings};

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
    let mut settings = test_settings(database.clone());
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
    /// Raw bytes: a chunk may end inside a multi-byte character, so only
    /// complete events are decoded.
    buffer: Vec<u8>,
    pub retry: Option<u64>,
    pub comments: usize,
}

impl SseClient {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
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

    /// Whether `wait` passed with the stream still open and no event
    /// arriving: the check for "nothing more arrives". An event makes it
    /// false; a stream that ends or breaks fails the test, since a dead
    /// stream is quiet for the wrong reason.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.next_event()).await {
            Err(_elapsed) => true,
            Ok(Ok(event)) => {
                eprintln!("expected quiet, got {event:?}");
                false
            }
            Ok(Err(error)) => panic!("expected a quiet open stream, got: {error:#}"),
        }
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
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).context("an event that is not UTF-8")?;
                if let Some(event) = self.parse_block(&block) {
                    return Ok(event);
                }
            }
            match self.body.next().await {
                Some(chunk) => self
                    .buffer
                    .extend_from_slice(&chunk.context("broke the connection")?),
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

    /// Resident memory of the process, in KiB. Panics if it cannot be
    /// read: a memory check must not pass without measuring.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }

    /// Samples the process's resident memory every 20 ms on a thread of
    /// its own until [`RssSampler::peak`]: a single reading after a pause
    /// can miss the high point.
    pub fn sample_rss(&self) -> RssSampler {
        let pid = self.child.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = rss_kib_of(pid);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    peak = peak.max(rss_kib_of(pid));
                }
                peak
            }
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
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

/// Resident memory of process `pid`, in KiB; panics if it cannot be read.
fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A running [`Binary::sample_rss`].
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    /// Stops sampling; the highest reading, in KiB.
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread.take().expect("sampling");
        thread.join().expect("RSS sampling failed")
    }
}

impl Drop for RssSampler {
    /// A test that fails midway stops the sampling before its process goes.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An [`SseClient`] over `chunks`, as a server might split its body.
#[cfg(test)]
fn sse_over(chunks: Vec<&'static [u8]>) -> SseClient {
    let body = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, std::io::Error>(bytes::Bytes::from_static(chunk))),
    );
    let response = axum::http::Response::new(reqwest::Body::wrap_stream(body));
    SseClient::new(reqwest::Response::from(response))
}

#[tokio::test]
async fn the_sse_reader_decodes_a_character_split_across_chunks() {
    let mut client = sse_over(vec![b"id: 1\ndata: \"\xc3", b"\xa9\"\n\n"]);

    let event = client.next().await;

    assert_eq!(event.json(), "é");
}

#[tokio::test]
#[should_panic(expected = "expected a quiet open stream")]
async fn a_stream_that_ended_is_not_quiet() {
    let mut client = sse_over(vec![b": heartbeat\n\n"]);

    client.quiet_for(Duration::from_millis(100)).await;
}
