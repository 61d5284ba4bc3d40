//! Config: the command line. One clap struct per subcommand; every flag can
//! also be set from the environment variable named in `--help`, and the doc
//! comments below *are* that help text.
//!
//! Owns parsing, defaults and the checks a value can fail on its own (a
//! secret too short to sign with, an origin no browser would send), so a bad
//! setting stops tidings before it serves anything. It must never open files
//! or connections.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// tidings: notifications your app INSERTs with SQL, delivered to browsers
/// over Server-Sent Events, resumable without loss.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options for `serve`, which is also what a bare `tidings` runs.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print a signed JWT for a recipient, e.g. to try the API with curl.
    Token(TokenArgs),
    /// Walk the history's hash chains; exit 1 naming the first broken link.
    #[command(after_help = VERIFY_EXIT_STATUS)]
    Verify(VerifyArgs),
}

/// `verify`'s exit statuses, so that a cron job tells a tampered history
/// from a database it could not reach.
const VERIFY_EXIT_STATUS: &str = concat!(
    "Exit status: 0 every chain is intact; 1 a broken link was found (named on stdout); ",
    "2 the history could not be verified (bad arguments, database unreachable, data ",
    "directory in use, ...)."
);

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL. Without it, tidings runs a private
    /// PostgreSQL cluster from the installed server binaries, kept in
    /// --data-dir and reachable only through a Unix socket there. Set but
    /// empty is an error, not the embedded cluster.
    #[arg(long, env = "DATABASE_URL", value_parser = database_url)]
    pub database_url: Option<String>,

    /// Where the embedded cluster keeps its data (used only without
    /// --database-url). Its URL is written to <data-dir>/DATABASE_URL.
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = ".tidings")]
    pub data_dir: PathBuf,

    /// Most database connections tidings opens for queries: one is the
    /// hub's (it fetches new events for all streams), the rest serve
    /// requests. The LISTEN connection comes on top of these. At least 2.
    /// (`migrate` and `verify` use a single connection.)
    #[arg(long, env = "TIDINGS_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub db_pool_size: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// PostgreSQL connection URL of the role that owns tidings' schema,
    /// used only to migrate at start; the service then runs as the
    /// --database-url role, which needs no more than `tidings_service`
    /// (docs/deployment.md). Without it, --database-url's role migrates,
    /// or, if it may not, finds the schema current (`tidings migrate`
    /// applied it) or stops saying so. The embedded cluster sets both.
    #[arg(long, env = "TIDINGS_MIGRATION_DATABASE_URL", value_parser = database_url,
          hide_env_values = true)]
    pub migration_database_url: Option<String>,

    /// Address and port to serve HTTP on.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HS256 secret that verifies client tokens, at least 32 bytes (make one
    /// with `openssl rand -hex 32`). Without it tidings runs in demo mode:
    /// a random secret made once and kept in <data-dir>/demo_jwt_secret
    /// (readable by its owner only), and a demo URL with a token logged.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true, value_parser = Hs256Secret)]
    pub jwt_secret: Option<String>,

    /// How often an idle stream gets a comment line, so proxies keep it open.
    /// Between 1ms and 24h.
    #[arg(long, env = "TIDINGS_HEARTBEAT", default_value = "15s", value_parser = interval)]
    pub heartbeat: Duration,

    /// The reconnect delay suggested to browsers in the stream's `retry:` field.
    #[arg(long, env = "TIDINGS_RETRY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry: Duration,

    /// How often the service checks, through the LISTEN connection itself,
    /// that hints still arrive; a check unanswered for this long again makes
    /// it rebuild the connection (and catch every stream up from the table).
    /// Between 1ms and 24h.
    #[arg(long, env = "TIDINGS_LISTENER_CHECK", default_value = "5s", value_parser = interval)]
    pub listener_check: Duration,

    /// How often every recipient with an open stream is compared with the
    /// table even without a hint: the bound on delivery delay should a hint
    /// ever be lost. Between 1ms and 24h.
    #[arg(long, env = "TIDINGS_SWEEP_INTERVAL", default_value = "30s", value_parser = interval)]
    pub sweep_interval: Duration,

    /// How long a hint lease lasts: while a stream is open here, appends
    /// for its recipient NOTIFY this service, and the lease is renewed
    /// every third of this; appends for anyone else commit without NOTIFY.
    /// A lease left by a stopped instance lapses after this long. Between
    /// 1s and 24h.
    #[arg(long, env = "TIDINGS_HINT_LEASE", default_value = "5m", value_parser = lease_length)]
    pub hint_lease: Duration,

    /// Most streams reading history (replay or catch-up) from the database at
    /// once; the rest wait their turn, so a reconnect storm cannot take every
    /// pool connection.
    #[arg(long, env = "TIDINGS_CATCH_UP_CONCURRENCY", default_value_t = 8)]
    pub catch_up_concurrency: usize,

    /// Most streams one recipient may hold open on this instance; one more
    /// gets 429 Too Many Requests. 0 means no limit.
    #[arg(long, env = "TIDINGS_MAX_STREAMS_PER_RECIPIENT", default_value_t = 32)]
    pub max_streams_per_recipient: usize,

    /// Most streams this instance serves at once; one more gets 503 with
    /// Retry-After, before the process runs out of file descriptors (each
    /// stream holds a connection, and with it a descriptor). 0 means no
    /// limit. Default: derived from the open-file soft limit (ulimit -n)
    /// at start. From that limit come the database pool (--db-pool-size),
    /// the LISTEN connection and 64 for the process's own files (standard
    /// streams, the listening socket, the runtime's, the embedded
    /// cluster's pipe and log); of the rest, streams get fifteen
    /// sixteenths, and a sixteenth stays for other requests and idle
    /// keep-alive connections. A limit of 1024 and the default pool give
    /// (1024 - 16 - 1 - 64) * 15/16 = 885 streams; 65536 give 61365.
    /// Raise the open-file limit (LimitNOFILE= in systemd, ulimits in
    /// compose) to serve more.
    #[arg(long, env = "TIDINGS_MAX_STREAMS")]
    pub max_streams: Option<usize>,

    /// Largest request head accepted (request line and headers, cookies
    /// included), in bytes; a larger one gets 431. It is also the size of
    /// every connection's read buffer, held as long as a stream is open:
    /// 16384 cost about 2.5 KiB more per idle stream than the default,
    /// hyper's minimum (BENCHMARKS.md has what an idle stream costs). Raise
    /// it if the pages that use tidings send big cookies.
    #[arg(long, env = "TIDINGS_MAX_REQUEST_HEAD", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(8192..=1_048_576))]
    pub max_request_head: u32,

    /// How long a client may take to send a request head (from connecting,
    /// or from its previous response), which is also how long an idle
    /// keep-alive connection stays open. An answered stream never times
    /// out. Keep a proxy's idle timeout for upstream connections below it.
    #[arg(long, env = "TIDINGS_HEADER_READ_TIMEOUT", default_value = "75s", value_parser = interval)]
    pub header_read_timeout: Duration,

    /// How long an audit export (NDJSON, CSV) waits for a client that reads
    /// nothing before it ends the export and frees its database connection.
    #[arg(long, env = "TIDINGS_EXPORT_STALL_TIMEOUT", default_value = "30s", value_parser = interval)]
    pub export_stall_timeout: Duration,

    /// Log format: `text` for people, `json` (one object per line) for log
    /// pipelines. Filter with RUST_LOG, e.g. RUST_LOG=tidings=debug.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Browser origins (e.g. https://app.example.com) allowed to call the API
    /// from another site, cookies included; their pages may also mark read
    /// and publish with the tidings_token cookie, which other sites' pages
    /// may not (403). Comma-separated; none by default.
    /// Each is scheme://host[:port] as a browser sends it: lower case, no
    /// path, not even a trailing slash, no default port. `*` is refused:
    /// with cookies allowed, list the origins instead.
    #[arg(
        long = "cors-origin",
        env = "TIDINGS_CORS_ORIGINS",
        value_delimiter = ',',
        value_parser = cors_origin
    )]
    pub cors_origins: Vec<HeaderValue>,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Only this recipient's chain (default: every recipient's).
    #[arg(long, env = "TIDINGS_VERIFY_RECIPIENT")]
    pub recipient: Option<String>,

    /// Print each recipient's newest link (recipient, seq, hash) instead, to
    /// keep somewhere the database cannot reach: a chain rewritten from some
    /// event to its end verifies again, but ends in a different head.
    #[arg(long, env = "TIDINGS_VERIFY_HEADS", value_parser = clap::builder::BoolishValueParser::new())]
    pub heads: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The recipient the token speaks for (its `sub` claim).
    #[arg(long, env = "TIDINGS_TOKEN_SUB")]
    pub sub: String,

    /// Extra roles: `publisher` may POST notifications, `auditor` may read
    /// the audit API. Repeat for several (comma-separated in the variable).
    #[arg(
        long = "role",
        env = "TIDINGS_TOKEN_ROLES",
        value_enum,
        value_delimiter = ','
    )]
    pub roles: Vec<Role>,

    /// How long the token is valid, e.g. 15m, 1h, 7d.
    #[arg(long, env = "TIDINGS_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// HS256 secret to sign with; must match the service's (at least 32
    /// bytes).
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true, value_parser = Hs256Secret)]
    pub jwt_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a token may do beyond reading its own recipient's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Publisher,
    Auditor,
}

