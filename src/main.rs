//! The `tidings` binary: parses the command line and wires the library's
//! parts together. Nothing here that a test would want to call.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tidings::config::{Cli, Command, DatabaseArgs, LogFormat, ServeArgs, TokenArgs, VerifyArgs};
use tidings::db;
use tidings::delivery::{slots, StreamSettings};
use tidings::embedded::{EmbeddedPostgres, Options};
use tidings::http::auth::Keys;
use tidings::service::{self, Settings};

/// jemalloc, for memory per idle stream: each connection holds two mostly
/// unwritten 8 KiB buffers (hyper's), and how much of them is resident
/// depends on the allocator - about a fifth less than with glibc's malloc,
/// and less than half of mimalloc's (`tidings-bench capacity` at 5e48f4b,
/// 2026-11-21; today's figure is in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Serve(args)) => args.log_format,
        _ => cli.serve.log_format,
    };
    init_logging(log_format);
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Token(args)) => token(args),
        Some(Command::Verify(args)) => verify(args).await,
    }
}

/// `verify`'s exit status (see its `--help`): 0 intact, 1 a broken link,
/// 2 when it could not tell - never 1 for an outage, which a cron job would
/// report as tampering.
mod verify_status {
    pub const INTACT: i32 = 0;
    pub const BROKEN: i32 = 1;
    pub const UNKNOWN: i32 = 2;
}

/// Logs go to stderr; RUST_LOG filters them.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "tidings=info,tower_http=warn,sqlx=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// The database to use: the given URL, or the embedded cluster's
/// superuser's.
fn database(args: &DatabaseArgs) -> Result<(String, Option<EmbeddedPostgres>)> {
    if let Some(url) = &args.database_url {
        return Ok((url.clone(), None));
    }
    let cluster = EmbeddedPostgres::start(&args.data_dir, &Options::default())
        .context("starting the embedded PostgreSQL")?;
    tracing::info!(
        url = cluster.url(),
        "embedded PostgreSQL is up (psql \"$(cat {}/DATABASE_URL)\")",
        args.data_dir.display()
    );
    Ok((cluster.url().to_owned(), Some(cluster)))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let (url, cluster) = tokio::task::block_in_place(|| database(&args.database))?;
    // The embedded cluster's superuser migrates; its service login serves.
    let (url, migration_url) = match &cluster {
        Some(cluster) => (cluster.service_url(), Some(url)),
        None => (url, args.migration_database_url.clone()),
    };
    // Before "serving on": a URL that cannot work must not look like a start.
    let database = db::options(&url, "tidings").context("parsing the database URL")?;
    let migration_database = migration_url
        .map(|url| db::options(&url, "tidings-migrate"))
        .transpose()
        .context("parsing the migration database URL")?;
    let (jwt_secret, demo_token) = jwt_secret(&args)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!("serving on http://{address}");
    if let Some(token) = demo_token {
        log_demo_links(address, &token);
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let settings = Settings {
        database,
        migration_database,
        pool_size: args.database.db_pool_size,
        jwt_secret,
        streams: StreamSettings {
            heartbeat: args.heartbeat,
            retry: args.retry,
            max_per_recipient: args.max_streams_per_recipient,
            max_streams: max_streams(&args),
        },
        listener_check: args.listener_check,
        sweep_interval: args.sweep_interval,
        hint_lease: args.hint_lease,
        catch_up_concurrency: args.catch_up_concurrency,
        max_request_head: args.max_request_head as usize,
        header_read_timeout: args.header_read_timeout,
        export_stall_timeout: args.export_stall_timeout,
        cors_origins: args.cors_origins.clone(),
        demo_mode: args.jwt_secret.is_none(),
    };
    let served = service::serve(settings, listener, shutdown).await;
    stop_after(cluster, served.map_err(anyhow::Error::from))?;
    tracing::info!("stopped");
    Ok(())
}

/// `--max-streams`, or the default derived from the open-file limit,
/// raised to the hard limit first (`slots::max_streams_for` says how),
/// logged either way: it is the most streams this instance will serve.
fn max_streams(args: &ServeArgs) -> usize {
    let open_files = slots::raise_open_files_limit();
    if let Some(max) = args.max_streams {
        tracing::info!(
            max_streams = max,
            "streams this instance serves at most (0: no limit)"
        );
        return max;
    }
    let Some(open_files) = open_files else {
        tracing::warn!("cannot read the open-file limit: streams are not limited (--max-streams)");
        return 0;
    };
    let max = slots::max_streams_for(open_files, args.database.db_pool_size);
    tracing::info!(
        max_streams = max,
        open_files,
        "streams this instance serves at most, from the open-file limit (0: no limit)"
    );
    max
}

/// The configured secret, or the demo secret kept in the data directory
/// plus a demo token that may also publish, for the demo page's form.
fn jwt_secret(args: &ServeArgs) -> Result<(Vec<u8>, Option<String>)> {
    if let Some(secret) = &args.jwt_secret {
        return Ok((secret.as_bytes().to_vec(), None));
    }
    let data_dir = &args.database.data_dir;
    let secret = tidings::demo::secret(data_dir).context("the demo secret")?;
    let token = tidings::demo::token(&secret)?;
    tracing::warn!(
        "no --jwt-secret / TIDINGS_JWT_SECRET given: demo mode, signing with the secret kept \
         in {}/demo_jwt_secret",
        data_dir.display()
    );
    Ok((secret, Some(token)))
}

/// The demo links, with the address actually bound (`--listen` may say
/// port 0), and a name a browser can open when it is a wildcard address.
fn log_demo_links(address: SocketAddr, token: &str) {
    let host = if address.ip().is_unspecified() {
        format!("localhost:{}", address.port())
    } else {
        address.to_string()
    };
    tracing::info!(
        "demo recipient `demo`: open http://{host}/?access_token={token} or stream with: curl -N 'http://{host}/v1/stream?access_token={token}'"
    );
}

/// The first SIGINT or SIGTERM starts a graceful shutdown (up to 30 s of
/// draining, then stopping the embedded cluster); a second one, a second
/// or more later, exits at once with status 130. Once tokio watches a
/// signal its default action (death) is gone for good, so without this a
/// second Ctrl-C did nothing.
/// Exiting mid-stop leaves nothing running: the embedded cluster's watchdog
/// (`embedded::spawn_watchdog`) sees its pipe close when this process ends,
/// however it ends, and stops PostgreSQL (SIGINT: a fast shutdown).
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGINT and SIGTERM");
            return;
        }
    };
    signals.next().await;
    tracing::info!("shutting down: ending streams, then stopping (signal again to exit now)");
    shutdown.cancel();
    // One Ctrl-C can arrive twice (from the terminal to the process group
    // and again from a wrapper such as foreman); that is still one request.
    let first = tokio::time::Instant::now();
    loop {
        signals.next().await;
        if first.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    tracing::warn!("second signal: exiting without waiting for the shutdown to finish");
    std::process::exit(130);
}

