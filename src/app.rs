//! The app: shared state, the router assembled from each feature's
//! `router()`, and [`serve`], which runs the HTTP server with its background
//! tasks (hub fetcher, LISTEN session, lease renewal, sweep) until shutdown.
//! Also what every path and method the router does not know gets: a
//! problem document, like every other failure.
//!
//! Owns lifecycle only. It must never hold feature logic: handlers live with
//! their feature.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, Request};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::{Extension, Router};
use sqlx::migrate::MigrateError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::audit::Exports;
use crate::auth::Keys;
use crate::error::AppError;
use crate::hub::Hub;
use crate::lease::Leases;
use crate::listener::{Health, Listener};
use crate::metrics::{self, Metrics};
use crate::openapi::{self, Document};
use crate::stream::StreamSlots;
use crate::{audit, db, health, http, inbox, publish, stream, web};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Request pool: every query a request makes borrows from here.
    pub pool: PgPool,
    /// Live events per recipient.
    pub hub: Hub,
    /// Hint leases: a stream's recipient gets one before its position read.
    pub leases: Leases,
    /// Verifies client tokens.
    pub keys: Keys,
    /// Whether hints are flowing, for `/readyz`.
    pub health: Health,
    /// What `/metrics` reports; moved by the hub, listener and streams.
    pub metrics: Arc<Metrics>,
    /// How streams are paced and limited; the same for every stream, from
    /// the command line.
    pub streams: StreamSettings,
    /// Bounds how many streams read history at once (see `stream`).
    pub catch_up: Arc<Semaphore>,
    /// Open streams per recipient, for `StreamSettings::max_per_recipient`.
    pub slots: StreamSlots,
    /// Cancelled on shutdown: streams end so the server can drain.
    pub shutdown: CancellationToken,
    /// See [`Settings::demo_mode`].
    pub demo_mode: bool,
    /// Bounds the audit exports running at once, and how long each may wait
    /// for a client that stopped reading.
    pub exports: Exports,
}

impl FromRef<AppState> for Keys {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// What every stream is told or held to (`--heartbeat`, `--retry`,
/// `--max-streams-per-recipient`).
#[derive(Clone, Copy)]
pub struct StreamSettings {
    /// How often an idle stream gets a comment line, so that proxies and
    /// load balancers do not close it as idle.
    pub heartbeat: Duration,
    /// The reconnect delay sent in the stream's `retry:` field: how soon a
    /// browser comes back after a stream ends (a restart, say).
    pub retry: Duration,
    /// Streams one recipient may hold open here; 0 = no limit.
    pub max_per_recipient: usize,
}

/// Everything [`serve`] needs, resolved (no embedded-database decisions).
pub struct Settings {
    /// Where the database is; every connection (pool, hub, LISTEN session)
    /// is made from these, labelled with its own application name.
    pub database: PgConnectOptions,
    /// Connections for queries: one is the hub's, the rest the request
    /// pool's, so this bounds tidings' load on the database.
    pub pool_size: u32,
    /// The HS256 secret client tokens are verified with.
    pub jwt_secret: Vec<u8>,
    pub streams: StreamSettings,
    /// How often the LISTEN session is checked for still delivering hints;
    /// one unanswered check this long makes the listener rebuild it.
    pub listener_check: Duration,
    /// How often every open stream is compared with the table without a
    /// hint: the bound on delay should a hint ever be lost.
    pub sweep_interval: Duration,
    /// How long a hint lease lasts (see `lease`).
    pub hint_lease: Duration,
    /// Most streams reading history at once, so a reconnect storm cannot
    /// take every pool connection (see `stream`).
    pub catch_up_concurrency: usize,
    /// Browser origins allowed to call the API from another site.
    pub cors_origins: Vec<HeaderValue>,
    /// Largest request head accepted; see `http`.
    pub max_request_head: usize,
    /// How long a client may take to send a request head, and how long an
    /// idle connection stays open; see `http`.
    pub header_read_timeout: Duration,
    /// How long an audit export waits for a client that stopped reading
    /// before it ends the export (and frees its database connection).
    pub export_stall_timeout: Duration,
    /// Started without a configured secret: the demo page offers its
    /// publish form (the logged demo token may publish).
    pub demo_mode: bool,
}

/// Why [`serve`] stopped other than by shutdown: only the start can fail;
/// once serving, tidings runs until it is told to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] MigrateError),
    #[error("the database at {at} stayed unreachable for a minute: {cause}")]
    Unreachable { at: String, cause: String },
    #[error("connecting to the database at {at} failed, and waiting will not help: {cause}")]
    Refused { at: String, cause: String },
}

