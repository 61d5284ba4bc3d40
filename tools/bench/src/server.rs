//! The tidings server under test, run as a child process (the real binary,
//! so its memory and CPU can be read from `/proc`), optionally pinned to
//! CPUs with `taskset`. Owns starting, readiness, restarting on the same
//! port, and making sure the child never outlives this tool.

use std::collections::VecDeque;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sse;

/// Log lines kept for error messages.
const LOG_LINES: usize = 50;

/// How to run the server; kept so it can be restarted identically.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub binary: PathBuf,
    pub database_url: String,
    pub jwt_secret: String,
    pub pool_size: u32,
    pub catch_up_concurrency: Option<u32>,
    /// CPUs for `taskset -c`, if pinned.
    pub cpus: Option<String>,
    /// Extra environment (`--server-env`), applied last.
    pub env: Vec<(String, String)>,
}

pub struct Server {
    config: ServerConfig,
    child: Child,
    pub address: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Kills the server if this tool dies without dropping it (SIGKILL,
    /// e.g. a test timeout): it waits for end-of-file on this pipe.
    watchdog: Option<(Child, ChildStdin)>,
}

impl Server {
    /// Starts the server on a free loopback port.
    pub fn start(config: &ServerConfig) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        Self::start_on(config, port)
    }

    /// Starts the server on `address` and waits until it says it serves.
    pub fn start_on(config: &ServerConfig, address: SocketAddr) -> Result<Self> {
        let mut command = match &config.cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(cpus).arg(&config.binary);
                taskset
            }
            None => Command::new(&config.binary),
        };
        command
            .arg("serve")
            .env("DATABASE_URL", &config.database_url)
            .env("TIDINGS_JWT_SECRET", &config.jwt_secret)
            .env("TIDINGS_LISTEN", address.to_string())
            .env("TIDINGS_DB_POOL_SIZE", config.pool_size.to_string())
            .env("RUST_LOG", "tidings=info,tower_http=warn,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = config.catch_up_concurrency {
            command.env("TIDINGS_CATCH_UP_CONCURRENCY", n.to_string());
        }
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let serving = watch_log(&mut child, log.clone())?;
        let watchdog = spawnwatchdog(child.id()).ok();
        let mut server = Self {
            config: config.clone(),
            child,
            address,
            log,
            watchdog,
        };
        match serving.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => Ok(server),
            Err(_) => {
                let _ = server.child.kill();
                bail!("tidings did not start:\n{}", server.log_tail())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200 (the LISTEN session is up).
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("tidings exited ({status}):\n{}", self.log_tail());
            }
            if matches!(sse::get_status(self.address, "/readyz").await, Ok(200)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("tidings not ready within {within:?}:\n{}", self.log_tail())
    }

    /// SIGTERM, then waits for the exit (the server ends its streams first).
    pub async fn terminate(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        while started.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait()?.is_some() {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.child.kill();
        bail!("tidings did not exit within 30 s of SIGTERM")
    }

    /// Starts a fresh server process on the same address.
    pub fn restart(&mut self) -> Result<()> {
        let next = Self::start_on(&self.config, self.address)?;
        let old = std::mem::replace(self, next);
        drop(old);
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        self.log
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// A shell that waits for end-of-file on its stdin - which comes when this
/// process exits, however it exits - then kills the server by pid (the same
/// pattern as the embedded cluster's watchdog).
fn spawnwatchdog(pid: u32) -> Result<(Child, ChildStdin)> {
    let mut watchdog = Command::new("/bin/sh")
        .args([
            "-c",
            "read -r _ignored; kill -KILL \"$1\" 2>/dev/null",
            "bench-watchdog",
        ])
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = watchdog.stdin.take().context("watchdog stdin")?;
    Ok((watchdog, stdin))
}

/// Drains the child's stderr (so it never blocks on a full pipe), keeps the
/// last lines, and reports when the server says `serving on`.
fn watch_log(child: &mut Child, log: Arc<Mutex<VecDeque<String>>>) -> Result<mpsc::Receiver<()>> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (found, serving) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("serving on http://") {
                let _ = found.send(());
            }
            if let Ok(mut lines) = log.lock() {
                if lines.len() == LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        }
    });
    Ok(serving)
}

impl Drop for Server {
    fn drop(&mut self) {
        // The watchdog goes first, killed rather than woken, so it can never
        // signal a pid that the server's exit has freed for reuse.
        if let Some((mut watchdog, _stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
