//! The database connections: the request pool, the hub's own connection,
//! and the migrations.
//!
//! Owns how tidings connects. A connection is never held at a client's
//! pace, except by an audit export: streams borrow one per page, never for
//! their lifetime, and an inbox read holds one only for the few queries of
//! its snapshot ([`snapshot`]), so the pool size bounds database load, not
//! stream count. An export holds one REPEATABLE READ transaction while the
//! client reads it, so it is bounded twice: by `audit::Exports` (a quarter
//! of the pool at once) and by `--export-stall-timeout` (a client that
//! stops reading loses the connection).
//!
//! Connections may pass through a pooler such as PgBouncer, which refuses
//! startup parameters it does not know or, told to ignore them, drops them
//! silently. So a session's settings are made with SQL once it is
//! connected, never with startup parameters. What this module must never
//! do is run on a pooler that shares one server session among clients, a
//! transaction or a statement at a time: the LISTEN session, prepared
//! statements, the migrator's lock and the migration session's search path
//! all need a session of their own, so [`migrate`] refuses such a pooler
//! before it changes anything.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool, Postgres, Row};

/// The migrations in `migrations/`, compiled into the binary. Migrations
/// applied by a newer tidings are ignored rather than refused: during a
/// rolling deploy or a rollback an older instance starts against the newer
/// schema, and migrations only ever add to it (see docs/deployment.md).
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator
});

/// Connection options for `url`, labelled so operators can tell tidings'
/// sessions apart in `pg_stat_activity`.
pub fn options(url: &str, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(startup_a_pooler_passes(
        PgConnectOptions::from_str(url)?.application_name(application_name),
    ))
}

/// `options` without `extra_float_digits`, which sqlx sends at startup
/// unless told not to, and which PgBouncer refuses ("unsupported startup
/// parameter") unless configured to ignore it. What is left (user,
/// database, `DateStyle`, `client_encoding`, `TimeZone`,
/// `application_name`) PgBouncer passes on. Nothing is lost: since
/// PostgreSQL 12 floats print exactly by default, and tidings reads none as
/// text.
fn startup_a_pooler_passes(options: PgConnectOptions) -> PgConnectOptions {
    options.extra_float_digits(None)
}

/// The request pool. Connections are made lazily, so a database that is
/// down at start only delays readiness rather than failing the process.
///
/// The search path is pinned to `public`: every query names its schema,
/// and nothing unqualified may resolve to a schema named like the user
/// (PostgreSQL's default path starts with `"$user"`, and a role called
/// `tidings` would find the `tidings` schema there). The migrating session
/// sets its own path ([`migrate`]).
pub fn pool(options: PgConnectOptions, size: u32) -> PgPool {
    lazy(
        PgPoolOptions::new().max_connections(size.max(1)),
        options,
        "SET search_path = public",
    )
}

/// What every pool of tidings shares: lazy connections, a bounded wait for
/// one, and `settings` (SQL) run on each new connection before its first
/// use. As SQL, not as the startup parameter `options`: PgBouncer refuses
/// that parameter, and told to ignore it, drops the settings without a
/// word - the hub then planned every fetch afresh, and the migrations'
/// bookkeeping went to the application's table.
fn lazy(pool: PgPoolOptions, options: PgConnectOptions, settings: &'static str) -> PgPool {
    pool.acquire_timeout(Duration::from_secs(5))
        .after_connect(move |session, _| set_up(session, settings))
        .connect_lazy_with(startup_a_pooler_passes(options))
}

/// Runs `settings` on a new connection; a named function, as a closure
/// cannot say that the future borrows the connection for as long as it.
fn set_up<'c>(
    session: &'c mut PgConnection,
    settings: &'static str,
) -> BoxFuture<'c, Result<(), sqlx::Error>> {
    // A plain string runs as a simple query, which may hold several statements.
    Box::pin(async move { session.execute(settings).await.map(drop) })
}

