//! The delivery core: how a committed row reaches every open stream of its
//! recipient, exactly once and in order. It knows nothing of HTTP; the
//! HTTP side (`crate::http`) calls into it, never the other way round.
//!
//! - [`listener`]: the process's one LISTEN session, which receives the
//!   triggers' hints and checks that they still arrive.
//! - [`lease`]: the hint leases, so that appends for recipients nobody
//!   streams send no NOTIFY.
//! - [`hub`]: turns hints into events, fetched once per burst and fanned
//!   out to every open stream of the recipient.
//! - [`events`]: a recipient's log as streams see it, and the SQL that
//!   reads it.
//! - [`stream`]: one stream's life: where it resumes, catching up from the
//!   table, then following the hub.
//! - [`slots`]: how many streams this instance, and each recipient, holds
//!   open here.
//!
//! It must never wait for a client: a slow reader slows only itself.

pub mod events;
pub mod hub;
pub mod lease;
pub mod listener;
pub mod slots;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use hub::Hub;
use lease::Leases;
use listener::Health;
use slots::StreamSlots;

/// What every stream shares. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    /// The request pool: a stream borrows a connection per page of history
    /// and for its lease, never for its lifetime.
    pub pool: PgPool,
    /// Live events per recipient.
    pub hub: Hub,
    /// Hint leases: a stream's recipient gets one before its position read.
    pub leases: Leases,
    /// Whether hints are flowing, for the readiness probe.
    pub health: Health,
    /// Moved by the hub, the listener and the streams.
    pub metrics: Arc<Metrics>,
    /// How streams are paced and limited; the same for every stream.
    pub streams: StreamSettings,
    /// Bounds how many streams read history at once, so a reconnect storm
    /// queues here instead of taking every pool connection.
    pub catch_up: Arc<Semaphore>,
    /// Open streams, in all and per recipient, for
    /// [`StreamSettings::max_streams`] and
    /// [`StreamSettings::max_per_recipient`].
    pub slots: StreamSlots,
    /// Cancelled on shutdown: streams end so the server can drain.
    pub shutdown: CancellationToken,
}

/// What every stream is told or held to (`--heartbeat`, `--retry`,
/// `--max-streams-per-recipient`, `--max-streams`).
#[derive(Clone, Copy)]
pub struct StreamSettings {
    /// How often an idle stream gets a comment line, so that proxies and
    /// load balancers do not close it as idle.
    pub heartbeat: Duration,
    /// The reconnect delay sent in the stream's `retry:` field: how soon a
    /// browser comes back after a stream ends (a restart, say).
    pub retry: Duration,
    /// Streams one recipient may hold open here; 0 = no limit.
    pub max_per_recipient: usize,
    /// Streams this instance serves at once, so that they never take the
    /// file descriptors everything else needs; 0 = no limit.
    pub max_streams: usize,
}

impl StreamSettings {
    /// The limits a new stream must fit in.
    pub fn limits(&self) -> slots::Limits {
        slots::Limits {
            per_recipient: self.max_per_recipient,
            instance: self.max_streams,
        }
    }
}
