//! The command line: one positional scenario, options shared by all, and
//! the sizes each scenario takes (defaults are the sizes the targets are
//! stated for; every size can be made tiny, which is how CI runs them).

use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

/// Load tool for tidings: drives the real server over loopback against a
/// real PostgreSQL and reports delivery, latency, memory, CPU and database
/// work. Build the server first (`cargo build --release`).
#[derive(Debug, Parser)]
#[command(name = "tidings-bench")]
pub struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub sizes: Sizes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1,000 streams, one per recipient, 2,000 inserts/s for 20 s.
    Latency,
    /// 10,000 streams over 1,000 recipients, 500 inserts/s for 20 s.
    Fanout,
    /// As many idle streams as the open-file limit allows (18,000).
    Capacity,
    /// One stream resuming after 100,000 rows; 1,000 after 1,000 each.
    Replay,
    /// 10,000 streams reconnecting at once after a server restart.
    Storm,
    /// INSERT commits/s: tidings triggers vs a bare pg_notify vs none.
    Ingest,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print the results as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Use this PostgreSQL instead of starting a private one (default
    /// durability, pg_stat_statements loaded) under /tmp. Use a throwaway
    /// database: the bench appends rows to tidings.notifications, which is
    /// append-only, and ingest and latency create and drop a schema
    /// `bench_ingest`.
    #[arg(long)]
    pub database_url: Option<String>,

    /// The tidings binary to run [default: `tidings` beside this binary,
    /// i.e. target/release/tidings].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,

    /// Pin the server to these CPUs (`taskset -c` list, e.g. `1`).
    #[arg(long)]
    pub server_cpu: Option<String>,

    /// Pin this tool to these CPUs (e.g. `0`).
    #[arg(long)]
    pub client_cpu: Option<String>,

    /// Pin the bench's own PostgreSQL to these CPUs.
    #[arg(long)]
    pub db_cpu: Option<String>,

    /// The server's request pool size (TIDINGS_DB_POOL_SIZE).
    #[arg(long, default_value_t = 16)]
    pub pool_size: u32,

    /// The server's TIDINGS_CATCH_UP_CONCURRENCY [default: the server's].
    #[arg(long)]
    pub catch_up_concurrency: Option<u32>,

    /// Extra environment for the server, e.g.
    /// `--server-env TIDINGS_MAX_STREAMS_PER_RECIPIENT=0` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub server_env: Vec<(String, String)>,

    /// Client source addresses used, 127.0.0.1 up to 127.0.0.N.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addrs: u8,

    /// Most stream connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Longest wait for deliveries still due after publishing ends.
    #[arg(long, default_value_t = 30.0)]
    pub drain_seconds: f64,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

#[derive(Debug, Clone, Args)]
pub struct Sizes {
    /// Streams to open [latency 1000, fanout 10000, capacity 18000, storm 10000].
    #[arg(long)]
    pub streams: Option<usize>,

    /// Distinct recipients [latency 1000, fanout 1000, capacity = streams, storm 1000].
    #[arg(long)]
    pub recipients: Option<usize>,

    /// Inserts per second [latency 2000, fanout 500].
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seconds of publishing [20].
    #[arg(long)]
    pub seconds: Option<f64>,

    /// Writer connections for publishing [8].
    #[arg(long)]
    pub writers: Option<usize>,

    /// replay: rows the single stream resumes after.
    #[arg(long, default_value_t = 100_000)]
    pub replay_rows: u64,

    /// replay: streams resuming together.
    #[arg(long, default_value_t = 1000)]
    pub replay_streams: usize,

    /// replay: rows each of those streams resumes after.
    #[arg(long, default_value_t = 1000)]
    pub replay_rows_each: u64,

    /// replay: ANALYZE the tables after writing the history (without it the
    /// planner has no statistics for the fresh rows, as right after a burst).
    #[arg(long)]
    pub replay_analyze: bool,

    /// storm: pause before a client reconnects (all clients use the same,
    /// so they come back together).
    #[arg(long, default_value_t = 250)]
    pub retry_ms: u64,

    /// ingest: writer counts to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub ingest_writers: Vec<usize>,

    /// ingest: seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub ingest_seconds: f64,

    /// ingest: rounds of single-row measurements, each measuring every
    /// table once (medians are reported). 10: every one of the five runs
    /// takes every place of the rotating order twice.
    #[arg(long, default_value_t = 10)]
    pub ingest_rounds: usize,

    /// ingest: rows in the bulk INSERT ... SELECT.
    #[arg(long, default_value_t = 10_000)]
    pub bulk_rows: i64,

    /// ingest: repetitions of each bulk insert (medians are reported, and
    /// the median of each repeat's ratio to plain).
    #[arg(long, default_value_t = 5)]
    pub bulk_repeats: usize,
}
