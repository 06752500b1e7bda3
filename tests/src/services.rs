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

/// Reads `SWITCHYARD_SECURE_<name>` (see `scripts/secure-services env`),
/// failing the test if it is missing.
pub fn secure(name: &str) -> String {
    let variable = format!("SWITCHYARD_SECURE_{name}");
    match std::env::var(&variable) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{variable} is not set: this test needs the TLS servers. Start them with \
             `scripts/secure-services up` and export `scripts/secure-services env` \
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
    run_script(&required("SWITCHYARD_SERVICES"), action, name);
}

fn run_script(script: &str, action: &str, name: &str) {
    let status = Command::new(script)
        .args([action, name])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        status.success(),
        "`{script} {action} {name}` failed: {status}"
    );
}

/// The three servers of the test JetStream cluster (`scripts/clusters
/// env`), comma-separated, failing the test if they are not set.
pub fn cluster_nats_urls() -> String {
    match std::env::var("SWITCHYARD_CLUSTER_NATS_URLS") {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "SWITCHYARD_CLUSTER_NATS_URLS is not set: this test needs the three-node NATS \
             cluster. Start it with `scripts/clusters up` and export `scripts/clusters env` \
             (the README's test command does both)."
        ),
    }
}

/// Runs `scripts/clusters ACTION NAME` (e.g. `kill nats-2`). Panics if the
/// script fails.
pub fn cluster_control(action: &str, name: &str) {
    let script = match std::env::var("SWITCHYARD_CLUSTERS") {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("SWITCHYARD_CLUSTERS is not set: export `scripts/clusters env`"),
    };
    run_script(&script, action, name);
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

/// Tests that stop or restart a server take this lock exclusively; every
/// other real-service test holds it shared, so a fault never lands in the
/// middle of an unrelated test.
static FAULTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a test that only uses the servers.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    FAULTS.read().await
}

/// Held by a test that injects faults into the servers.
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    FAULTS.write().await
}

/// A connection to the test Valkey.
pub async fn valkey() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(valkey_url()).expect("valid Valkey URL");
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Valkey at {}: {e}", valkey_url()))
}

/// A connection to the test Neo4j (authentication is disabled there).
pub async fn neo4j() -> neo4rs::Graph {
    neo4rs::Graph::new(neo4j_url(), "neo4j", "switchyard")
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Neo4j at {}: {e}", neo4j_url()))
}

/// A JetStream context on the test NATS.
pub async fn jetstream() -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to NATS at {}: {e}", nats_url()));
    async_nats::jetstream::new(client)
}

/// Sets each of `keys` to `value` in the test Valkey.
pub async fn set_keys<K: AsRef<str>>(
    valkey: &mut redis::aio::MultiplexedConnection,
    keys: impl IntoIterator<Item = K>,
    value: &str,
) {
    for key in keys {
        let key = key.as_ref();
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(valkey)
            .await
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }
}

/// What the hosts answering on `<control_subject>.status` report within
/// half a second.
pub async fn fleet_status(control_subject: &str) -> Vec<switchyard::fleet::status::HostStatus> {
    let client = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to NATS at {}: {e}", nats_url()));
    switchyard::fleet::status::gather_status(
        &client,
        &format!("{control_subject}.status"),
        Duration::from_millis(500),
    )
    .await
    .unwrap_or_else(|e| panic!("status request on {control_subject}.status: {e}"))
}
