//! Test harness: a real PostgreSQL (a throwaway embedded cluster, or the one
//! `DATABASE_URL` names), a fresh database per test, and a real tidings
//! server on a random port. One module per concern:
//!
//! - [`cluster`]: the suite's PostgreSQL, a fresh database per test, and
//!   what tests watch in the database;
//! - [`app`]: tidings served in the test process ([`app::spawn_app`]);
//! - [`binary`]: the `tidings` binary as a child process, its log and memory;
//! - [`sse`]: streams, read with the reader the tools share (tidings-sse);
//! - [`checks`]: small checks of responses, and of the runtimes tests drive;
//! - [`components`]: real PgBouncer, nginx and Caddy processes, started and
//!   ended by a test; [`pgbouncer`] and [`proxies`] configure them.

pub mod app;
pub mod binary;
pub mod checks;
pub mod cluster;
pub mod components;
pub mod pgbouncer;
pub mod proxies;
pub mod sse;

/// The JWT secret of every server the tests start.
pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
