//! What the tests of drisc-load share: running the real program as a child
//! process, bounded in time, and reading what it reports.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

/// Runs drisc-load with `args`, bounded in time.
pub async fn drisc_load(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_drisc-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start drisc-load");
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("drisc-load finished within a minute")
        .expect("drisc-load's output")
}

pub fn counters(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the --json results");
    let results: serde_json::Value = serde_json::from_str(&text).expect("JSON results");
    results["counters"].clone()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
