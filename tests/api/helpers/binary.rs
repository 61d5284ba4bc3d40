//! The real `tidings` binary as a child process: started with a test's
//! environment, its stderr kept line by line, its resident memory read
//! from `/proc`, stopped with SIGTERM or killed when the test ends. A
//! memory reading must never pass a check without having measured.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::SECRET;

/// The real `tidings` binary, run as a child process.
pub struct Binary {
    pub child: std::process::Child,
    pub address: String,
    /// Every line it has written to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    /// Runs `tidings serve` with `env` (plus a test secret and a random
    /// port) and waits until it says where it serves.
    pub fn serve(env: &[(&str, &str)]) -> Result<Self> {
        Self::serve_without(&[], env)
    }

    /// [`Binary::serve`], with the variables in `unset` removed from what
    /// it would set (`TIDINGS_JWT_SECRET`, say, or `RUST_LOG` for the
    /// binary's default log filter) before `env` is applied.
    pub fn serve_without(unset: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start(&[], unset, env)
    }

    /// [`Binary::serve`] run by `wrapper` (a program that sets something
    /// up and then executes its arguments, such as `prlimit ... --`).
    pub fn serve_through(wrapper: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start(wrapper, &[], env)
    }

    fn start(wrapper: &[&str], unset: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        use std::io::BufRead;
        let tidings = env!("CARGO_BIN_EXE_tidings");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(tidings);
                command
            }
            None => std::process::Command::new(tidings),
        };
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("TIDINGS_JWT_SECRET", SECRET)
            .env("TIDINGS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "tidings=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for key in unset {
            command.env_remove(key);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (found, address) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find("serving on http://") {
                    let url: String = line[at + "serving on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = found.send(url);
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        match address.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => Ok(Self {
                child,
                address,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("tidings did not start:\n{log}")
            }
        }
    }

    /// Opens `recipient`'s stream from the start of its log, with a token
    /// signed by the test secret this binary was started with.
    pub async fn stream(&self, recipient: &str) -> reqwest::Response {
        let token = tidings::http::auth::Keys::new(SECRET.as_bytes())
            .issue(recipient, &[], Duration::from_secs(600))
            .expect("token");
        reqwest::Client::new()
            .get(format!("{}/v1/stream", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("stream")
    }

    pub async fn wait_until_ready(&self) -> Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(response) = client.get(format!("{}/readyz", self.address)).send().await {
                if response.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("not ready after 20 s")
    }

    /// Every line it has written to stderr so far.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|lines| lines.clone())
            .unwrap_or_default()
    }

    /// The lines written so far that satisfy `wanted`, once there is at
    /// least one (or after `wait`, maybe none): logs arrive through a pipe.
    pub async fn lines_within(&self, wait: Duration, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let found: Vec<String> = self.lines().into_iter().filter(|l| wanted(l)).collect();
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in KiB. Panics if it cannot be
    /// read: a memory check must not pass without measuring.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }

    /// Samples the process's resident memory every 20 ms on a thread of
    /// its own until [`RssSampler::peak`]: a single reading after a pause
    /// can miss the high point.
    pub fn sample_rss(&self) -> RssSampler {
        let pid = self.child.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = rss_kib_of(pid);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    peak = peak.max(rss_kib_of(pid));
                }
                peak
            }
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        bail!("tidings did not exit within 30 s of SIGTERM")
    }
}

/// Resident memory of process `pid`, in KiB; panics if it cannot be read.
fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A running [`Binary::sample_rss`].
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    /// Stops sampling; the highest reading, in KiB.
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread.take().expect("sampling");
        thread.join().expect("RSS sampling failed")
    }
}

impl Drop for RssSampler {
    /// A test that fails midway stops the sampling before its process goes.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