/// The hub's connection: one, as the hub fetches one batch at a time, and
/// with generic plans forced. The hub runs one statement for every burst of
/// events, and with a custom plan (PostgreSQL's choice for it: a custom plan
/// knows how many recipients the batch holds, which makes it look cheaper)
/// each run was planned afresh, about 150-200 µs of the database's CPU per
/// burst - more than running it. The generic plan is the same per-recipient
/// index range scan, right for any batch. Only this connection forces it:
/// other queries (an inbox page before a seq, a verify of one recipient)
/// need plans made for their parameters. The connection is kept open (and
/// reopened in the background), so a burst after a quiet spell does not wait
/// for a new session, its prepare and its plan.
pub fn hub_pool(options: PgConnectOptions) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None);
    lazy(
        pool,
        options,
        "SET search_path = public; SET plan_cache_mode = force_generic_plan",
    )
}

/// A read-only transaction on one snapshot, for answers made of several
/// queries that must agree (an inbox and its position, an export). Begun
/// with its isolation level in one statement, not `BEGIN` then `SET`.
pub async fn snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
}

/// Where tidings keeps sqlx's bookkeeping of its migrations
/// (`_sqlx_migrations`): a schema of its own, so that an application's own
/// sqlx migrations, in `public._sqlx_migrations`, live beside tidings' in
/// the same database - which is where tidings must be for the app to
/// publish inside its own transactions. sqlx 0.8 names the table without a
/// schema and cannot be told another name, so the migrating session puts
/// this schema first in its path, checks that it is where unqualified
/// tables go, and after the run checks, by the qualified name, that the
/// bookkeeping landed here.
pub const BOOKKEEPING: &str = "tidings_migrations";

/// Why [`migrate`] did not finish.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database, or sqlx's migrator, failed.
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] MigrateError),
    /// The connection is not a session of its own (see [`migrate`]).
    #[error(
        "the database connection is not a session of its own: {0}. That is a pooler \
         sharing server sessions per transaction or per statement (PgBouncer's \
         pool_mode = transaction or statement). tidings needs sessions for its LISTEN \
         connection, its prepared statements and its migrations: point DATABASE_URL \
         at PostgreSQL directly or at a pool in session mode (apps can keep publishing \
         through a transaction pool)"
    )]
    NotASession(String),
    /// The migrator's bookkeeping would go, or went, somewhere else than
    /// [`BOOKKEEPING`].
    #[error("migration bookkeeping: {0}")]
    Bookkeeping(String),
    /// The schema is not current and this role may not change it: the
    /// service's own role (`tidings_service`) is not meant to.
    #[error(
        "the database needs migrations and this role may not apply them ({0}): run \
         `tidings migrate` with the URL of the role that owns the schema, or give it to \
         the service as --migration-database-url"
    )]
    NotPermitted(String),
}

impl From<sqlx::Error> for MigrationError {
    fn from(error: sqlx::Error) -> Self {
        Self::Migrate(MigrateError::Execute(error))
    }
}

/// Applies the migrations this binary knows and has not applied yet, and
/// warns about applied ones it does not know (a newer tidings made them).
/// First it makes sure the connection is a session of its own
/// ([`require_sessions`]), as nothing here works otherwise. Uses sessions
/// of its own, so the pool's connections keep their pinned search path.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrationError> {
    let options = pool.connect_options().as_ref().clone();
    // Two connections: the migrating session, and a second one for the
    // session check. Not `lazy`, which would pin the path to `public`.
    let sessions = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(startup_a_pooler_passes(options));
    let migrated = migrate_on(&sessions).await;
    sessions.close().await;
    migrated
}

/// [`require_sessions`] again, on two connections of its own: for the
/// listener after every reconnect, as a pooler may have been switched to
/// pooling by transaction while tidings ran.
pub async fn check_sessions(options: PgConnectOptions) -> Result<(), MigrationError> {
    let sessions = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(startup_a_pooler_passes(options));
    let checked = async {
        let mut first = sessions.acquire().await?;
        require_sessions(&mut first, &sessions).await
    }
    .await;
    sessions.close().await;
    checked
}

