//! tidings' integration tests: one binary (one link), a module per
//! capability. Every test talks to a real PostgreSQL and a real HTTP server;
//! see `helpers` for how they are made. The tools' own tests (the load
//! tool's smoke test, the fault tests that run the delivery verifier) are
//! in their crates under tools/.

mod helpers;

mod audit;
mod audit_log;

mod auth_tokens;
mod bad_input;
mod browser;
mod cli;
mod contract;
mod cookie_writes;
mod cors;
mod csv_injection;
mod delivery;
mod examples;
mod hints;
mod http_errors;
mod inbox;
mod isolation;
mod listener;
mod log;
mod metrics;
mod openapi;
mod payloads;
mod pgbouncer;
mod pressure;
mod properties;
mod proxies;
mod readiness;
mod refused_input;
mod resume;
mod service_role;
mod shutdown;
mod slow_client;
mod startup;
mod stream_limits;
mod tls;
mod token_times;
mod writer_role;
mod writers;
