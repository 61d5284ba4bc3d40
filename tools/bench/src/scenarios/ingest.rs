//! `ingest`: what the tidings triggers cost writers. Single-row INSERT
//! commits/s into `tidings.notifications` beside the three baseline tables
//! (bare `pg_notify`, the least gapless sequence, no triggers); then a bulk
//! INSERT ... SELECT into each, sorted by recipient and unsorted.
//!
//! The single-row writers append to recipients that already have events,
//! as an app's writes mostly do: a recipient's first event (which also
//! makes its counter row) would otherwise be a tenth or more of each round.
//!
//! tidings is measured twice: for recipients nobody streams (no hint lease:
//! the append sends no NOTIFY, migration 0008) and for recipients with a
//! lease, as a stream takes one (every append NOTIFYs, like the baselines).
//! The second is the like-for-like comparison with a bare NOTIFY.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;

use super::baseline::{self, Baseline};
use crate::cli::Cli;
use crate::dbstats::round;
use crate::fleet::epoch_micros;
use crate::harness::Harness;
use crate::report::Report;
use crate::waits::{self, Tally};

/// The tables compared, by label; `bare_notify` is the target's reference.
/// `tidings_streamed` is `tidings.notifications` again, for recipients
/// that hold a hint lease.
const TABLES: [(&str, &str); 5] = [
    ("tidings", "tidings.notifications"),
    ("tidings_streamed", "tidings.notifications"),
    ("bare_notify", baseline::BARE_NOTIFY),
    ("seq_notify", baseline::SEQ_NOTIFY),
    ("plain", baseline::PLAIN),
];
const TIDINGS: usize = 0;
const TIDINGS_STREAMED: usize = 1;
const BARE_NOTIFY: usize = 2;
const SEQ_NOTIFY: usize = 3;
const PLAIN: usize = 4;
/// Recipients the single-row writers pick from at random.
const RECIPIENTS: u64 = 1000;

pub async fn run(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let sizes = &cli.sizes;
    let mut report = Report::new("ingest");
    report.condition("writers", format!("{:?}", sizes.ingest_writers));
    report.condition("seconds_each", sizes.ingest_seconds);
    report.condition("rounds", sizes.ingest_rounds);
    report.condition("bulk_rows", sizes.bulk_rows);
    report.condition("recipients", RECIPIENTS);
    let baseline = Baseline::create(&harness.db).await?;

    let prefix = Arc::new(uuid::Uuid::new_v4().simple().to_string());
    warm_up(harness, &prefix).await?;
    // The baselines take the writers' seq: past the warm-up's 1..=RECIPIENTS.
    let seq = Arc::new(AtomicI64::new(RECIPIENTS as i64 + 1));
    let duration = Duration::from_secs_f64(sizes.ingest_seconds);
    for &writers in &sizes.ingest_writers {
        let rounds = sizes.ingest_rounds;
        let measured = rounds_of(harness, writers, rounds, duration, &prefix, &seq).await?;
        single_rows(&mut report, writers, &measured);
    }
    bulk(harness, cli, &mut report).await?;
    baseline.remove(&harness.db).await?;
    Ok(report)
}

