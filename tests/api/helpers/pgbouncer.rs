//! A real PgBouncer in front of the suite's PostgreSQL, configured as
//! Debian ships it except for what a test machine must choose (address,
//! port, files, trust authentication) and what a test asks for (the pool
//! mode, extra settings). Must never add a setting a test did not ask for:
//! "works with the stock configuration" is what the tests check.

use std::process::Command;

use sqlx::postgres::PgConnectOptions;

use super::cluster::url_of;
use super::components::{free_port, installed, is_root, unprivileged_user, Running, Scratch};

pub struct PgBouncer {
    pub port: u16,
    /// The server's address as PgBouncer reaches it.
    upstream: PgConnectOptions,
    process: Running,
    scratch: Scratch,
}

impl PgBouncer {
    /// PgBouncer on a free port in `mode` (`session`, `transaction` or
    /// `statement`) with `extra` lines in its `[pgbouncer]` section; `None`
    /// when it is not installed (see `components::installed`).
    pub fn start(upstream: &PgConnectOptions, mode: &str, extra: &str) -> Option<Self> {
        Self::start_on(free_port(), upstream, mode, extra)
    }

    /// [`PgBouncer::start`] on `port`: a pooler restarted with another
    /// configuration at the same address.
    pub fn start_on(
        port: u16,
        upstream: &PgConnectOptions,
        mode: &str,
        extra: &str,
    ) -> Option<Self> {
        let program = installed("pgbouncer", "pgbouncer")?;
        let scratch = Scratch::new("pgbouncer");
        let server_host = match upstream.get_socket() {
            Some(dir) => dir.to_string_lossy().into_owned(),
            None => upstream.get_host().to_owned(),
        };
        let user = upstream.get_username();
        scratch.write("users.txt", &format!("\"{user}\" \"\"\n"));
        let config = format!(
            "[databases]\n\
             * = host={server_host} port={server_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             logfile = {log}\n\
             pidfile = {pid}\n\
             pool_mode = {mode}\n\
             {extra}\n",
            server_port = upstream.get_port(),
            users = scratch.path("users.txt").display(),
            log = scratch.path("pgbouncer.log").display(),
            pid = scratch.path("pgbouncer.pid").display(),
        );
        let ini = scratch.write("pgbouncer.ini", &config);
        let mut command = Command::new(program);
        if is_root() {
            command.arg("-u").arg(unprivileged_user().name);
        }
        command.arg(&ini);
        let process = Running::start("pgbouncer", command, port, &scratch.path("stderr.log"))
            .unwrap_or_else(|error| panic!("{error:#}\n{}", scratch.read("pgbouncer.log")));
        Some(Self {
            port,
            upstream: upstream.clone(),
            process,
            scratch,
        })
    }

    /// Options for `database` through this PgBouncer.
    pub fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(self.upstream.get_username())
            .database(database)
    }

    /// A `DATABASE_URL` for `database` through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        url_of(&self.options(database))
    }

    /// What PgBouncer logged, for failure messages.
    pub fn log(&self) -> String {
        self.scratch.read("pgbouncer.log")
    }

    /// Stops it (SIGTERM: PgBouncer closes every connection at once).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// The name of the database `options` point at.
pub fn database_of(options: &PgConnectOptions) -> String {
    options.get_database().unwrap_or("postgres").to_owned()
}

impl std::fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgBouncer on 127.0.0.1:{}", self.port)
    }
}
