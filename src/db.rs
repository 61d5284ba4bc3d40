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

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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
    Ok(PgConnectOptions::from_str(url)?.application_name(application_name))
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
    lazy(PgPoolOptions::new().max_connections(size.max(1)), options)
}

/// What every pool of tidings shares: lazy connections, a bounded wait for
/// one, and the pinned search path.
fn lazy(pool: PgPoolOptions, options: PgConnectOptions) -> PgPool {
    pool.acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.options([("search_path", "public")]))
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
        options.options([("plan_cache_mode", "force_generic_plan")]),
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
/// publish inside its own transactions. sqlx names the table without a
/// schema, so the migrating session puts this schema first in its path.
pub const BOOKKEEPING: &str = "tidings_migrations";

/// Applies the migrations this binary knows and has not applied yet, and
/// warns about applied ones it does not know (a newer tidings made them).
/// Uses a session of its own, so the pool's connections keep their pinned
/// search path.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("search_path", format!("{BOOKKEEPING},public"))]);
    // Not `lazy`, which would pin the path back to `public`.
    let session = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let migrated = migrate_on(&session).await;
    session.close().await;
    migrated
}

async fn migrate_on(session: &PgPool) -> Result<(), MigrateError> {
    create_bookkeeping_schema(session).await?;
    MIGRATOR.run(session).await?;
    let newer = unknown_migrations(session).await?;
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

/// Makes the bookkeeping schema if it is missing. Under a lock, as
/// instances may start together and two `CREATE SCHEMA` at once collide;
/// and only if missing, because PostgreSQL checks the `CREATE` privilege
/// on the database even for `CREATE SCHEMA IF NOT EXISTS`, and a role
/// without it can still run a database that has the schema.
async fn create_bookkeeping_schema(session: &PgPool) -> Result<(), MigrateError> {
    sqlx::raw_sql(
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
    .execute(session)
    .await?;
    Ok(())
}

/// Versions in tidings' bookkeeping that [`MIGRATOR`] lacks.
async fn unknown_migrations(session: &PgPool) -> Result<Vec<i64>, MigrateError> {
    let applied = session.acquire().await?.list_applied_migrations().await?;
    Ok(applied
        .into_iter()
        .map(|migration| migration.version)
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
