//! The HTTP server: accepts connections and serves the router on each, with
//! the connection settings a server of many long-lived streams needs, and
//! drains them on shutdown.
//!
//! It replaces `axum::serve` for one reason: memory per idle stream. A
//! stream holds its connection for hours, and with hyper's defaults each
//! connection keeps a read buffer that grows to 16 KiB while the response
//! streams, although a client sends nothing after its request. Here the
//! buffer is capped (`--max-request-head`, by default hyper's minimum of 8
//! KiB, which saves about 4.5 KiB per idle stream); the cap is also the
//! largest request head accepted, so a larger one gets 431 (hyper's default
//! accepts about 400 KiB). Everything else is what `axum::serve` does:
//! HTTP/1.1 and HTTP/2 (prior knowledge) on the same port, one task per
//! connection, graceful shutdown.
//!
//! It must never know about routes or features.

use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for
/// open connections to finish (streams end on the same signal).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_request_head: usize,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper panics below its minimum; config enforces it, this makes sure.
    builder.http1().max_buf_size(max_request_head.max(8192));
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
                    TokioIo::new(socket),
                    TowerToHyperService::new(service),
                );
                let connection = connections.watch(connection.into_owned());
                tokio::spawn(connection);
            }
            Err(error) => wait_after_accept_error(error).await,
        }
    }
    connections.shutdown().await;
}

/// Out of file descriptors, say: accepting again at once would spin, so
/// pause as `axum::serve` does.
async fn wait_after_accept_error(error: std::io::Error) {
    tracing::warn!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
