//! tidings-bench: the load tool. Starts a PostgreSQL and the real tidings
//! server, drives one scenario against them over loopback, and prints what
//! it measured beside tidings' performance targets (BENCHMARKS.md lists
//! them, with the figures).
//!
//! - [`cli`]: scenarios and their sizes.
//! - [`harness`]: PostgreSQL, migrations and the server child process.
//! - [`server`]: the server process (start, restart, stop).
//! - [`fleet`]: N streams and their books; [`sse`]: HTTP, with the SSE
//!   parser of tidings-sse.
//! - [`publish`]: the INSERT writers.
//! - [`dbstats`], [`procfs`]: database work, memory and CPU; [`waits`]: what
//!   the writers wait for.
//! - [`scenarios`]: one module per scenario; [`report`]: output.

#![forbid(unsafe_code)]

mod cli;
mod dbstats;
mod fleet;
mod harness;
mod procfs;
mod publish;
mod report;
mod scenarios;
mod server;
mod sse;
mod waits;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;

use crate::cli::Cli;
use crate::harness::Harness;

static STARTED: OnceLock<Instant> = OnceLock::new();

fn main() -> Result<()> {
    STARTED.get_or_init(Instant::now);
    let cli = Cli::parse();
    // Before the runtime exists, so its threads inherit the affinity.
    if let Some(cpus) = &cli.common.client_cpu {
        pin(cpus, std::process::id())?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let mut harness = Harness::start(&cli.common).await?;
    let measured = scenarios::run(&cli, &mut harness).await;
    let finished = harness.finish().await;
    let report = measured?;
    finished?;
    if cli.common.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print_table();
    }
    Ok(())
}

/// A progress line on stderr, stamped with seconds since start.
pub fn progress(message: impl AsRef<str>) {
    let since = STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
    eprintln!("[tidings-bench {since:7.1}s] {}", message.as_ref());
}

/// Pins every thread of `pid` to `cpus` with taskset.
pub fn pin(cpus: &str, pid: u32) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("taskset -a -p -c {cpus} {pid} failed");
    }
    Ok(())
}