/// The figures of one writer count: median commits/s and waits per table,
/// and the commit time ratios. A ratio is the median of each round's own
/// ratio (the inverse of its commits/s ratio): the tables of one round ran
/// seconds apart, so the slow drift of this machine's disk and load cancels
/// out of it, which it does not between medians taken over different
/// rounds.
fn single_rows(report: &mut Report, writers: usize, measured: &Rounds) {
    let rounds = &measured.rates;
    let rates = rounds.clone().map(median);
    for (i, (label, _)) in TABLES.iter().enumerate() {
        let name = format!("single_row.w{writers}.{label}");
        report.metric(&format!("{name}.commits_per_s"), round(rates[i], 0));
        report.metric(
            &format!("{name}.writer_waits"),
            measured.waited[i].summary(),
        );
        report.metric(
            &format!("{name}.cpu_us_per_commit"),
            CpuTime::median(&measured.cpu[i]).per_commit_summary(),
        );
    }
    crate::progress(format!("{writers} writers: {rates:.0?} commits/s"));
    // Time ratios are inverse rate ratios.
    let each_round = |table: usize, than: usize| ratios(&rounds[than], &rounds[table]);
    let slower = |table: usize, than: usize| median(each_round(table, than));
    let name = format!("single_row.w{writers}");
    let vs_notify = slower(TIDINGS, BARE_NOTIFY);
    let streamed_vs_notify = slower(TIDINGS_STREAMED, BARE_NOTIFY);
    let seq_vs_notify = slower(SEQ_NOTIFY, BARE_NOTIFY);
    for (metric, ratio) in [
        ("tidings_time_vs_bare_notify", vs_notify),
        ("tidings_streamed_time_vs_bare_notify", streamed_vs_notify),
        (
            "tidings_streamed_time_vs_seq_notify",
            slower(TIDINGS_STREAMED, SEQ_NOTIFY),
        ),
        ("seq_notify_time_vs_bare_notify", seq_vs_notify),
        ("tidings_time_vs_plain", slower(TIDINGS, PLAIN)),
    ] {
        report.metric(&format!("{name}.{metric}"), round(ratio, 2));
    }
    let target =
        format!("ingest: {writers} writers, single-row commit time <= 1.2x bare pg_notify");
    report.check(
        &format!("{target}, recipients nobody streams (no NOTIFY)"),
        format!(
            "{vs_notify:.3}x (middle half of rounds {}; {:.0} vs {:.0} commits/s)",
            middle_half(each_round(TIDINGS, BARE_NOTIFY)),
            rates[TIDINGS],
            rates[BARE_NOTIFY]
        ),
        vs_notify <= 1.2,
    );
    report.check(
        &format!("{target}, streamed recipients (a NOTIFY each)"),
        format!(
            "{streamed_vs_notify:.3}x (middle half of rounds {}; {:.0} vs {:.0} commits/s; \
             the least gapless sequence: {seq_vs_notify:.2}x)",
            middle_half(each_round(TIDINGS_STREAMED, BARE_NOTIFY)),
            rates[TIDINGS_STREAMED],
            rates[BARE_NOTIFY]
        ),
        streamed_vs_notify <= 1.2,
    );
}

/// One event for each of the writers' recipients in every table, so that
/// the rounds measure appends to existing recipients; then a day's hint
/// lease for the streamed ones, as a stream would take.
async fn warm_up(harness: &Harness, prefix: &str) -> Result<()> {
    for (i, (_, table)) in TABLES.iter().enumerate() {
        let recipients = recipients_of(prefix, i);
        insert_series(harness, table, &recipients, RECIPIENTS as i64, true).await?;
    }
    sqlx::query(
        "UPDATE tidings.recipients SET hints_until = now() + interval '1 day'
          WHERE starts_with(recipient, $1 || '-')",
    )
    .bind(recipients_of(prefix, TIDINGS_STREAMED))
    .execute(&harness.db)
    .await
    .context("leasing the streamed recipients")?;
    Ok(())
}

/// The prefix of table `table`'s recipients: the two tidings runs use the
/// same table, with recipients of their own.
fn recipients_of(prefix: &str, table: usize) -> String {
    format!("{prefix}-{}", TABLES[table].0)
}

type PerTable<T> = [T; TABLES.len()];

/// What the single-row rounds of one writer count measured, per table.
#[derive(Default)]
struct Rounds {
    /// Commits/s, one per round.
    rates: PerTable<Vec<f64>>,
    /// What the writers waited for, over all rounds.
    waited: PerTable<Tally>,
    /// CPU time per commit, one per round: the ratio's wall clock shows
    /// only the part of the triggers' CPU that lengthens the NOTIFY lock's
    /// chain of hand-overs; this shows all of it.
    cpu: PerTable<Vec<CpuTime>>,
}

/// Commits/s per table in each of `rounds`, what the writers waited for
/// and the CPU they cost; each round measures every table once, in a
/// rotating order, so that no table always runs first or last (after a
/// checkpoint, say) - with rounds a multiple of the tables, each takes
/// every place equally often.
async fn rounds_of(
    harness: &Harness,
    writers: usize,
    rounds: usize,
    duration: Duration,
    prefix: &Arc<String>,
    seq: &Arc<AtomicI64>,
) -> Result<Rounds> {
    let mut measured = Rounds::default();
    for round in 0..rounds.max(1) {
        for i in rotation(round) {
            let table = TABLES[i].1;
            let recipients = Arc::new(recipients_of(prefix, i));
            let writing = write(harness, table, writers, duration, &recipients, seq);
            let (written, tally) = waits::during(&harness.db, writing).await?;
            measured.rates[i].push(written.commits as f64 / written.seconds);
            measured.cpu[i].push(written.cpu.per(written.commits));
            measured.waited[i].add(tally);
        }
    }
    Ok(measured)
}

