//! Results: the metrics a scenario measured, the targets it checked, and
//! how both are printed - a table for people, JSON (`--json`) for CI and
//! for BENCHMARKS.md. Also the arithmetic shared by scenarios: stream
//! books summed over a fleet, latency percentiles.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::dbstats::round;
use crate::fleet::StreamOutcome;

pub struct Report {
    pub scenario: &'static str,
    conditions: Vec<(String, Value)>,
    metrics: Vec<(String, Value)>,
    checks: Vec<Check>,
}

struct Check {
    target: String,
    measured: String,
    met: bool,
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            conditions: Vec::new(),
            metrics: Vec::new(),
            checks: Vec::new(),
        }
    }

    pub fn condition(&mut self, name: &str, value: impl Into<Value>) {
        self.conditions.push((name.into(), value.into()));
    }

    pub fn metric(&mut self, name: &str, value: impl Into<Value>) {
        self.metrics.push((name.into(), value.into()));
    }

    /// Adds every field of a JSON object as `prefix.field`.
    pub fn metrics_from(&mut self, prefix: &str, object: &Value) {
        if let Some(fields) = object.as_object() {
            for (name, value) in fields {
                self.metric(&format!("{prefix}.{name}"), value.clone());
            }
        }
    }

    /// A target (BENCHMARKS.md's goals) and whether this run met it.
    pub fn check(&mut self, target: &str, measured: impl Into<String>, met: bool) {
        self.checks.push(Check {
            target: target.into(),
            measured: measured.into(),
            met,
        });
    }

    pub fn to_json(&self) -> Value {
        let object = |pairs: &[(String, Value)]| -> BTreeMap<String, Value> {
            pairs.iter().cloned().collect()
        };
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| json!({"target": c.target, "measured": c.measured, "met": c.met}))
            .collect();
        json!({
            "scenario": self.scenario,
            "conditions": object(&self.conditions),
            "metrics": object(&self.metrics),
            "checks": checks,
            "targets_met": self.checks.iter().all(|c| c.met),
        })
    }

    pub fn print_table(&self) {
        println!("\n== tidings-bench {}", self.scenario);
        for (name, value) in &self.conditions {
            println!("   {name}: {}", plain(value));
        }
        let width = self.metrics.iter().map(|(n, _)| n.len()).max().unwrap_or(6);
        println!("\n  {:<width$}  value", "metric");
        for (name, value) in &self.metrics {
            println!("  {name:<width$}  {}", plain(value));
        }
        if !self.checks.is_empty() {
            println!("\n  target | measured | met");
            for check in &self.checks {
                let met = if check.met { "yes" } else { "NO" };
                println!("  {} | {} | {met}", check.target, check.measured);
            }
        }
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Stream books summed over a fleet.
#[derive(Debug, Default, Clone, Copy)]
pub struct Books {
    pub requested: usize,
    pub established: usize,
    pub failed: usize,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub unexpected: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub resets: u64,
    pub reconnects: u64,
}

impl Books {
    /// Sums `outcomes`; `expected(i)` is what stream `i` should have got.
    pub fn of(outcomes: &[StreamOutcome], expected: impl Fn(&StreamOutcome) -> u64) -> Self {
        let mut books = Books {
            requested: outcomes.len(),
            ..Books::default()
        };
        for outcome in outcomes {
            let want = expected(outcome);
            let got = outcome.tracker.unique;
            books.established += usize::from(outcome.established);
            books.failed += usize::from(!outcome.established);
            books.expected += want;
            books.received += got.min(want);
            books.lost += want.saturating_sub(got);
            books.unexpected += got.saturating_sub(want);
            books.duplicated += outcome.tracker.duplicates;
            books.out_of_order += outcome.tracker.out_of_order;
            books.resets += outcome.tracker.resets;
            books.reconnects += u64::from(outcome.reconnects);
        }
        books
    }

    pub fn add_to(&self, report: &mut Report, prefix: &str) {
        let p = |name: &str| format!("{prefix}{name}");
        report.metric(&p("streams.requested"), self.requested);
        report.metric(&p("streams.established"), self.established);
        report.metric(&p("streams.failed"), self.failed);
        report.metric(&p("events.expected"), self.expected);
        report.metric(&p("events.received"), self.received);
        report.metric(&p("events.lost"), self.lost);
        report.metric(&p("events.duplicated"), self.duplicated);
        report.metric(&p("events.out_of_order"), self.out_of_order);
        report.metric(&p("events.unexpected"), self.unexpected);
        if self.resets > 0 {
            report.metric(&p("events.resets"), self.resets);
        }
    }

    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.failed == 0
    }
}

/// The first stream errors, for the report (one line each, at most 3).
pub fn sample_errors(outcomes: &[StreamOutcome]) -> Vec<String> {
    let mut errors: Vec<String> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    errors.sort();
    errors.dedup();
    errors.truncate(3);
    errors
}

/// Latency percentiles in milliseconds over every stream's samples.
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(outcomes: &[StreamOutcome]) -> Option<Self> {
        let all: Vec<u32> = outcomes
            .iter()
            .flat_map(|o| o.latencies_us.iter().copied())
            .collect();
        Self::from_micros(all)
    }

    pub fn from_micros(mut all: Vec<u32>) -> Option<Self> {
        if all.is_empty() {
            return None;
        }
        all.sort_unstable();
        let at = |q: f64| {
            let index = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1;
            all[index] as f64 / 1000.0
        };
        Some(Self {
            samples: all.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        })
    }

    pub fn add_to(&self, report: &mut Report, prefix: &str) {
        let p = |name: &str| format!("{prefix}.{name}");
        report.metric(&p("samples"), self.samples);
        report.metric(&p("p50"), round(self.p50, 3));
        report.metric(&p("p90"), round(self.p90, 3));
        report.metric(&p("p99"), round(self.p99, 3));
        report.metric(&p("p99.9"), round(self.p999, 3));
        report.metric(&p("max"), round(self.max, 3));
    }
}
