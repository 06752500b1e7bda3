//! Operations, as an operator sees them: the real `switchyard` binary run
//! against the real NATS, Valkey and Neo4j, read through `/metrics`,
//! `/healthz` and `/readyz`, stopped with SIGTERM; a refused configuration;
//! spans exported to an OTLP endpoint.
//!
//! Every service run here has a stream, subjects, dead-letter stream,
//! durable and cache key prefix of its own, so it never meets another test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_tests::artifacts::STORY_TRANSITIONS;
use switchyard_tests::config::{Handler, Names, Plugin, Service};
use switchyard_tests::services;

mod cli;
mod cluster;
mod dashboard;
mod kit;
mod secrets;

const HANDLER: &str = "story-transitions";

// --- plumbing -------------------------------------------------------------

fn switchyard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    // Only what a test sets: no configuration overrides or exporter settings
    // from the environment the tests run in.
    for (name, _) in std::env::vars() {
        if (name.starts_with("SWITCHYARD_") && name.contains("__")) || name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .env("SWITCHYARD_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path)
}

/// A directory of this test's own.
fn temp_dir(id: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-operations-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A blocking `GET http://127.0.0.1:<port><path>`: (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(format!("unexpected chunked response: {head:?}"));
    }
    Ok((status, body.to_string()))
}

/// Polls `check` every 100 ms until it returns `Ok`, or panics after
/// `timeout` with the last state.
fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last = String::from("never checked");
    while start.elapsed() < timeout {
        match check() {
            Ok(value) => return value,
            Err(state) => last = state,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {timeout:?}; last state: {last}");
}

/// Where the cache keys of a run on `names` live.
fn key_prefix(names: &Names) -> String {
    format!("{}:context:", names.id)
}

/// story-transitions on `names`, its keys under [`key_prefix`], serving
/// HTTP on `port`.
fn config_toml(names: &Names, plugin: Plugin, port: u16) -> String {
    let prefix = key_prefix(names);
    let handler = Handler::new(HANDLER, plugin, names)
        .set("concurrency", 8)
        .set("ack_wait", "10s")
        .set("deadline", "5s")
        .config("key_prefix", prefix.as_str())
        .grant("cache_keys", [format!("{prefix}*")])
        .grant("graph_labels", ["PhaseTransition"]);
    Service::new(names)
        .set("http", "listen", format!("127.0.0.1:{port}"))
        .handler(handler)
        .to_toml()
}

/// The plugin file the runs use unless they take pushed versions.
fn plugin_file() -> Plugin {
    Plugin::File(STORY_TRANSITIONS.to_string())
}

/// `switchyard serve` as a child process; killed if a test fails before
/// stopping it.
struct Serve {
    child: Option<Child>,
    port: u16,
    stderr: PathBuf,
}

impl Serve {
    fn start(names: &Names, plugin: Plugin, extra_args: &[&str]) -> Self {
        let port = free_port();
        Self::start_with(
            names,
            port,
            &config_toml(names, plugin, port),
            extra_args,
            &[],
        )
    }

    /// `serve` on the configuration `toml`, whose `/metrics` is on `port`,
    /// with the environment variables `env` set.
    fn start_with(
        names: &Names,
        port: u16,
        toml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = temp_dir(&names.id);
        let config = dir.join(format!("switchyard-{port}.toml"));
        std::fs::write(&config, toml).unwrap();
        let stderr = dir.join(format!("stderr-{port}.log"));
        let child = switchyard()
            .envs(env.iter().copied())
            .args(extra_args)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Serve {
            child: Some(child),
            port,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.port, path)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test, with the service's log, if the process has exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "switchyard serve exited early ({status}); its log:\n{}",
                self.logs()
            );
        }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            self.assert_running();
            match self.get("/readyz") {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status}: {body}"),
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "/readyz not 200 within {timeout:?}; last: {last}; log:\n{}",
            self.logs()
        );
    }

    fn metrics(&self) -> String {
        match self.get("/metrics") {
            Ok((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// SIGTERM, then waits for the graceful drain to end.
    fn terminate(mut self) -> ExitStatus {
        let child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        self.child = Some(child);
        self.exit_within(Duration::from_secs(30), "within 30 s of SIGTERM")
    }

    /// Waits up to `timeout` for the process to exit; past it, kills it
    /// and fails the test saying it did not exit `when`.
    fn exit_within(mut self, timeout: Duration, when: &str) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "switchyard serve did not exit {when}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of the series whose line starts with `series` (name and
/// labels exactly as exposed), if it is exposed.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Publishes `payload` to `subject`, waiting for the stream's ack.
async fn publish(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) {
    js.publish(subject.to_string(), payload.into())
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"))
        .await
        .unwrap_or_else(|e| panic!("no stream ack for {subject}: {e}"));
}

fn transition(story: &str, timestamp: &str) -> Vec<u8> {
    serde_json::json!({
        "story_id": story,
        "from_phase": "DESIGN",
        "to_phase": "BUILD",
        "timestamp": timestamp,
    })
    .to_string()
    .into_bytes()
}

async fn existing(valkey: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> u64 {
    redis::cmd("EXISTS")
        .arg(keys)
        .query_async(valkey)
        .await
        .unwrap()
}

async fn transitions_at(graph: &neo4rs::Graph, timestamp: &str) -> i64 {
    let mut rows = graph
        .execute(
            neo4rs::query("MATCH (n:PhaseTransition {timestamp: $t}) RETURN count(n) AS c")
                .param("t", timestamp),
        )
        .await
        .unwrap();
    rows.next().await.unwrap().unwrap().get::<i64>("c").unwrap()
}

/// Removes the stream, dead-letter stream (and so the durable) a test made.
async fn remove_streams(js: &async_nats::jetstream::Context, names: &Names) {
    let _ = js.delete_stream(&names.stream).await;
    let _ = js.delete_stream(&names.dead_letter_stream).await;
}

// --- the tests --------------------------------------------------------------

/// The incident's stress scenario through the real binary: 50 keys, 50
/// transition events, and `/metrics` showing exactly what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_shows_fifty_acks_fifty_keys_deleted_and_fifty_upserts_in_metrics() {
    let _servers = services::shared().await;
    let names = Names::new("ops");
    let mut valkey = services::valkey().await;
    let graph = services::neo4j().await;
    let js = services::jetstream().await;

    let keys: Vec<String> = (1..=50)
        .map(|i| format!("{}STRESS-NEO-{i:04}", key_prefix(&names)))
        .collect();
    // Another story whose id starts with a stress id: it must stay.
    let other = format!("{}STRESS-NEO-00010", key_prefix(&names));
    services::set_keys(&mut valkey, keys.iter().chain([&other]), "rendered").await;
    let timestamp = services::unique("2026-11-26T00:00:00Z#");

    let mut serve = Serve::start(&names, plugin_file(), &[]);
    serve.wait_ready(Duration::from_secs(60));
    let (status, body) = serve.get("/healthz").unwrap();
    assert_eq!(status, 200, "/healthz: {body}");

    for i in 1..=50 {
        publish(
            &js,
            &names.subject,
            transition(&format!("STRESS-NEO-{i:04}"), &timestamp),
        )
        .await;
    }
    let ack = format!("switchyard_events_total{{handler=\"{HANDLER}\",outcome=\"ack\"}}");
    let metrics = poll(Duration::from_secs(60), "50 acks in /metrics", || {
        serve.assert_running();
        let metrics = serve.metrics();
        match sample(&metrics, &ack) {
            Some(n) if n >= 50.0 => Ok(metrics),
            n => Err(format!("{ack} = {n:?}")),
        }
    });

    let excerpt: Vec<&str> = metrics
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && !line.contains("_bucket{")
                && (line.starts_with("switchyard_events_total")
                    || line.starts_with("switchyard_cache_keys")
                    || line.starts_with("switchyard_graph_upserts")
                    || line.starts_with("switchyard_dead_letters")
                    || line.starts_with("switchyard_redeliveries")
                    || line.starts_with("switchyard_event_duration_seconds")
                    || line.starts_with("switchyard_host_call_errors")
                    || line.starts_with("switchyard_faults")
                    || line.starts_with("switchyard_plugin_info")
                    || line.starts_with("switchyard_consumer")
                    || line.starts_with("switchyard_cache_sweep")
                    || line.starts_with("switchyard_graph_transactions")
                    || line.starts_with("switchyard_graph_rows"))
        })
        .collect();
    eprintln!("/metrics after the seed scenario:\n{}", excerpt.join("\n"));

    assert!(
        metrics.lines().any(|l| l == format!("{ack} 50")),
        "exactly 50 acks:\n{metrics}"
    );
    let deleted = format!("switchyard_cache_keys_deleted_total{{handler=\"{HANDLER}\"}}");
    assert!(
        metrics.lines().any(|l| l == format!("{deleted} 50")),
        "exactly 50 keys deleted:\n{metrics}"
    );
    let entities =
        format!("switchyard_graph_upserts_total{{handler=\"{HANDLER}\",kind=\"entity\"}}");
    assert!(
        metrics.lines().any(|l| l == format!("{entities} 50")),
        "exactly 50 entity upserts:\n{metrics}"
    );
    let duration_count =
        format!("switchyard_event_duration_seconds_count{{handler=\"{HANDLER}\"}}");
    assert!(
        sample(&metrics, &duration_count).unwrap_or_default() >= 50.0,
        "{metrics}"
    );
    // The shared work: every upsert committed in batched transactions,
    // every invalidation served by a sweep, no more sweeps than calls.
    let value = |name: &str| sample(&metrics, name).unwrap_or_default();
    assert_eq!(
        value("switchyard_graph_rows_written_total"),
        50.0,
        "{metrics}"
    );
    let transactions = value("switchyard_graph_transactions_total");
    assert!((1.0..=50.0).contains(&transactions), "{metrics}");
    let (sweeps, calls) = (
        value("switchyard_cache_sweeps_total"),
        value("switchyard_cache_sweep_calls_total"),
    );
    assert_eq!(
        calls, 50.0,
        "one delete-matching sweep call per event:\n{metrics}"
    );
    assert!((1.0..=calls).contains(&sweeps), "{metrics}");
    assert!(
        value("switchyard_cache_sweep_keys_visited_total") >= 1.0,
        "{metrics}"
    );
    let dead = format!("switchyard_dead_letters_total{{handler=\"{HANDLER}\"}}");
    assert_eq!(
        sample(&metrics, &dead).unwrap_or_default(),
        0.0,
        "no dead letters:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_plugin_info{")
                && l.contains(HANDLER)
                && l.ends_with(" 1")),
        "plugin_info:\n{metrics}"
    );

    // What the metrics say is what happened.
    assert_eq!(
        existing(&mut valkey, &keys).await,
        0,
        "every stress key is gone"
    );
    assert_eq!(
        existing(&mut valkey, std::slice::from_ref(&other)).await,
        1,
        "{other} must stay"
    );
    assert_eq!(transitions_at(&graph, &timestamp).await, 50);

    let status = serve.terminate();
    assert_eq!(status.code(), Some(0), "graceful drain exits 0");
    let _: () = redis::cmd("DEL")
        .arg(&other)
        .query_async(&mut valkey)
        .await
        .unwrap();
    remove_streams(&js, &names).await;
}