/// Serves on `listener` until `shutdown` is cancelled: at once the health
/// probes (alive, not ready), and everything else once the database is
/// reachable and migrated. Open streams end cleanly on shutdown so clients
/// reconnect and resume.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (app, started_app) = watch::channel(None);
    let serving = http::serve(
        listener,
        switching(started_app),
        settings.max_request_head,
        settings.header_read_timeout,
        shutdown.clone(),
    );
    let (_, started) = tokio::join!(serving, start(&settings, app, &shutdown));
    shutdown.cancel();
    for task in started? {
        let _ = task.await;
    }
    Ok(())
}

/// Waits for the database and migrates it, then puts the whole app in
/// place of the probes and starts the background tasks. A failure stops
/// the server, which is serving the probes meanwhile; dropping `app`
/// unset answers the requests waiting for it.
async fn start(
    settings: &Settings,
    app: watch::Sender<Option<Router>>,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServeError> {
    // The hub's connection is one of `pool_size`; requests get the rest.
    let pool = db::pool(
        settings.database.clone().application_name("tidings"),
        settings.pool_size.saturating_sub(1),
    );
    if let Err(error) = migrate_when_reachable(&pool, shutdown).await {
        shutdown.cancel();
        return Err(error);
    }
    if shutdown.is_cancelled() {
        return Ok(Vec::new());
    }
    let state = state(settings, pool, shutdown);
    let background = spawn_background(&state, settings);
    app.send_replace(Some(router(state, &settings.cors_origins)));
    Ok(background)
}

fn state(settings: &Settings, pool: PgPool, shutdown: &CancellationToken) -> AppState {
    let hub_pool = db::hub_pool(settings.database.clone().application_name("tidings-hub"));
    let metrics = Arc::new(Metrics::new());
    // Each export holds a request-pool connection throughout: a quarter of
    // the pool at most (at least one), so exports never starve requests and
    // streams.
    let exports = (settings.pool_size.saturating_sub(1) / 4) as usize;
    AppState {
        hub: Hub::new(hub_pool, metrics.clone()),
        leases: Leases::new(pool.clone(), settings.hint_lease),
        metrics,
        keys: Keys::new(&settings.jwt_secret),
        health: Health::default(),
        streams: settings.streams,
        catch_up: Arc::new(Semaphore::new(settings.catch_up_concurrency.max(1))),
        slots: StreamSlots::default(),
        shutdown: shutdown.clone(),
        demo_mode: settings.demo_mode,
        exports: Exports::new(exports, settings.export_stall_timeout),
        pool,
    }
}

/// What the server answers with: `app` once it is there. Until then the
/// probes answer at once (`/healthz` alive, `/readyz` not ready), and every
/// other request waits for the app, as it did in the socket's backlog
/// before the port was served this early: an EventSource gives up for good
/// on any answer but 200, so a browser reconnecting while tidings restarts
/// must not get a 503. Chosen per request, so that a connection opened
/// during the start gets the whole app afterwards.
fn switching(app: watch::Receiver<Option<Router>>) -> Router {
    let starting = health::while_starting().fallback(not_started);
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let (mut app, starting) = (app.clone(), starting.clone());
        async move {
            let started = app.borrow().clone();
            let router = match started {
                Some(router) => router,
                None if health::is_probe(request.uri().path()) => starting,
                // Not started yet: wait rather than answer 503, which would
                // make a reconnecting EventSource give up for good.
                None => match app.wait_for(Option::is_some).await {
                    Ok(started) => started.clone().unwrap_or(starting),
                    // An error: the start failed or was cancelled.
                    Err(_) => starting,
                },
            };
            router.oneshot(request).await
        }
    }))
}

/// For requests still waiting when the start fails or shutdown cancels it.
async fn not_started() -> AppError {
    AppError::Busy("tidings did not start: its database is unreachable or it is stopping".into())
}

async fn no_such_path(uri: Uri) -> AppError {
    AppError::NotFound(format!("no endpoint at {}", uri.path()))
}

/// axum adds the `Allow` header to what this returns.
async fn no_such_method(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; Allow lists the methods that are",
        uri.path()
    ))
}

/// How long a database that cannot be reached is waited for (one still
/// starting, say, in the same compose file) before that is an error.
const REACHABLE_WITHIN: Duration = Duration::from_secs(60);

