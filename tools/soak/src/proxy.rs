//! A TCP proxy between tidings and PostgreSQL that can turn the LISTEN
//! session's connection into a black hole: bytes in both directions vanish,
//! but neither side sees the connection close. That is a half-open
//! connection, which TCP alone may not notice for many minutes.
//!
//! It recognises the LISTEN session by the `application_name` in the
//! connection's startup message, and leaves every other connection alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The listener's application_name, as tidings sets it.
const LISTENER_MARK: &[u8] = b"tidings-listener";

#[derive(Clone, Default)]
pub struct Proxy {
    /// One flag per LISTEN-session connection ever made; set = black hole.
    listeners: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    /// Accepts on `listener` and forwards to `upstream` until the process ends.
    pub fn spawn(self, listener: TcpListener, upstream: String) {
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let proxy = self.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = proxy.forward(client, &upstream).await;
                });
            }
        });
    }

    /// Silently drops all traffic of every current LISTEN session.
    /// Returns how many connections were cut off.
    pub fn blackhole_listeners(&self) -> usize {
        let listeners = self.listeners.lock().map(|l| l.clone()).unwrap_or_default();
        listeners
            .iter()
            .filter(|flag| !flag.swap(true, Ordering::SeqCst))
            .count()
    }

    async fn forward(&self, mut client: TcpStream, upstream: &str) -> Result<()> {
        let mut server = TcpStream::connect(upstream).await?;
        // The startup message comes first, in one small packet in practice.
        let mut first = vec![0u8; 8192];
        let n = client.read(&mut first).await?;
        first.truncate(n);
        let dark = Arc::new(AtomicBool::new(false));
        if first
            .windows(LISTENER_MARK.len())
            .any(|w| w == LISTENER_MARK)
        {
            if let Ok(mut listeners) = self.listeners.lock() {
                listeners.push(dark.clone());
            }
        }
        server.write_all(&first).await?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = tokio::spawn(pump(client_read, server_write, dark.clone()));
        let down = tokio::spawn(pump(server_read, client_write, dark));
        let _ = tokio::join!(up, down);
        Ok(())
    }
}

/// Copies bytes until the source closes; in the dark, reads and discards
/// them, so the sender never blocks and never learns anything is wrong.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dark: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dark.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
