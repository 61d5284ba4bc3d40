//! Database work done for the streams: how many queries tidings ran and how
//! many event rows it fetched, from `pg_stat_statements` when the cluster
//! has it loaded (the bench's own cluster always does), else approximated
//! from `pg_stat_database` transaction counts.
//!
//! tidings' read queries are told apart by their text: the event fetch
//! (`FROM tidings.events`, used by the hub and by catch-up reads alike) and
//! the position lookup a stream makes when it opens.

use anyhow::Result;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSource {
    Statements,
    Transactions,
}

impl StatsSource {
    /// Whether `pg_stat_statements` can be read; `create` installs the
    /// extension first (only in the bench's own cluster: never in someone
    /// else's database).
    pub async fn detect(db: &PgPool, create: bool) -> Self {
        let created = if create {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(db)
                .await
                .map(drop)
        } else {
            Ok(())
        };
        let readable = sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1")
            .fetch_all(db)
            .await;
        if created.is_ok() && readable.is_ok() {
            Self::Statements
        } else {
            Self::Transactions
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Statements => "pg_stat_statements",
            Self::Transactions => "pg_stat_database transaction counts (approximate)",
        }
    }
}

/// Counters at one moment; only differences mean anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// Event fetch queries (hub and catch-up).
    pub fetch_calls: i64,
    /// Event rows those queries returned.
    pub fetch_rows: i64,
    /// Position lookups (one per stream opened).
    pub position_calls: i64,
    /// Every other statement except the bench's inserts and its own
    /// statistics queries (e.g. the listener's checks).
    pub other_calls: i64,
    /// Committed plus rolled-back transactions in this database.
    pub transactions: i64,
}

pub async fn snapshot(db: &PgPool, source: StatsSource) -> Result<Snapshot> {
    let transactions: i64 = sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await?;
    if source == StatsSource::Transactions {
        return Ok(Snapshot {
            transactions,
            ..Snapshot::default()
        });
    }
    // Patterns are parameters so that this query's own text never matches.
    let row = sqlx::query(
        "SELECT coalesce(sum(calls) FILTER (WHERE query LIKE $1), 0)::int8 AS fetch_calls,
                coalesce(sum(rows) FILTER (WHERE query LIKE $1), 0)::int8 AS fetch_rows,
                coalesce(sum(calls) FILTER (WHERE query LIKE $2), 0)::int8 AS position_calls,
                coalesce(sum(calls) FILTER (WHERE query NOT LIKE $1 AND query NOT LIKE $2
                    AND query NOT LIKE $3 AND query NOT LIKE $4), 0)::int8 AS other_calls
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind("%FROM tidings.events%")
    .bind("%SELECT last_seq FROM tidings.recipients%")
    .bind("%INSERT INTO %")
    .bind("%pg_stat_%")
    .fetch_one(db)
    .await?;
    Ok(Snapshot {
        fetch_calls: row.try_get("fetch_calls")?,
        fetch_rows: row.try_get("fetch_rows")?,
        position_calls: row.try_get("position_calls")?,
        other_calls: row.try_get("other_calls")?,
        transactions,
    })
}

/// What tidings asked of the database between two snapshots, per event
/// delivered to a stream. `bench_transactions` are the bench's own (its
/// inserts and snapshots), subtracted in the approximate mode.
pub fn per_event(
    source: StatsSource,
    before: &Snapshot,
    after: &Snapshot,
    delivered: u64,
    bench_transactions: i64,
) -> Value {
    let per = |n: i64| {
        if delivered == 0 {
            Value::Null
        } else {
            json!(round(n as f64 / delivered as f64, 4))
        }
    };
    match source {
        StatsSource::Statements => {
            let fetches = after.fetch_calls - before.fetch_calls;
            let rows = after.fetch_rows - before.fetch_rows;
            let positions = after.position_calls - before.position_calls;
            let other = after.other_calls - before.other_calls;
            json!({
                "source": source.describe(),
                "fetch_queries": fetches,
                "rows_fetched": rows,
                "position_queries": positions,
                "other_queries": other,
                "queries_per_event": per(fetches + positions),
                "rows_fetched_per_event": per(rows),
            })
        }
        StatsSource::Transactions => {
            let server = after.transactions - before.transactions - bench_transactions;
            json!({
                "source": source.describe(),
                "server_transactions": server,
                "queries_per_event": per(server.max(0)),
            })
        }
    }
}

pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}