async fn migrate_on(sessions: &PgPool) -> Result<(), MigrationError> {
    let mut session = sessions.acquire().await?;
    require_sessions(&mut session, sessions).await?;
    if !is_current(&mut session).await? {
        apply(&mut session).await.map_err(not_permitted)?;
    }
    let newer = check_bookkeeping(&mut session).await?;
    if !newer.is_empty() {
        tracing::warn!(
            versions = ?newer,
            "the database has migrations this tidings does not know, applied by a newer \
             version; carrying on (a rolling deploy or a rollback), but upgrade this \
             instance soon"
        );
    }
    Ok(())
}

/// Applies what is missing, creating the bookkeeping first if need be.
async fn apply(session: &mut PgConnection) -> Result<(), MigrationError> {
    create_bookkeeping_schema(session).await?;
    point_bookkeeping_at_its_schema(session).await?;
    MIGRATOR.run_direct(session).await?;
    Ok(())
}

/// Whether every migration this binary knows is applied, unchanged. Read
/// first, so that a role that may read the bookkeeping but not migrate
/// (`tidings_service`) starts on a current schema: the migrator itself
/// would ask for `CREATE` on the bookkeeping schema even with nothing to
/// do. A table this role cannot see counts as not current.
async fn is_current(session: &mut PgConnection) -> Result<bool, MigrationError> {
    let applied: Vec<(i64, Vec<u8>)> = match sqlx::query_as(
        "SELECT version, checksum FROM tidings_migrations._sqlx_migrations WHERE success",
    )
    .fetch_all(&mut *session)
    .await
    {
        Ok(applied) => applied,
        Err(error) if sqlstate_in(&error, &["42", "3F"]).is_some() => return Ok(false),
        Err(error) => return Err(error.into()),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .all(|migration| {
            applied.iter().any(|(version, checksum)| {
                *version == migration.version && **checksum == *migration.checksum
            })
        }))
}

/// A migration refused for want of privileges says what to do about it.
fn not_permitted(error: MigrationError) -> MigrationError {
    match &error {
        MigrationError::Migrate(MigrateError::Execute(sqlx::Error::Database(refused)))
            if refused.code().as_deref() == Some("42501") =>
        {
            MigrationError::NotPermitted(refused.message().to_owned())
        }
        _ => error,
    }
}

/// How long the session check waits for an answer that a session of its
/// own gives at once.
const SESSION_CHECK_WAIT: Duration = Duration::from_secs(2);

/// Refuses a connection that is not a session of its own. A pooler in
/// transaction mode gives a client a server session only for the length
/// of a transaction, and hands it to the next client that begins one. So:
/// `first` asks for its backend's pid outside a transaction; `second`
/// begins a transaction and asks for its own; `first` asks again. On
/// sessions of their own the two differ and `first`'s stays the same. A
/// transaction pooler shows itself by giving `second` the backend `first`
/// just had (PgBouncer reuses the most recently freed one), by giving
/// `first` another one, or, with one server per pool, by making `first`
/// wait for `second`'s transaction. A statement pooler refuses the
/// transaction. Simple queries throughout: a pooler that moves a client
/// between servers loses sqlx's prepared statements, which would fail
/// with a message that names none of this.
///
/// Should `second` get no server in time (a session pool full of other
/// clients), the check cannot tell, says so and lets the start go on.
async fn require_sessions(
    first: &mut PgConnection,
    sessions: &PgPool,
) -> Result<(), MigrationError> {
    let before = backend_pid(first).await?;
    let second = tokio::time::timeout(SESSION_CHECK_WAIT * 2, async {
        let mut second = sessions.acquire().await?;
        let began = second.execute("BEGIN").await;
        if let Err(sqlx::Error::Database(refused)) = &began {
            return Ok(Err(refused.message().to_owned()));
        }
        began?;
        let pid = backend_pid(&mut second).await?;
        Ok::<_, sqlx::Error>(Ok((second, pid)))
    })
    .await;
    let (mut second, second_pid) = match second {
        Ok(Ok(Ok(second))) => second,
        Ok(Ok(Err(refused))) => {
            return Err(MigrationError::NotASession(format!(
                "the database refused a transaction (\"{refused}\")"
            )))
        }
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => {
            tracing::warn!(
                "could not check that the database connection is a session of its own: a \
                 second connection got no answer within {:?}; carrying on",
                SESSION_CHECK_WAIT * 2
            );
            return Ok(());
        }
    };
    if second_pid == before {
        end_transaction(&mut second).await?;
        return Err(MigrationError::NotASession(
            "two connections open at once were served by the same PostgreSQL backend".into(),
        ));
    }
    let mut again = std::pin::pin!(backend_pid(first));
    let waited = tokio::time::timeout(SESSION_CHECK_WAIT, &mut again).await;
    // Ended before `first`'s answer is awaited, which may be waiting for it.
    end_transaction(&mut second).await?;
    let evidence = match waited {
        Err(_) => {
            again.await?;
            "one connection waited for another one's transaction"
        }
        Ok(after) => {
            if after? == before {
                return Ok(());
            }
            "one connection was served by two PostgreSQL backends in turn"
        }
    };
    Err(MigrationError::NotASession(evidence.into()))
}

