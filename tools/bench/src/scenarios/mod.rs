//! The scenarios, one module each, and what they share: naming fresh
//! recipients, signing their tokens, configuring a fleet, sampling the
//! server's memory, and measuring CPU over a window.

pub mod baseline;
mod capacity;
mod ingest;
mod load;
mod replay;
mod storm;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::{Cli, Scenario};
use crate::dbstats::round;
use crate::fleet::FleetConfig;
use crate::harness::Harness;
use crate::procfs;
use crate::report::Report;

pub async fn run(cli: &Cli, harness: &mut Harness) -> Result<Report> {
    let mut report = match cli.scenario {
        Scenario::Latency => load::latency(cli, harness).await,
        Scenario::Fanout => load::fanout(cli, harness).await,
        Scenario::Capacity => capacity::run(cli, harness).await,
        Scenario::Replay => replay::run(cli, harness).await,
        Scenario::Storm => storm::run(cli, harness).await,
        Scenario::Ingest => ingest::run(cli, harness).await,
    }?;
    report.condition("database", harness.database);
    report.condition("db_stats_from", harness.stats.describe());
    report.condition("cpus_for_bench", available_cpus());
    report.condition(
        "pinning",
        format!(
            "server {}, client {}, db {}",
            cli.common.server_cpu.as_deref().unwrap_or("-"),
            cli.common.client_cpu.as_deref().unwrap_or("-"),
            cli.common.db_cpu.as_deref().unwrap_or("-")
        ),
    );
    report.condition("server_pool_size", cli.common.pool_size);
    Ok(report)
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Names no earlier run used, so every recipient starts at seq 0.
pub fn recipients(tag: &str, count: usize) -> Arc<Vec<String>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    Arc::new((0..count).map(|i| format!("{tag}-{run}-{i}")).collect())
}

/// A stream token per recipient, valid for a day.
pub fn tokens(harness: &Harness, recipients: &[String]) -> Result<Arc<Vec<String>>> {
    let tokens = recipients
        .iter()
        .map(|name| harness.keys.issue(name, &[], Duration::from_secs(86_400)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("signing a token: {error}"))?;
    Ok(Arc::new(tokens))
}

pub fn fleet_config(cli: &Cli, harness: &Harness) -> FleetConfig {
    FleetConfig {
        server: harness.server.address,
        sources: (1..=cli.common.source_addrs)
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .collect(),
        connect_concurrency: cli.common.connect_concurrency,
        reconnect: None,
        measure_latency: false,
    }
}

/// One row per recipient in a single sorted INSERT ... SELECT (one commit).
pub async fn one_each(harness: &Harness, recipients: &[String]) -> Result<()> {
    sqlx::query(
        "INSERT INTO tidings.notifications (recipient, kind, payload)
         SELECT r, 'bench', jsonb_build_object('t', $2::int8)
           FROM unnest($1::text[]) AS r ORDER BY r",
    )
    .bind(recipients)
    .bind(crate::fleet::epoch_micros())
    .execute(&harness.db)
    .await
    .context("inserting one row per recipient")?;
    Ok(())
}

/// CPU times at one moment, for measuring a window.
pub struct Usage {
    at: Instant,
    server: f64,
    client: f64,
    postgres: Option<f64>,
}

impl Usage {
    pub fn now(harness: &Harness) -> Self {
        Self {
            at: Instant::now(),
            server: procfs::cpu_seconds(harness.server.pid()).unwrap_or(0.0),
            client: procfs::own_cpu_seconds(),
            postgres: harness.postgres_cpu(),
        }
    }

    /// Adds CPU seconds and % of one core since `self` under `prefix`;
    /// returns the server's % of one core.
    pub fn report_since(&self, harness: &Harness, report: &mut Report, prefix: &str) -> f64 {
        let end = Self::now(harness);
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let pct = |cpu: f64| round(100.0 * cpu / wall, 1);
        let server = end.server - self.server;
        let client = end.client - self.client;
        report.metric(&format!("{prefix}window_s"), round(wall, 3));
        report.metric(&format!("{prefix}server_cpu_s"), round(server, 2));
        report.metric(&format!("{prefix}server_cpu_pct_of_core"), pct(server));
        report.metric(&format!("{prefix}client_cpu_s"), round(client, 2));
        report.metric(&format!("{prefix}client_cpu_pct_of_core"), pct(client));
        if let (Some(before), Some(after)) = (self.postgres, end.postgres) {
            report.metric(&format!("{prefix}postgres_cpu_s"), round(after - before, 2));
            report.metric(
                &format!("{prefix}postgres_cpu_pct_of_core"),
                pct(after - before),
            );
        }
        pct(server)
    }
}

/// Samples the server's RSS every 100 ms in the background; keeps the peak.
pub struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(procfs::rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(rss) = procfs::rss_kib(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { peak, stop }
    }

    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// Memory figures: absolute KiB and KiB per stream over the baseline.
pub fn memory(report: &mut Report, name: &str, rss_kib: u64, base_kib: u64, streams: usize) -> f64 {
    let per = rss_kib.saturating_sub(base_kib) as f64 / streams.max(1) as f64;
    report.metric(&format!("server_rss_kib.{name}"), rss_kib);
    report.metric(&format!("server_rss_kib_per_stream.{name}"), round(per, 2));
    per
}

pub fn millis(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1000.0, 1)
}
