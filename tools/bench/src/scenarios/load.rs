//! `latency` and `fanout`: streams held open while writers publish at a
//! steady rate; every event's INSERT-to-receipt latency, exact delivery
//! books, server memory and CPU, and database reads per delivered event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::baseline::Baseline;
use super::{fleet_config, memory, recipients, tokens, RssPeak, Usage};
use crate::cli::Cli;
use crate::dbstats::{self, round, StatsSource};
use crate::fleet::{Fleet, StreamOutcome, StreamSpec};
use crate::harness::Harness;
use crate::procfs;
use crate::publish::{self, Ack, Plan, Target};
use crate::report::{sample_errors, Books, Latency, Report};
use crate::waits;

struct Shape {
    streams: usize,
    recipients: usize,
    rate: f64,
    seconds: f64,
    writers: usize,
}

impl Shape {
    fn from(cli: &Cli, streams: usize, recipients: usize, rate: f64) -> Self {
        let s = &cli.sizes;
        Self {
            streams: s.streams.unwrap_or(streams),
            recipients: s.recipients.unwrap_or(recipients).max(1),
            rate: s.rate.unwrap_or(rate),
            seconds: s.seconds.unwrap_or(20.0),
            writers: s.writers.unwrap_or(8),
        }
    }
}

pub async fn latency(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let shape = Shape::from(cli, 1000, 1000, 2000.0);
    let mut report = Report::new("latency");
    let outcome = steady_load(cli, harness, &shape, &mut report).await?;
    // A comparison: if it fails, the measurement above still stands.
    let floor = without_streams(harness, &shape, &mut report)
        .await
        .unwrap_or_else(|error| {
            report.metric("no_streams.error", format!("{error:#}"));
            None
        });
    report.check(
        "latency: p99 <= 5 ms, zero lost/dup",
        format!(
            "p99 {:.2} ms, lost {}, dup {} (a bare-NOTIFY commit alone: p99 {:.2} ms)",
            outcome.p99,
            outcome.books.lost,
            outcome.books.duplicated,
            floor.map_or(f64::NAN, |f| f.p99)
        ),
        outcome.p99 <= 5.0 && outcome.books.lost == 0 && outcome.books.duplicated == 0,
    );
    outcome.check_reads(&mut report, &shape);
    Ok(report)
}

pub async fn fanout(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let shape = Shape::from(cli, 10_000, 1000, 500.0);
    let mut report = Report::new("fanout");
    let outcome = steady_load(cli, harness, &shape, &mut report).await?;
    report.check(
        "fanout: p99 <= 10 ms, zero lost/dup, server CPU <= 50% of one core",
        format!(
            "p99 {:.2} ms, lost {}, dup {}, server CPU {:.1}%",
            outcome.p99, outcome.books.lost, outcome.books.duplicated, outcome.server_cpu_pct
        ),
        outcome.p99 <= 10.0
            && outcome.books.lost == 0
            && outcome.books.duplicated == 0
            && outcome.server_cpu_pct <= 50.0,
    );
    outcome.check_reads(&mut report, &shape);
    Ok(report)
}

struct Outcome {
    books: Books,
    p99: f64,
    server_cpu_pct: f64,
    reads_per_event: Reads,
}

impl Outcome {
    fn check_reads(&self, report: &mut Report, shape: &Shape) {
        let per_recipient = shape.streams as f64 / shape.recipients as f64;
        let bound = 1.0 / per_recipient.max(1.0);
        let target =
            "steady state: database reads per delivered event <= 1 / (streams per recipient)";
        match self.reads_per_event {
            Reads::Rows(rows) => report.check(
                target,
                format!("{rows:.4} rows fetched per event (bound {bound:.4})"),
                rows <= bound,
            ),
            // Every read is a transaction, so this over-counts: if it meets
            // the bound, the reads do.
            Reads::Transactions(xacts) => report.check(
                target,
                format!(
                    "{xacts:.4} server transactions per event, an upper bound (bound {bound:.4})"
                ),
                xacts <= bound,
            ),
            Reads::Unknown => report.check(target, "not measured", false),
        }
    }
}

enum Reads {
    Rows(f64),
    Transactions(f64),
    Unknown,
}

