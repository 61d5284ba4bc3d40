//! Smoke test of the load tool (`tidings-bench`): every scenario at a tiny
//! size against the `tidings` binary of the same profile (built for the
//! test by tidings-testkit). It checks the books - nothing lost, duplicated
//! or out of order, every stream established - and never the timings,
//! which depend on the machine.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs one scenario with `--json` and returns its metrics.
fn bench(scenario: &str, sizes: &[&str]) -> Value {
    let bench = env!("CARGO_BIN_EXE_tidings-bench");
    let mut child = Command::new(bench)
        .arg(scenario)
        .arg("--json")
        .arg("--server-bin")
        .arg(tidings_testkit::server_binary(bench))
        .args(["--drain-seconds", "10"])
        .args(sizes)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidings-bench starts");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("tidings-bench {scenario} ran over 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tidings-bench {scenario} failed:\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["scenario"], scenario);
    report["metrics"].clone()
}

/// Zero lost, duplicated, out of order or failed, wherever the report
/// counts them, and every requested stream established.
fn assert_clean_books(metrics: &Value) {
    let metrics = metrics.as_object().expect("metrics object");
    let mut streams_checked = 0;
    for (name, value) in metrics {
        let must_be_zero = [
            "events.lost",
            "events.duplicated",
            "events.out_of_order",
            "events.unexpected",
            "streams.failed",
            "publish.failed",
        ];
        if must_be_zero.iter().any(|suffix| name.ends_with(suffix)) {
            assert_eq!(value.as_u64(), Some(0), "{name} = {value}");
        }
        if let Some(prefix) = name.strip_suffix("streams.established") {
            let requested = &metrics[&format!("{prefix}streams.requested")];
            assert_eq!(value, requested, "{prefix}streams established of requested");
            assert!(value.as_u64().unwrap_or(0) > 0, "{name}");
            streams_checked += 1;
        }
        if let Some(prefix) = name.strip_suffix("events.expected") {
            let received = &metrics[&format!("{prefix}events.received")];
            assert_eq!(value, received, "{prefix}events received of expected");
        }
    }
    assert!(streams_checked > 0, "the report counts no streams");
}

#[test]
fn bench_smoke_latency() {
    let metrics = bench(
        "latency",
        &[
            "--streams",
            "20",
            "--recipients",
            "10",
            "--rate",
            "100",
            "--seconds",
            "1",
        ],
    );
    assert_clean_books(&metrics);
    assert_eq!(metrics["events.expected"], 200);
    assert!(observations(&metrics["publish.writer_waits"]).is_some());
    // Every row sent is timed against its schedule, and every event
    // received against its row's due time.
    assert_eq!(metrics["publish.send_late_ms.samples"], 100);
    assert_eq!(metrics["latency_from_schedule_ms.samples"], 200);
    // The comparison without streams wrote the same 100 rows into each table.
    for table in ["plain", "bare_notify", "tidings"] {
        assert!(observations(&metrics[&format!("no_streams.{table}.writer_waits")]).is_some());
        assert_eq!(metrics[&format!("no_streams.{table}.failed")], 0);
        assert_eq!(
            metrics[&format!("no_streams.{table}.insert_commit_ms.samples")],
            100
        );
    }
}

#[test]
fn bench_smoke_fanout() {
    let metrics = bench(
        "fanout",
        &[
            "--streams",
            "40",
            "--recipients",
            "10",
            "--rate",
            "50",
            "--seconds",
            "1",
        ],
    );
    assert_clean_books(&metrics);
    assert_eq!(metrics["events.expected"], 200);
}

#[test]
fn bench_smoke_capacity() {
    let metrics = bench("capacity", &["--streams", "200"]);
    assert_clean_books(&metrics);
    assert_eq!(metrics["events.received"], 200);
}

#[test]
fn bench_smoke_replay() {
    let metrics = bench(
        "replay",
        &[
            "--replay-rows",
            "2000",
            "--replay-streams",
            "20",
            "--replay-rows-each",
            "50",
        ],
    );
    assert_clean_books(&metrics);
    assert_eq!(metrics["single.events.received"], 2000);
    assert_eq!(metrics["many.events.received"], 1000);
}

#[test]
fn bench_smoke_storm() {
    let metrics = bench(
        "storm",
        &["--streams", "100", "--recipients", "20", "--retry-ms", "50"],
    );
    assert_clean_books(&metrics);
    assert_eq!(metrics["streams.live_after_restart"], 100);
    assert_eq!(metrics["events.received"], 200);
}

#[test]
fn bench_smoke_ingest() {
    let metrics = bench(
        "ingest",
        &[
            "--ingest-writers",
            "1,2",
            "--ingest-seconds",
            "0.3",
            "--ingest-rounds",
            "2",
            "--bulk-rows",
            "200",
            "--bulk-repeats",
            "1",
        ],
    );
    let mut observed = 0;
    for writers in ["w1", "w2"] {
        for table in [
            "tidings",
            "tidings_streamed",
            "bare_notify",
            "seq_notify",
            "plain",
        ] {
            let name = format!("single_row.{writers}.{table}.commits_per_s");
            assert!(metrics[&name].as_f64().unwrap_or(0.0) > 0.0, "{name}");
            let waits = &metrics[&format!("single_row.{writers}.{table}.writer_waits")];
            observed += observations(waits).unwrap_or_else(|| panic!("{waits}"));
            let cpu = &metrics[&format!("single_row.{writers}.{table}.cpu_us_per_commit")];
            assert!(postgres_cpu(cpu).is_some_and(|us| us > 0.0), "{cpu}");
        }
    }
    // Writers that insert flat out are seen in their statements.
    assert!(observed > 0, "no writer was ever seen in a statement");
    for table in ["tidings", "bare_notify", "seq_notify", "plain"] {
        assert!(metrics[&format!("bulk.{table}.sorted_ms")].is_number());
    }
}

/// PostgreSQL's CPU µs per commit from a `cpu_us_per_commit` summary
/// ("PostgreSQL 216, server 0, bench 42"), if it parses.
fn postgres_cpu(summary: &Value) -> Option<f64> {
    let rest = summary.as_str()?.strip_prefix("PostgreSQL ")?;
    rest.split(',').next()?.trim().parse().ok()
}

/// How many writer observations a `writer_waits` summary rests on, if it
/// is one and every sample of `pg_stat_activity` succeeded.
fn observations(summary: &Value) -> Option<u64> {
    let text = summary.as_str()?;
    let (_, tail) = text.split_once("(of ")?;
    let (count, rest) = tail.split_once(" observations")?;
    (rest == ")").then_some(())?;
    count.parse().ok()
}
