//! tidings-testkit: what the tools' integration tests share - the `tidings`
//! server binary they run `tidings-bench` and `tidings-soak` against.
//!
//! Cargo hands an integration test the binaries of its own package only
//! (`CARGO_BIN_EXE_<name>`), and the tools are packages of their own. So
//! the server is built here, by the cargo that runs the test, for the
//! profile and into the target directory the tool itself was built for:
//! under `cargo test` at the root that finds it up to date, and under
//! `cargo test -p tidings-bench` it builds it once per test process.
//!
//! It must never hand out a stale binary or one from another profile (the
//! build decides, not a guess at a path), and never let a test skip: a
//! build that fails fails every test that asked for it.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The `tidings` server binary, built for the same profile and target
/// directory as `tool`, the path of the tool binary under test (pass
/// `env!("CARGO_BIN_EXE_tidings-bench")`, say). Panics, with cargo's own
/// output, when the build fails.
pub fn server_binary(tool: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build(Path::new(tool))) {
        Ok(binary) => binary.clone(),
        Err(why) => panic!("building the tidings server for the tool tests failed: {why}"),
    }
}

/// `cargo build --package tidings --bin tidings` for `tool`'s profile and
/// target directory; the binary's path as cargo reports it.
fn build(tool: &Path) -> Result<PathBuf, String> {
    // <target-dir>/<profile-dir>/<tool>
    let profile_dir = tool
        .parent()
        .ok_or_else(|| format!("{} is in no directory", tool.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} is in no target directory", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err(format!("no profile in {}", profile_dir.display())),
    };
    // The cargo running this test, when it says so; else the one that
    // built this crate.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let output = Command::new(cargo)
        .args(["build", "--package", "tidings", "--bin", "tidings"])
        .args([
            "--profile",
            profile,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("running cargo: {error}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "cargo build exited with {}:\n{stderr}",
            output.status
        ));
    }
    let binary = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == "tidings"
        })
        // The library is an artifact named tidings too, without an executable.
        .find_map(|artifact| artifact["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo build reported no tidings executable:\n{stderr}"))?;
    if !binary.is_file() {
        return Err(format!(
            "cargo build reported {}, which is not there",
            binary.display()
        ));
    }
    Ok(binary)
}