async fn steady_load(
    cli: &Cli,
    harness: &mut Harness,
    shape: &Shape,
    report: &mut Report,
) -> Result<Outcome> {
    report.condition("streams", shape.streams);
    report.condition("recipients", shape.recipients);
    report.condition("rate_per_s", shape.rate);
    report.condition("seconds", shape.seconds);
    report.condition("writers", shape.writers);
    let names = recipients(report.scenario, shape.recipients);
    let tokens = tokens(harness, &names)?;
    let pid = harness.server.pid();
    let rss_base = procfs::rss_kib(pid)?;

    let mut config = fleet_config(cli, harness);
    config.measure_latency = true;
    let specs = StreamSpec::round_robin(shape.streams, shape.recipients);
    let opening = Instant::now();
    let fleet = Fleet::open(config, specs, tokens);
    fleet.wait_opened(Duration::from_secs(300)).await;
    report.metric("streams.open_s", round(opening.elapsed().as_secs_f64(), 2));
    crate::progress(format!("{} streams open; publishing", shape.streams));
    settle(harness).await?;
    let rss_idle = procfs::rss_kib(pid)?;

    let before = dbstats::snapshot(&harness.db, harness.stats).await?;
    let usage = Usage::now(harness);
    let peak = RssPeak::start(pid);
    let plan = Plan {
        target: Target::Tidings,
        rows: (shape.rate * shape.seconds).round() as u64,
        rate: shape.rate,
        writers: shape.writers,
        recipients: names.clone(),
    };
    let publishing = Instant::now();
    let writing = publish::publish(&harness.connect, &plan);
    let (published, waited) = waits::during(&harness.db, writing).await?;
    report.metric("publish.writer_waits", waited.summary());
    let streams_of = streams_per_recipient(shape);
    let expected: u64 = published
        .per_recipient
        .iter()
        .zip(&streams_of)
        .map(|(rows, streams)| rows * *streams as u64)
        .sum();
    let drain = Duration::from_secs_f64(cli.common.drain_seconds);
    fleet.wait_received(expected, drain).await;
    let delivering = publishing.elapsed();
    let server_cpu_pct = usage.report_since(harness, report, "load.");
    let rss_loaded = peak.stop();
    let after = dbstats::snapshot(&harness.db, harness.stats).await?;
    let outcomes = fleet.stop().await;

    let books = Books::of(&outcomes, |o| published.per_recipient[o.spec.recipient]);
    books.add_to(report, "");
    report.metric("stream_errors", sample_errors(&outcomes));
    report.metric("publish.committed", published.committed);
    report.metric("publish.failed", published.failed);
    report.metric("publish.achieved_rate_per_s", round(published.rate(), 1));
    if let Some(error) = &published.first_error {
        report.metric("publish.first_error", error.as_str());
    }
    report.metric(
        "delivered_events_per_s",
        round(books.received as f64 / delivering.as_secs_f64(), 1),
    );
    let latency = Latency::of(&outcomes);
    if let Some(latency) = &latency {
        latency.add_to(report, "latency_ms");
    }
    if let Some(commit) = Latency::from_micros(published.commit_us) {
        commit.add_to(report, "publish.insert_commit_ms");
    }
    if let Some(late) = Latency::from_micros(published.send_late_us) {
        late.add_to(report, "publish.send_late_ms");
    }
    let acks = &published.acks;
    let after_commit = receipts_since(&outcomes, acks, shape.recipients, |ack| ack.acked_us);
    if let Some(after_commit) = Latency::from_micros(after_commit) {
        after_commit.add_to(report, "latency_after_commit_ack_ms");
    }
    let from_schedule = receipts_since(&outcomes, acks, shape.recipients, |ack| ack.due_us);
    if let Some(from_schedule) = Latency::from_micros(from_schedule) {
        from_schedule.add_to(report, "latency_from_schedule_ms");
    }
    memory(report, "before_streams", rss_base, rss_base, shape.streams);
    memory(report, "idle", rss_idle, rss_base, shape.streams);
    memory(report, "loaded_peak", rss_loaded, rss_base, shape.streams);
    let bench_xacts = (published.committed + published.failed + waited.queries) as i64 + 1;
    let db = dbstats::per_event(harness.stats, &before, &after, books.received, bench_xacts);
    report.metrics_from("db", &db);
    Ok(Outcome {
        books,
        p99: latency.map_or(f64::INFINITY, |l| l.p99),
        server_cpu_pct,
        reads_per_event: match (
            db["rows_fetched_per_event"].as_f64(),
            db["queries_per_event"].as_f64(),
        ) {
            (Some(rows), _) => Reads::Rows(rows),
            (None, Some(xacts)) => Reads::Transactions(xacts),
            (None, None) => Reads::Unknown,
        },
    })
}

