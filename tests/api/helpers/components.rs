//! The real components an operator puts around tidings - PgBouncer, nginx,
//! Caddy - started by a test as child processes: on 127.0.0.1, on free
//! ports above 1024, each in a temporary directory of its own, and killed
//! (and their directory removed) when the test drops them, also when it
//! fails. Where a component is not installed, the test says what to
//! install and does not run; under CI (`CI` set) it fails instead.
//!
//! Must never touch a system-wide instance, its configuration or its
//! ports, nor leave a process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where Debian installs the components: `/usr/sbin` is not in every
/// user's `PATH`.
const DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];

/// The path of `program`, if it is installed. Otherwise says which test
/// did not run and what to install - or fails, under CI, which must run
/// everything (`.ci/run` installs it all).
pub fn installed(program: &str, package: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = path_dirs
        .into_iter()
        .chain(DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run every test, but {program} is missing (apt-get install {package})"
        );
        eprintln!("NOT RUN: {program} is not installed here (apt-get install {package})");
    }
    found
}

/// A free TCP port on 127.0.0.1 (free when asked; the component binds it
/// right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Whether this test process is root: PgBouncer and PostgreSQL refuse to
/// run as root, so they run as an unprivileged user then.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A temporary directory, removed when dropped. As root it belongs to the
/// unprivileged user the components run as, so they can write their logs
/// and pid files there.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tidings-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        if is_root() {
            let user = unprivileged_user();
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).expect("chown scratch");
        }
        Self(dir)
    }

    /// Writes `name` in the directory (readable by the unprivileged user).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a component's file");
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// What a component wrote to `name`, for failure messages.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The user a component runs as when the tests run as root: `postgres`,
/// as the embedded cluster does, else `nobody`.
pub fn unprivileged_user() -> nix::unistd::User {
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .expect("a postgres or nobody user to run components as")
}

/// A component's process, killed and reaped when dropped.
pub struct Running {
    pub child: Child,
}

impl Running {
    /// Starts `command` (its output to `log`) and waits until something
    /// accepts TCP connections on `port`, or fails with the log.
    pub fn start(name: &'static str, mut command: Command, port: u16, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log).context("component log")?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut running = Self { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = running.child.try_wait()? {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} exited with {status} before listening:\n{log}");
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} did not listen on {port} within 20 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }

    /// SIGTERM, then SIGKILL if it is still there after 5 s; reaped.
    pub fn stop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) && kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to completion: its status and its output (both streams).
pub fn output_of(mut command: Command) -> (bool, String) {
    match command.stdin(Stdio::null()).output() {
        Ok(output) => (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ),
        Err(error) => (false, error.to_string()),
    }
}

/// How many file descriptors process `pid` has open now.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/fd: {error}"))
}
