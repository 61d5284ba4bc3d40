//! `capacity`: as many idle streams as the open-file limit allows, the
//! server memory each costs, and proof they are all still live - one event
//! per recipient, delivered to every stream, afterwards.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{fleet_config, memory, millis, one_each, recipients, tokens};
use crate::cli::Cli;
use crate::dbstats::round;
use crate::fleet::{Fleet, Progress, StreamSpec};
use crate::harness::Harness;
use crate::procfs;
use crate::report::{sample_errors, Books, Report};

const TARGET_STREAMS: usize = 18_000;
const TARGET_KIB_PER_STREAM: f64 = 12.0;

pub async fn run(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let streams = cli.sizes.streams.unwrap_or(TARGET_STREAMS);
    let count = cli.sizes.recipients.unwrap_or(streams).max(1);
    let mut report = Report::new("capacity");
    report.condition("streams", streams);
    report.condition("recipients", count);
    if let Some(limit) = procfs::open_files_limit() {
        report.condition("open_files_limit", limit);
    }
    let names = recipients("capacity", count);
    let tokens = tokens(harness, &names)?;
    let pid = harness.server.pid();
    let rss_base = procfs::rss_kib(pid)?;
    let fds_base = procfs::open_files(pid);

    let specs = StreamSpec::round_robin(streams, count);
    let opening = Instant::now();
    let fleet = Fleet::open(fleet_config(cli, harness), specs, tokens);
    fleet.wait_opened(Duration::from_secs(600)).await;
    let open_s = opening.elapsed().as_secs_f64();
    let established = Progress::get(&fleet.progress.established);
    report.metric("streams.open_s", round(open_s, 2));
    report.metric(
        "streams.opened_per_s",
        round(established as f64 / open_s, 1),
    );
    crate::progress(format!("{established} of {streams} streams open; idling"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = procfs::rss_kib(pid)?;
    report.metric("server_open_files", procfs::open_files(pid));
    report.metric("server_open_files_before_streams", fds_base);
    memory(
        &mut report,
        "before_streams",
        rss_base,
        rss_base,
        established,
    );
    let per_stream = memory(&mut report, "idle", rss_idle, rss_base, established);

    // Every held stream must still deliver.
    let delivering = Instant::now();
    one_each(harness, &names).await?;
    let expected = established as u64;
    let all = fleet
        .wait_received(expected, Duration::from_secs_f64(cli.common.drain_seconds))
        .await;
    report.metric("deliver_one_each_ms", millis(delivering.elapsed()));
    report.metric("server_rss_kib.after_delivery", procfs::rss_kib(pid)?);
    if !all {
        crate::progress("not every stream got its event in time");
    }
    let outcomes = fleet.stop().await;
    let books = Books::of(&outcomes, |o| u64::from(o.established));
    books.add_to(&mut report, "");
    report.metric("stream_errors", sample_errors(&outcomes));
    report.check(
        "capacity: >= 18,000 streams held",
        format!("{} held (of {streams} requested)", books.established),
        books.established >= TARGET_STREAMS,
    );
    report.check(
        "capacity: <= 12 KiB RSS per idle stream",
        format!("{per_stream:.2} KiB"),
        per_stream <= TARGET_KIB_PER_STREAM,
    );
    Ok(report)
}
