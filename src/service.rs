//! The service's life: [`serve`] answers the health probes at once, waits
//! for the database and migrates it, then builds the delivery core and the
//! HTTP app, runs the background tasks (hub fetcher, LISTEN session, lease
//! renewal, sweep) and, on shutdown, ends every stream so clients reconnect
//! and resume.
//!
//! Owns start-up and shutdown only. It must never hold feature logic:
//! delivery lives in `crate::delivery`, handlers in `crate::http`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::Router;
use sqlx::migrate::MigrateError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::audit::export::Exports;
use crate::db;
use crate::delivery::hub::Hub;
use crate::delivery::lease::Leases;
use crate::delivery::listener::{Health, Listener};
use crate::delivery::slots::StreamSlots;
use crate::delivery::{Delivery, StreamSettings};
use crate::http::auth::{CookieOrigins, Keys};
use crate::http::error::{AppError, Busy};
use crate::http::{self, health, AppState};
use crate::metrics::Metrics;

/// Everything [`serve`] needs, resolved (no embedded-database decisions).
pub struct Settings {
    /// Where the database is; every connection (pool, hub, LISTEN session)
    /// is made from these, labelled with its own application name.
    pub database: PgConnectOptions,
    /// Where migrations run at start, as the schema's owner, when the
    /// service's own role (`database`) may not change the schema; `None`:
    /// with `database`.
    pub migration_database: Option<PgConnectOptions>,
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
    /// Browser origins allowed to call the API from another site, and to
    /// write with the `tidings_token` cookie.
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
    #[error(transparent)]
    Migrate(#[from] db::MigrationError),
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
    let serving = http::server::serve(
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
) -> Result<Vec<JoinHandle<()>>, ServeError> {
    // The hub's connection is one of `pool_size`; requests get the rest.
    let pool = db::pool(
        settings.database.clone().application_name("tidings"),
        settings.pool_size.saturating_sub(1),
    );
    let migrating = match &settings.migration_database {
        Some(owner) => db::pool(owner.clone().application_name("tidings-migrate"), 1),
        None => pool.clone(),
    };
    if let Err(error) = migrate_when_reachable(&migrating, shutdown).await {
        shutdown.cancel();
        return Err(error);
    }
    if shutdown.is_cancelled() {
        return Ok(Vec::new());
    }
    warn_if_privileged(&pool).await;
    let state = state(settings, pool, shutdown);
    let background = spawn_background(&state.delivery, settings);
    app.send_replace(Some(http::router(state, &settings.cors_origins)));
    Ok(background)
}

fn state(settings: &Settings, pool: PgPool, shutdown: &CancellationToken) -> AppState {
    // Each export holds a request-pool connection throughout: a quarter of
    // the pool at most (at least one), so exports never starve requests and
    // streams.
    let exports = (settings.pool_size.saturating_sub(1) / 4) as usize;
    AppState {
        delivery: delivery(settings, pool.clone(), shutdown),
        keys: Keys::new(&settings.jwt_secret),
        cookie_origins: CookieOrigins::new(&settings.cors_origins),
        exports: Exports::new(exports, settings.export_stall_timeout),
        demo_mode: settings.demo_mode,
        pool,
    }
}

fn delivery(settings: &Settings, pool: PgPool, shutdown: &CancellationToken) -> Delivery {
    let hub_pool = db::hub_pool(settings.database.clone().application_name("tidings-hub"));
    let metrics = Arc::new(Metrics::new());
    Delivery {
        hub: Hub::new(hub_pool, metrics.clone()),
        leases: Leases::new(pool.clone(), settings.hint_lease),
        health: Health::default(),
        metrics,
        streams: settings.streams,
        catch_up: Arc::new(Semaphore::new(settings.catch_up_concurrency.max(1))),
        slots: StreamSlots::default(),
        shutdown: shutdown.clone(),
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
    AppError::Busy(
        Busy::NotStarted,
        "tidings did not start: its database is unreachable or it is stopping".into(),
    )
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
            Err(db::MigrationError::Migrate(MigrateError::Execute(error)))
                if is_unreachable(&error) =>
            {
                error
            }
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

/// Says so when the service's role could switch off the triggers that
/// keep history append-only (a superuser, or a member of the schema's
/// owner): allowed, for a first try, but not how to run it.
async fn warn_if_privileged(pool: &PgPool) {
    let privileged = sqlx::query_as::<_, (String, bool)>(
        "SELECT current_user::text,
                rolsuper OR pg_has_role(current_user, nspowner, 'USAGE')
           FROM pg_roles, pg_namespace
          WHERE rolname = current_user AND nspname = 'tidings'",
    )
    .fetch_optional(pool)
    .await;
    if let Ok(Some((role, true))) = privileged {
        tracing::warn!(
            %role,
            "the service runs as a superuser or the schema's owner, which can switch off \
             the triggers that keep history append-only; give it a login with \
             tidings_service instead (see SECURITY.md)"
        );
    }
}

/// Whether waiting may help: the socket or the server is not there yet,
/// or it is starting, recovering or shutting down (57P01-57P03), full
/// (53300), or a pooler in front of it cannot reach it yet (class 08:
/// PgBouncer accepts the login, then answers `server login has been
/// failing, try again later` while PostgreSQL restarts). Not a
/// certificate the server presents and `sslmode=verify-*` refuses: sqlx
/// reports that as I/O too (kind `InvalidData`, from rustls), but it is a
/// setting to fix, and a minute of retries would only hide it.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(error) => error.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
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

fn spawn_background(delivery: &Delivery, settings: &Settings) -> Vec<JoinHandle<()>> {
    let listener = Listener {
        options: settings
            .database
            .clone()
            .application_name("tidings-listener"),
        pool: delivery.pool.clone(),
        hub: delivery.hub.clone(),
        leases: delivery.leases.clone(),
        health: delivery.health.clone(),
        metrics: delivery.metrics.clone(),
        check_every: settings.listener_check,
    };
    let shutdown = &delivery.shutdown;
    vec![
        tokio::spawn(delivery.hub.clone().run(shutdown.clone())),
        tokio::spawn(listener.run(shutdown.clone())),
        tokio::spawn(
            delivery
                .leases
                .clone()
                .run(delivery.hub.clone(), shutdown.clone()),
        ),
        tokio::spawn(sweep(
            delivery.hub.clone(),
            settings.sweep_interval,
            shutdown.clone(),
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