/// The PostgreSQL backend serving `session` now.
async fn backend_pid(session: &mut PgConnection) -> Result<i32, sqlx::Error> {
    session
        .fetch_one("SELECT pg_backend_pid()")
        .await?
        .try_get(0)
}

async fn end_transaction(session: &mut PoolConnection<Postgres>) -> Result<(), sqlx::Error> {
    session.execute("ROLLBACK").await.map(drop)
}

/// Makes the bookkeeping schema if it is missing. Under a lock, as
/// instances may start together and two `CREATE SCHEMA` at once collide;
/// and only if missing, because PostgreSQL checks the `CREATE` privilege
/// on the database even for `CREATE SCHEMA IF NOT EXISTS`, and a role
/// without it can still run a database that has the schema.
async fn create_bookkeeping_schema(session: &mut PgConnection) -> Result<(), MigrationError> {
    session
        .execute(
            "BEGIN;
         SELECT pg_advisory_xact_lock(7406115238094829312);
         DO $$
         BEGIN
             IF to_regnamespace('tidings_migrations') IS NULL THEN
                 CREATE SCHEMA tidings_migrations;
             END IF;
         END $$;
         COMMIT;",
        )
        .await?;
    Ok(())
}

/// Puts [`BOOKKEEPING`] first in the session's search path, with SQL, and
/// checks that unqualified tables now resolve there: sqlx's migrator
/// creates, reads and writes `_sqlx_migrations` by that name alone.
async fn point_bookkeeping_at_its_schema(session: &mut PgConnection) -> Result<(), MigrationError> {
    session
        .execute("SET search_path = tidings_migrations, public")
        .await?;
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut *session)
        .await?;
    if schema.as_deref() != Some(BOOKKEEPING) {
        return Err(MigrationError::Bookkeeping(format!(
            "unqualified tables would go to {schema:?}, not {BOOKKEEPING}; refusing to \
             migrate"
        )));
    }
    Ok(())
}

/// Checks, by the qualified name, that every migration this binary knows
/// is recorded as applied in [`BOOKKEEPING`] (a migration that moved the
/// search path would have had the migrator record it elsewhere); returns
/// the applied versions this binary does not know.
async fn check_bookkeeping(session: &mut PgConnection) -> Result<Vec<i64>, MigrationError> {
    let applied: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM tidings_migrations._sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut *session)
    .await?;
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect();
    if !missing.is_empty() {
        return Err(MigrationError::Bookkeeping(format!(
            "versions {missing:?} were applied but are not recorded in \
             {BOOKKEEPING}._sqlx_migrations"
        )));
    }
    Ok(applied
        .into_iter()
        .filter(|version| !MIGRATOR.version_exists(*version))
        .collect())
}

/// The SQLSTATE of a database error whose class (its first two characters)
/// is one of `classes`. Callers that must tell failures a retry can clear
/// from those it cannot (a stream's registration, the hub's fetches) each
/// name their own classes; this is how they read them.
pub fn sqlstate_in(error: &sqlx::Error, classes: &[&str]) -> Option<String> {
    let sqlx::Error::Database(refused) = error else {
        return None;
    };
    let code = refused.code()?;
    let class = code.get(..2)?;
    classes.contains(&class).then(|| code.into_owned())
}
