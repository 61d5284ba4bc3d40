//! `replay`: streams resuming after history they missed. One stream after
//! 100,000 rows (events/s until caught up), then 1,000 streams at once,
//! each after 1,000 rows (time until the last is caught up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{fleet_config, millis, recipients, tokens, Usage};
use crate::cli::Cli;
use crate::dbstats::{self, round};
use crate::fleet::{Fleet, StreamSpec};
use crate::harness::Harness;
use crate::report::{sample_errors, Books, Report};

/// Rows per INSERT ... SELECT while filling history.
const FILL_BATCH: u64 = 50_000;

pub async fn run(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let sizes = &cli.sizes;
    let mut report = Report::new("replay");
    report.condition("single_stream_rows", sizes.replay_rows);
    report.condition("streams", sizes.replay_streams);
    report.condition("rows_each", sizes.replay_rows_each);
    report.condition("analyze_after_fill", sizes.replay_analyze);

    let single = recipients("replay-one", 1);
    let rate = fill_and_resume(
        cli,
        harness,
        &mut report,
        "single",
        single,
        sizes.replay_rows,
    )
    .await?;
    let single_rate = rate.events_per_s;

    let many = recipients("replay-many", sizes.replay_streams);
    let all = fill_and_resume(
        cli,
        harness,
        &mut report,
        "many",
        many,
        sizes.replay_rows_each,
    )
    .await?;

    report.check(
        "replay: >= 100,000 events/s for the single stream",
        format!("{single_rate:.0} events/s"),
        single_rate >= 100_000.0 && rate.clean,
    );
    report.check(
        "replay: all 1,000 streams caught up in <= 2 s",
        format!("{:.3} s", all.caught_up_s),
        all.caught_up_s <= 2.0 && all.clean,
    );
    Ok(report)
}

/// Writes `rows` events for each of `names`, then has one stream per name
/// resume from position 0; metrics are prefixed with `label`.
async fn fill_and_resume(
    cli: &Cli,
    harness: &mut Harness,
    report: &mut Report,
    label: &str,
    names: Arc<Vec<String>>,
    rows: u64,
) -> Result<Resumed> {
    let filled = fill(harness, &names, rows, cli.sizes.replay_analyze).await?;
    report.metric(&format!("setup.{label}_fill_rows_per_s"), filled);
    resume(cli, harness, report, &format!("{label}."), names, rows).await
}

/// Appends `rows` notifications for each of `names`, sorted by recipient,
/// in batches; returns rows per second (triggers included). `analyze`
/// refreshes the planner's statistics afterwards, as autovacuum eventually
/// would.
async fn fill(harness: &Harness, names: &[String], rows: u64, analyze: bool) -> Result<f64> {
    let started = Instant::now();
    let per_batch = (FILL_BATCH / rows.max(1)).max(1) as usize;
    for batch in names.chunks(per_batch) {
        let mut first = 1;
        while first <= rows {
            let last = (first + FILL_BATCH - 1).min(rows);
            sqlx::query(
                "INSERT INTO tidings.notifications (recipient, kind, payload)
                 SELECT r, 'bench', jsonb_build_object('n', i)
                   FROM unnest($1::text[]) AS r, generate_series($2::int8, $3::int8) AS i
                  ORDER BY r, i",
            )
            .bind(batch)
            .bind(first as i64)
            .bind(last as i64)
            .execute(&harness.db)
            .await
            .context("filling history")?;
            first = last + 1;
        }
    }
    let total = rows as f64 * names.len() as f64;
    let rate = round(total / started.elapsed().as_secs_f64(), 0);
    if analyze {
        sqlx::query("ANALYZE tidings.notifications, tidings.reads")
            .execute(&harness.db)
            .await?;
    }
    crate::progress(format!("{total} rows of history written"));
    Ok(rate)
}

struct Resumed {
    events_per_s: f64,
    caught_up_s: f64,
    clean: bool,
}

/// Opens one stream per name at once, each from position 0, and times how
/// long until every one has received its `rows` events.
async fn resume(
    cli: &Cli,
    harness: &Harness,
    report: &mut Report,
    prefix: &str,
    names: Arc<Vec<String>>,
    rows: u64,
) -> Result<Resumed> {
    let tokens = tokens(harness, &names)?;
    let count = names.len();
    let specs = (0..count)
        .map(|i| StreamSpec {
            recipient: i,
            expect: rows,
        })
        .collect();
    let mut config = fleet_config(cli, harness);
    config.connect_concurrency = config.connect_concurrency.max(count);
    let before = dbstats::snapshot(&harness.db, harness.stats).await?;
    let usage = Usage::now(harness);
    let started = Instant::now();
    let fleet = Fleet::open(config, specs, tokens);
    let within = Duration::from_secs_f64(cli.common.drain_seconds.max(5.0) * 2.0);
    fleet.wait_caught_up(count, within).await;
    usage.report_since(harness, report, prefix);
    let after = dbstats::snapshot(&harness.db, harness.stats).await?;
    let outcomes = fleet.stop().await;
    let last = outcomes.iter().filter_map(|o| o.caught_up_at).max();
    let caught_up = outcomes.iter().filter(|o| o.caught_up_at.is_some()).count();
    let elapsed = last.map_or(f64::INFINITY, |at| (at - started).as_secs_f64());
    let books = Books::of(&outcomes, |_| rows);
    books.add_to(report, prefix);
    report.metric(&format!("{prefix}stream_errors"), sample_errors(&outcomes));
    report.metric(&format!("{prefix}streams_caught_up"), caught_up);
    report.metric(
        &format!("{prefix}caught_up_ms"),
        millis(Duration::from_secs_f64(elapsed.min(1e6))),
    );
    let events_per_s = books.received as f64 / elapsed;
    report.metric(&format!("{prefix}events_per_s"), round(events_per_s, 0));
    let db = dbstats::per_event(harness.stats, &before, &after, books.received, 2);
    report.metrics_from(&format!("{prefix}db"), &db);
    Ok(Resumed {
        events_per_s,
        caught_up_s: elapsed,
        clean: books.clean() && caught_up == count,
    })
}
