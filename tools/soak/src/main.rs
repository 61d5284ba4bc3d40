//! tidings-soak: the delivery verifier. It runs real tidings processes over a
//! real PostgreSQL for a while, with writers, misbehaving clients and faults
//! on a schedule, then compares what every client received with the table:
//!
//! ```text
//! delivered  lost  duplicated  out-of-order  rolled-back-seen
//! ```
//!
//! Exit status 0 only if every error count is zero, no client ever got a
//! non-200 answer, and every client caught up in the end.
//!
//! Faults (`--faults`, comma-separated, or `all`): `listener-kill` (the
//! LISTEN backend is terminated), `half-open` (the LISTEN connection
//! silently drops all traffic), `pg-restart-fast`, `pg-restart-immediate`,
//! `kill-tidings` (SIGKILL, then restart), `rolling-restart` (SIGTERM each
//! instance in turn), `lost-hints` (hints are switched off at the source,
//! `tidings.set_hints(false)`, for a while). Client connections are cut at
//! random points throughout. Each requested fault is injected at least
//! `--each-fault-at-least` times, even if that takes past `--duration`.
//!
//! `--through-pgbouncer` puts PgBouncer (session mode, stock settings)
//! between tidings and PostgreSQL; `--through-nginx` puts nginx, with the
//! file docs/deployment.md shows, between the clients and the instances
//! (then every client reconnects through it, and restarts meet its answer
//! for a tidings that is down).

mod client;
mod components;
mod fleet;
mod proxy;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;

use client::{Client, ClientLog};
use fleet::Instance;
use tidings::embedded::{EmbeddedPostgres, Options, Shutdown};
use writer::WriterStats;

const SECRET: &str = "soak-secret-soak-secret-soak-secret";

