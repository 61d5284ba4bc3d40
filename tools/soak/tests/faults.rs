//! Exactly-once, in-order delivery through every failure. Each fault is
//! injected for real by the soak verifier (`tidings-soak`): real
//! tidings processes, a real PostgreSQL it restarts, a TCP proxy that can
//! silence the LISTEN connection, and clients that cut their connections at
//! random bytes and resume - then every client's sequence is compared with
//! the table. One run goes through PgBouncer and nginx, as deployed.

use std::process::Command;

use serde_json::Value;
use tokio::sync::Mutex;

/// Soak runs each start a cluster and two servers: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Runs the verifier for `duration`, injecting each of `faults` at least
/// `each` times (however long that takes), and checks its error counts.
async fn soak(faults: &str, duration: &str, each: usize) -> Value {
    soak_through(faults, duration, each, &[]).await
}

/// [`soak`], with `through` added to the verifier's arguments.
async fn soak_through(faults: &str, duration: &str, each: usize, through: &[&str]) -> Value {
    let _turn = ONE_AT_A_TIME.lock().await;
    let verifier = env!("CARGO_BIN_EXE_tidings-soak");
    let each = each.to_string();
    let args: Vec<String> = [
        "--duration",
        duration,
        "--faults",
        faults,
        "--fault-every",
        "2s",
        "--each-fault-at-least",
        &each,
        "--json",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(through.iter().map(|arg| arg.to_string()))
    .collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(verifier)
            .args(args)
            .arg("--tidings")
            .arg(tidings_testkit::server_binary(verifier))
            .output()
    })
    .await
    .expect("join")
    .expect("run tidings-soak");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "no report; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    for count in [
        "lost",
        "duplicated",
        "out_of_order",
        "rolled_back_seen",
        "non_200",
        "resets",
        "clients_not_caught_up",
    ] {
        assert_eq!(report[count], 0, "{count} with faults {faults}: {report:#}");
    }
    // There was traffic, and the cutting ran: bars any machine clears (how
    // much traffic depends on its speed; `lost` = 0 covers the rest).
    let count = |name: &str| report[name].as_u64().unwrap_or(0);
    assert!(
        count("transactions_committed") >= 1 && count("delivered") >= count("clients"),
        "too little traffic: {report:#}"
    );
    assert!(
        count("cuts") >= 1,
        "clients cut their connections: {report:#}"
    );
    assert!(output.status.success(), "{report:#}");
    report
}

fn injected(report: &Value, fault: &str) -> u64 {
    report["faults_injected"][fault].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn clients_cut_at_random_bytes_and_alternating_instances_get_every_row_once() {
    let report = soak("none", "8s", 0).await;
    assert_eq!(report["instances"], 2);
}

#[tokio::test]
async fn the_listen_backend_terminated_repeatedly_under_load_loses_nothing() {
    let report = soak("listener-kill", "8s", 2).await;
    assert!(injected(&report, "ListenerKill") >= 2);
}

#[tokio::test]
async fn a_half_open_listen_connection_is_noticed_and_rebuilt_without_loss() {
    let report = soak("half-open", "10s", 2).await;
    assert!(injected(&report, "HalfOpen") >= 2);
}

#[tokio::test]
async fn postgres_restarted_fast_or_immediate_under_load_loses_nothing_and_streams_never_see_a_non_200(
) {
    let report = soak("pg-restart-fast,pg-restart-immediate", "10s", 1).await;
    assert!(
        injected(&report, "PgRestartFast") >= 1 && injected(&report, "PgRestartImmediate") >= 1
    );
}

#[tokio::test]
async fn tidings_killed_or_restarted_gracefully_loses_nothing() {
    let report = soak("kill-tidings,rolling-restart", "10s", 1).await;
    assert!(injected(&report, "KillTidings") >= 1 && injected(&report, "RollingRestart") >= 1);
}

#[tokio::test]
async fn lost_hints_are_still_delivered_by_the_sweep() {
    let report = soak("lost-hints", "10s", 1).await;
    assert!(injected(&report, "LostHints") >= 1);
}

#[tokio::test]
async fn a_minute_of_every_fault_in_turn_loses_nothing() {
    let report = soak("all", "60s", 1).await;
    let kinds = report["faults_injected"]
        .as_object()
        .map(|f| f.len())
        .unwrap_or(0);
    assert_eq!(kinds, 7, "every kind of fault was injected: {report:#}");
}

/// Whether `program` is installed; under CI it must be (`.ci/run`
/// installs it), elsewhere the test says so and does not run.
fn installed(program: &str, package: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin"].map(std::path::PathBuf::from))
        .any(|dir| dir.join(program).is_file());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run every test, but {program} is missing (apt-get install {package})"
        );
        eprintln!("NOT RUN: {program} is not installed here (apt-get install {package})");
    }
    found
}

#[tokio::test]
async fn every_fault_through_pgbouncer_in_session_mode_and_nginx_loses_nothing() {
    if !installed("pgbouncer", "pgbouncer") || !installed("nginx", "nginx") {
        return;
    }
    let report = soak_through("all", "10s", 1, &["--through-pgbouncer", "--through-nginx"]).await;
    assert_eq!(report["through"], serde_json::json!(["pgbouncer", "nginx"]));
    let kinds = report["faults_injected"]
        .as_object()
        .map(|f| f.len())
        .unwrap_or(0);
    assert_eq!(kinds, 7, "every kind of fault was injected: {report:#}");
}