/// `--heartbeat`, `--listener-check`, `--sweep-interval`: a duration from
/// 1ms to 24h. Timers tick at millisecond resolution, so anything shorter
/// would spin (zero makes tokio's `interval` panic); anything much longer
/// overflows clock arithmetic and panics, and means "never" in all but name.
fn interval(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_millis(1)..=DAY, "1ms and 24h")
}

/// `--hint-lease`: a duration from 1s to 24h. Shorter would renew as busy
/// work; longer leaves a stopped instance's leases NOTIFYing for a day,
/// and overflows clock arithmetic long before the database objects.
fn lease_length(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1)..=DAY, "1s and 24h")
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn duration_within(
    text: &str,
    allowed: RangeInclusive<Duration>,
    bounds: &str,
) -> Result<Duration, String> {
    let length = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if allowed.contains(&length) {
        Ok(length)
    } else {
        Err(format!("must be between {bounds}"))
    }
}

/// `--jwt-secret`: at least 32 bytes. RFC 7518 section 3.2 requires an HS256
/// key of at least 256 bits, and jsonwebtoken accepts any length - even an
/// empty secret (`TIDINGS_JWT_SECRET=` reaches here as ""), with which
/// anyone could sign a publisher or auditor token. A parser of its own,
/// not a function: clap quotes a value a function refuses in its error,
/// and a secret must not reach the logs, even a refused one.
#[derive(Clone)]
struct Hs256Secret;

