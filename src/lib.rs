//! tidings: notifications that backend apps append with a plain SQL
//! `INSERT`, pushed to browsers over Server-Sent Events, resumable from any
//! position without loss or duplication. The database is the log.
//!
//! How a notification travels, and where each step lives:
//!
//! - [`config`]: the command line (`serve`, `migrate`, `token`, `verify`).
//! - [`embedded`]: the private PostgreSQL cluster used when no
//!   `DATABASE_URL` is given.
//! - [`db`]: the connections - the request pool, the hub's own connection
//!   (with generic plans) and read-only snapshot transactions
//!   ([`db::snapshot`]) - and the migrations in `migrations/`: the schema,
//!   whose triggers assign each event its per-recipient `seq` and, for a
//!   recipient with a hint lease (invariant I7), send a NOTIFY hint
//!   at commit.
//! - [`listener`]: the process's one LISTEN session, which receives those
//!   hints and checks that they still arrive.
//! - [`lease`]: takes and renews the hint leases of the recipients streamed
//!   here, so that appends for recipients nobody streams send no NOTIFY.
//! - [`hub`]: turns hints into events, fetched once per burst and fanned out
//!   to every open stream of the recipient.
//! - [`events`]: a recipient's log (notifications and read marks) as streams
//!   see it, and the queries that read it.
//! - [`stream`]: `GET /v1/stream`, Server-Sent Events with resume.
//! - [`inbox`]: the notification list, unread count and read marks.
//! - [`publish`]: `POST /v1/notifications` for publishers without SQL access.
//! - [`payload`]: a payload's size as PostgreSQL prints it (invariant I10),
//!   computed from the request's JSON so `publish` can refuse it first.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`web`]: the browser client `/tidings.js` (with `<tidings-bell>`) and
//!   the demo page `/` with its script `/demo.js`, compiled in from `web/`.
//! - [`metrics`]: counters, gauges and histograms, and `GET /metrics`.
//! - [`openapi`]: `GET /openapi.json`, generated from the handlers.
//! - [`audit`]: what auditors read: the hash chain's verifier (`tidings
//!   verify`, `/v1/audit/verify`), the event log with its exports
//!   (`/v1/audit/events`) and an inbox as it stood (`/v1/audit/inbox`).
//! - [`auth`]: JWT verification; the caller's own recipient comes only from
//!   the token's `sub`, and other recipients are named only to endpoints
//!   gated by a role (`publisher`, `auditor`).
//! - [`error`]: the one error type, rendered as RFC 9457 problem JSON, and
//!   the extractors that turn bad input into it.
//! - [`app`]: shared state, the router, and the server's lifecycle with its
//!   background tasks (hub fetcher, LISTEN session, lease renewal, sweep).
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
pub mod payload;
pub mod publish;
pub mod stream;
pub mod web;
