//! Metrics: what tidings counts, rendered in the Prometheus (OpenMetrics)
//! text format for `GET /metrics` (served by `crate::http::metrics`).
//!
//! The counters live in one [`Metrics`] per server, shared by the parts that
//! move them; each is a single atomic, so counting costs no lock on the hot
//! path. Gauges that describe the database (pool use, NOTIFY queue) are read
//! when scraped. This module must never block delivery: a slow scrape only
//! slows the scrape.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/notifications/{id}/read`), never the raw
    /// path, so ids cannot explode the number of series.
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Every metric tidings keeps. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Streams open right now.
    pub open_streams: Gauge,
    /// Events written to clients, live or from history.
    pub delivered: Counter,
    /// Of those, events read from the table (replay and catch-up).
    pub replayed: Counter,
    /// History reads waiting for or holding a catch-up permit.
    pub catch_up_in_flight: Gauge,
    /// 1 while the LISTEN session is up.
    pub listener_up: Gauge,
    /// LISTEN sessions rebuilt after one was lost.
    pub listener_reconnects: Counter,
    /// Seconds from the oldest hint a fetch answers (hints for recipients with
    /// no stream here are not counted) to its events being handed to streams.
    pub hint_lag: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
    pool_connections: Gauge,
    pool_idle: Gauge,
    notify_queue_usage: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("tidings"),
            open_streams: Gauge::default(),
            delivered: Counter::default(),
            replayed: Counter::default(),
            catch_up_in_flight: Gauge::default(),
            listener_up: Gauge::default(),
            listener_reconnects: Counter::default(),
            hint_lag: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            http_requests: Family::default(),
            pool_connections: Gauge::default(),
            pool_idle: Gauge::default(),
            notify_queue_usage: Gauge::default(),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "open_streams",
            "Streams open now",
            self.open_streams.clone(),
        );
        r.register(
            "events_delivered",
            "Events written to clients",
            self.delivered.clone(),
        );
        r.register(
            "events_replayed",
            "Events written to clients from the table (replay, catch-up)",
            self.replayed.clone(),
        );
        r.register(
            "catch_up_reads_in_flight",
            "History reads waiting for or holding a catch-up permit",
            self.catch_up_in_flight.clone(),
        );
        r.register(
            "listener_up",
            "1 while the LISTEN session is up",
            self.listener_up.clone(),
        );
        r.register(
            "listener_reconnects",
            "LISTEN sessions rebuilt",
            self.listener_reconnects.clone(),
        );
        r.register(
            "hint_to_delivery_seconds",
            "From a NOTIFY hint's arrival to its events reaching the streams",
            self.hint_lag.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            self.http_requests.clone(),
        );
        r.register(
            "db_pool_connections",
            "Open connections in the request pool",
            self.pool_connections.clone(),
        );
        r.register(
            "db_pool_idle_connections",
            "Idle connections in the request pool",
            self.pool_idle.clone(),
        );
        r.register(
            "pg_notification_queue_usage",
            "pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use",
            self.notify_queue_usage.clone(),
        );
    }

    /// The text exposition, with the request pool's gauges and the
    /// database's NOTIFY queue read now.
    pub async fn render(&self, pool: &PgPool) -> String {
        self.pool_connections.set(i64::from(pool.size()));
        self.pool_idle.set(pool.num_idle() as i64);
        let usage = sqlx::query_scalar!(r#"SELECT pg_notification_queue_usage() AS "usage!""#)
            .fetch_one(pool);
        if let Ok(Ok(usage)) = tokio::time::timeout(Duration::from_secs(2), usage).await {
            self.notify_queue_usage.set(usage);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Holds a gauge up for as long as it lives (a stream, a history read).
pub struct Held(Gauge);

impl Held {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