impl clap::builder::TypedValueParser for Hs256Secret {
    type Value = String;

    fn parse_ref(
        &self,
        _: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let refuse = |why: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, why);
        let text = value
            .to_str()
            .ok_or_else(|| refuse("the value for '--jwt-secret' is not UTF-8\n".into()))?;
        if text.len() >= MIN_SECRET_BYTES {
            return Ok(text.to_owned());
        }
        Err(refuse(format!(
            "the value for '--jwt-secret' (TIDINGS_JWT_SECRET) is {} bytes; HS256 needs at least \
             {MIN_SECRET_BYTES} (256 bits, RFC 7518 section 3.2), or anyone can guess it and sign \
             tokens. Make one with `openssl rand -hex 32`\n",
            text.len()
        )))
    }
}

const MIN_SECRET_BYTES: usize = 32;

/// `--database-url` / `DATABASE_URL`: set means a server; set but empty (a
/// blank line in an env file) would otherwise fail only after tidings said
/// it was serving. Unset is the embedded cluster.
fn database_url(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "DATABASE_URL is set but empty: give a postgres:// URL, or unset \
                    DATABASE_URL to run the embedded PostgreSQL"
                .into(),
        );
    }
    Ok(text.to_owned())
}

/// `--cors-origin`: one origin exactly as a browser sends it in `Origin`
/// (tower-http compares bytes), so a stray space, slash or capital can not
/// leave a site silently refused. `*` is refused here because tower-http
/// panics on it when cookies are allowed.
fn cors_origin(text: &str) -> Result<HeaderValue, String> {
    let origin = text.trim();
    if origin.is_empty() {
        return Err(
            "an empty origin (a stray comma, or TIDINGS_CORS_ORIGINS set but empty); \
                    leave it unset to allow no other origin"
                .into(),
        );
    }
    if origin == "*" {
        return Err(
            "`*` cannot be used: credentials (cookies) are allowed, so list the \
                    origins instead, e.g. https://app.example.com,https://admin.example.com"
                .into(),
        );
    }
    if let Some(problem) = origin_problem(origin) {
        return Err(problem);
    }
    HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} is not a valid header value"))
}

/// Why `origin` is not exactly what a browser sends for it: the URL
/// standard's serialization of the origin (lower case, punycode, no default
/// port, no path - not even a trailing slash), which the `url` crate
/// implements, so the answer can name the form that would match.
fn origin_problem(origin: &str) -> Option<String> {
    let expected = "expected scheme://host[:port], e.g. https://app.example.com";
    let Ok(url) = url::Url::parse(origin) else {
        return Some(format!("{origin:?} is not a URL; {expected}"));
    };
    let sent = url.origin().ascii_serialization();
    if sent == "null" {
        return Some(format!(
            "{origin:?} has no origin a browser would send; {expected}"
        ));
    }
    (sent != origin).then(|| format!("browsers send {origin:?} as {sent:?}; list that instead"))
}

#[cfg(test)]
mod tests {
    use super::cors_origin;

    #[test]
    fn origins_are_taken_exactly_as_browsers_send_them() {
        for origin in [
            "http://localhost:3000",
            "https://app.example.com",
            "http://[::1]:8080",
            "http://my_app.localhost:3000",
            "https://xn--bcher-kva.example",
        ] {
            assert!(cors_origin(origin).is_ok(), "{origin} refused");
        }
        for (origin, sent) in [
            ("https://app.example.com/", "\"https://app.example.com\""),
            ("https://App.example.com", "\"https://app.example.com\""),
            ("https://app.example.com:443", "\"https://app.example.com\""),
            (
                "https://bücher.example",
                "\"https://xn--bcher-kva.example\"",
            ),
            ("http://localhost:03000", "\"http://localhost:3000\""),
        ] {
            let problem = cors_origin(origin).expect_err(origin);
            assert!(problem.contains(sent), "{origin}: {problem}");
        }
    }
}
