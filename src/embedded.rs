//! The embedded database: a private PostgreSQL cluster that tidings runs
//! from the machine's installed server binaries when no `DATABASE_URL` is
//! given, so `cargo run` and `cargo test` need nothing set up.
//!
//! It owns the cluster's whole life: finding the binaries, `initdb` on first
//! use, starting, and stopping - also when tidings dies without stopping it
//! (a watchdog process does that). The cluster listens on no TCP port, only
//! on a Unix socket inside the data directory, unless the program embedding
//! it asks for one ([`Options::settings`]). PostgreSQL refuses to run as
//! root, so as root the cluster runs as the owner of its existing data, or
//! (on first use) as an unprivileged user. This module must never touch a
//! data directory another live tidings process holds, never change the
//! owner of anything before it knows whom the cluster runs as, and never let
//! the operator's `PG*` variables reach the server binaries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid, User};

/// The cluster's own data directory inside `--data-dir`
/// (`<data-dir>/pgdata`). Its Unix socket lives there too:
/// `unix_socket_directories = '.'` resolves against the server's working
/// directory, which is this one.
const PGDATA: &str = "pgdata";
/// The port the socket is named after (`.s.PGSQL.5432`). Passed to the
/// server explicitly, so a `PGPORT` in the environment cannot move it.
const PORT: u16 = 5432;
/// The role `initdb` creates as superuser: [`EmbeddedPostgres::url`] logs
/// in as it, and tidings migrates with it.
const SUPERUSER: &str = "postgres";
/// The login the tidings service runs as ([`EmbeddedPostgres::service_url`]):
/// no superuser, owner of nothing, a member of `tidings_service`.
const SERVICE_LOGIN: &str = "tidings";
/// Makes the service's login and its group role if they are missing. The
/// group role is the migrations' to equip (migrations/0001_schema.sql);
/// made here too, so the login can join it before the first migration.
/// One line: single-user mode ends a statement at a newline.
const SERVICE_ROLES: &str = "DO $$ BEGIN \
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidings_service') THEN \
     CREATE ROLE tidings_service NOLOGIN; END IF; \
     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidings') THEN \
     CREATE ROLE tidings LOGIN NOSUPERUSER IN ROLE tidings_service; END IF; END $$;\n";
