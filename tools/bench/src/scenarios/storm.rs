//! `storm`: every stream reconnects at once after the server restarts.
//! Measures the time until all are live again and caught up with what was
//! written while the server was down, and the peak number of database
//! connections tidings held meanwhile (sampled from `pg_stat_activity`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgPool;

use super::{fleet_config, millis, one_each, recipients, tokens, Usage};
use crate::cli::Cli;
use crate::fleet::{Fleet, Progress, StreamSpec};
use crate::harness::Harness;
use crate::report::{sample_errors, Books, Report};

pub async fn run(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let streams = cli.sizes.streams.unwrap_or(10_000);
    let count = cli.sizes.recipients.unwrap_or(1000).max(1);
    let mut report = Report::new("storm");
    report.condition("streams", streams);
    report.condition("recipients", count);
    report.condition("client_retry_ms", cli.sizes.retry_ms);
    let names = recipients("storm", count);
    let tokens = tokens(harness, &names)?;
    let mut config = fleet_config(cli, harness);
    config.reconnect = Some(Duration::from_millis(cli.sizes.retry_ms));
    let specs = StreamSpec::round_robin(streams, count);
    let fleet = Fleet::open(config, specs, tokens);
    fleet.wait_live(streams, Duration::from_secs(300)).await;
    report.metric(
        "streams.live_before_restart",
        Progress::get(&fleet.progress.live),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Down: the server ends every stream; one event per recipient is
    // written while nobody listens.
    crate::progress(format!("{streams} streams live; restarting the server"));
    let stopping = harness.server.terminate().await?;
    report.metric("restart.shutdown_ms", millis(stopping));
    let monitor = ConnectionMonitor::start(harness.db.clone());
    let p = fleet.progress.clone();
    crate::fleet::wait_for(Duration::from_secs(10), || Progress::get(&p.live) == 0).await;
    one_each(harness, &names).await?;

    // The old process is gone, so this window counts all of the new one.
    let usage = Usage::now(harness);
    let restarting = Instant::now();
    tokio::task::block_in_place(|| harness.server.restart())?;
    let serving = Instant::now();
    report.metric("restart.start_to_serving_ms", millis(serving - restarting));
    let drain = Duration::from_secs_f64(cli.common.drain_seconds.max(30.0));
    fleet.wait_live(streams, drain).await;
    let live_s = serving.elapsed().as_secs_f64();
    let live = Progress::get(&fleet.progress.live);
    report.metric("restart.all_live_ms", millis(serving.elapsed()));
    report.metric("streams.live_after_restart", live);
    fleet.wait_received(streams as u64, drain).await;
    report.metric("restart.all_caught_up_ms", millis(serving.elapsed()));
    usage.report_since(harness, &mut report, "storm.");

    // Live again: one more event each must arrive.
    one_each(harness, &names).await?;
    fleet.wait_received(2 * streams as u64, drain).await;
    let peaks = monitor.stop();
    let outcomes = fleet.stop().await;
    let books = Books::of(&outcomes, |_| 2);
    books.add_to(&mut report, "");
    report.metric("streams.reconnects", books.reconnects);
    report.metric("stream_errors", sample_errors(&outcomes));
    report.metric("db_connections.peak_request_pool", peaks.pool);
    report.metric("db_connections.peak_listener", peaks.listener);
    report.metric("db_connections.peak_all_clients", peaks.all);
    let pool = i64::from(cli.common.pool_size);
    report.check(
        "storm: all 10,000 live in <= 5 s",
        format!("{live} of {streams} live after {live_s:.2} s (from serving)"),
        live == streams && streams >= 10_000 && live_s <= 5.0,
    );
    report.check(
        "storm: database connections never above the pool size",
        format!(
            "peak {} pool (requests and hub) + {} LISTEN (pool size {pool})",
            peaks.pool, peaks.listener
        ),
        peaks.pool <= pool,
    );
    Ok(report)
}

struct Peaks {
    pool: i64,
    listener: i64,
    all: i64,
}

/// Samples `pg_stat_activity` every 20 ms, keeping the peaks.
struct ConnectionMonitor {
    stop: Arc<AtomicBool>,
    peaks: Arc<[AtomicI64; 3]>,
}

impl ConnectionMonitor {
    fn start(db: PgPool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new([AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)]);
        let (s, p) = (stop.clone(), peaks.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let counts: Result<(i64, i64, i64), _> = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE application_name IN ('tidings', 'tidings-hub')),
                            count(*) FILTER (WHERE application_name = 'tidings-listener'),
                            count(*) FILTER (WHERE backend_type = 'client backend')
                       FROM pg_stat_activity",
                )
                .fetch_one(&db)
                .await;
                if let Ok((pool, listener, all)) = counts {
                    p[0].fetch_max(pool, Ordering::Relaxed);
                    p[1].fetch_max(listener, Ordering::Relaxed);
                    p[2].fetch_max(all, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { stop, peaks }
    }

    fn stop(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        let get = |i: usize| self.peaks[i].load(Ordering::Relaxed);
        Peaks {
            pool: get(0),
            listener: get(1),
            all: get(2),
        }
    }
}
