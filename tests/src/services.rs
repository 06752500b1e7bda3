//! The real servers the integration tests run against.
//!
//! `scripts/services up` starts NATS (with JetStream), Valkey and Neo4j on
//! loopback and `scripts/services env` prints their addresses as
//! `SWITCHYARD_TEST_*` variables. A test that needs a server and does not
//! find it fails, naming the variable and the command to run: a missing
//! server is never a silent skip.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Reads `SWITCHYARD_TEST_<name>`, failing the test if it is missing.
fn required(variable: &str) -> String {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{variable} is not set: this test needs a real server. \
             Start them with `scripts/services up` and export `scripts/services env` \
             (the README's test command does both)."
        ),
    }
}

pub fn nats_url() -> String {
    required("SWITCHYARD_TEST_NATS_URL")
}

pub fn nats_monitor_url() -> String {
    required("SWITCHYARD_TEST_NATS_MONITOR_URL")
}

pub fn valkey_url() -> String {
    required("SWITCHYARD_TEST_VALKEY_URL")
}

pub fn neo4j_url() -> String {
    required("SWITCHYARD_TEST_NEO4J_URL")
}

/// Runs `scripts/services ACTION NAME` (e.g. `stop valkey`), for tests that
/// inject faults. Panics if the script fails.
pub fn control(action: &str, name: &str) {
    let script = required("SWITCHYARD_SERVICES");
    let status = Command::new(&script)
        .args([action, name])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(status.success(), "`{script} {action} {name}` failed: {status}");
}

/// A name no other test in this run (or an earlier run against the same
/// servers) uses, for streams, key prefixes and labels.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}{}{:x}{n}", std::process::id(), nanos)
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with the
/// last state `describe` gives.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("never checked");
    while start.elapsed() < timeout {
        match check().await {
            Ok(value) => return value,
            Err(state) => last = state,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {timeout:?}; last state: {last}");
}