/// SIGINT and SIGTERM, as one stream of "a signal came".
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn migrate(args: DatabaseArgs) -> Result<()> {
    let (url, cluster) = tokio::task::block_in_place(|| database(&args))?;
    let pool = db::pool(db::options(&url, "tidings-migrate")?, 1);
    let migrated = db::migrate(&pool).await.context("applying migrations");
    pool.close().await;
    stop_after(cluster, migrated)?;
    println!("migrations applied");
    Ok(())
}

/// Exits with a [`verify_status`]: the verdict (the broken link on stdout),
/// or 2 with the error on stderr when there is no verdict.
async fn verify(args: VerifyArgs) -> Result<()> {
    let status = match verdict(args).await {
        Ok(true) => verify_status::INTACT,
        Ok(false) => verify_status::BROKEN,
        Err(error) => {
            eprintln!("Error: {error:?}");
            verify_status::UNKNOWN
        }
    };
    std::process::exit(status);
}

/// Whether every chain asked about is intact.
async fn verdict(args: VerifyArgs) -> Result<bool> {
    let (url, cluster) = tokio::task::block_in_place(|| database(&args.database))?;
    let pool = db::pool(db::options(&url, "tidings-verify")?, 1);
    let recipient = args.recipient.as_deref();
    let outcome = if args.heads {
        tidings::audit::heads(&pool, recipient).await.map(|heads| {
            let lines = heads
                .iter()
                .map(|head| format!("{}\t{}\t{}", head.recipient, head.seq, head.hash));
            (print_lines(lines), true)
        })
    } else {
        tidings::audit::verify(&pool, recipient)
            .await
            .map(|verdict| {
                let json = serde_json::to_string_pretty(&verdict).unwrap_or_default();
                (print_lines(std::iter::once(json)), verdict.ok)
            })
    };
    pool.close().await;
    let (printed, intact) = stop_after(cluster, outcome.context("reading the history"))?;
    printed.context("writing the verdict")?;
    Ok(intact)
}

/// Writes `lines` to stdout. A reader that stopped early (`verify --heads
/// | head -1`) ends the output, not the command: the verdict stands.
fn print_lines(lines: impl Iterator<Item = String>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        match writeln!(out, "{line}") {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            written => written?,
        }
    }
    match out.flush() {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        flushed => flushed,
    }
}

/// Stops the embedded cluster, if there is one, once a command is done. A
/// failed stop is reported, but never in place of the error that ended the
/// command: that one says what went wrong first.
fn stop_after<T>(cluster: Option<EmbeddedPostgres>, outcome: Result<T>) -> Result<T> {
    let Some(cluster) = cluster else {
        return outcome;
    };
    match (tokio::task::block_in_place(|| cluster.stop()), outcome) {
        (Ok(()), outcome) => outcome,
        (Err(stop), Ok(_)) => Err(stop).context("stopping the embedded PostgreSQL"),
        (Err(stop), Err(failed)) => {
            tracing::error!(error = %stop, "stopping the embedded PostgreSQL failed too");
            Err(failed)
        }
    }
}

fn token(args: TokenArgs) -> Result<()> {
    let token = Keys::new(args.jwt_secret.as_bytes()).issue(&args.sub, &args.roles, args.ttl)?;
    println!("{token}");
    Ok(())
}