/// Puts Valkey back if a test stopped it and then failed.
struct ValkeyStopped;

impl Drop for ValkeyStopped {
    fn drop(&mut self) {
        services::control("start", "valkey");
    }
}

/// `/readyz` follows the cache: 503 naming it while Valkey is stopped, 200
/// once it is back; `/healthz` stays 200 throughout (a liveness probe must
/// not restart a host for a dependency's outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_valkey_down_and_back_while_healthz_stays_up() {
    let _faults = services::exclusive().await;
    let names = Names::new("ops");
    let js = services::jetstream().await;
    let mut serve = Serve::start(&names, plugin_file(), &[]);
    serve.wait_ready(Duration::from_secs(60));
    assert_eq!(serve.get("/healthz").unwrap().0, 200);

    // Keep the outage short: stop, see the 503, start again at once.
    services::control("stop", "valkey");
    let restart = ValkeyStopped;
    let body = poll(
        Duration::from_secs(15),
        "/readyz 503 with the cache down",
        || match serve.get("/readyz") {
            Ok((503, body)) if body.contains("cache: down") => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    let healthz = serve.get("/healthz");
    drop(restart); // starts Valkey
    eprintln!("/readyz while Valkey was stopped:\n{body}");
    assert!(body.contains("nats: up"), "{body}");
    assert_eq!(
        healthz.map(|(status, _)| status),
        Ok(200),
        "/healthz stays 200 during the outage"
    );

    poll(
        Duration::from_secs(60),
        "/readyz 200 with Valkey back",
        || match serve.get("/readyz") {
            Ok((200, body)) if body.contains("cache: up") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    serve.assert_running();
    let status = serve.terminate();
    assert_eq!(status.code(), Some(0), "graceful drain exits 0");
    remove_streams(&js, &names).await;
}

/// The story-transitions component with a custom section appended: the
/// same behaviour under a new digest.
fn variant(dir: &std::path::Path, tag: u32) -> PathBuf {
    let bytes = switchyard_tests::artifacts::story_transitions_variant(tag);
    let path = dir.join(format!("story-transitions-{tag}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `sha256:<hex>` of a file, as hosts report digests.
fn digest_of(path: &std::path::Path) -> String {
    switchyard::runtime::Digest::of(&std::fs::read(path).unwrap()).to_string()
}

/// Runs `switchyard <args>` to completion: (success, stdout, stderr).
fn cli(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let output = switchyard()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `switchyard status --json`: each answering host's pid and the version
/// (`#N (label)` and digest) it runs for the handler.
fn fleet(config: &std::path::Path) -> Result<Vec<(u32, String)>, String> {
    let (ok, stdout, stderr) = cli(&[
        "status".as_ref(),
        "--json".as_ref(),
        "--wait".as_ref(),
        "500ms".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    if !ok {
        return Err(format!("switchyard status failed: {stderr}"));
    }
    let hosts: Vec<switchyard::fleet::status::HostStatus> =
        serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))?;
    let mut digests: Vec<(u32, String)> = hosts
        .iter()
        .flat_map(|h| {
            h.handlers.iter().filter(|s| s.handler == HANDLER).map(|s| {
                let version = s.version.as_deref().unwrap_or("no version");
                (h.pid, format!("{version} {}", s.digest))
            })
        })
        .collect();
    digests.sort();
    Ok(digests)
}

/// Waits until exactly the hosts `pids` answer `switchyard status`, all on
/// `version` (`#N (label) sha256:...`).
fn fleet_on(config: &std::path::Path, pids: &[u32], version: &str) {
    poll(
        Duration::from_secs(60),
        &format!("hosts {pids:?} on {version}"),
        || {
            let fleet = fleet(config)?;
            let expected: Vec<(u32, String)> =
                pids.iter().map(|&pid| (pid, version.to_string())).collect();
            if fleet == expected {
                Ok(())
            } else {
                Err(format!("{fleet:?}"))
            }
        },
    );
}

/// The operator's loop across two `switchyard serve` processes sharing one
/// durable: `plugin push` reaches both while events flow, a broken push is
/// refused before it is stored, `plugin rollback` brings both back to the
/// previous digest, and every event is handled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_push_reaches_two_host_processes_and_rollback_restores_the_previous_digest() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let js = services::jetstream().await;
    let names = Names::new("ops");
    let dir = temp_dir(&names.id);
    // The operator's own copy of the configuration (its http port is unused).
    let config = dir.join("operator.toml");
    std::fs::write(
        &config,
        config_toml(&names, Plugin::Object(HANDLER.to_string()), free_port()),
    )
    .unwrap();
    let (first, second) = (variant(&dir, 1), variant(&dir, 2));
    let (first_digest, second_digest) = (digest_of(&first), digest_of(&second));
    // The example fixtures, for this handler's key prefix.
    let fixtures = dir.join("fixtures.jsonl");
    std::fs::write(
        &fixtures,
        std::fs::read_to_string(example("story-transitions.fixtures.jsonl"))
            .unwrap()
            .replace("\"context:", &format!("\"{}", key_prefix(&names))),
    )
    .unwrap();
    let push = |file: &std::path::Path, label: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "plugin".as_ref(),
            "push".as_ref(),
            HANDLER.as_ref(),
            file.as_os_str(),
            "--fixtures".as_ref(),
            fixtures.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ];
        args.extend(label.iter().map(|a| std::ffi::OsStr::new(*a)));
        cli(&args)
    };
    let first_version = format!("#1 (first-build) {first_digest}");
    let second_version = format!("#2 {second_digest}");

    // No host follows the object yet: refused, nothing stored.
    let (ok, stdout, stderr) = push(&first, &["--label", "first-build"]);
    assert!(!ok, "a push no host would run must fail: {stdout}");
    assert!(
        stderr.contains("no running host follows") && stderr.contains("--allow-no-hosts"),
        "{stderr}"
    );
    // The first version, before the hosts that will run it: said explicitly.
    let (ok, stdout, stderr) = push(&first, &["--label", "first-build", "--allow-no-hosts"]);
    assert!(ok, "first push: {stdout}{stderr}");
    assert!(
        stdout.contains("no running host follows it yet"),
        "{stdout}"
    );
    assert!(stdout.contains(&first_version), "{stdout}");
    let pushed = || Plugin::Object(HANDLER.to_string());
    let mut host_a = Serve::start(&names, pushed(), &[]);
    let mut host_b = Serve::start(&names, pushed(), &[]);
    host_a.wait_ready(Duration::from_secs(60));
    host_b.wait_ready(Duration::from_secs(60));
    let pids = {
        let mut pids = [host_a.pid(), host_b.pid()];
        pids.sort();
        pids
    };
    fleet_on(&config, &pids, &first_version);

    // Push the second version halfway through 200 events.
    let timestamp = services::unique("fleet#");
    for i in 0..200 {
        if i == 100 {
            let (ok, stdout, stderr) = push(&second, &[]);
            assert!(ok, "second push: {stdout}{stderr}");
            assert!(stdout.contains("2 hosts follow it"), "{stdout}");
        }
        publish(
            &js,
            &names.subject,
            transition(&format!("FLEET-{i}"), &timestamp),
        )
        .await;
    }
    fleet_on(&config, &pids, &second_version);
    let (ok, listed, stderr) = cli(&[
        "plugin".as_ref(),
        "list".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(ok, "plugin list: {stderr}");
    assert!(
        listed.contains(&format!(
            "{HANDLER}: live {second_version}; 2 hosts on {second_version}"
        )),
        "{listed}"
    );

    // Not a component: refused by the CLI, nothing stored, fleet unchanged.
    let (ok, stdout, stderr) = push(&fixtures, &[]);
    assert!(!ok, "pushing a fixtures file must fail: {stdout}");
    assert!(
        stderr.contains("component"),
        "the refusal says why: {stderr}"
    );

    let (ok, history, stderr) = cli(&[
        "plugin".as_ref(),
        "history".as_ref(),
        HANDLER.as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(ok, "history: {stderr}");
    let listed: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        listed,
        [
            ["#1", first_digest.as_str()],
            ["#2", second_digest.as_str()]
        ],
        "{history}"
    );
    assert!(
        history.lines().next().unwrap().ends_with("(first-build)"),
        "{history}"
    );

    let (ok, stdout, stderr) = cli(&[
        "plugin".as_ref(),
        "rollback".as_ref(),
        HANDLER.as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(ok, "rollback: {stdout}{stderr}");
    assert!(stdout.contains(&first_version), "{stdout}");
    fleet_on(&config, &pids, &first_version);

    poll(
        Duration::from_secs(60),
        "200 events handled across both hosts",
        || {
            let handled: f64 = [&host_a, &host_b]
                .iter()
                .map(|host| {
                    sample(
                        &host.metrics(),
                        &format!(
                            "switchyard_events_total{{handler=\"{HANDLER}\",outcome=\"ack\"}}"
                        ),
                    )
                    .unwrap_or(0.0)
                })
                .sum();
            if handled >= 200.0 {
                Ok(())
            } else {
                Err(format!("{handled} acked"))
            }
        },
    );
    let acked: Vec<f64> = [&host_a, &host_b]
        .iter()
        .map(|host| {
            sample(
                &host.metrics(),
                &format!("switchyard_events_total{{handler=\"{HANDLER}\",outcome=\"ack\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect();
    eprintln!("acks per host: {acked:?}");
    assert_eq!(
        acked.iter().sum::<f64>(),
        200.0,
        "each event acked once across the two hosts: {acked:?}"
    );
    assert_eq!(
        transitions_at(&graph, &timestamp).await,
        200,
        "one node per event"
    );

    for host in [host_a, host_b] {
        assert_eq!(host.terminate().code(), Some(0), "graceful drain exits 0");
    }
    remove_streams(&js, &names).await;
    let _ = js.delete_object_store(&names.plugin_bucket).await;
    let _ = js.delete_key_value(&names.plugin_kv).await;
}

/// A configuration with an unknown key refuses to start, naming the key.
#[test]
fn serve_refuses_an_unknown_config_key_and_names_it() {
    let id = services::unique("badcfg");
    let dir = temp_dir(&id);
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[nats]
url = "nats://127.0.0.1:1"
stream = "UNUSED"
stream_subjects = ["unused.>"]

[cache]
url = "memory://"

[graph]
url = "memory://"

[http]
listen = ""

[[handlers]]
name = "{HANDLER}"
plugin = "{STORY_TRANSITIONS}"
subjects = ["unused.story"]
durable = "unused"
concurency = 4
"#
        ),
    )
    .unwrap();
    let output = switchyard()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a bad config must not start: {stderr}"
    );
    assert!(
        stderr.contains("handlers[0].concurency"),
        "the key is named: {stderr}"
    );
    assert!(stderr.contains("unknown field"), "{stderr}");
}

/// The configurations shipped with the deployment examples are accepted by
/// the host as they are (the Kubernetes one is read out of its ConfigMap).
#[test]
fn the_deployment_examples_configurations_are_accepted() {
    use switchyard::config::Config;

    let docker = std::fs::read_to_string(example("docker/switchyard.toml")).unwrap();
    let config = Config::parse(
        &docker,
        "examples/docker/switchyard.toml",
        std::iter::empty(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.handlers.len(), 1);

    // The block scalar under `switchyard.toml: |`, de-indented.
    let manifest = std::fs::read_to_string(example("k8s/configmap.yaml")).unwrap();
    let mut lines = manifest
        .lines()
        .skip_while(|line| line.trim() != "switchyard.toml: |")
        .skip(1);
    let first = lines
        .clone()
        .find(|line| !line.trim().is_empty())
        .expect("a TOML block");
    let indent = first.len() - first.trim_start().len();
    let toml: String = lines
        .by_ref()
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() >= indent)
        .map(|line| format!("{}\n", line.get(indent..).unwrap_or("")))
        .collect();
    let config = Config::parse(&toml, "examples/k8s/configmap.yaml", std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(config.http.listen, "0.0.0.0:9464");
    assert_eq!(config.handlers[0].grants.graph_labels, ["PhaseTransition"]);
    // The pool fits the pod's memory limit.
    let deployment = std::fs::read_to_string(example("k8s/deployment.yaml")).unwrap();
    assert!(
        deployment.contains("memory: 1536Mi"),
        "the pod's limit moved"
    );
    assert_eq!(
        switchyard::memory::check(&config, Some(1536)),
        switchyard::memory::Fit::Fits
    );

    // systemd: the example configuration with the unit's environment file
    // fits the unit's MemoryMax.
    let env: Vec<(String, String)> = std::fs::read_to_string(example("systemd/switchyard.env"))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let unit = std::fs::read_to_string(example("systemd/switchyard.service")).unwrap();
    assert!(unit.contains("MemoryMax=2G"), "the unit's limit moved");
    let text = std::fs::read_to_string(example("switchyard.toml")).unwrap();
    let config = Config::parse(&text, "examples/switchyard.toml", env).unwrap();
    assert_eq!(config.runtime.memory_budget_mib, Some(2048));
    assert_eq!(
        switchyard::memory::check(&config, Some(2048)),
        switchyard::memory::Fit::Fits
    );
}

/// One request received by [`Collector`].
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// A stand-in OTLP/HTTP collector on loopback: records every request and
/// answers 200.
struct Collector {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || serve_otlp(stream, &sink));
            }
        });
        Collector { port, received }
    }

    fn bodies_with(&self, path: &str) -> Vec<Vec<u8>> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.body.clone())
            .collect()
    }
}

/// Reads HTTP/1.1 requests from one connection until it closes.
fn serve_otlp(stream: TcpStream, sink: &Mutex<Vec<Received>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sink.lock().unwrap().push(Received {
            path,
            content_type,
            body,
        });
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// With `--otlp-endpoint`, spans go to `<endpoint>/v1/traces` as OTLP
/// protobuf, and what is still batched is sent before the process exits.
#[test]
fn spans_are_exported_over_otlp_http_and_flushed_at_exit() {
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let output = switchyard()
        .args([
            "--otlp-endpoint",
            &endpoint,
            "test",
            STORY_TRANSITIONS,
            "--events",
        ])
        .arg(example("stress/events.jsonl"))
        .arg("--cache")
        .arg(example("stress/cache.json"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The process has exited: everything it exported has been received.
    let bodies = collector.bodies_with("/v1/traces");
    assert!(!bodies.is_empty(), "nothing reached /v1/traces");
    {
        let received = collector.received.lock().unwrap();
        assert!(
            received
                .iter()
                .all(|r| r.content_type == "application/x-protobuf")
        );
    }
    let all: Vec<u8> = bodies.concat();
    assert_eq!(
        count(&all, b"dispatch"),
        50,
        "one `dispatch` span per event"
    );
    for needle in [
        &b"service.name"[..],
        b"switchyard",
        b"handler",
        b"sequence",
        b"attempt",
    ] {
        assert!(
            count(&all, needle) > 0,
            "{} missing from the export",
            String::from_utf8_lossy(needle)
        );
    }
}

/// The same spans from `serve`: `event` (per delivery) around `dispatch`,
/// exported while running and flushed by the graceful drain on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_event_and_dispatch_spans_and_flushes_on_sigterm() {
    let _servers = services::shared().await;
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let names = Names::new("ops");
    let js = services::jetstream().await;
    let mut serve = Serve::start(&names, plugin_file(), &["--otlp-endpoint", &endpoint]);
    serve.wait_ready(Duration::from_secs(60));
    let timestamp = services::unique("2026-11-26T00:00:00Z#");
    for i in 1..=3 {
        publish(
            &js,
            &names.subject,
            transition(&format!("SPAN-{i}"), &timestamp),
        )
        .await;
    }
    let ack = format!("switchyard_events_total{{handler=\"{HANDLER}\",outcome=\"ack\"}}");
    poll(Duration::from_secs(60), "3 acks", || {
        match sample(&serve.metrics(), &ack) {
            Some(n) if n >= 3.0 => Ok(()),
            n => Err(format!("{n:?}")),
        }
    });
    let log = serve.logs();
    let status = serve.terminate();
    assert_eq!(status.code(), Some(0), "graceful drain exits 0");
    let all: Vec<u8> = collector.bodies_with("/v1/traces").concat();
    assert_eq!(
        count(&all, b"dispatch"),
        3,
        "one `dispatch` span per event; log:\n{log}"
    );
    assert!(count(&all, b"event") >= 3, "`event` spans");
    assert!(
        count(&all, names.subject.as_bytes()) >= 3,
        "the subject is an attribute"
    );
    remove_streams(&js, &names).await;
}

/// A bad endpoint is refused when the command line is read.
#[test]
fn a_bad_otlp_endpoint_is_refused_with_the_reason() {
    for (endpoint, reason) in [
        ("https://collector:4318", "https is not supported"),
        ("collector:4318", "expected an http:// URL"),
    ] {
        let output = switchyard()
            .args([
                "--otlp-endpoint",
                endpoint,
                "test",
                STORY_TRANSITIONS,
                "--events",
                "unused.jsonl",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--otlp-endpoint") && stderr.contains(reason),
            "{stderr}"
        );
    }
    // An empty OTEL_EXPORTER_OTLP_ENDPOINT (as a manifest may leave it) is no export.
    let output = switchyard()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        .args(["test", STORY_TRANSITIONS, "--events"])
        .arg(example("stress/events.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("exporting spans"), "{stderr}");
}
