//! Shutting down ends open streams cleanly, so clients reconnect and resume.

use std::time::Duration;

use crate::helpers::spawn_app;

#[tokio::test]
async fn graceful_shutdown_ends_open_streams_and_the_server() {
    let app = spawn_app().await;
    let mut stream = app.stream("alice", None).await;

    app.shutdown.cancel();

    assert!(
        stream.ended_within(Duration::from_secs(5)).await,
        "the stream ended"
    );
    tokio::time::timeout(Duration::from_secs(5), app.server)
        .await
        .expect("server stopped")
        .expect("server task");
}