/// After the streams have closed, the same writers at the same rate for up
/// to 10 s each into the baseline tables and into tidings: the commit
/// latency PostgreSQL alone gives at this rate on this machine with a bare
/// NOTIFY (the floor under `publish.insert_commit_ms`) and without one (the
/// floor of any design that does not notify in the writer's commit), and
/// what tidings' triggers add without the load of delivering. Returns the
/// bare-NOTIFY table's.
async fn without_streams(
    harness: &Harness,
    shape: &Shape,
    report: &mut Report,
) -> Result<Option<Latency>> {
    let seconds = shape.seconds.min(10.0);
    report.metric("no_streams.seconds", seconds);
    let baseline = Baseline::create(&harness.db).await?;
    commits_without_streams(harness, shape, seconds, Target::Plain, report).await?;
    let floor =
        commits_without_streams(harness, shape, seconds, Target::BareNotify, report).await?;
    commits_without_streams(harness, shape, seconds, Target::Tidings, report).await?;
    baseline.remove(&harness.db).await?;
    Ok(floor)
}

/// One no-streams phase into `target`, reported under `no_streams.<label>`;
/// returns its commit latency.
async fn commits_without_streams(
    harness: &Harness,
    shape: &Shape,
    seconds: f64,
    target: Target,
    report: &mut Report,
) -> Result<Option<Latency>> {
    let plan = Plan {
        target,
        rows: (shape.rate * seconds).round() as u64,
        rate: shape.rate,
        writers: shape.writers,
        recipients: recipients("no-streams", shape.recipients),
    };
    let prefix = format!("no_streams.{}", target.label());
    crate::progress(format!("{prefix}: {} rows", plan.rows));
    let usage = Usage::now(harness);
    let writing = publish::publish(&harness.connect, &plan);
    let (published, waited) = waits::during(&harness.db, writing).await?;
    report.metric(&format!("{prefix}.writer_waits"), waited.summary());
    usage.report_since(harness, report, &format!("{prefix}."));
    report.metric(&format!("{prefix}.failed"), published.failed);
    let rate = round(published.rate(), 1);
    report.metric(&format!("{prefix}.achieved_rate_per_s"), rate);
    let commit = Latency::from_micros(published.commit_us);
    if let Some(commit) = &commit {
        commit.add_to(report, &format!("{prefix}.insert_commit_ms"));
    }
    Ok(commit)
}

/// Waits until the streams' opening reads (each stream reads a page of
/// history after registering, `--catch-up-concurrency` at a time) are done,
/// so the measured window sees steady state only: until tidings has made
/// no event fetch for 500 ms (or 1 s, without pg_stat_statements).
async fn settle(harness: &Harness) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    if harness.stats != StatsSource::Statements {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = dbstats::snapshot(&harness.db, harness.stats).await?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = dbstats::snapshot(&harness.db, harness.stats).await?;
        if now.fetch_calls == last.fetch_calls && now.position_calls == last.position_calls {
            break;
        }
        last = now;
    }
    Ok(())
}

/// Receipt minus `mark` of the same row's ack, per delivered event (0 when
/// the event came first). From the commit's acknowledgement it is tidings'
/// own share of the latency; from the row's due time, the latency an app
/// sending on schedule would see.
fn receipts_since(
    outcomes: &[StreamOutcome],
    acks: &[Ack],
    recipients: usize,
    mark: impl Fn(&Ack) -> i64,
) -> Vec<u32> {
    let mut marked: Vec<HashMap<i64, i64>> = vec![HashMap::new(); recipients];
    for ack in acks {
        marked[ack.recipient].insert(ack.seq, mark(ack));
    }
    outcomes
        .iter()
        .flat_map(|o| {
            let marked = &marked[o.spec.recipient];
            o.receipts.iter().filter_map(move |(seq, received)| {
                let mark = marked.get(seq)?;
                Some((received - mark).clamp(0, i64::from(u32::MAX)) as u32)
            })
        })
        .collect()
}

/// How many of the streams follow each recipient (stream i follows i mod K).
fn streams_per_recipient(shape: &Shape) -> Vec<usize> {
    let mut counts = vec![0; shape.recipients];
    for i in 0..shape.streams {
        counts[i % shape.recipients] += 1;
    }
    counts
}
