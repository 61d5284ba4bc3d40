//! The tables tidings' write figures are measured against, in a scratch
//! schema `bench_ingest`. All have the shape of `tidings.notifications`
//! (columns, defaults, constraints, indexes; columns only tidings' triggers
//! fill are left nullable):
//!
//! - `notify` has only a bare statement-level `pg_notify` trigger: the floor
//!   LISTEN/NOTIFY itself sets, as notifying commits serialize on one lock
//!   across their WAL flush (the reference of the single-row commit target);
//! - `seq_notify` has the least a gapless per-recipient sequence takes: a
//!   row trigger that bumps the recipient's counter row and sends the hint
//!   from that UPDATE, as tidings does - without tidings' hash chain,
//!   idempotency keys, server-set `created_at` or bulk cache. What tidings
//!   costs beyond it is the price of those;
//! - `plain` has no triggers: the floor of a commit without NOTIFY.

use anyhow::{Context, Result};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// Only a bare `pg_notify` per statement.
pub const BARE_NOTIFY: &str = "bench_ingest.notify";
/// A counter row per recipient for the seq, and the hint, per row.
pub const SEQ_NOTIFY: &str = "bench_ingest.seq_notify";
/// No triggers.
pub const PLAIN: &str = "bench_ingest.plain";

const SCHEMA: &str = "
DROP SCHEMA IF EXISTS bench_ingest CASCADE;
CREATE SCHEMA bench_ingest;
CREATE TABLE bench_ingest.plain (LIKE tidings.notifications INCLUDING ALL);
CREATE TABLE bench_ingest.notify (LIKE tidings.notifications INCLUDING ALL);
CREATE TABLE bench_ingest.seq_notify (LIKE tidings.notifications INCLUDING ALL);
CREATE TABLE bench_ingest.counters (recipient text PRIMARY KEY, last_seq bigint NOT NULL);
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
-- One UPDATE both numbers the row and sends the hint (repeats of a payload
-- in a transaction are dropped, as tidings' are); a recipient's first row
-- makes its counter.
CREATE FUNCTION bench_ingest.next_seq() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hinted text;
BEGIN
    UPDATE bench_ingest.counters c SET last_seq = c.last_seq + 1
     WHERE c.recipient = NEW.recipient
    RETURNING c.last_seq, pg_notify('bench_ingest', c.recipient)::text INTO NEW.seq, hinted;
    IF NOT FOUND THEN
        INSERT INTO bench_ingest.counters AS c VALUES (NEW.recipient, 1)
            ON CONFLICT (recipient) DO UPDATE SET last_seq = c.last_seq + 1
        RETURNING c.last_seq, pg_notify('bench_ingest', c.recipient)::text INTO NEW.seq, hinted;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER next_seq BEFORE INSERT ON bench_ingest.seq_notify
    FOR EACH ROW EXECUTE FUNCTION bench_ingest.next_seq();
";

/// The scratch schema, while it exists.
pub struct Baseline {
    /// Listens on the baselines' channel and drains it, as tidings does its
    /// own, so that their commits also pay for waking a listener.
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
