//! The tables tidings' write figures are measured against, in a scratch
//! schema `bench_ingest`. Both have the shape of `tidings.notifications`
//! (columns, defaults, constraints, indexes; columns only tidings' triggers
//! fill are left nullable). One has only a bare statement-level `pg_notify`
//! trigger: the floor LISTEN/NOTIFY itself sets, as notifying commits
//! serialize on one lock across their WAL flush. The other has no triggers.

use anyhow::{Context, Result};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// Only a bare `pg_notify` per statement.
pub const BARE_NOTIFY: &str = "bench_ingest.notify";
/// No triggers.
pub const PLAIN: &str = "bench_ingest.plain";

const SCHEMA: &str = "
DROP SCHEMA IF EXISTS bench_ingest CASCADE;
CREATE SCHEMA bench_ingest;
CREATE TABLE bench_ingest.plain (LIKE tidings.notifications INCLUDING ALL);
CREATE TABLE bench_ingest.notify (LIKE tidings.notifications INCLUDING ALL);
-- Columns that only tidings' triggers fill (seq aside, which the bench
-- supplies) may be NOT NULL without a default: nothing fills them here.
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT table_name, column_name FROM information_schema.columns
              WHERE table_schema = 'bench_ingest' AND is_nullable = 'NO'
                AND column_default IS NULL AND is_identity = 'NO'
                AND column_name NOT IN ('recipient', 'seq', 'kind')
    LOOP
        EXECUTE format('ALTER TABLE bench_ingest.%I ALTER COLUMN %I DROP NOT NULL',
                       c.table_name, c.column_name);
    END LOOP;
END;
$$;
CREATE FUNCTION bench_ingest.bare_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_ingest', 'x');
    RETURN NULL;
END;
$$;
CREATE TRIGGER bare_notify AFTER INSERT ON bench_ingest.notify
    FOR EACH STATEMENT EXECUTE FUNCTION bench_ingest.bare_notify();
";

/// The scratch schema, while it exists.
pub struct Baseline {
    /// Listens on the bare channel and drains it, as tidings does its own,
    /// so that bare commits also pay for waking a listener.
    draining: JoinHandle<()>,
}

impl Baseline {
    pub async fn create(db: &PgPool) -> Result<Self> {
        sqlx::raw_sql(SCHEMA)
            .execute(db)
            .await
            .context("creating the comparison tables")?;
        let mut listener = PgListener::connect_with(db).await?;
        listener.listen("bench_ingest").await?;
        let draining = tokio::spawn(async move { while listener.recv().await.is_ok() {} });
        Ok(Self { draining })
    }

    pub async fn remove(self, db: &PgPool) -> Result<()> {
        self.draining.abort();
        sqlx::query("DROP SCHEMA bench_ingest CASCADE")
            .execute(db)
            .await?;
        Ok(())
    }
}
