//! tidings: notifications that backend apps append with a plain SQL
//! `INSERT`, pushed to browsers over Server-Sent Events, resumable from any
//! position without loss or duplication. The database is the log.
//!
//! How a notification travels, and where each step lives:
//!
//! 1. An app inserts a row. The schema (`migrations/`) gives it its
//!    recipient's next `seq`, links it into the recipient's hash chain and,
//!    if some instance streams that recipient, sends a NOTIFY hint at
//!    commit.
//! 2. [`delivery`], the core, knows nothing of HTTP:
//!    [`delivery::listener`] holds the one LISTEN session;
//!    [`delivery::hub`] turns hints into events, fetched once per burst
//!    and fanned out to every open stream of the recipient;
//!    [`delivery::stream`] is one stream's life - where it resumes
//!    ([`delivery::stream::Cursor`]), the missed rows read from the table
//!    ([`delivery::events`] holds that SQL), then live events;
//!    [`delivery::lease`] keeps hints flowing only for recipients someone
//!    streams.
//! 3. [`http`] is the surface: the state and router, the server, auth,
//!    errors as problem JSON, and one module per endpoint group (stream,
//!    inbox, publish, health, metrics, openapi, web).
//! 4. [`audit`] is what auditors read: the hash chain's verifier, the event
//!    log with its exports, and an inbox as it stood at any moment.
//!
//! Around them: [`config`] (the command line), [`embedded`] (the private
//! PostgreSQL used when no `DATABASE_URL` is given), [`db`] (connections
//! and migrations), [`demo`] (the secret kept for a start without one),
//! [`metrics`] (what is counted) and [`service`] (start-up, background
//! tasks, shutdown).

#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod db;
pub mod delivery;
pub mod demo;
pub mod embedded;
pub mod http;
pub mod metrics;
pub mod service;