/// Runs tidings under faults and checks that every committed row reached
/// every client exactly once, in order.
#[derive(Debug, Parser)]
#[command(name = "tidings-soak")]
struct Args {
    /// How long to write and inject faults (then clients get a final catch-up).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent writer connections.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Pause between one writer's transactions.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    writer_pause: Duration,
    /// Distinct recipients.
    #[arg(long, default_value_t = 6, value_parser = at_least_one)]
    recipients: usize,
    /// Stream clients per recipient.
    #[arg(long, default_value_t = 3)]
    clients_per_recipient: usize,
    /// tidings processes sharing the database.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    instances: usize,
    /// Faults to inject, in turn: comma-separated, or `all`, or `none`.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    faults: Vec<String>,
    /// Time between faults.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// Each requested fault is injected at least this often before the run
    /// ends, however long that takes past `--duration`: a slow restart must
    /// not push a requested fault out of the run.
    #[arg(long, default_value_t = 1)]
    each_fault_at_least: usize,
    /// The tidings binary (default: next to this one).
    #[arg(long)]
    tidings: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run tidings through PgBouncer in session mode (needs `pgbouncer`).
    #[arg(long)]
    through_pgbouncer: bool,
    /// Have clients reach tidings through nginx, configured as
    /// docs/deployment.md shows (needs `nginx`).
    #[arg(long)]
    through_nginx: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Fault {
    ListenerKill,
    HalfOpen,
    PgRestartFast,
    PgRestartImmediate,
    KillTidings,
    RollingRestart,
    LostHints,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    seconds: f64,
    instances: usize,
    /// What stood between: `pgbouncer`, `nginx`.
    through: Vec<&'static str>,
    clients: usize,
    faults_injected: BTreeMap<String, u64>,
    transactions_committed: u64,
    transactions_rolled_back: u64,
    transactions_failed: u64,
    events_in_table: u64,
    connections: u64,
    cuts: u64,
    non_200: u64,
    resets: u64,
    clients_not_caught_up: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    rolled_back_seen: u64,
}

impl Report {
    fn ok(&self) -> bool {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.rolled_back_seen
            + self.non_200
            + self.resets
            + self.clients_not_caught_up
            == 0
            && self.delivered > 0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let faults = parse_faults(&args.faults)?;
    let report = soak(&args, &faults).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

fn parse_faults(names: &[String]) -> Result<Vec<Fault>> {
    if names.iter().any(|n| n == "all") {
        return Ok(Fault::value_variants().to_vec());
    }
    names
        .iter()
        .filter(|n| !n.is_empty() && *n != "none")
        .map(|n| Fault::from_str(n, true).map_err(|e| anyhow::anyhow!("unknown fault {n:?}: {e}")))
        .collect()
}

/// Everything the run shares.
struct Rig {
    cluster: Arc<Mutex<EmbeddedPostgres>>,
    /// Direct to PostgreSQL (not through the proxy): for faults and checks.
    admin: PgPool,
    proxy: proxy::Proxy,
    fleet: Vec<tokio::sync::Mutex<Instance>>,
    /// Where clients connect, in turn: each instance (fixed for the whole
    /// run, read without locking instances that faults may hold), or
    /// nginx in front of them all.
    addresses: Vec<String>,
    /// PgBouncer and nginx, when the run goes through them.
    _components: Vec<components::Component>,
}

async fn soak(args: &Args, faults: &[Fault]) -> Result<Report> {
    let started = Instant::now();
    let data_dir =
        std::env::temp_dir().join(format!("tidings-soak-{}", uuid::Uuid::new_v4().simple()));
    let rig = Arc::new(build_rig(args, &data_dir).await?);
    let recipients: Arc<Vec<String>> =
        Arc::new((0..args.recipients).map(|r| format!("soak-{r}")).collect());

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WriterStats::default());
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let pool = sqlx_pool(&rig.admin);
            tokio::spawn(writer::run(
                w,
                pool,
                recipients.clone(),
                stop.clone(),
                stats.clone(),
                args.writer_pause,
            ))
        })
        .collect();
    let (finish_tx, finish_rx) = tokio::sync::watch::channel(None);
    let clients = spawn_clients(args, &rig, &recipients, finish_rx);
    let injected = Arc::new(Mutex::new(BTreeMap::new()));
    let schedule = Schedule {
        faults: faults.to_vec(),
        every: args.fault_every,
        rounds: faults.len() * args.each_fault_at_least,
        done: Arc::new(AtomicBool::new(false)),
    };
    let done = schedule.done.clone();
    let fault_task = tokio::spawn(inject_faults(
        rig.clone(),
        schedule,
        stop.clone(),
        injected.clone(),
    ));

