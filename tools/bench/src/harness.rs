//! The system under test, assembled: a PostgreSQL (this tool's own cluster
//! with default durability, or `--database-url`), the migrations, the
//! tidings server as a child process, and the keys that sign stream tokens.
//!
//! Owns setup and teardown only. Everything it starts stops when the tool
//! exits, however it exits: the server is killed on drop, and the embedded
//! cluster's watchdog stops and removes it.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use tidings::embedded::{EmbeddedPostgres, Options};
use tidings::http::auth::Keys;

use crate::cli::Common;
use crate::dbstats::StatsSource;
use crate::server::{Server, ServerConfig};

/// Signs the bench's tokens; passed to the server it starts.
const SECRET: &str = "tidings-bench-secret-long-enough-for-hs256";

pub struct Harness {
    /// The bench's own pool: setup, bulk inserts and statistics.
    pub db: PgPool,
    pub connect: PgConnectOptions,
    pub server: Server,
    pub keys: Keys,
    pub stats: StatsSource,
    /// The postmaster, when the cluster is ours (for its CPU time).
    pub postmaster: Option<u32>,
    pub database: &'static str,
    cluster: Option<EmbeddedPostgres>,
}

impl Harness {
    pub async fn start(common: &Common) -> Result<Self> {
        let started = Instant::now();
        let (url, cluster) = match &common.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let cluster = tokio::task::block_in_place(start_cluster)?;
                (cluster.url().to_owned(), Some(cluster))
            }
        };
        let connect = PgConnectOptions::from_str(&url)?.application_name("tidings-bench");
        let db = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await
            .context("connecting to PostgreSQL")?;
        tidings::db::migrate(&db).await.context("migrating")?;
        let stats = StatsSource::detect(&db, cluster.is_some()).await;
        let postmaster = match &cluster {
            Some(_) => postmaster_pid(&db).await,
            None => None,
        };
        if let (Some(pid), Some(cpus)) = (postmaster, &common.db_cpu) {
            pin_tree(pid, cpus)?;
        }
        let config = ServerConfig {
            binary: server_binary(common)?,
            database_url: url,
            jwt_secret: SECRET.into(),
            pool_size: common.pool_size,
            catch_up_concurrency: common.catch_up_concurrency,
            cpus: common.server_cpu.clone(),
            env: common.server_env.clone(),
        };
        let mut server = tokio::task::block_in_place(|| Server::start(&config))?;
        server.wait_ready(Duration::from_secs(30)).await?;
        let database = if cluster.is_some() {
            "embedded PostgreSQL 15, default durability (fsync on)"
        } else {
            "--database-url"
        };
        crate::progress(format!(
            "ready in {:.1} s: tidings pid {} on {}, stats from {}",
            started.elapsed().as_secs_f64(),
            server.pid(),
            server.address,
            stats.describe()
        ));
        Ok(Self {
            db,
            connect,
            server,
            keys: Keys::new(SECRET.as_bytes()),
            stats,
            postmaster,
            database,
            cluster,
        })
    }

    /// Stops the server gracefully, then the cluster.
    pub async fn finish(mut self) -> Result<()> {
        let _ = self.server.terminate().await;
        self.db.close().await;
        if let Some(cluster) = self.cluster.take() {
            tokio::task::block_in_place(|| cluster.stop())?;
        }
        Ok(())
    }

    /// PostgreSQL's CPU seconds so far, when the cluster is ours.
    pub fn postgres_cpu(&self) -> Option<f64> {
        self.postmaster
            .and_then(|pid| crate::procfs::tree_cpu_seconds(pid).ok())
    }
}

/// A throwaway cluster with default durability and `pg_stat_statements`
/// loaded, removed when stopped.
fn start_cluster() -> Result<EmbeddedPostgres> {
    let dir = std::env::temp_dir().join(format!("tidings-bench-{}", uuid::Uuid::new_v4().simple()));
    let options = Options {
        settings: vec![(
            "shared_preload_libraries".into(),
            "pg_stat_statements".into(),
        )],
        remove_when_stopped: true,
    };
    EmbeddedPostgres::start(&dir, &options).context("starting PostgreSQL")
}

async fn postmaster_pid(db: &PgPool) -> Option<u32> {
    // The postmaster is the parent of our own backend.
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(db)
        .await
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Pins the postmaster and its children; backends forked later inherit it.
fn pin_tree(pid: u32, cpus: &str) -> Result<()> {
    for target in std::iter::once(pid).chain(crate::procfs::children(pid)) {
        crate::pin(cpus, target)?;
    }
    Ok(())
}

/// `--server-bin`, else the `tidings` next to this binary (so `cargo run
/// --release --bin tidings-bench` uses `target/release/tidings`).
fn server_binary(common: &Common) -> Result<PathBuf> {
    if let Some(path) = &common.server_bin {
        return Ok(path.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("tidings");
    anyhow::ensure!(
        sibling.is_file(),
        "no tidings binary at {}: build it (cargo build --release) or pass --server-bin",
        sibling.display()
    );
    Ok(sibling)
}