/// A database still starting is waited for; one that stays away for
/// [`REACHABLE_WITHIN`] is an error. Shutdown ends the wait, and also a
/// migration in progress: one waiting for a lock (another instance
/// migrating, a long transaction) would otherwise keep the process alive
/// after SIGTERM for as long as the lock is held. A migration cut short
/// is rolled back with its transaction when its connection closes.
async fn migrate_when_reachable(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let deadline = tokio::time::Instant::now() + REACHABLE_WITHIN;
    loop {
        let migrated = tokio::select! {
            migrated = db::migrate(pool) => migrated,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let error = match migrated {
            Ok(()) => return Ok(()),
            Err(MigrateError::Execute(error)) if is_unreachable(&error) => error,
            Err(error) => return Err(error.into()),
        };
        let options = pool.connect_options();
        let cause = tokio::select! {
            cause = why_unreachable(&options, error) => cause,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let at = address(&options);
        let cause = cause.map_err(|cause| ServeError::Refused {
            at: at.clone(),
            cause,
        })?;
        if tokio::time::Instant::now() >= deadline {
            return Err(ServeError::Unreachable { at, cause });
        }
        tracing::warn!(database = %at, %cause, "database not reachable yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Whether waiting may help: the socket or the server is not there yet,
/// or it is starting, recovering (57P03) or full (53300). Not a
/// certificate the server presents and `sslmode=verify-*` refuses: sqlx
/// reports that as I/O too (kind `InvalidData`, from rustls), but it is a
/// setting to fix, and a minute of retries would only hide it.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(error) => error.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(error) => {
            matches!(error.code().as_deref(), Some("57P03" | "53300"))
        }
        _ => false,
    }
}

/// The pool says only that it timed out waiting for a connection; a
/// connection of our own says why (refused, no such host, no socket).
/// `Err` holds a cause that waiting will not cure (see [`is_unreachable`]).
async fn why_unreachable(options: &PgConnectOptions, error: sqlx::Error) -> Result<String, String> {
    if !matches!(error, sqlx::Error::PoolTimedOut) {
        return Ok(error.to_string());
    }
    let direct = PgConnection::connect_with(options);
    match tokio::time::timeout(Duration::from_secs(5), direct).await {
        Ok(Err(cause)) if is_unreachable(&cause) => Ok(cause.to_string()),
        Ok(Err(cause)) => Err(cause.to_string()),
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(format!("{error}, though a connection of its own succeeded"))
        }
        Err(_) => Ok("connecting took longer than 5 s".into()),
    }
}

/// Where `options` point, for log lines and errors: `host:port`, or the
/// Unix socket's path.
fn address(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

fn spawn_background(state: &AppState, settings: &Settings) -> Vec<tokio::task::JoinHandle<()>> {
    let listener = Listener {
        options: settings
            .database
            .clone()
            .application_name("tidings-listener"),
        pool: state.pool.clone(),
        hub: state.hub.clone(),
        leases: state.leases.clone(),
        health: state.health.clone(),
        metrics: state.metrics.clone(),
        check_every: settings.listener_check,
    };
    vec![
        tokio::spawn(state.hub.clone().run(state.shutdown.clone())),
        tokio::spawn(listener.run(state.shutdown.clone())),
        tokio::spawn(
            state
                .leases
                .clone()
                .run(state.hub.clone(), state.shutdown.clone()),
        ),
        tokio::spawn(sweep(
            state.hub.clone(),
            settings.sweep_interval,
            state.shutdown.clone(),
        )),
    ]
}

/// Compares every open stream with the table now and then, so that even a
/// hint lost without the LISTEN session noticing delays delivery by at most
/// one interval.
async fn sweep(hub: Hub, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => hub.hint_everyone(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The span every log line of a request carries: its id, method and path.
/// Never the query string, which may hold an `access_token`.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", id = request_id, method = %request.method(), path = request.uri().path())
}

pub fn router(state: AppState, cors_origins: &[HeaderValue]) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let count_requests =
        axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::count_requests);
    let (routes, api) = openapi::router()
        .merge(stream::router())
        .merge(inbox::router())
        .merge(publish::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(audit::router())
        .merge(web::router())
        .split_for_parts();
    let mut app = routes
        .fallback(no_such_path)
        .method_not_allowed_fallback(no_such_method)
        .with_state(state)
        .layer(Extension(Document::new(&api)))
        .layer(count_requests)
        // No `on_failure`: a 5xx is logged once, with its cause, where it is
        // made (`AppError`); the layer's own line would repeat it without
        // the cause, and log every failing `/readyz` probe as an error.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    if !cors_origins.is_empty() {
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(cors_origins.iter().cloned()))
                .allow_credentials(true)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    HeaderName::from_static("last-event-id"),
                ]),
        );
    }
    app
}
