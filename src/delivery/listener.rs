//! The LISTEN connection: one dedicated PostgreSQL session per tidings
//! process that receives the hints the triggers send, and hands them to the
//! hub.
//!
//! NOTIFY is fire-and-forget: hints sent while this session is down are
//! lost. So this module never lets the session recover silently. Whenever a
//! session ends - dropped, killed, or found deaf by the periodic check that
//! sends a NOTIFY to itself and waits for the echo - it builds a new one and
//! then has the hub compare every open stream with the table. It must never
//! await anything a client controls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::lease::Leases;
use crate::metrics::Metrics;

/// The channel the triggers NOTIFY on.
pub const CHANNEL: &str = "tidings";
/// Longest we wait to connect, or for any single query.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether hints are flowing; shared with `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    listening: Arc<AtomicBool>,
}

impl Health {
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Relaxed);
    }
}

pub struct Listener {
    /// Connection options for the LISTEN session (its own application_name).
    pub options: PgConnectOptions,
    /// The request pool, used to send the echo checks (see [`Check`]).
    pub pool: PgPool,
    /// Where hints go; told to fetch for everyone after every (re)connect,
    /// as hints sent while no session listened are lost.
    pub hub: Hub,
    /// Forgotten at every (re)connect: the database may have restarted.
    pub leases: Leases,
    /// Set while a session listens, for `/readyz`.
    pub health: Health,
    /// `listener_up` and `listener_reconnects`.
    pub metrics: Arc<Metrics>,
    /// How often to check that hints still arrive.
    pub check_every: Duration,
}

#[derive(Debug, thiserror::Error)]
enum SessionEnded {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("timed out talking to PostgreSQL")]
    Timeout(#[from] tokio::time::error::Elapsed),
    #[error("the connection was lost")]
    Lost,
    #[error("no echo of our check within {0:?}: the connection is deaf")]
    Deaf(Duration),
    #[error(transparent)]
    NotASession(crate::db::MigrationError),
}

impl Listener {
    /// Keeps a LISTEN session up until `shutdown`, rebuilding it as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.health.set_listening(false);
            self.metrics.listener_up.set(0);
            if let Err(error) = result {
                tracing::warn!(%error, "LISTEN session ended; reconnecting");
                self.metrics.listener_reconnects.inc();
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = shutdown.cancelled() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One LISTEN session: returns when it can no longer be trusted.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), SessionEnded> {
        // A pool of one, private to this session: when the session is
        // abandoned, its connection goes with it instead of being reused.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(DB_TIMEOUT)
            .connect_lazy_with(self.options.clone());
        let mut listener = timeout(DB_TIMEOUT, PgListener::connect_with(&pool)).await??;
        timeout(DB_TIMEOUT, listener.listen(CHANNEL)).await??;
        self.require_sessions().await?;

        self.hub.hint_everyone();
        self.leases.forget_all();
        tracing::info!("listening for hints");

        let mut ticks = tokio::time::interval(self.check_every);
        // The first tick is immediate. The first check goes out at once:
        // the session counts as up only once it has heard one (`heard`).
        ticks.tick().await;
        let mut check = Check::default();
        check.start(&self.pool);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                received = listener.try_recv() => match received? {
                    Some(hint) if check.is_echo(hint.payload()) => self.heard(),
                    Some(hint) => self.hub.hint(hint.payload()),
                    // sqlx would reconnect by itself; we want to know.
                    None => return Err(SessionEnded::Lost),
                },
                sent = check.sent() => check.settle(sent),
                _ = ticks.tick() => {
                    if check.went_unanswered(self.check_every / 2) {
                        return Err(SessionEnded::Deaf(self.check_every));
                    }
                    check.start(&self.pool);
                }
            }
        }
    }

    /// Makes sure the database connections are sessions of their own, as
    /// at start (`db::migrate`): a pooler switched to pooling by
    /// transaction under a running tidings lets LISTEN succeed, and may
    /// even echo a check when it happens to hand back the same server, but
    /// loses hints and prepared statements. Such a session never counts as
    /// listening; the next attempt checks again.
    async fn require_sessions(&self) -> Result<(), SessionEnded> {
        match timeout(
            DB_TIMEOUT * 3,
            crate::db::check_sessions(self.options.clone()),
        )
        .await?
        {
            Ok(()) => Ok(()),
            Err(crate::db::MigrationError::Migrate(sqlx::migrate::MigrateError::Execute(
                error,
            ))) => Err(error.into()),
            Err(refused) => Err(SessionEnded::NotASession(refused)),
        }
    }

    /// A check came back: a NOTIFY sent through the request pool reached
    /// this session, so hints flow. Only now is the session up for
    /// `/readyz` and `listener_up`: LISTEN succeeding proves nothing - through
    /// a pooler that shares server sessions per transaction it succeeds on
    /// a session that never hears a thing.
    fn heard(&self) {
        self.health.set_listening(true);
        self.metrics.listener_up.set(1);
    }
}

/// The periodic check that the session still hears: a NOTIFY to ourselves
/// through the request pool, and its echo. The send runs alongside the
/// session, never in its way: waiting for a busy pool must not stop hints
/// being read, nor count as deafness - a session rebuilt means every
/// stream compared with the table, more load just when there is too much.
#[derive(Default)]
struct Check {
    /// The echo awaited. Set as the send starts: the echo can come back
    /// before the send's own reply does.
    token: Option<String>,
    /// The send, while it runs.
    sending: Option<BoxFuture<'static, bool>>,
    /// When the last send went out.
    sent_at: Option<Instant>,
}

impl Check {
    /// Sends a new check, unless one is still being sent.
    fn start(&mut self, pool: &PgPool) {
        if self.sending.is_none() {
            let token = format!("check:{}", uuid::Uuid::new_v4());
            self.sending = Some(Box::pin(send_check(pool.clone(), token.clone())));
            self.token = Some(token);
        }
    }

    /// Whether the last check went out at least `grace` ago and nothing
    /// came back: deaf. (The echo leaves at the send's commit, before its
    /// reply; `grace` is for a send that ended just before this tick.)
    fn went_unanswered(&self, grace: Duration) -> bool {
        self.sending.is_none()
            && self.token.is_some()
            && self.sent_at.is_some_and(|at| at.elapsed() >= grace)
    }

    fn is_echo(&mut self, payload: &str) -> bool {
        let echo = self.token.as_deref() == Some(payload);
        if echo {
            self.token = None;
        }
        echo
    }

    /// The send's outcome, once it has one; never, while none runs.
    async fn sent(&mut self) -> bool {
        match self.sending.as_mut() {
            Some(send) => send.await,
            None => std::future::pending().await,
        }
    }

    /// A check that could not be sent expects no echo: the next tick tries
    /// again. (If the database is gone, the session notices on its own.)
    fn settle(&mut self, sent: bool) {
        self.sending = None;
        if sent {
            self.sent_at = Some(Instant::now());
        } else {
            self.token = None;
        }
    }
}

/// NOTIFY ourselves through the request pool; whether it went out.
async fn send_check(pool: PgPool, token: String) -> bool {
    let sent = timeout(
        DB_TIMEOUT,
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, token).execute(&pool),
    )
    .await;
    let sent = matches!(sent, Ok(Ok(_)));
    if !sent {
        tracing::debug!("could not send the listener check; trying again at the next");
    }
    sent
}
