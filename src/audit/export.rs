//! Streaming exports (`Accept: application/x-ndjson` or `text/csv`): a whole
//! query result sent from one snapshot, and the bounds that keep one from
//! holding a database connection for as long as a client cares to take.
//!
//! An export needs one request-pool connection, in an open REPEATABLE READ
//! transaction, from its first row to its last. So:
//!
//! - The query runs in a task of its own, which owns the transaction and
//!   hands the body chunks through a small channel. The response is sent
//!   only once the first row is in, so a query that fails at all (a value
//!   PostgreSQL refuses, no connection to be had) is a problem document,
//!   not a 200 cut short.
//! - A client that reads nothing for `stall_timeout` ends its export: the
//!   task notices it cannot hand over a chunk, rolls back and lets the
//!   connection go. (A body stream could not: while the client reads
//!   nothing, nobody polls it.) The client sees the body break off, never
//!   a clean end.
//! - Only a few exports run at once; one more is a 503 at once, rather
//!   than a wait for a connection that the running exports hold anyway.
//!
//! Memory stays constant: rows go out as PostgreSQL hands them over.
//!
//! It must never write (the snapshot is READ ONLY), never keep a connection
//! for a client that reads nothing for longer than `stall_timeout`, and
//! never let more exports run than it has permits for.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::http::error::{AppError, Busy};

/// The default `stall_timeout` (`--export-stall-timeout`; config must say
/// the same, as a test checks): far longer than any client that reads
/// takes between two chunks, short enough that a stuck one soon lets go.
pub const EXPORT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows are gathered into chunks of about this size before they are sent.
const CHUNK: usize = 32 * 1024;

/// Chunks that may wait between the query and the client.
const BUFFERED_CHUNKS: usize = 4;

/// How many exports may run at once, and how long one waits for a client
/// that reads nothing. Cheap to clone.
#[derive(Clone)]
pub struct Exports {
    /// One permit per export that may run at once.
    permits: Arc<Semaphore>,
    stall_timeout: Duration,
}

impl Exports {
    pub fn new(concurrency: usize, stall_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            stall_timeout,
        }
    }
}

/// One export: the query, and how its rows become bytes.
pub(super) struct Export<T> {
    pub sql: QueryBuilder<'static, Postgres>,
    /// Sent before the first row (CSV's header line).
    pub head: &'static [u8],
    pub render: fn(&T, &mut Vec<u8>),
    pub content_type: &'static str,
}

/// Why an export stopped before its last row.
enum Ended {
    /// The first row never came; the request was answered with the error.
    Refused,
    /// The client went away.
    Gone,
    Stalled,
    Failed(sqlx::Error),
}

/// Runs `export` in its own task and answers once its first row is in.
pub(super) async fn run<T>(
    exports: &Exports,
    pool: PgPool,
    export: Export<T>,
) -> Result<Response, AppError>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static,
{
    let Ok(permit) = exports.permits.clone().try_acquire_owned() else {
        return Err(AppError::Busy(
            Busy::Exports,
            "as many audit exports as allowed are running; retry later".into(),
        ));
    };
    let content_type = export.content_type;
    let (chunks, mut received) = mpsc::channel(BUFFERED_CHUNKS);
    let (started, first_row) = oneshot::channel();
    let (finished, complete) = oneshot::channel::<()>();
    let task = Task {
        _permit: permit,
        pool,
        stall_timeout: exports.stall_timeout,
        chunks,
    };
    tokio::spawn(task.produce(export, started, finished).in_current_span());
    first_row.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))?;
    let body = async_stream::stream! {
        while let Some(chunk) = received.recv().await {
            yield Ok::<Bytes, std::io::Error>(chunk);
        }
        if complete.await.is_err() {
            yield Err(std::io::Error::other("the export ended early"));
        }
    };
    Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
}

/// The export's side of the channel, and its permit, held until it ends.
struct Task {
    // Dropped first (fields drop in order), so the permit is free by the
    // time the body sees the channel close.
    _permit: OwnedSemaphorePermit,
    pool: PgPool,
    stall_timeout: Duration,
    chunks: mpsc::Sender<Bytes>,
}

impl Task {
    /// Sends every row, then says so through `finished`; dropping it instead
    /// makes the body break off.
    async fn produce<T>(
        self,
        export: Export<T>,
        started: oneshot::Sender<Result<(), sqlx::Error>>,
        finished: oneshot::Sender<()>,
    ) where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        match self.rows(export, started).await {
            Ok(()) => {
                let _ = finished.send(());
            }
            Err(Ended::Stalled) => tracing::warn!(
                "audit export ended: the client read nothing for {:?}",
                self.stall_timeout
            ),
            Err(Ended::Failed(error)) => tracing::error!(%error, "audit export failed midway"),
            Err(Ended::Refused | Ended::Gone) => {}
        }
    }

    async fn rows<T>(
        &self,
        mut export: Export<T>,
        started: oneshot::Sender<Result<(), sqlx::Error>>,
    ) -> Result<(), Ended>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let mut tx = match crate::db::snapshot(&self.pool).await {
            Ok(tx) => tx,
            Err(error) => return refuse(started, error),
        };
        let mut rows = export.sql.build_query_as::<T>().fetch(&mut *tx);
        let mut next = match rows.try_next().await {
            Ok(first) => first,
            Err(error) => return refuse(started, error),
        };
        started.send(Ok(())).map_err(|_| Ended::Gone)?;
        let mut chunk = export.head.to_vec();
        while let Some(row) = next {
            (export.render)(&row, &mut chunk);
            if chunk.len() >= CHUNK {
                self.send(std::mem::take(&mut chunk)).await?;
            }
            next = rows.try_next().await.map_err(Ended::Failed)?;
        }
        drop(rows);
        // Read only: this only ends the snapshot, before the last chunk
        // waits for the client.
        tx.commit().await.map_err(Ended::Failed)?;
        if !chunk.is_empty() {
            self.send(chunk).await?;
        }
        Ok(())
    }

    async fn send(&self, chunk: Vec<u8>) -> Result<(), Ended> {
        match self
            .chunks
            .send_timeout(chunk.into(), self.stall_timeout)
            .await
        {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(Ended::Stalled),
            Err(SendTimeoutError::Closed(_)) => Err(Ended::Gone),
        }
    }
}

fn refuse(
    started: oneshot::Sender<Result<(), sqlx::Error>>,
    error: sqlx::Error,
) -> Result<(), Ended> {
    let _ = started.send(Err(error));
    Err(Ended::Refused)
}
