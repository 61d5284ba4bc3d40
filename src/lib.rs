//! tidings: notifications that backend apps append with a plain SQL
//! `INSERT`, pushed to browsers over Server-Sent Events, resumable from any
//! position without loss or duplication. The database is the log.
//!
//! How a notification travels, and where each step lives:
//!
//! - [`config`]: the command line (`serve`, `migrate`, `token`, `verify`).
//! - [`embedded`]: the private PostgreSQL cluster used when no
//!   `DATABASE_URL` is given.
//! - [`db`]: the request pool and the migrations in `migrations/` - the
//!   schema, whose triggers assign each event its per-recipient `seq` and
//!   send a NOTIFY hint at commit.
//! - [`listener`]: the single LISTEN session that receives those hints.
//! - [`lease`]: tells the database which recipients have a stream here, so
//!   that appends for everyone else need no hint (and no NOTIFY).
//! - [`hub`]: turns hints into events, fetched once per burst and fanned out
//!   to every open stream of the recipient.
//! - [`events`]: a recipient's log (notifications and read marks) as streams
//!   see it, and the queries that read it.
//! - [`stream`]: `GET /v1/stream`, Server-Sent Events with resume.
//! - [`inbox`]: the notification list, unread count and read marks.
//! - [`publish`]: `POST /v1/notifications` for publishers without SQL access.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`web`]: the browser client `/tidings.js` (with `<tidings-bell>`) and
//!   the demo page `/`, compiled in from `web/`.
//! - [`metrics`]: counters and gauges, and `GET /metrics`.
//! - [`openapi`]: `GET /openapi.json`, generated from the handlers.
//! - [`audit`]: what auditors read: the hash chain's verifier (`tidings
//!   verify`, `/v1/audit/verify`), the event log with its exports
//!   (`/v1/audit/events`) and an inbox as it stood (`/v1/audit/inbox`).
//! - [`auth`]: JWT verification; the only source of a recipient.
//! - [`error`]: the one error type, rendered as RFC 9457 problem JSON.
//! - [`app`]: shared state, the router, and the server's lifecycle.
//! - [`http`]: accepts connections and serves the router on them.

#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod embedded;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod lease;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod publish;
pub mod stream;
pub mod web;
