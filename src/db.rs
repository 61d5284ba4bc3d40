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
/// The search path is pinned to `public`: every query names its schema, but
/// the migrations' bookkeeping table does not, and PostgreSQL's default path
/// starts with a schema named like the user - so a role called `tidings`
/// would otherwise find that table in the `tidings` schema once the first
/// migration creates it, and re-run every migration on the next start.
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

/// tidings numbers its migrations 0001, 0002, ...; sqlx's own default for
/// an application's is a timestamp (20240101120000).
const TIDINGS_VERSIONS: std::ops::Range<i64> = 1..10_000;

/// Applies the migrations this binary knows and has not applied yet, and
/// warns about applied ones it does not know (a newer tidings made them).
///
/// Refuses, before applying anything, when the migration table holds
/// versions outside tidings' numbering: another application's sqlx
/// migrations share `public._sqlx_migrations`, and tidings' rows there
/// would make that application refuse to migrate.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    let foreign: Vec<i64> = unknown_migrations(pool)
        .await?
        .into_iter()
        .filter(|version| !TIDINGS_VERSIONS.contains(version))
        .collect();
    if !foreign.is_empty() {
        return Err(MigrateError::Source(
            format!(
                "_sqlx_migrations holds versions {foreign:?}, which are not tidings' (another \
                 application's sqlx migrations?); tidings keeps its own there, so it needs a \
                 database whose migration table is not another application's"
            )
            .into(),
        ));
    }
    MIGRATOR.run(pool).await?;
    let newer = unknown_migrations(pool).await?;
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

/// Versions in the database's migration table that [`MIGRATOR`] lacks.
async fn unknown_migrations(pool: &PgPool) -> Result<Vec<i64>, MigrateError> {
    let mut conn = pool.acquire().await?;
    let applied = match conn.list_applied_migrations().await {
        Ok(applied) => applied,
        // No table yet: a fresh database. (Not created here: `run` does
        // that under its lock, and two instances starting together race.)
        Err(MigrateError::Execute(sqlx::Error::Database(error)))
            if error.code().as_deref() == Some("42P01") =>
        {
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    Ok(applied
        .into_iter()
        .map(|migration| migration.version)
        .filter(|version| !MIGRATOR.version_exists(*version))
        .collect())
}
