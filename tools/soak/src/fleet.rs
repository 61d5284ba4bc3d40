//! The tidings processes under test: started, killed, drained and restarted
//! on fixed ports, so clients can reconnect to the same address.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Instance {
    pub address: String,
    /// Running process, if any.
    child: Option<Child>,
    binary: PathBuf,
    env: Vec<(String, String)>,
}

impl Instance {
    pub fn new(binary: PathBuf, port: u16, env: Vec<(String, String)>) -> Self {
        Self {
            address: format!("127.0.0.1:{port}"),
            child: None,
            binary,
            env,
        }
    }

    pub async fn start(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .env("TIDINGS_LISTEN", &self.address)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        self.wait_until_ready().await
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        for _ in 0..600 {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("tidings on {} exited: {status}", self.address);
            }
            if self.ready().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("tidings on {} not ready within 30 s", self.address)
    }

    /// Whether `/readyz` answers 200 (a bare HTTP/1.0 request).
    pub async fn ready(&self) -> bool {
        let check = async {
            let mut socket = TcpStream::connect(&self.address).await?;
            socket.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await?;
            let mut answer = Vec::new();
            socket.read_to_end(&mut answer).await?;
            std::io::Result::Ok(
                answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"),
            )
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), check).await,
            Ok(Ok(true))
        )
    }

    /// SIGKILL: no cleanup, open streams just break.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            tokio::task::spawn_blocking(move || child.wait()).await??;
        }
        Ok(())
    }

    /// SIGTERM and wait: streams end cleanly, as in a rolling deploy.
    pub async fn terminate(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
            let status = tokio::task::spawn_blocking(move || child.wait()).await??;
            if !status.success() {
                bail!(
                    "tidings on {} exited with {status} after SIGTERM",
                    self.address
                );
            }
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