    tokio::time::sleep(args.duration).await;
    // The writers keep writing until every requested fault has had its turn
    // (or the injector failed, which the await below reports).
    while !done.load(Ordering::Relaxed) && !fault_task.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    fault_task.await??;
    for writer in writers {
        writer.await?;
    }
    heal(&rig).await?;
    let positions = final_positions(&rig.admin).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    finish_tx.send_replace(Some(Arc::new(client::Final {
        positions,
        deadline,
    })));
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.await?);
    }
    let table = load_table(&rig.admin).await?;

    let mut report = verify(&logs, &table);
    report.seconds = started.elapsed().as_secs_f64();
    report.instances = args.instances;
    report.through = [
        (args.through_pgbouncer, "pgbouncer"),
        (args.through_nginx, "nginx"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    report.faults_injected = injected.lock().map(|m| m.clone()).unwrap_or_default();
    report.transactions_committed = stats.committed.load(Ordering::Relaxed);
    report.transactions_rolled_back = stats.rolled_back.load(Ordering::Relaxed);
    report.transactions_failed = stats.failed.load(Ordering::Relaxed);
    drop(rig);
    Ok(report)
}

/// Each writer gets a pool of its own on the direct connection.
fn sqlx_pool(admin: &PgPool) -> PgPool {
    tidings::db::pool(
        admin
            .connect_options()
            .as_ref()
            .clone()
            .application_name("soak-writer"),
        2,
    )
}

async fn build_rig(args: &Args, data_dir: &std::path::Path) -> Result<Rig> {
    // PostgreSQL also listens on TCP, so that tidings can reach it through
    // the proxy (which turns connections into black holes).
    let pg_port = free_port().await?;
    // The embedded cluster refuses TCP logins; the rig's trusts loopback.
    std::fs::create_dir_all(data_dir)?;
    let hba = data_dir.join("soak_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )?;
    let options = Options {
        settings: vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("port".into(), pg_port.to_string()),
            ("hba_file".into(), hba.to_string_lossy().into_owned()),
        ],
        remove_when_stopped: true,
    };
    let dir = data_dir.to_owned();
    let cluster =
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir, &options)).await??;
    let direct = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    let admin = tidings::db::pool(tidings::db::options(&direct, "soak-admin")?, 4);
    tidings::db::migrate(&admin).await?;

    let mut components = Vec::new();
    // tidings -> the TCP proxy (half-open faults) -> [PgBouncer] -> PostgreSQL
    let mut database_port = pg_port;
    if args.through_pgbouncer {
        database_port = free_port().await?;
        components.push(components::pgbouncer(data_dir, database_port, pg_port, "postgres").await?);
    }
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = proxy_listener.local_addr()?.port();
    let proxy = proxy::Proxy::default();
    proxy
        .clone()
        .spawn(proxy_listener, format!("127.0.0.1:{database_port}"));

    let binary = match &args.tidings {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tidings"),
    };
    let env = vec![
        (
            "DATABASE_URL".to_owned(),
            format!("postgres://postgres@127.0.0.1:{proxy_port}/postgres"),
        ),
        ("TIDINGS_JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("TIDINGS_LISTENER_CHECK".to_owned(), "1s".to_owned()),
        ("TIDINGS_SWEEP_INTERVAL".to_owned(), "2s".to_owned()),
        ("TIDINGS_DB_POOL_SIZE".to_owned(), "6".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    let mut fleet = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..args.instances {
        let mut instance = Instance::new(binary.clone(), free_port().await?, env.clone());
        instance.start().await?;
        addresses.push(instance.address.clone());
        fleet.push(tokio::sync::Mutex::new(instance));
    }
    if args.through_nginx {
        let port = free_port().await?;
        components.push(components::nginx(data_dir, port, &addresses).await?);
        addresses = vec![format!("127.0.0.1:{port}")];
    }
    Ok(Rig {
        cluster: Arc::new(Mutex::new(cluster)),
        admin,
        proxy,
        fleet,
        addresses,
        _components: components,
    })
}

/// Counts that must be at least 1 (0 would leave nothing to rotate over).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least 1, got {text:?}"
        )),
    }
}

async fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

fn spawn_clients(
    args: &Args,
    rig: &Rig,
    recipients: &[String],
    finish: client::Finish,
) -> Vec<tokio::task::JoinHandle<ClientLog>> {
    let keys = tidings::http::auth::Keys::new(SECRET.as_bytes());
    let addresses = &rig.addresses;
    let mut handles = Vec::new();
    for (r, recipient) in recipients.iter().enumerate() {
        let Ok(token) = keys.issue(recipient, &[], Duration::from_secs(24 * 3600)) else {
            continue;
        };
        for c in 0..args.clients_per_recipient {
            let mut instances = addresses.clone();
            instances.rotate_left(c % addresses.len().max(1));
            let client = Client {
                recipient: recipient.clone(),
                token: token.clone(),
                instances,
                seed: (r * 1000 + c) as u64 + 7,
            };
            handles.push(tokio::spawn(client.run(finish.clone())));
        }
    }
    handles
}

/// Which faults to inject, how often, and how many rounds at least.
struct Schedule {
    faults: Vec<Fault>,
    every: Duration,
    /// Rounds to run before `stop` is honoured.
    rounds: usize,
    /// Set once those rounds have run.
    done: Arc<AtomicBool>,
}

