//! Process accounting from `/proc`: resident memory, CPU time, open files,
//! of the tidings server, of PostgreSQL's processes, and of this tool.
//!
//! Linux reports CPU time in clock ticks of `USER_HZ`, which is 100 on
//! every architecture Linux supports for userspace.

use std::fs;

use anyhow::{Context, Result};

const USER_HZ: f64 = 100.0;

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The numeric fields of `/proc/<pid>/stat` after the command name (which
/// may itself hold spaces and parentheses): index 0 is field 3, `state`.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    Ok(after_name.split_whitespace().map(str::to_owned).collect())
}

fn field(fields: &[String], number: usize) -> u64 {
    fields
        .get(number - 3)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds of `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let fields = stat_fields(pid)?;
    Ok((field(&fields, 14) + field(&fields, 15)) as f64 / USER_HZ)
}

/// CPU seconds of `pid`, its reaped children, and its live children: for
/// the postmaster, that is all of PostgreSQL (backends are its children).
pub fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let fields = stat_fields(pid)?;
    let own: u64 = [14, 15, 16, 17].iter().map(|&n| field(&fields, n)).sum();
    let children: f64 = children(pid)
        .into_iter()
        .filter_map(|child| cpu_seconds(child).ok())
        .sum();
    Ok(own as f64 / USER_HZ + children)
}

/// Live child processes of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            stat_fields(candidate).is_ok_and(|fields| field(&fields, 4) == u64::from(pid))
        })
        .collect()
}

/// Open file descriptors of `pid`.
pub fn open_files(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// This process's CPU seconds.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
