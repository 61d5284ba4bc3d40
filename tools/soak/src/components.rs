//! What operators put around tidings, for runs that go through them:
//! PgBouncer in session mode with its stock settings between tidings and
//! PostgreSQL (`--through-pgbouncer`), and nginx configured with the file
//! docs/deployment.md shows between the clients and the instances
//! (`--through-nginx`). Each runs as a child process in a directory of its
//! own on 127.0.0.1, and is killed with the run.
//!
//! Must never change what the guide's nginx file says beyond its
//! addresses, nor add a PgBouncer setting a stock installation lacks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The operator's guide, whose nginx file a run goes through.
const GUIDE: &str = include_str!("../../../docs/deployment.md");
/// The first line of the guide's nginx site file.
const NGINX_SITE: &str = "# /etc/nginx/conf.d/tidings.conf";

/// A component's process and its directory; both go when dropped.
pub struct Component {
    child: Child,
    dir: PathBuf,
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PgBouncer on `port` in session mode in front of PostgreSQL on
/// `pg_port`, for user `user`.
pub async fn pgbouncer(dir: &Path, port: u16, pg_port: u16, user: &str) -> Result<Component> {
    let program = find("pgbouncer", "pgbouncer")?;
    let dir = scratch(dir, "pgbouncer")?;
    std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n"))?;
    let config = format!(
        "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {dir}/users.txt\n\
         logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n\
         pool_mode = session\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), config)?;
    let mut command = Command::new(program);
    if let Some(user) = unprivileged() {
        command.arg("-u").arg(user.name);
    }
    command.arg(dir.join("pgbouncer.ini"));
    start(command, dir, port).await
}

/// nginx on `port` with the guide's site file, its upstream the
/// `instances` (`127.0.0.1:<port>` each).
pub async fn nginx(dir: &Path, port: u16, instances: &[String]) -> Result<Component> {
    let program = find("nginx", "nginx")?;
    let dir = scratch(dir, "nginx")?;
    let site = guide_nginx_site(port, instances)?;
    std::fs::write(dir.join("tidings.conf"), site)?;
    let config = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         worker_rlimit_nofile 8192;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n\
         proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
         uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         include {dir}/tidings.conf;\n}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), config)?;
    let mut command = Command::new(program);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    start(command, dir, port).await
}

/// The guide's nginx site file with its addresses changed: `listen 80`
/// to `port`, and its one upstream server to every instance.
fn guide_nginx_site(port: u16, instances: &[String]) -> Result<String> {
    let site = GUIDE
        .split("```")
        .skip(1)
        .step_by(2)
        .filter_map(|block| block.split_once('\n').map(|(_, body)| body))
        .find(|body| body.starts_with(NGINX_SITE))
        .context("docs/deployment.md has no nginx site file")?;
    let upstream = "server 127.0.0.1:8080;";
    if !site.contains("listen 80;") || !site.contains(upstream) {
        bail!("the guide's nginx file changed shape: update tidings-soak with it");
    }
    let servers: Vec<String> = instances
        .iter()
        .map(|address| format!("server {address};"))
        .collect();
    Ok(site
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace(upstream, &servers.join(" ")))
}

/// Where Debian puts them: `/usr/sbin` is not on every `PATH`.
fn find(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} is not installed (apt-get install {package})"))
}

/// As root, the user components run as (PgBouncer refuses root).
fn unprivileged() -> Option<nix::unistd::User> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
}

/// A directory for one component beside `base` (the cluster's, which is
/// removed with the cluster), which the component's user can write to.
fn scratch(base: &Path, name: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("{}-{name}", base.display()));
    std::fs::create_dir_all(&dir)?;
    if let Some(user) = unprivileged() {
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))?;
    }
    Ok(dir)
}

/// Starts `command` and waits until something listens on `port`.
async fn start(mut command: Command, dir: PathBuf, port: u16) -> Result<Component> {
    let log = std::fs::File::create(dir.join("output.log"))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = command.spawn().context("starting a component")?;
    let mut component = Component { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        let exited = component.child.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let said =
                std::fs::read_to_string(component.dir.join("output.log")).unwrap_or_default();
            bail!(
                "{:?} did not start listening on {port}: {said}",
                command.get_program()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(component)
}