async fn inject_faults(
    rig: Arc<Rig>,
    schedule: Schedule,
    stop: Arc<AtomicBool>,
    injected: Arc<Mutex<BTreeMap<String, u64>>>,
) -> Result<()> {
    let faults = &schedule.faults;
    for round in 0usize.. {
        if round >= schedule.rounds {
            schedule.done.store(true, Ordering::Relaxed);
        }
        if faults.is_empty() {
            return Ok(());
        }
        let wake = Instant::now() + schedule.every;
        while Instant::now() < wake {
            if round >= schedule.rounds && stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fault = faults[round % faults.len()];
        inject(&rig, fault, round)
            .await
            .with_context(|| format!("injecting {fault:?}"))?;
        if let Ok(mut injected) = injected.lock() {
            *injected.entry(format!("{fault:?}")).or_default() += 1;
        }
    }
    Ok(())
}

async fn inject(rig: &Rig, fault: Fault, round: usize) -> Result<()> {
    match fault {
        Fault::ListenerKill => {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tidings-listener'")
                .execute(&rig.admin)
                .await?;
        }
        Fault::HalfOpen => {
            rig.proxy.blackhole_listeners();
        }
        Fault::PgRestartFast => restart_postgres(rig, Shutdown::Fast).await?,
        Fault::PgRestartImmediate => restart_postgres(rig, Shutdown::Immediate).await?,
        Fault::KillTidings => {
            let mut instance = rig.fleet[round % rig.fleet.len()].lock().await;
            instance.kill().await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            instance.start().await?;
        }
        Fault::RollingRestart => {
            for instance in &rig.fleet {
                let mut instance = instance.lock().await;
                instance.terminate().await?;
                instance.start().await?;
            }
        }
        Fault::LostHints => {
            set_hints(&rig.admin, false).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            set_hints(&rig.admin, true).await?;
        }
    }
    Ok(())
}

async fn restart_postgres(rig: &Rig, how: Shutdown) -> Result<()> {
    let cluster = rig.cluster.clone();
    tokio::task::spawn_blocking(move || {
        let mut cluster = cluster
            .lock()
            .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?;
        cluster.restart(how).map_err(anyhow::Error::from)
    })
    .await?
}

async fn set_hints(admin: &PgPool, on: bool) -> Result<()> {
    // Retried: the pool may still hold connections from before a restart.
    for attempt in 0..20 {
        let done = sqlx::query("SELECT tidings.set_hints($1)")
            .bind(on)
            .execute(admin)
            .await;
        if done.is_ok() || attempt == 19 {
            done?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// After the faults: hints on, every instance running.
async fn heal(rig: &Rig) -> Result<()> {
    set_hints(&rig.admin, true).await?;
    for instance in &rig.fleet {
        let mut instance = instance.lock().await;
        if !instance.ready().await {
            instance.kill().await?;
            instance.start().await?;
        }
    }
    Ok(())
}

async fn final_positions(admin: &PgPool) -> Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT recipient, last_seq FROM tidings.recipients")
            .fetch_all(admin)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Every event in the table: (recipient, seq) -> fingerprint.
async fn load_table(admin: &PgPool) -> Result<HashMap<(String, i64), String>> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT recipient, seq, coalesce(payload->>'tag', '?') FROM tidings.notifications
         UNION ALL
         SELECT recipient, seq, 'read:' || array_to_json(notification_ids)::text FROM tidings.reads",
    )
    .fetch_all(admin)
    .await?;
    Ok(rows.into_iter().map(|(r, s, f)| ((r, s), f)).collect())
}

/// Compares each client's received sequence with the table.
fn verify(logs: &[ClientLog], table: &HashMap<(String, i64), String>) -> Report {
    let mut report = Report {
        clients: logs.len(),
        events_in_table: table.len() as u64,
        ..Report::default()
    };
    for log in logs {
        report.connections += log.connections;
        report.cuts += log.cuts;
        report.non_200 += log.non_200.len() as u64;
        report.resets += log.resets;
        report.clients_not_caught_up += u64::from(!log.caught_up);
        let mut seen = HashSet::new();
        let mut highest = 0;
        for event in &log.events {
            if !seen.insert(event.seq) {
                report.duplicated += 1;
                continue;
            }
            report.delivered += 1;
            if event.seq != highest + 1 {
                report.out_of_order += 1;
            }
            highest = highest.max(event.seq);
            match table.get(&(log.recipient.clone(), event.seq)) {
                Some(fingerprint) if *fingerprint == event.fingerprint => {}
                _ => report.rolled_back_seen += 1,
            }
        }
        let expected = table
            .keys()
            .filter(|(recipient, _)| *recipient == log.recipient)
            .count();
        report.lost += (expected as u64).saturating_sub(seen.len() as u64);
    }
    report
}

fn print_table(report: &Report) {
    println!(
        "tidings-soak: {:.0} s, {} instances, {} clients, {} connections ({} cut mid-stream by the client)",
        report.seconds, report.instances, report.clients, report.connections, report.cuts
    );
    println!(
        "transactions: {} committed, {} rolled back, {} failed during faults; {} events in the table",
        report.transactions_committed, report.transactions_rolled_back, report.transactions_failed, report.events_in_table
    );
    let faults: Vec<String> = report
        .faults_injected
        .iter()
        .map(|(f, n)| format!("{f} x{n}"))
        .collect();
    println!(
        "faults: {}",
        if faults.is_empty() {
            "none".into()
        } else {
            faults.join(", ")
        }
    );
    println!(
        "non-200 answers: {}, resets: {}, clients not caught up: {}",
        report.non_200, report.resets, report.clients_not_caught_up
    );
    println!();
    println!(
        "{:>10} {:>6} {:>11} {:>13} {:>17}",
        "delivered", "lost", "duplicated", "out-of-order", "rolled-back-seen"
    );
    println!(
        "{:>10} {:>6} {:>11} {:>13} {:>17}",
        report.delivered,
        report.lost,
        report.duplicated,
        report.out_of_order,
        report.rolled_back_seen
    );
    println!();
    println!("{}", if report.ok() { "OK" } else { "FAILED" });
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::Received;

    fn table() -> HashMap<(String, i64), String> {
        (1..=4)
            .map(|seq| (("r".to_owned(), seq), format!("t{seq}")))
            .collect()
    }

    fn client(seqs: &[i64]) -> ClientLog {
        let events = seqs
            .iter()
            .map(|&seq| Received {
                seq,
                fingerprint: format!("t{seq}"),
            })
            .collect();
        ClientLog {
            recipient: "r".into(),
            events,
            caught_up: true,
            ..ClientLog::default()
        }
    }

    #[test]
    fn a_perfect_client_passes() {
        let report = verify(&[client(&[1, 2, 3, 4])], &table());
        assert_eq!(
            (
                report.delivered,
                report.lost,
                report.duplicated,
                report.out_of_order
            ),
            (4, 0, 0, 0)
        );
        assert!(report.ok());
    }

    #[test]
    fn loss_duplicates_disorder_and_phantoms_are_each_counted() {
        let mut phantom = client(&[1]);
        phantom.events[0].fingerprint = "from a rolled-back transaction".into();
        let report = verify(
            &[client(&[1, 2, 2, 4]), client(&[2, 1, 3, 4]), phantom],
            &table(),
        );
        assert_eq!(report.duplicated, 1);
        assert_eq!(report.lost, 1 + 3);
        assert_eq!(report.out_of_order, 1 + 2);
        assert_eq!(report.rolled_back_seen, 1);
        assert!(!report.ok());
    }
}
