//! The HTTP server: accepts connections and serves the router on each, with
//! the connection settings a server of many long-lived streams needs, and
//! drains them on shutdown.
//!
//! It replaces `axum::serve` for two reasons. Memory per idle stream: a
//! stream holds its connection for hours, and with hyper's defaults each
//! connection keeps a read buffer that grows to 16 KiB while the response
//! streams, although a client sends nothing after its request. Here the
//! buffer is capped (`--max-request-head`, by default hyper's minimum of 8
//! KiB; a 16 KiB cap cost 2.5 KiB more per idle stream, measured with
//! `tidings-bench capacity --streams 4000` at 86d09fb, 2026-11-21); the cap
//! is also the largest request head accepted, so a larger one gets 431
//! (hyper's default accepts about 400 KiB). And time to send a request
//! head: `axum::serve` (0.8) installs no timer, which leaves hyper's header
//! timeout inert, so a client that sends nothing or sends its head slowly
//! (slowloris) would hold its connection for good; here hyper's timer runs
//! (`--header-read-timeout`), and a first-bytes deadline covers the bytes
//! before it starts. Everything else is what `axum::serve` does: HTTP/1.1
//! and HTTP/2 (prior knowledge) on the same port, one task per connection,
//! graceful shutdown - whose draining is bounded here too.
//!
//! It must never know about routes or features.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The default for `header_read_timeout` (`--header-read-timeout`; config
/// must say the same, as a test checks). hyper uses one timer for a
/// request head and for an idle keep-alive connection awaiting the next one,
/// so this is also how long an idle connection stays open: longer than the
/// 60 s after which nginx and AWS load balancers drop their idle upstream
/// connections, so that the proxy, not tidings, closes one first and never
/// sends a request on a connection tidings is closing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// How long shutdown waits for open connections (a slow reader of a large
/// response, say) before it drops them: streams end at once on shutdown, so
/// only a client that stopped reading is still there by then.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for
/// open connections to finish (streams end on the same signal), for at most
/// [`DRAIN_DEADLINE`].
///
/// A connection must deliver each request head within `header_read_timeout`
/// of being ready for it (see [`HEADER_READ_TIMEOUT`]); once a response is
/// under way (a stream, for hours) the timer does not run.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_request_head: usize,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper panics below its minimum; config enforces it, this makes sure.
    builder
        .http1()
        .max_buf_size(max_request_head.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match socket {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                let service = app
                    .clone()
                    .map_request(|request: Request<Incoming>| request.map(axum::body::Body::new));
                let connection = builder.serve_connection_with_upgrades(
                    FirstBytesDeadline::new(TokioIo::new(socket), header_read_timeout),
                    TowerToHyperService::new(service),
                );
                tokio::spawn(connections.watch(connection.into_owned()));
            }
            Err(error) => wait_after_accept_error(error).await,
        }
    }
    if tokio::time::timeout(DRAIN_DEADLINE, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_DEADLINE:?}; dropping them");
    }
}

/// A connection's socket, which fails its reads if the client's first
/// bytes do not come within a deadline. hyper's header timer only starts
/// once hyper-util has told HTTP/1 from HTTP/2 by those bytes, and waits
/// for them without a limit, so a client that connects and sends nothing
/// would hold a file descriptor for good. The deadline is a boxed timer,
/// freed at the first read: an open stream keeps 8 bytes of it. (Wrapping
/// the connection's future in a timeout instead cost 2.4 KiB per idle
/// stream: the future is that large, and the wrapper held it twice.)
struct FirstBytesDeadline<I> {
    io: I,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> FirstBytesDeadline<I> {
    fn new(io: I, deadline: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(deadline))),
        }
    }
}

impl<I: Read + Unpin> Read for FirstBytesDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                let late = "no request bytes within the header read timeout";
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, late)));
            }
        }
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_ready() {
            this.deadline = None;
        }
        read
    }
}

impl<I: Write + Unpin> Write for FirstBytesDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Out of file descriptors, say: accepting again at once would spin, so
/// pause - briefly (`axum::serve` waits a second), so that the port serves
/// again as soon as descriptors are free.
async fn wait_after_accept_error(error: std::io::Error) {
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