/// Linux refuses Unix socket paths longer than this (sun_path is 108 bytes).
const MAX_SOCKET_PATH: usize = 107;
/// How much of the server's log a failed start quotes.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "tidings runs its own PostgreSQL when no --database-url / DATABASE_URL is given, \
         but found no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH, \
         through `pg_config --bindir`, or under /usr/lib/postgresql/*/bin. Install them \
         (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install \
         postgresql-server`; macOS: `brew install postgresql@16`), or point tidings at an \
         existing server with --database-url."
    )]
    NoBinaries,
    /// `hint` says how to reach the running cluster instead, when it can.
    #[error("the data directory {dir} is in use by another tidings process{hint}")]
    InUse { dir: PathBuf, hint: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} failed ({status}):\n{output}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
    /// pg_ctl only says "Examine the log output.": this says where it is,
    /// and what its end says.
    #[error(
        "starting PostgreSQL failed ({status}):\n{output}\
         The server's log is {log}; its last lines:\n{tail}"
    )]
    Start {
        status: std::process::ExitStatus,
        output: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{0}")]
    Unusable(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let what = what.into();
    move |source| EmbeddedError::Io { what, source }
}

/// How the cluster is run. The default is what `tidings` itself runs: a
/// durable cluster that stays, reachable only through its Unix socket.
/// The rest is for programs that embed the cluster for another purpose than
/// keeping tidings' data - tidings' test suite, its load tool and its
/// delivery verifier - so that they run PostgreSQL through this module
/// rather than find, start, own and watch it a second way.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Server settings for every start, as `postgres -c name=value` after
    /// tidings' own (so they win over them and over postgresql.conf), and
    /// never written to the data directory: what the embedding program's
    /// purpose needs - durability off for data nobody keeps (`fsync=off`),
    /// TCP besides the socket (`listen_addresses`, `port`), an extension
    /// loaded at start (`shared_preload_libraries`). The socket is named
    /// after `port`, and [`EmbeddedPostgres::url`] follows it.
    pub settings: Vec<(String, String)>,
    /// A scratch cluster: the whole data directory is removed once the
    /// cluster has stopped - by [`EmbeddedPostgres::stop`], or by the
    /// watchdog when this process ends without stopping it - for a program
    /// that needs a PostgreSQL only while it runs and must leave nothing
    /// behind however it ends. Never for data anyone keeps.
    pub remove_when_stopped: bool,
}

impl Options {
    /// The value of server setting `name`, if [`Options::settings`] has it
    /// (the last one wins, as on PostgreSQL's command line).
    fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(setting, _)| setting == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How [`EmbeddedPostgres::restart`] stops the server.
#[derive(Debug, Clone, Copy)]
pub enum Shutdown {
    /// Sessions are ended and the server checkpoints: a clean stop.
    Fast,
    /// The server is killed outright and recovers from WAL on start, as
    /// after a crash.
    Immediate,
}

/// The unprivileged user the server runs as when tidings is root.
#[derive(Debug, Clone)]
struct RunAs {
    uid: Uid,
    gid: Gid,
    name: String,
    /// Chosen because it owns the existing cluster (not by default), which
    /// errors mention: the fix is then a `chown`, not another directory.
    owns_pgdata: bool,
}

/// A running private cluster. Call [`EmbeddedPostgres::stop`] to shut it
/// down; if tidings dies instead, the watchdog shuts it down.
pub struct EmbeddedPostgres {
    /// Absolute path of the `--data-dir`.
    data_dir: PathBuf,
    options: Options,
    /// Absolute path of the cluster's data (`<data-dir>/pgdata`).
    pgdata: PathBuf,
    /// Where initdb, pg_ctl and postgres were found.
    bindir: PathBuf,
    /// Who the server runs as: `None` when tidings itself is not root.
    run_as: Option<RunAs>,
    url: String,
    /// Held for our lifetime: a second tidings on the same directory fails
    /// fast instead of stopping our cluster.
    _lock: Flock<File>,
    /// The watchdog reads this pipe; it sees end-of-file when we exit for any
    /// reason, and then stops the postmaster.
    watchdog: Option<(Child, ChildStdin)>,
}

impl EmbeddedPostgres {
    /// Starts (creating on first use) the cluster kept in `data_dir`.
    pub fn start(data_dir: &Path, options: &Options) -> Result<Self, EmbeddedError> {
        let bindir =
            find_bindir(data_major(&data_dir.join(PGDATA))).ok_or(EmbeddedError::NoBinaries)?;
        fs::create_dir_all(data_dir)
            .map_err(io_error(format!("creating {}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_error(format!("resolving {}", data_dir.display())))?;
        let pgdata = data_dir.join(PGDATA);
        // Whom the server runs as is settled before anything is created or
        // given away, so that nothing here ends up owned by the wrong user.
        // After the lock: another tidings may be creating the cluster.
        let lock = lock_dir(&data_dir)?;
        let run_as = cluster_user(&pgdata)?;
        let mut cluster = Self {
            data_dir: data_dir.clone(),
            options: options.clone(),
            pgdata,
            bindir,
            run_as,
            url: String::new(),
            _lock: lock,
            watchdog: None,
        };
        cluster.check_socket_path()?;
        cluster.hand_over(&data_dir.join("tidings.lock"))?;
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.init(&data_dir)?;
        }
        cluster.stop_orphan()?;
        cluster.make_service_roles()?;
        cluster.launch()?;
        // `sslmode=disable`: PostgreSQL has no TLS on a Unix socket, and an
        // operator's `PGSSLMODE=require` (meant for other databases) must
        // not make the embedded cluster unreachable.
        cluster.url = cluster.url_for(SUPERUSER);
        cluster.write_url_file()?;
        Ok(cluster)
    }

    fn url_for(&self, user: &str) -> String {
        format!(
            "postgres:///postgres?host={}&port={}&user={user}&sslmode=disable",
            percent_encode(&self.pgdata.to_string_lossy()),
            self.port()
        )
    }

    /// The superuser's connection URL, for migrating and administering;
    /// also written to `<data-dir>/DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL the tidings service connects with once migrations are
    /// done: a login that is no superuser and owns nothing, so a service
    /// session can neither rewrite history nor switch off the triggers
    /// that keep it append-only.
    pub fn service_url(&self) -> String {
        self.url_for(SERVICE_LOGIN)
    }

    /// Stops the server as `how` says, then starts it again on the same
    /// data, keeping the directory's lock, the URL and (for a scratch
    /// cluster) the directory itself: for a setting that takes effect only
    /// at start, and for a program that shows its clients the database
    /// restarting ([`Shutdown::Fast`]) or crashing ([`Shutdown::Immediate`]).
    pub fn restart(&mut self, how: Shutdown) -> Result<(), EmbeddedError> {
        let mode = match how {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        self.stop_server(mode)?;
        // Retire the old watchdog without waking it: woken, it would remove
        // the data directory (if asked to) under the restarted server.
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
        self.launch()
    }

    /// Fast shutdown: open sessions are ended, committed data is kept (or,
    /// with `remove_when_stopped`, removed before this returns - within a
    /// minute - so whatever runs next does not share the disk with it).
    /// A server that is already gone counts as stopped.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        let result = self.stop_server("fast");
        // Closing the pipe releases the watchdog (whose kill now finds
        // nothing); it then removes the data directory if asked to.
        drop(self.watchdog.take());
        if self.options.remove_when_stopped {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.data_dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        result
    }

    /// `pg_ctl stop`, which fails when the server is already gone (its pid
    /// file removed): say, stopped by a signal to our whole process group,
    /// as systemd's KillMode=control-group sends. That is success here.
    fn stop_server(&self, mode: &str) -> Result<(), EmbeddedError> {
        let stopped = self.pg_ctl(
            &["stop", "-m", mode, "-w", "-t", "60"],
            "stopping PostgreSQL",
        );
        match stopped {
            Ok(_) => Ok(()),
            Err(_) if self.is_not_running() => {
                tracing::info!("PostgreSQL had already stopped");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// `pg_ctl status` exits 3 for "no server running" (and 4 when it cannot
    /// read the data directory, which proves nothing).
    fn is_not_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .is_ok_and(|out| out.status.code() == Some(3))
    }

    /// The port the server's socket (and TCP listener, if any) is named by.
    /// One that does not parse is still passed on, for PostgreSQL to refuse.
    fn port(&self) -> u16 {
        self.options
            .setting("port")
            .and_then(|port| port.parse().ok())
            .unwrap_or(PORT)
    }

    fn check_socket_path(&self) -> Result<(), EmbeddedError> {
        let socket = self.pgdata.join(format!(".s.PGSQL.{}", self.port()));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EmbeddedError::Unusable(format!(
                "the socket path {} is longer than the {MAX_SOCKET_PATH} bytes Unix allows; \
                 choose a shorter --data-dir",
                socket.display()
            )));
        }
        Ok(())
    }

    /// `initdb` into a scratch directory, renamed into place only once
    /// complete, so an interrupted first start leaves nothing half-made.
    fn init(&self, data_dir: &Path) -> Result<(), EmbeddedError> {
        let scratch = data_dir.join("pgdata.initdb");
        let _ = fs::remove_dir_all(&scratch);
        self.make_dir_for_server(&scratch)?;
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(&scratch)
            // Logins through the socket only: its directory's permissions
            // are the access control. TCP, should settings turn it on, is
            // refused unless an `hba_file` of the embedding program's says
            // otherwise.
            .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=reject"])
            .args(["-E", "UTF8", "--no-locale"])
            .arg("--no-instructions");
        run(initdb, "initdb")?;
        // Only the socket, only inside the data directory: nothing else on
        // the machine can reach this cluster except its owner and root.
        let settings =
            "\n# Set by tidings: reachable only through a Unix socket in this directory.\n\
                        listen_addresses = ''\nunix_socket_directories = '.'\n";
        OpenOptions::new()
            .append(true)
            .open(scratch.join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .map_err(io_error("writing postgresql.conf"))?;
        fs::rename(&scratch, &self.pgdata).map_err(io_error("moving the new cluster into place"))
    }

    /// Runs [`SERVICE_ROLES`] in single-user mode, before the server
    /// starts: at every start, as the cluster may predate the roles. What
    /// the backend says goes to the server's log, which a failure quotes
    /// (a broken postgresql.conf shows here first). A statement that fails
    /// does not fail the backend; its login then fails, naming the role.
    fn make_service_roles(&self) -> Result<(), EmbeddedError> {
        let log = self.server_log()?;
        let said = open_own(&log, File::options().append(true))
            .map_err(io_error(format!("opening {}", log.display())))?;
        let mut backend = self.command("postgres");
        backend
            .args(["--single", "-D"])
            .arg(&self.pgdata)
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(said);
        let mut child = backend
            .spawn()
            .map_err(io_error("running postgres --single"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(SERVICE_ROLES.as_bytes())
                .map_err(io_error("writing to postgres --single"))?;
        }
        let status = child
            .wait()
            .map_err(io_error("running postgres --single"))?;
        if status.success() {
            return Ok(());
        }
        let failed = EmbeddedError::Command {
            what: "making the service's roles (postgres --single)".into(),
            status,
            output: String::new(),
        };
        Err(with_log(failed, &log))
    }

    /// The server's log, `<data-dir>/postgres.log`, created if missing and
    /// given to the cluster's user.
    fn server_log(&self) -> Result<PathBuf, EmbeddedError> {
        let log = self.data_dir.join("postgres.log");
        open_own(&log, File::options().create(true).append(true))
            .map_err(io_error(format!("creating {}", log.display())))?;
        self.hand_over(&log)?;
        Ok(log)
    }

    /// A postmaster still running here was left by a tidings that died; its
    /// watchdog may be stopping it right now. Stop it (again) and wait.
    fn stop_orphan(&self) -> Result<(), EmbeddedError> {
        let status = self
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .output();
        if status.is_ok_and(|out| out.status.success()) {
            tracing::warn!("stopping a PostgreSQL left running by an earlier tidings");
            let _ = self.pg_ctl(
                &["stop", "-m", "fast", "-w", "-t", "60"],
                "stopping the old PostgreSQL",
            );
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<(), EmbeddedError> {
        let log = self.server_log()?;
        let mut server_options = format!("-c max_connections=200 -p {}", self.port());
        for (name, value) in &self.options.settings {
            server_options.push_str(" -c ");
            server_options.push_str(&shell_quoted(&format!("{name}={value}")));
        }
        let log_arg = log.to_string_lossy().into_owned();
        self.pg_ctl(
            &[
                "start",
                "-w",
                "-t",
                "120",
                "-l",
                &log_arg,
                "-o",
                &server_options,
            ],
            "starting PostgreSQL",
        )
        .map_err(|error| with_log(error, &log))?;
        let pid = self.postmaster_pid()?;
        let remove = self
            .options
            .remove_when_stopped
            .then_some(self.data_dir.as_path());
        self.watchdog = Some(spawn_watchdog(pid, remove)?);
        Ok(())
    }

    /// Written as the cluster's user, so that the user who owns the data can
    /// run tidings on it again after root did.
    fn write_url_file(&self) -> Result<(), EmbeddedError> {
        let url_file = self.data_dir.join("DATABASE_URL");
        open_own(
            &url_file,
            File::options().create(true).write(true).truncate(true),
        )
        .and_then(|mut file| file.write_all(format!("{}\n", self.url).as_bytes()))
        .map_err(io_error(format!("writing {}", url_file.display())))?;
        self.give(&url_file)
    }

    fn postmaster_pid(&self) -> Result<String, EmbeddedError> {
        let pidfile = self.pgdata.join("postmaster.pid");
        let text = fs::read_to_string(&pidfile)
            .map_err(io_error(format!("reading {}", pidfile.display())))?;
        text.lines()
            .next()
            .map(|line| line.trim().to_owned())
            .filter(|pid| pid.parse::<u32>().is_ok())
            .ok_or_else(|| EmbeddedError::Unusable(format!("{} has no pid", pidfile.display())))
    }

    fn pg_ctl(&self, args: &[&str], what: &str) -> Result<Output, EmbeddedError> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.pgdata).args(args);
        run(pg_ctl, what)
    }

    /// A server binary, run as the cluster's user, from a directory that user
    /// can enter (the data directory's parent may be private to root), and
    /// without the operator's `PG*` variables: PGPORT would move the socket
    /// away from the port the URL names, PGDATA or PGOPTIONS would change
    /// what runs. The cluster's settings are all on the command line.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        command.stdin(Stdio::null()).current_dir("/");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        if let Some(user) = &self.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command
    }

    fn make_dir_for_server(&self, dir: &Path) -> Result<(), EmbeddedError> {
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        self.hand_over(dir)
    }

    /// Gives `path` to the cluster's user (when tidings is root), never
    /// what a symbolic link there points to (see [`open_own`]).
    fn give(&self, path: &Path) -> Result<(), EmbeddedError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let what =
            fs::symlink_metadata(path).map_err(io_error(format!("reading {}", path.display())))?;
        if what.file_type().is_symlink() {
            return Err(EmbeddedError::Unusable(format!(
                "{} is a symbolic link; tidings gives its own files to the cluster's user \
                 and follows no link to do it: remove it",
                path.display()
            )));
        }
        std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(
            io_error(format!("giving {} to user {}", path.display(), user.name)),
        )
    }

    /// Gives `path` to the cluster's user, and checks that user can reach it.
    fn hand_over(&self, path: &Path) -> Result<(), EmbeddedError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        self.give(path)?;
        let mut probe = Command::new("/bin/sh");
        probe
            .args(["-c", "test -r \"$0\""])
            .arg(path)
            .current_dir("/");
        probe.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        match probe.status() {
            Ok(status) if status.success() => Ok(()),
            _ => Err(EmbeddedError::Unusable(unreachable_for(user, path))),
        }
    }
}

/// Why root's cluster user cannot reach `path`, and what to do about it.
fn unreachable_for(user: &RunAs, path: &Path) -> String {
    let why = if user.owns_pgdata {
        " (the owner of the existing cluster data)"
    } else {
        ""
    };
    format!(
        "PostgreSQL refuses to run as root, so it runs as user {name}{why}, which cannot \
         reach {path}. Choose a --data-dir that user can reach (every parent directory \
         needs o+x), e.g. under /var/lib or /tmp, or give the data directory to the user \
         that should run PostgreSQL (`chown -R <user>: <data-dir>`) and run tidings as \
         that user.",
        name = user.name,
        path = path.display()
    )
}

/// A failed `pg_ctl start` with the server log's path and its last lines.
fn with_log(error: EmbeddedError, log: &Path) -> EmbeddedError {
    match error {
        EmbeddedError::Command { status, output, .. } => EmbeddedError::Start {
            status,
            output,
            log: log.to_owned(),
            tail: tail(log, LOG_TAIL_LINES).unwrap_or_else(|e| format!("(unreadable: {e})")),
        },
        other => other,
    }
}

/// Opens one of tidings' own files in the data directory, never through a
/// symbolic link: as root, in a directory someone else can write, following
/// a planted `postgres.log -> /etc/shadow` would truncate, write or give
/// away any file on the machine.
fn open_own(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// The last `lines` lines of the file at `path`, reading only its end: a
/// server log grows across every run.
fn tail(path: &Path, lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(16 * 1024)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Runs `command`, turning a non-zero exit into an error carrying its output.
fn run(mut command: Command, what: &str) -> Result<Output, EmbeddedError> {
    let output = command
        .output()
        .map_err(io_error(format!("running {what}")))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(EmbeddedError::Command {
        what: what.to_owned(),
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// The watchdog is a shell that waits for end-of-file on its stdin - which
/// comes when this process exits, however it exits - then stops exactly the
/// postmaster we started (by pid, so it can never stop a newer one), and
/// optionally removes the data directory.
fn spawn_watchdog(
    pid: String,
    remove: Option<&Path>,
) -> Result<(Child, ChildStdin), EmbeddedError> {
    const SCRIPT: &str = r#"trap '' INT TERM HUP
read -r _ignored
kill -INT "$1" 2>/dev/null
if [ -n "$2" ]; then
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
  rm -rf "$2"
fi"#;
    let remove = remove
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = Command::new("/bin/sh")
        .args(["-c", SCRIPT, "tidings-watchdog", &pid, &remove])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0) // out of the terminal's reach: ctrl-c is ours to handle
        .spawn()
        .map_err(io_error("starting the PostgreSQL watchdog"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| EmbeddedError::Unusable("the watchdog has no stdin".into()))?;
    Ok((child, stdin))
}

/// The directory's lock. When another tidings holds it, the error says how
/// to use that process's cluster instead (its URL file is written once the
/// cluster is up; a stale one names the same socket).
fn lock_dir(data_dir: &Path) -> Result<Flock<File>, EmbeddedError> {
    let path = data_dir.join("tidings.lock");
    let file = open_own(
        &path,
        File::options().create(true).write(true).truncate(false),
    )
    .map_err(io_error(format!("creating {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        let url_file = data_dir.join("DATABASE_URL");
        let hint = if url_file.is_file() {
            format!(
                "; to use its database meanwhile, run with \
                 --database-url \"$(cat {})\"",
                url_file.display()
            )
        } else {
            String::new()
        };
        EmbeddedError::InUse {
            dir: data_dir.to_owned(),
            hint,
        }
    })
}

/// Whom the server runs as. Not root: ourselves. Root: the owner of the
/// existing cluster (whoever ran tidings on it first; running it as anyone
/// else would fail, after giving that user our log), or for a new cluster
/// `postgres`, else `nobody`.
fn cluster_user(pgdata: &Path) -> Result<Option<RunAs>, EmbeddedError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match fs::metadata(pgdata) {
        Ok(metadata) => owner_of(pgdata, &metadata).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => unprivileged_user().map(Some),
        Err(error) => Err(io_error(format!("reading {}", pgdata.display()))(error)),
    }
}

/// The owner of an existing cluster, who is who the server must run as.
fn owner_of(pgdata: &Path, metadata: &fs::Metadata) -> Result<RunAs, EmbeddedError> {
    let uid = Uid::from_raw(metadata.uid());
    if uid.is_root() {
        return Err(EmbeddedError::Unusable(format!(
            "{pgdata} is owned by root, but PostgreSQL refuses to run as root. Give it to \
             the user that should run PostgreSQL, e.g. `chown -R postgres: {pgdata}`",
            pgdata = pgdata.display()
        )));
    }
    let user = User::from_uid(uid).ok().flatten();
    Ok(RunAs {
        uid,
        gid: user
            .as_ref()
            .map_or(Gid::from_raw(metadata.gid()), |u| u.gid),
        name: user.map_or_else(|| format!("uid {uid}"), |u| u.name),
        owns_pgdata: true,
    })
}

/// PostgreSQL will not run as root: pick the `postgres` user, else `nobody`.
fn unprivileged_user() -> Result<RunAs, EmbeddedError> {
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| User::from_name(name).ok().flatten())
        .map(|user| RunAs {
            uid: user.uid,
            gid: user.gid,
            name: user.name,
            owns_pgdata: false,
        })
        .ok_or_else(|| {
            EmbeddedError::Unusable(
                "running as root, but there is neither a `postgres` nor a `nobody` user \
                 to run PostgreSQL as"
                    .into(),
            )
        })
}

/// The major version an existing cluster was made by (`PG_VERSION`), if any.
fn data_major(pgdata: &Path) -> Option<u32> {
    fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Finds initdb, pg_ctl and postgres: on PATH, through `pg_config --bindir`,
/// or in the newest /usr/lib/postgresql/<version>/bin (Debian's layout).
/// Of those, the first of the major version `data_major` wins: a server
/// cannot open another major's data, and an upgrade installs the new major
/// next to the old.
fn find_bindir(data_major: Option<u32>) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    search_bindir(
        on_path,
        from_pg_config,
        Path::new("/usr/lib/postgresql"),
        data_major,
    )
}

fn search_bindir(
    on_path: Vec<PathBuf>,
    from_pg_config: Option<PathBuf>,
    versioned_root: &Path,
    data_major: Option<u32>,
) -> Option<PathBuf> {
    let has_all = |dir: &PathBuf| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let found: Vec<PathBuf> = on_path
        .into_iter()
        .chain(from_pg_config)
        .chain(versioned_bindirs(versioned_root))
        .filter(has_all)
        .collect();
    let matching = data_major.and_then(|major| {
        found
            .iter()
            .find(|dir| major_of(dir, versioned_root) == Some(major))
            .cloned()
    });
    matching.or_else(|| found.into_iter().next())
}

/// The major version of the server in `dir`: named by the directory under
/// `versioned_root`, else as `postgres --version` says ("postgres
/// (PostgreSQL) 15.4 ...").
fn major_of(dir: &Path, versioned_root: &Path) -> Option<u32> {
    if let Ok(rest) = dir.strip_prefix(versioned_root) {
        let first = rest.components().next()?;
        return first.as_os_str().to_str()?.parse().ok();
    }
    let output = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split("(PostgreSQL)")
        .nth(1)?
        .split_whitespace()
        .next()?;
    version.split('.').next()?.parse().ok()
}

/// `<root>/<major version>/bin`, newest first.
fn versioned_bindirs(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// `text` as one word for `/bin/sh`: pg_ctl runs the server through a
/// shell, with `-o` pasted into its command line.
fn shell_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Percent-encodes a socket directory for the `host` query parameter.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Outcome = std::io::Result<()>;

    fn fake_install(dir: &Path) -> Outcome {
        fs::create_dir_all(dir)?;
        for binary in ["initdb", "pg_ctl", "postgres"] {
            fs::write(dir.join(binary), "")?;
        }
        Ok(())
    }

    fn scratch() -> std::io::Result<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("tidings-bindir-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    #[test]
    fn the_newest_versioned_install_is_chosen_when_nothing_is_on_path() -> Outcome {
        let root = scratch()?;
        fake_install(&root.join("13/bin"))?;
        fake_install(&root.join("16/bin"))?;
        fs::create_dir_all(root.join("17/bin"))?; // incomplete: skipped

        let found = search_bindir(vec![root.join("nothing-here")], None, &root, None);

        assert_eq!(found, Some(root.join("16/bin")));
        fs::remove_dir_all(root)
    }

    #[test]
    fn the_install_matching_the_existing_data_wins_over_a_newer_one() -> Outcome {
        let root = scratch()?;
        fake_install(&root.join("on-path"))?; // no version to tell: not preferred
        fake_install(&root.join("15/bin"))?;
        fake_install(&root.join("16/bin"))?;

        let found = search_bindir(vec![root.join("on-path")], None, &root, Some(15));
        let without_data = search_bindir(vec![], None, &root, None);

        assert_eq!(found, Some(root.join("15/bin")));
        assert_eq!(without_data, Some(root.join("16/bin")));
        fs::remove_dir_all(root)
    }

    #[test]
    fn path_wins_over_pg_config_and_versioned_installs() -> Outcome {
        let root = scratch()?;
        fake_install(&root.join("on-path"))?;
        fake_install(&root.join("pg-config"))?;
        fake_install(&root.join("15/bin"))?;

        let found = search_bindir(
            vec![root.join("on-path")],
            Some(root.join("pg-config")),
            &root,
            None,
        );

        assert_eq!(found, Some(root.join("on-path")));
        fs::remove_dir_all(root)
    }

    #[test]
    fn without_binaries_the_error_is_a_one_paragraph_hint() -> Outcome {
        let root = scratch()?;

        let found = search_bindir(vec![], None, &root, None);
        let hint = EmbeddedError::NoBinaries.to_string();

        assert_eq!(found, None);
        assert!(!hint.contains('\n'));
        assert!(hint.contains("apt-get install postgresql") && hint.contains("--database-url"));
        fs::remove_dir_all(root)
    }

    #[test]
    fn settings_reach_the_shell_as_one_word_each() {
        assert_eq!(shell_quoted("a=b c"), "'a=b c'");
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
    }

    #[test]
    fn socket_paths_are_percent_encoded_for_the_url() {
        assert_eq!(percent_encode("/tmp/my data/é"), "/tmp/my%20data/%C3%A9");
    }
}