/// CPU seconds of PostgreSQL (all its processes, when the cluster is the
/// bench's own: else NaN), of the tidings server (whose LISTEN session
/// takes tidings' hints) and of this tool (the writers' client side), in
/// that order.
#[derive(Clone, Copy, Debug)]
struct CpuTime([f64; 3]);

impl CpuTime {
    const PARTIES: [&'static str; 3] = ["PostgreSQL", "server", "bench"];

    fn now(harness: &Harness) -> Self {
        Self([
            harness.postgres_cpu().unwrap_or(f64::NAN),
            crate::procfs::cpu_seconds(harness.server.pid()).unwrap_or(f64::NAN),
            crate::procfs::own_cpu_seconds(),
        ])
    }

    fn minus(self, earlier: Self) -> Self {
        Self(std::array::from_fn(|p| self.0[p] - earlier.0[p]))
    }

    /// Seconds per commit, in µs.
    fn per(self, commits: u64) -> Self {
        let scale = 1e6 / commits.max(1) as f64;
        Self(self.0.map(|seconds| seconds * scale))
    }

    /// Each party's median over the rounds.
    fn median(rounds: &[Self]) -> Self {
        Self(std::array::from_fn(|p| {
            median(rounds.iter().map(|round| round.0[p]).collect())
        }))
    }

    /// "PostgreSQL 216, server 0, bench 42".
    fn per_commit_summary(&self) -> String {
        let parts = Self::PARTIES.iter().zip(self.0);
        let parts: Vec<String> = parts
            .map(|(party, us)| format!("{party} {us:.0}"))
            .collect();
        parts.join(", ")
    }
}

/// The tables' indexes in round `round`'s order: each round starts one
/// table further on.
fn rotation(round: usize) -> impl Iterator<Item = usize> {
    (0..TABLES.len()).map(move |step| (round + step) % TABLES.len())
}

/// The first and third quartile of `samples`, "1.12-1.31": how far single
/// rounds scatter around the median the verdict uses.
fn middle_half(mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    let at = |q: usize| {
        samples
            .get(samples.len() * q / 4)
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!("{:.2}-{:.2}", at(1), at(3))
}

/// The middle sample (NaN for none).
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What one table's writers did in one round.
struct Written {
    commits: u64,
    seconds: f64,
    /// CPU spent from the first INSERT to the last commit: connecting and
    /// disconnecting (a backend's fork and exit) are left out.
    cpu: CpuTime,
}

/// `writers` connections inserting one row per transaction for `duration`,
/// each to one of the `prefix` recipients at random.
async fn write(
    harness: &Harness,
    table: &str,
    writers: usize,
    duration: Duration,
    prefix: &Arc<String>,
    seq: &Arc<AtomicI64>,
) -> Result<Written> {
    let statement = Arc::new(format!(
        "INSERT INTO {table} (recipient, seq, kind, payload) \
         VALUES ($1, $2, 'bench', jsonb_build_object('t', $3::int8))"
    ));
    let connect = waits::writer(&harness.connect);
    let mut connections = Vec::new();
    for _ in 0..writers {
        connections.push(PgConnection::connect_with(&connect).await?);
    }
    let cpu_before = CpuTime::now(harness);
    let end = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (w, mut conn) in connections.into_iter().enumerate() {
        let (statement, prefix, seq) = (statement.clone(), prefix.clone(), seq.clone());
        tasks.spawn(async move {
            let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut commits = 0u64;
            while Instant::now() < end {
                let recipient = format!("{prefix}-{}", random.next() % RECIPIENTS);
                sqlx::query(&statement)
                    .bind(recipient)
                    .bind(seq.fetch_add(1, Ordering::Relaxed))
                    .bind(epoch_micros())
                    .execute(&mut conn)
                    .await?;
                commits += 1;
            }
            anyhow::Ok((commits, conn))
        });
    }
    let mut commits = 0;
    let mut connections = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (count, conn) = joined??;
        commits += count;
        connections.push(conn);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuTime::now(harness).minus(cpu_before);
    for conn in connections {
        let _ = conn.close().await;
    }
    Ok(Written {
        commits,
        seconds,
        cpu,
    })
}

/// One INSERT ... SELECT per table and order, repeated; medians in ms. Each
/// repeat measures every table in a rotating order, as the single-row
/// rounds do: whatever the rounds leave running (autovacuum, checkpoint
/// writes) then slows one repeat of a table, which the median drops,
/// rather than every repeat of the table measured first. Ratios to plain
/// are paired like the single-row ones: the median of each repeat's own
/// ratio, as plain's time follows the disk's from one second to the next.
async fn bulk(harness: &Harness, cli: &Cli, report: &mut Report) -> Result<()> {
    let rows = cli.sizes.bulk_rows;
    let mut times: PerTable<[Vec<f64>; 2]> = Default::default();
    for repeat in 0..cli.sizes.bulk_repeats.max(1) {
        // Bulk rows go to fresh recipients, which hold no lease: the
        // streamed run would repeat the first.
        for t in rotation(repeat).filter(|t| *t != TIDINGS_STREAMED) {
            for (o, took) in times[t].iter_mut().enumerate() {
                took.push(bulk_ms(harness, TABLES[t].1, o == 0, rows).await?);
            }
        }
    }
    report_bulk(&times, report);
    let sorted = paired_ratio(&times[TIDINGS][0], &times[PLAIN][0]);
    report.check(
        &format!("ingest: {rows}-row INSERT ... SELECT <= 4x plain (sorted by recipient)"),
        format!(
            "{sorted:.2}x (median of {} paired repeats; medians {:.1} vs {:.1} ms)",
            times[PLAIN][0].len(),
            median(times[TIDINGS][0].clone()),
            median(times[PLAIN][0].clone())
        ),
        sorted <= 4.0,
    );
    Ok(())
}

/// Each table's median times, and its paired ratios to plain.
fn report_bulk(times: &PerTable<[Vec<f64>; 2]>, report: &mut Report) {
    let measured = |t: &usize| *t != TIDINGS_STREAMED;
    for (t, (label, _)) in TABLES.iter().enumerate().filter(|(t, _)| measured(t)) {
        for (o, order) in ["sorted", "unsorted"].iter().enumerate() {
            let took = median(times[t][o].clone());
            report.metric(&format!("bulk.{label}.{order}_ms"), round(took, 1));
        }
    }
    for (o, order) in ["sorted", "unsorted"].iter().enumerate() {
        let compared = |t: &usize| *t != PLAIN && measured(t);
        for (t, (label, _)) in TABLES.iter().enumerate().filter(|(t, _)| compared(t)) {
            let ratio = paired_ratio(&times[t][o], &times[PLAIN][o]);
            report.metric(&format!("bulk.{label}_vs_plain.{order}"), round(ratio, 2));
        }
    }
}

/// The median of `times[i] / baseline[i]`: repeat i measured both seconds
/// apart.
fn paired_ratio(times: &[f64], baseline: &[f64]) -> f64 {
    median(ratios(times, baseline))
}

/// `a[i] / b[i]` for each i: pairs measured seconds apart.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

/// One `rows`-row INSERT ... SELECT into `table` for fresh recipients, in
/// ms.
async fn bulk_ms(harness: &Harness, table: &str, sorted: bool, rows: i64) -> Result<f64> {
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    insert_series(harness, table, &prefix, rows, sorted).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Rows 1..=`rows` in one INSERT ... SELECT: row i to recipient
/// `<prefix>-<i mod RECIPIENTS>`, with seq i. Sorted: one recipient after
/// another. Unsorted: generation order, which cycles through all
/// recipients row by row.
async fn insert_series(
    harness: &Harness,
    table: &str,
    prefix: &str,
    rows: i64,
    sorted: bool,
) -> Result<()> {
    let order_by = if sorted { "recipient, seq" } else { "seq" };
    let statement = format!(
        "INSERT INTO {table} (recipient, seq, kind, payload)
         SELECT $1 || '-' || (i % {RECIPIENTS}) AS recipient, i AS seq, 'bench',
                jsonb_build_object('n', i)
           FROM generate_series(1, $2::int8) AS g(i) ORDER BY {order_by}"
    );
    sqlx::query(&statement)
        .bind(prefix)
        .bind(rows)
        .execute(&harness.db)
        .await
        .with_context(|| format!("inserting {rows} rows into {table}"))?;
    Ok(())
}

/// A tiny deterministic generator: recipients only need to be spread out.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
