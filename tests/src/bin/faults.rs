//! The fault-injection suite behind `scripts/faults`.
//!
//! Each row runs `switchyard serve` host processes (the release binary)
//! against the real NATS, Valkey and Neo4j of `scripts/services`, injects
//! one fault while events flow, and checks what came out:
//!
//! | row         | fault                                                      |
//! |-------------|------------------------------------------------------------|
//! | `kill`      | SIGKILL a host (of two sharing the durable) several times |
//! | `failover`  | SIGKILL the active host of an exclusive handler           |
//! | `nats`      | NATS restarted mid-stream (two hosts)                      |
//! | `valkey`    | Valkey SIGKILLed in the middle of a handler's scan        |
//! | `neo4j`     | Neo4j restarted while 32 handlers upsert the same ids      |
//! | `malformed` | malformed inputs mixed 1:1 with valid events               |
//!
//! and prints `fault | events sent | lost | duplicated effects |
//! dead-lettered | max stall | checks`. A row passes when nothing was
//! lost or duplicated, exactly the events meant to be dead-lettered were,
//! no host panicked, and every host still running at the end exits 0 on
//! SIGTERM. The process exits non-zero when a row failed.
//!
//! - lost: valid events whose `PhaseTransition` node is missing, plus
//!   stories whose cache keys were not all invalidated.
//! - duplicated effects: `PhaseTransition` nodes beyond one per id.
//! - max stall: the longest stretch, while events were outstanding, in
//!   which no host acked or dead-lettered anything (from `/metrics`).
//!
//! Usage: `faults [--short] [--only ROW[,ROW]] [--switchyard PATH] [--work DIR]`.
//! Needs the `SWITCHYARD_TEST_*` variables of `scripts/services env`.
//! Valkey keys go to database [`VALKEY_DB`], flushed at the start of each row.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed check panics with its reason

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use bytes::Bytes;
use futures::FutureExt as _;
use serde_json::{Value as Json, json};
use switchyard_tests::artifacts::STORY_TRANSITIONS;
use switchyard_tests::config::{Handler, Names, Plugin, Service};
use switchyard_tests::services;
use tokio::process::{Child, Command};

/// The Valkey database the suite writes to (flushed per row).
const VALKEY_DB: u32 = 12;

struct Options {
    short: bool,
    only: Option<Vec<String>>,
    bin: PathBuf,
    work: PathBuf,
}

fn parse_args() -> Result<Options, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut options = Options {
        short: false,
        only: None,
        bin: root.join("target/release/switchyard"),
        work: root.join("target/faults"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => options.short = true,
            "--only" => {
                let rows = args.next().ok_or("--only needs a row name")?;
                options.only = Some(rows.split(',').map(str::to_string).collect());
            }
            "--switchyard" => options.bin = args.next().ok_or("--switchyard needs a path")?.into(),
            "--work" => options.work = args.next().ok_or("--work needs a directory")?.into(),
            "-h" | "--help" => {
                return Err("usage: faults [--short] [--only kill,nats,valkey,neo4j,malformed] [--switchyard PATH] [--work DIR]".into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

// --- names, configuration ------------------------------------------------------

/// Where a row's cache keys live: `<id>:`.
fn key_prefix(names: &Names) -> String {
    format!("{}:", names.id)
}

/// The `i`th story of a row.
fn story(names: &Names, i: usize) -> String {
    format!("{}-S{i:05}", names.id)
}

struct HandlerSpec {
    name: String,
    concurrency: u32,
    ordered: bool,
    ack_wait: &'static str,
    deadline: &'static str,
    max_deliver: u32,
    exclusive: bool,
}

impl HandlerSpec {
    fn new(name: &str) -> Self {
        HandlerSpec {
            name: name.to_string(),
            concurrency: 16,
            ordered: true,
            ack_wait: "5s",
            deadline: "4s",
            max_deliver: 50,
            exclusive: false,
        }
    }
}

fn valkey_db_url() -> String {
    let url = services::valkey_url();
    let host = url.find("://").map_or(0, |i| i + 3);
    let end = url[host..].find(['/', '?']).map_or(url.len(), |i| host + i);
    format!("{}/{VALKEY_DB}", &url[..end])
}

fn config_toml(names: &Names, handlers: &[HandlerSpec], max_instances: u32) -> String {
    let prefix = key_prefix(names);
    let mut service = Service::new(names)
        .set("cache", "url", valkey_db_url())
        .set("http", "listen", "127.0.0.1:0")
        .set("runtime", "max_instances", max_instances);
    for spec in handlers {
        let mut handler = Handler::new(
            &spec.name,
            Plugin::File(STORY_TRANSITIONS.to_string()),
            names,
        )
        .set("max_deliver", spec.max_deliver)
        .set("concurrency", spec.concurrency)
        .set("max_ack_pending", 4096)
        .set("ack_wait", spec.ack_wait)
        .set("deadline", spec.deadline)
        .set("drain_grace", "10s")
        .set("max_host_calls", 100_000)
        .set("exclusive", spec.exclusive)
        .grant("cache_keys", [format!("{prefix}*")])
        .grant("graph_labels", ["PhaseTransition"])
        .config("key_prefix", prefix.as_str())
        .config("retry_base_ms", "100")
        .config("retry_max_ms", "2000");
        if spec.ordered {
            handler = handler.set("order_key", vec!["/payload/story_id", "/story_id"]);
        }
        service = service.handler(handler);
    }
    service.to_toml()
}

// --- host processes ------------------------------------------------------------

struct Host {
    name: String,
    child: Child,
    log: PathBuf,
    listen: String,
}

fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("a free loopback port")
}

impl Host {
    fn spawn(options: &Options, config: &Path, name: &str) -> Host {
        let listen = free_address();
        let log = options.work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("host log file");
        let child = Command::new(&options.bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("SWITCHYARD_HTTP__LISTEN", &listen)
            .env("SWITCHYARD_LOG_FORMAT", "json")
            // `event handled` is a debug line of the settle step.
            .env("SWITCHYARD_LOG", "info,switchyard::delivery::settle=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.bin.display()));
        Host {
            name: name.to_string(),
            child,
            log,
            listen,
        }
    }

    async fn ready(&self, timeout: Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if http(&self.listen, "/readyz")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "host {} not ready within {timeout:?}; see {}",
            self.name,
            self.log.display()
        );
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM; the exit code, or `None` if it did not exit within `timeout`.
    async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id()?;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Some(status.code().unwrap_or(-1)),
            _ => {
                self.kill().await;
                None
            }
        }
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
async fn http(address: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Events acked or dead-lettered so far by the host serving `/metrics` at `address`.
async fn settled_by(address: &str) -> Option<f64> {
    let (_, body) = http(address, "/metrics").await?;
    Some(
        body.lines()
            .filter(|line| {
                line.starts_with("switchyard_events_total{")
                    && (line.contains("outcome=\"ack\"") || line.contains("outcome=\"reject\""))
            })
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
    )
}

/// What the hosts' logs say.
#[derive(Default)]
struct LogStats {
    /// (handler, stream sequence) → times acked.
    acked: HashMap<(String, u64), u32>,
    /// (handler, stream sequence) → outcomes, in order.
    outcomes: HashMap<(String, u64), Vec<String>>,
    /// (handler, stream sequence) of events handled on a redelivery.
    redelivered: HashSet<(String, u64)>,
    panics: usize,
    drained: usize,
}

fn read_logs(paths: &[PathBuf]) -> LogStats {
    let mut stats = LogStats::default();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            if line.contains("panicked") {
                stats.panics += 1;
            }
            let Ok(entry) = serde_json::from_str::<Json>(line) else {
                continue;
            };
            let message = entry["fields"]["message"].as_str().unwrap_or_default();
            if message == "consumer drained" {
                stats.drained += 1;
            }
            if message != "event handled" {
                continue;
            }
            let outcome = entry["fields"]["outcome"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let span = &entry["span"];
            let handler = span["handler"].as_str().unwrap_or_default().to_string();
            let Some(sequence) = span["sequence"].as_u64() else {
                continue;
            };
            if outcome == "ack" {
                *stats.acked.entry((handler.clone(), sequence)).or_default() += 1;
            }
            if span["attempt"].as_u64().is_some_and(|attempt| attempt > 1) {
                stats.redelivered.insert((handler.clone(), sequence));
            }
            stats
                .outcomes
                .entry((handler, sequence))
                .or_default()
                .push(outcome);
        }
    }
    stats
}

impl LogStats {
    /// Events that were acked more than once (their effects re-applied).
    fn rehandled(&self) -> u64 {
        self.acked
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }
}

// --- publishing ----------------------------------------------------------------

/// Publishes every payload (with a `Nats-Msg-Id`, so a retried publish is
/// stored once) and returns each one's stream sequence. Retries until every
/// publish is acknowledged, e.g. across a NATS restart.
async fn publish_all(js: &Context, subject: &str, id: &str, payloads: &[Bytes]) -> Vec<u64> {
    publish_paced(js, subject, id, payloads, None).await
}

/// [`publish_all`], at most `rate` events a second when given. A chunk
/// whose publishes are not all acknowledged is sent again (after a pause)
/// before the next one, so events reach the stream roughly in order.
async fn publish_paced(
    js: &Context,
    subject: &str,
    id: &str,
    payloads: &[Bytes],
    rate: Option<u32>,
) -> Vec<u64> {
    let mut sequences = vec![0u64; payloads.len()];
    let started = Instant::now();
    let chunk_size = rate.map_or(256, |r| (r as usize / 20).max(1));
    let indices: Vec<usize> = (0..payloads.len()).collect();
    for chunk in indices.chunks(chunk_size) {
        let chunk_started = Instant::now();
        let mut pending: Vec<usize> = chunk.to_vec();
        while !pending.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "could not publish for 300 s"
            );
            let mut acks = Vec::new();
            let mut failed = Vec::new();
            for &i in &pending {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{id}-{i}").as_str());
                match js
                    .publish_with_headers(subject.to_string(), headers, payloads[i].clone())
                    .await
                {
                    Ok(ack) => acks.push((i, ack)),
                    Err(_) => failed.push(i),
                }
            }
            for (i, ack) in acks {
                match ack.await {
                    Ok(ack) => sequences[i] = ack.sequence,
                    Err(_) => failed.push(i),
                }
            }
            if !failed.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pending = failed;
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(chunk.len() as f64 / f64::from(rate));
            tokio::time::sleep(due.saturating_sub(chunk_started.elapsed())).await;
        }
    }
    sequences
}

fn transition(story: &str, timestamp: &str, envelope: bool) -> Bytes {
    let flat = json!({"story_id": story, "from_phase": "DESIGN", "to_phase": "BUILD", "timestamp": timestamp});
    let body = if envelope {
        json!({"event_type": "planning.story.transitioned", "payload": flat, "producer": "faults"})
    } else {
        flat
    };
    Bytes::from(body.to_string())
}

// --- observing -----------------------------------------------------------------

async fn consumer_remaining(js: &Context, stream: &str, durables: &[String]) -> Option<u64> {
    let stream = js.get_stream(stream).await.ok()?;
    let mut total = 0;
    for durable in durables {
        let info = stream.consumer_info(durable).await.ok()?;
        total += info.num_pending + info.num_ack_pending as u64;
    }
    Some(total)
}

async fn consumer_redelivered(js: &Context, stream: &str, durable: &str) -> usize {
    let Ok(stream) = js.get_stream(stream).await else {
        return usize::MAX;
    };
    stream
        .consumer_info(durable)
        .await
        .map_or(usize::MAX, |i| i.num_redelivered)
}

/// Tracks the longest stretch without an ack or dead letter from any live
/// host while the consumers still had events outstanding.
struct StallMonitor {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl StallMonitor {
    fn start(
        js: Context,
        stream: String,
        durables: Vec<String>,
        hosts: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut last: HashMap<String, f64> = HashMap::new();
            let mut last_progress = Instant::now();
            let mut worst = Duration::ZERO;
            let began = Instant::now();
            let mut worst_at = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let addresses: Vec<String> = hosts.lock().unwrap().clone();
                let mut progressed = false;
                for address in addresses {
                    if let Some(count) = settled_by(&address).await {
                        let before = last.insert(address, count).unwrap_or(0.0);
                        progressed |= count > before;
                    }
                }
                // Progress counts only while the server answers: an ack that
                // cannot reach it is not progress yet.
                let remaining = consumer_remaining(&js, &stream, &durables).await;
                let idle = remaining == Some(0);
                if (progressed && remaining.is_some()) || idle {
                    last_progress = Instant::now();
                }
                if last_progress.elapsed() > worst {
                    worst = last_progress.elapsed();
                    worst_at = last_progress.duration_since(began);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            eprintln!(
                "  max stall {:.1} s, from {:.1} s into the row's flow",
                worst.as_secs_f64(),
                worst_at.as_secs_f64()
            );
            worst
        });
        StallMonitor { stop, task }
    }

    async fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn valkey() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(valkey_db_url()).expect("Valkey URL");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("Valkey connection")
}

async fn flush_db() {
    let mut valkey = valkey().await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut valkey)
        .await
        .expect("FLUSHDB");
}

async fn dbsize() -> Option<u64> {
    let client = redis::Client::open(valkey_db_url()).ok()?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    redis::cmd("DBSIZE").query_async(&mut connection).await.ok()
}

/// Sets `<prefix><story>` and `<prefix><story>:developer` for each story, and
/// `extra` more keys `<prefix><story>:<n>` for the given story.
async fn seed_keys(prefix: &str, stories: &[String], big: Option<(&str, usize)>) -> u64 {
    let mut valkey = valkey().await;
    let mut keys: Vec<String> = stories
        .iter()
        .flat_map(|s| [format!("{prefix}{s}"), format!("{prefix}{s}:developer")])
        .collect();
    if let Some((story, extra)) = big {
        keys.push(format!("{prefix}{story}"));
        keys.extend((0..extra).map(|n| format!("{prefix}{story}:{n}")));
    }
    for chunk in keys.chunks(5000) {
        let mut command = redis::cmd("MSET");
        for key in chunk {
            command.arg(key).arg("rendered context");
        }
        let _: () = command.query_async(&mut valkey).await.expect("MSET");
    }
    keys.len() as u64
}

/// Stories (of `stories`) that still have a key.
async fn stories_with_keys(prefix: &str, stories: &[String]) -> u64 {
    let mut valkey = valkey().await;
    let mut left = 0;
    for chunk in stories.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|s| format!("{prefix}{s}")).collect();
        let exists: Vec<bool> = {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("EXISTS").arg(key);
            }
            pipe.query_async(&mut valkey).await.expect("EXISTS")
        };
        left += exists.iter().filter(|e| **e).count() as u64;
    }
    left
}

/// Count of `PhaseTransition` nodes per id, for ids starting with `prefix`.
async fn nodes_by_id(graph: &neo4rs::Graph, prefix: &str) -> Result<HashMap<String, i64>, String> {
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (n:PhaseTransition) WHERE n.id STARTS WITH $p RETURN n.id AS id, count(*) AS c",
            )
            .param("p", prefix),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut counts = HashMap::new();
    while let Some(row) = rows.next().await.map_err(|e| e.to_string())? {
        let id: String = row.get("id").map_err(|e| e.to_string())?;
        let count: i64 = row.get("c").map_err(|e| e.to_string())?;
        counts.insert(id, count);
    }
    Ok(counts)
}

async fn neo4j() -> neo4rs::Graph {
    neo4rs::Graph::new(services::neo4j_url(), "neo4j", "switchyard")
        .await
        .expect("Neo4j connection")
}

/// Messages in the dead-letter stream for `subject` (all handlers: `<subject>.>`).
async fn dead_letter_count(js: &Context, names: &Names) -> u64 {
    let Ok(mut stream) = js.get_stream(&names.dead_letter_stream).await else {
        return 0;
    };
    stream
        .info()
        .await
        .map(|i| i.state.messages)
        .unwrap_or_default()
}

/// Waits until `done` is true; panics after `timeout` with the last state.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let mut last = String::from("never checked");
    while started.elapsed() < timeout {
        match check().await {
            Ok(()) => return,
            Err(state) => last = state,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} did not happen within {timeout:?}; last state: {last}");
}

// --- rows ----------------------------------------------------------------------

#[derive(Default)]
struct RowResult {
    fault: String,
    sent: String,
    lost: u64,
    duplicated: u64,
    dead_lettered: u64,
    expected_dead: u64,
    max_stall: Duration,
    checks: Vec<String>,
    failures: Vec<String>,
}

impl RowResult {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            self.checks.push(what);
        } else {
            self.failures.push(what);
        }
    }

    fn passed(&self) -> bool {
        self.failures.is_empty()
            && self.lost == 0
            && self.duplicated == 0
            && self.dead_lettered == self.expected_dead
    }
}

/// The hosts of a row and the files they write.
struct Fleet {
    options_work: PathBuf,
    config: PathBuf,
    hosts: Vec<Host>,
    logs: Vec<PathBuf>,
    addresses: Arc<Mutex<Vec<String>>>,
    spawned: usize,
    row: String,
}

impl Fleet {
    fn new(options: &Options, row: &str, config_text: &str) -> Fleet {
        let dir = options.work.join(row);
        std::fs::create_dir_all(&dir).expect("work directory");
        let config = dir.join("switchyard.toml");
        std::fs::write(&config, config_text).expect("write config");
        Fleet {
            options_work: dir,
            config,
            hosts: Vec::new(),
            logs: Vec::new(),
            addresses: Arc::new(Mutex::new(Vec::new())),
            spawned: 0,
            row: row.to_string(),
        }
    }

    fn spawn(&mut self, options: &Options) -> usize {
        self.spawned += 1;
        let name = format!("host-{}", self.spawned);
        let host_options = Options {
            short: options.short,
            only: None,
            bin: options.bin.clone(),
            work: self.options_work.clone(),
        };
        let host = Host::spawn(&host_options, &self.config, &name);
        self.logs.push(host.log.clone());
        self.addresses.lock().unwrap().push(host.listen.clone());
        self.hosts.push(host);
        self.hosts.len() - 1
    }

    async fn ready(&self) {
        for host in &self.hosts {
            host.ready(Duration::from_secs(60)).await;
        }
    }

    /// SIGKILLs host `index` and starts a replacement in its place.
    async fn kill_and_replace(&mut self, options: &Options, index: usize) {
        let listen = self.hosts[index].listen.clone();
        self.hosts[index].kill().await;
        self.addresses.lock().unwrap().retain(|a| *a != listen);
        self.spawned += 1;
        let name = format!("host-{}", self.spawned);
        let host_options = Options {
            short: options.short,
            only: None,
            bin: options.bin.clone(),
            work: self.options_work.clone(),
        };
        let host = Host::spawn(&host_options, &self.config, &name);
        self.logs.push(host.log.clone());
        self.addresses.lock().unwrap().push(host.listen.clone());
        self.hosts[index] = host;
    }

    /// Checks every host is alive, then SIGTERMs each and expects exit 0.
    async fn stop(&mut self, result: &mut RowResult) {
        let mut alive = true;
        for host in &mut self.hosts {
            alive &= host.alive();
        }
        result.check(alive, "every host process alive at the end");
        let mut codes = Vec::new();
        for host in &mut self.hosts {
            codes.push(host.terminate(Duration::from_secs(30)).await);
        }
        result.check(
            codes.iter().all(|c| *c == Some(0)),
            format!("SIGTERM: every host drained and exited 0 ({codes:?})"),
        );
        let logs = read_logs(&self.logs);
        result.check(logs.panics == 0, format!("{} host panics", logs.panics));
        result.check(
            logs.drained >= self.hosts.len(),
            format!(
                "{} `consumer drained` lines from {} stopped hosts",
                logs.drained,
                self.hosts.len()
            ),
        );
        eprintln!("  [{}] logs in {}", self.row, self.options_work.display());
    }
}

/// The node ids `per_story` transitions of each of `stories` write.
fn event_ids(stories: &[String], per_story: usize) -> HashSet<String> {
    (0..per_story)
        .flat_map(|t| stories.iter().map(move |s| format!("{s}:t{t:02}")))
        .collect()
}

/// Waits until every id in `expected` has its node and `durable` has
/// nothing outstanding.
async fn wait_all_handled(
    js: &Context,
    graph: &neo4rs::Graph,
    names: &Names,
    durable: &str,
    expected: &HashSet<String>,
    timeout: Duration,
) {
    let prefix = format!("{}-", names.id);
    let durables = [durable.to_string()];
    wait_until(timeout, "every event handled", || async {
        let nodes = nodes_by_id(graph, &prefix).await?;
        let remaining = consumer_remaining(js, &names.stream, &durables).await;
        if nodes.len() == expected.len() && remaining == Some(0) {
            Ok(())
        } else {
            Err(format!(
                "{} of {} nodes, {remaining:?} outstanding",
                nodes.len(),
                expected.len()
            ))
        }
    })
    .await;
}

/// Fills in what the row lost (missing nodes, stories with keys left),
/// duplicated (extra nodes per id) and dead-lettered.
async fn count_effects(
    js: &Context,
    graph: &neo4rs::Graph,
    names: &Names,
    stories: &[String],
    expected: &HashSet<String>,
    result: &mut RowResult,
) {
    let nodes = nodes_by_id(graph, &format!("{}-", names.id))
        .await
        .expect("nodes");
    result.lost = expected
        .iter()
        .filter(|id| !nodes.contains_key(*id))
        .count() as u64;
    let keys_left = stories_with_keys(&key_prefix(names), stories).await;
    result.lost += keys_left;
    result.duplicated = nodes.values().map(|&c| (c - 1).max(0) as u64).sum();
    result.dead_lettered = dead_letter_count(js, names).await;
    result.check(
        keys_left == 0,
        format!("every story's keys invalidated ({keys_left} stories left)"),
    );
}

/// What the two-host rows start from: stories seeded with keys, and two
/// hosts of `spec` sharing its durable, ready.
struct TwoHosts {
    names: Names,
    stories: Vec<String>,
    durable: String,
    fleet: Fleet,
}

async fn two_hosts(options: &Options, row: &str, spec: HandlerSpec, stories: usize) -> TwoHosts {
    let names = Names::new(row);
    flush_db().await;
    let stories: Vec<String> = (0..stories).map(|i| story(&names, i)).collect();
    seed_keys(&key_prefix(&names), &stories, None).await;
    let durable = names.durable(&spec.name);
    let mut fleet = Fleet::new(options, row, &config_toml(&names, &[spec], 64));
    fleet.spawn(options);
    fleet.spawn(options);
    fleet.ready().await;
    TwoHosts {
        names,
        stories,
        durable,
        fleet,
    }
}

async fn row_kill(options: &Options, js: &Context) -> RowResult {
    let graph = &neo4j().await;
    let (total, kills) = if options.short {
        (2_000, 2)
    } else {
        (20_000, 5)
    };
    let per_story = 20;
    let mut result = RowResult {
        fault: format!("SIGKILL a host {kills}x (2 hosts, one durable)"),
        sent: total.to_string(),
        ..RowResult::default()
    };
    let TwoHosts {
        names,
        stories,
        durable,
        mut fleet,
    } = two_hosts(
        options,
        "kill",
        HandlerSpec::new("story-transitions"),
        total / per_story,
    )
    .await;

    // Interleaved: every story's first event, then every story's second...
    let payloads: Vec<Bytes> = (0..per_story)
        .flat_map(|t| {
            stories
                .iter()
                .enumerate()
                .map(move |(i, s)| (t, i, s.clone()))
        })
        .map(|(t, i, s)| transition(&s, &format!("t{t:02}"), (i + t) % 2 == 0))
        .collect();
    let monitor = StallMonitor::start(
        js.clone(),
        names.stream.clone(),
        vec![durable.clone()],
        fleet.addresses.clone(),
    );
    let publisher = {
        let (js, subject, id, payloads) = (
            js.clone(),
            names.subject.clone(),
            names.id.clone(),
            payloads.clone(),
        );
        tokio::spawn(async move { publish_all(&js, &subject, &id, &payloads).await })
    };
    // Kill at evenly spaced points of progress, alternating hosts.
    for k in 0..kills {
        let target = total as u64 * (k as u64 + 1) / (kills as u64 + 2);
        wait_until(
            Duration::from_secs(600),
            "progress before a kill",
            || async {
                let remaining =
                    consumer_remaining(js, &names.stream, std::slice::from_ref(&durable)).await;
                let published = js
                    .get_stream(&names.stream)
                    .await
                    .ok()
                    .map(|s| s.cached_info().state.messages)
                    .unwrap_or_default();
                match remaining {
                    Some(r) if published >= target && published.saturating_sub(r) >= target => {
                        Ok(())
                    }
                    other => Err(format!("remaining {other:?}, stored {published}")),
                }
            },
        )
        .await;
        let index = k % 2;
        eprintln!(
            "  [kill] SIGKILL {} after ~{target} events",
            fleet.hosts[index].name
        );
        fleet.kill_and_replace(options, index).await;
    }
    publisher.await.expect("publisher");
    let expected = event_ids(&stories, per_story);
    wait_all_handled(
        js,
        graph,
        &names,
        &durable,
        &expected,
        Duration::from_secs(900),
    )
    .await;
    result.max_stall = monitor.finish().await;
    count_effects(js, graph, &names, &stories, &expected, &mut result).await;
    fleet.stop(&mut result).await;
    let logs = read_logs(&fleet.logs);
    result.checks.push(format!(
        "{} events came back from a killed host and ran again; {} acked twice (ack lost with the host); effects idempotent",
        logs.redelivered.len(),
        logs.rehandled()
    ));
    result
}

/// Index of the fleet's host whose log says it took the lease last.
fn lease_holder(fleet: &Fleet) -> Option<usize> {
    fleet.hosts.iter().position(|host| {
        std::fs::read_to_string(&host.log)
            .map(|log| {
                let taken = log.rfind("lease taken");
                let lost = log.rfind("lease lost").max(log.rfind("lease released"));
                taken.is_some() && taken > lost
            })
            .unwrap_or(false)
    })
}

async fn row_failover(options: &Options, js: &Context) -> RowResult {
    let graph = &neo4j().await;
    let total = if options.short { 1_000 } else { 5_000 };
    let per_story = 10;
    let mut result = RowResult {
        fault: "SIGKILL the active host of an exclusive handler".into(),
        sent: total.to_string(),
        ..RowResult::default()
    };
    let spec = HandlerSpec {
        exclusive: true,
        ..HandlerSpec::new("story-transitions")
    };
    let TwoHosts {
        names,
        stories,
        durable,
        mut fleet,
    } = two_hosts(options, "failover", spec, total / per_story).await;
    wait_until(
        Duration::from_secs(30),
        "one host holds the lease",
        || async {
            lease_holder(&fleet)
                .map(|_| ())
                .ok_or_else(|| "no lease taken".to_string())
        },
    )
    .await;

    let payloads: Vec<Bytes> = (0..per_story)
        .flat_map(|t| {
            stories
                .iter()
                .map(move |s| transition(s, &format!("t{t:02}"), t % 2 == 0))
        })
        .collect();
    let monitor = StallMonitor::start(
        js.clone(),
        names.stream.clone(),
        vec![durable.clone()],
        fleet.addresses.clone(),
    );
    let third = payloads.len() / 3;
    publish_all(
        js,
        &names.subject,
        &format!("{}-a", names.id),
        &payloads[..third],
    )
    .await;
    let active = lease_holder(&fleet).expect("a lease holder");
    eprintln!(
        "  [failover] SIGKILL {} (active) after {third} events published",
        fleet.hosts[active].name
    );
    fleet.kill_and_replace(options, active).await;
    publish_all(
        js,
        &names.subject,
        &format!("{}-b", names.id),
        &payloads[third..],
    )
    .await;

    let expected = event_ids(&stories, per_story);
    wait_all_handled(
        js,
        graph,
        &names,
        &durable,
        &expected,
        Duration::from_secs(600),
    )
    .await;
    result.max_stall = monitor.finish().await;
    count_effects(js, graph, &names, &stories, &expected, &mut result).await;
    // The standby, or the host started in the killed one's place, whichever
    // took the lease first.
    let holder = lease_holder(&fleet);
    result.check(
        holder.is_some(),
        format!(
            "a standby took the lease ({})",
            holder.map_or("none", |i| fleet.hosts[i].name.as_str())
        ),
    );
    fleet.stop(&mut result).await;
    let logs = read_logs(&fleet.logs);
    result.checks.push(format!(
        "{} events came back from the killed host and ran again on the new holder",
        logs.redelivered.len()
    ));
    result
}

async fn row_nats(options: &Options, js: &Context) -> RowResult {
    let graph = &neo4j().await;
    let total = if options.short { 1_000 } else { 5_000 };
    let per_story = 10;
    let mut result = RowResult {
        fault: "NATS restarted mid-stream (2 hosts)".into(),
        sent: total.to_string(),
        ..RowResult::default()
    };
    let TwoHosts {
        names,
        stories,
        durable,
        mut fleet,
    } = two_hosts(
        options,
        "nats",
        HandlerSpec::new("story-transitions"),
        total / per_story,
    )
    .await;
    let payloads: Vec<Bytes> = (0..per_story)
        .flat_map(|t| {
            stories
                .iter()
                .map(move |s| transition(s, &format!("t{t:02}"), t % 2 == 1))
        })
        .collect();
    let monitor = StallMonitor::start(
        js.clone(),
        names.stream.clone(),
        vec![durable.clone()],
        fleet.addresses.clone(),
    );
    // Paced so that the flow spans the restart: about 8 s of publishing,
    // the restart a third of the way in.
    let rate = (total / 8) as u32;
    let third = payloads.len() / 3;
    publish_paced(
        js,
        &names.subject,
        &format!("{}-a", names.id),
        &payloads[..third],
        Some(rate),
    )
    .await;
    eprintln!("  [nats] restarting NATS after {third} events published");
    let restart = tokio::task::spawn_blocking(|| services::control("restart", "nats"));
    publish_paced(
        js,
        &names.subject,
        &format!("{}-b", names.id),
        &payloads[third..],
        Some(rate),
    )
    .await;
    restart.await.expect("restart nats");
    let expected = event_ids(&stories, per_story);
    wait_all_handled(
        js,
        graph,
        &names,
        &durable,
        &expected,
        Duration::from_secs(600),
    )
    .await;
    result.max_stall = monitor.finish().await;
    count_effects(js, graph, &names, &stories, &expected, &mut result).await;
    let stored = js
        .get_stream(&names.stream)
        .await
        .map(|s| s.cached_info().state.messages)
        .unwrap_or_default();
    result.check(
        stored == total as u64,
        format!("{stored} events stored for {total} published (no duplicate publish)"),
    );
    fleet.stop(&mut result).await;
    let logs = read_logs(&fleet.logs);
    result.checks.push(format!(
        "{} events ran again after the restart; {} acked twice (ack lost in the restart); effects idempotent",
        logs.redelivered.len(),
        logs.rehandled()
    ));
    result
}

async fn row_valkey(options: &Options, js: &Context) -> RowResult {
    let graph = &neo4j().await;
    let big_keys = if options.short { 60_000 } else { 300_000 };
    let small = 100;
    let names = Names::new("valkey");
    let mut result = RowResult {
        fault: format!("Valkey SIGKILLed mid-scan ({big_keys} keys)"),
        sent: (small + 1).to_string(),
        ..RowResult::default()
    };
    flush_db().await;
    let stories: Vec<String> = (0..small).map(|i| story(&names, i)).collect();
    let big = format!("{}-BIG", names.id);
    let seeded = seed_keys(&key_prefix(&names), &stories, Some((&big, big_keys))).await;
    let mut handler = HandlerSpec::new("story-transitions");
    handler.ack_wait = "60s";
    handler.deadline = "50s";
    handler.concurrency = 4;
    let durable = names.durable(&handler.name);
    let mut fleet = Fleet::new(options, "valkey", &config_toml(&names, &[handler], 16));
    fleet.spawn(options);
    fleet.ready().await;
    let monitor = StallMonitor::start(
        js.clone(),
        names.stream.clone(),
        vec![durable.clone()],
        fleet.addresses.clone(),
    );
    let big_sequence = publish_all(
        js,
        &names.subject,
        &format!("{}-big", names.id),
        &[transition(&big, "t00", false)],
    )
    .await[0];
    // Kill Valkey once the sweep has deleted some but not most keys.
    let started = Instant::now();
    let mut killed_at = None;
    while started.elapsed() < Duration::from_secs(120) {
        match dbsize().await {
            Some(left) if left < seeded * 95 / 100 && left > seeded / 5 => {
                killed_at = Some(left);
                break;
            }
            Some(left) if left <= seeded / 5 => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    result.check(
        killed_at.is_some(),
        format!("Valkey killed mid-sweep ({killed_at:?} of {seeded} keys left)"),
    );
    if killed_at.is_some() {
        tokio::task::spawn_blocking(|| services::control("kill", "valkey"))
            .await
            .expect("kill valkey");
        eprintln!("  [valkey] SIGKILLed Valkey with {killed_at:?} keys left");
        let payloads: Vec<Bytes> = stories
            .iter()
            .map(|s| transition(s, "t00", false))
            .collect();
        publish_all(
            js,
            &names.subject,
            &format!("{}-small", names.id),
            &payloads,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::spawn_blocking(|| services::control("start", "valkey"))
            .await
            .expect("start valkey");
    }
    let prefix = format!("{}-", names.id);
    wait_until(Duration::from_secs(600), "every event handled", || async {
        let nodes = nodes_by_id(graph, &prefix).await?;
        let remaining = consumer_remaining(js, &names.stream, std::slice::from_ref(&durable)).await;
        if nodes.len() == small + 1 && remaining == Some(0) {
            Ok(())
        } else {
            Err(format!(
                "{} of {} nodes, {remaining:?} outstanding",
                nodes.len(),
                small + 1
            ))
        }
    })
    .await;
    result.max_stall = monitor.finish().await;
    // The big event is acked: nothing deletes its keys any more, so any
    // key left now is a partial sweep that was acked.
    let left = dbsize().await.unwrap_or(u64::MAX);
    let nodes = nodes_by_id(graph, &prefix).await.expect("nodes");
    result.lost = (small + 1 - nodes.len()) as u64 + u64::from(left > 0);
    result.duplicated = nodes.values().map(|&c| (c - 1).max(0) as u64).sum();
    result.dead_lettered = dead_letter_count(js, &names).await;
    result.check(
        left == 0,
        format!("acked only after a complete sweep ({left} keys left)"),
    );
    fleet.stop(&mut result).await;
    let logs = read_logs(&fleet.logs);
    let outcomes = logs
        .outcomes
        .get(&("story-transitions".to_string(), big_sequence))
        .cloned()
        .unwrap_or_default();
    let retries = outcomes.iter().filter(|o| *o == "retry").count();
    result.check(
        retries >= 1 && outcomes.last().map(String::as_str) == Some("ack"),
        format!(
            "the interrupted event was retried {retries}x, then acked ({} outcomes)",
            outcomes.len()
        ),
    );
    result
}

async fn row_neo4j(options: &Options, js: &Context) -> RowResult {
    let total = if options.short { 100 } else { 1_000 };
    let handlers = 32;
    let names = Names::new("neo4j");
    let mut result = RowResult {
        fault: format!("Neo4j restarted, {handlers} handlers on the same ids"),
        sent: format!("{total} x{handlers}"),
        ..RowResult::default()
    };
    flush_db().await;
    let specs: Vec<HandlerSpec> = (0..handlers)
        .map(|i| {
            let mut spec = HandlerSpec::new(&format!("h{i:02}"));
            spec.concurrency = 4;
            spec.ordered = false;
            spec.ack_wait = "10s";
            spec.deadline = "8s";
            spec.max_deliver = 200;
            spec
        })
        .collect();
    let durables: Vec<String> = specs.iter().map(|s| names.durable(&s.name)).collect();
    let mut fleet = Fleet::new(options, "neo4j", &config_toml(&names, &specs, 160));
    fleet.spawn(options);
    fleet.ready().await;
    let stories: Vec<String> = (0..total).map(|i| story(&names, i)).collect();
    let payloads: Vec<Bytes> = stories
        .iter()
        .map(|s| transition(s, "t00", false))
        .collect();
    let monitor = StallMonitor::start(
        js.clone(),
        names.stream.clone(),
        durables.clone(),
        fleet.addresses.clone(),
    );
    publish_all(js, &names.subject, &names.id, &payloads).await;
    let all = (total * handlers) as u64;
    wait_until(
        Duration::from_secs(300),
        "a third of the handlings done",
        || async {
            match consumer_remaining(js, &names.stream, &durables).await {
                Some(r) if r <= all * 2 / 3 => Ok(()),
                other => Err(format!("{other:?} outstanding")),
            }
        },
    )
    .await;
    eprintln!("  [neo4j] restarting Neo4j");
    tokio::task::spawn_blocking(|| services::control("restart", "neo4j"))
        .await
        .expect("restart neo4j");
    let graph = neo4j().await;
    let prefix = format!("{}-", names.id);
    wait_until(
        Duration::from_secs(600),
        "every handler handled every event",
        || async {
            let remaining = consumer_remaining(js, &names.stream, &durables).await;
            if remaining == Some(0) {
                Ok(())
            } else {
                Err(format!("{remaining:?} outstanding"))
            }
        },
    )
    .await;
    result.max_stall = monitor.finish().await;
    let nodes = nodes_by_id(&graph, &prefix).await.expect("nodes");
    result.lost = stories
        .iter()
        .filter(|s| !nodes.contains_key(&format!("{s}:t00")))
        .count() as u64;
    result.duplicated = nodes.values().map(|&c| (c - 1).max(0) as u64).sum();
    result.dead_lettered = dead_letter_count(js, &names).await;
    fleet.stop(&mut result).await;
    let logs = read_logs(&fleet.logs);
    let acked: HashSet<&(String, u64)> = logs.acked.keys().collect();
    result.check(
        acked.len() as u64 == all,
        format!("{} of {all} (handler, event) pairs acked", acked.len()),
    );
    result
}

/// The malformed payloads, in rotation; `big` ones are near NATS's
/// `max_payload`.
fn malformed(i: usize, id: &str, big: bool) -> (Bytes, &'static str) {
    if big {
        // 1 MiB less room for the headers: the largest payload the default
        // `max_payload` (1 MiB) takes. A story id that is a list: wrong type.
        // `{"story_id": ["` + filler + `"], "timestamp": "t"}`: 35 bytes around
        // the filler; 200 bytes left for the publish's headers.
        let filler = "x".repeat(1_048_576 - 200 - 35);
        let text = format!(r#"{{"story_id": ["{filler}"], "timestamp": "t"}}"#);
        return (Bytes::from(text), "1 MiB payload, wrong type");
    }
    let deep = 10_000;
    match i % 12 {
        0 => (
            Bytes::from(format!(r#"{{"story_id": "{id}-bad-{i}", "timestamp": "#)),
            "bad JSON",
        ),
        1 => (
            Bytes::from(format!(r#"{{"story_id": {i}, "timestamp": "t"}}"#)),
            "wrong type (story_id)",
        ),
        2 => (
            Bytes::from(format!(
                r#"{{"story_id": "{id}-bad-{i}", "timestamp": ["t"]}}"#
            )),
            "wrong type (timestamp)",
        ),
        3 => (
            Bytes::from(r#"{"from_phase": "A", "to_phase": "B", "timestamp": "t"}"#),
            "missing story_id",
        ),
        4 => (
            Bytes::from(format!(r#"{{"story_id": "{id}-bad-{i}"}}"#)),
            "missing timestamp",
        ),
        5 => {
            let mut bytes = b"\xff\xfe{\"story_id\": \"".to_vec();
            bytes.extend_from_slice(format!("{id}-bad-{i}\"}}").as_bytes());
            (Bytes::from(bytes), "not UTF-8")
        }
        6 => (
            Bytes::from(format!("{}{}", "[".repeat(deep), "]".repeat(deep))),
            "10,000-deep nesting",
        ),
        7 => (
            Bytes::from(format!(
                r#"{{"story_id": {}{}, "timestamp": "t"}}"#,
                "[".repeat(deep),
                "]".repeat(deep)
            )),
            "10,000-deep story_id",
        ),
        8 => (Bytes::new(), "empty"),
        9 => (
            Bytes::from(format!(
                r#"{{"story_id": "{id}-bad-{i}", "story_id": "x", "timestamp": "t"}}"#
            )),
            "duplicate field",
        ),
        10 => (
            Bytes::from(format!(
                r#"{{"event_type": "story.deleted", "story_id": "{id}-bad-{i}", "timestamp": "t"}}"#
            )),
            "unknown event type",
        ),
        _ => (
            Bytes::from(r#"{"event_type": "planning.story.transitioned", "payload": 5}"#),
            "envelope payload not an object",
        ),
    }
}

async fn row_malformed(options: &Options, js: &Context) -> RowResult {
    let graph = &neo4j().await;
    let (bad_count, big_count) = if options.short {
        (1_000, 4)
    } else {
        (10_000, 20)
    };
    let per_story = 10;
    let names = Names::new("malformed");
    let mut result = RowResult {
        fault: "malformed inputs 1:1 with valid".into(),
        sent: format!("{bad_count}+{bad_count}"),
        expected_dead: bad_count as u64,
        ..RowResult::default()
    };
    flush_db().await;
    let stories: Vec<String> = (0..bad_count / per_story)
        .map(|i| story(&names, i))
        .collect();
    seed_keys(&key_prefix(&names), &stories, None).await;
    let handler = HandlerSpec::new("story-transitions");
    let durable = names.durable(&handler.name);
    let mut fleet = Fleet::new(options, "malformed", &config_toml(&names, &[handler], 64));
    fleet.spawn(options);
    fleet.ready().await;
    let big_every = bad_count / big_count;
    let mut payloads = Vec::new();
    let mut bad_index = Vec::new();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..bad_count {
        let story = &stories[i % stories.len()];
        payloads.push(transition(
            story,
            &format!("t{:02}", i / stories.len()),
            i % 2 == 0,
        ));
        let (payload, kind) = malformed(i, &names.id, i % big_every == big_every / 2);
        *kinds.entry(kind).or_default() += 1;
        bad_index.push(payloads.len());
        payloads.push(payload);
    }
    let monitor = StallMonitor::start(
        js.clone(),
        names.stream.clone(),
        vec![durable.clone()],
        fleet.addresses.clone(),
    );
    let sequences = publish_all(js, &names.subject, &names.id, &payloads).await;
    let bad_sequences: HashSet<u64> = bad_index.iter().map(|&i| sequences[i]).collect();
    let expected: HashSet<String> = (0..bad_count)
        .map(|i| format!("{}:t{:02}", stories[i % stories.len()], i / stories.len()))
        .collect();
    let prefix = format!("{}-", names.id);
    wait_until(Duration::from_secs(900), "every event settled", || async {
        let nodes = nodes_by_id(graph, &prefix).await?;
        let remaining = consumer_remaining(js, &names.stream, std::slice::from_ref(&durable)).await;
        let dead = dead_letter_count(js, &names).await;
        if nodes.len() == expected.len() && remaining == Some(0) && dead >= bad_count as u64 {
            Ok(())
        } else {
            Err(format!(
                "{} of {} nodes, {dead} dead letters, {remaining:?} outstanding",
                nodes.len(),
                expected.len()
            ))
        }
    })
    .await;
    result.max_stall = monitor.finish().await;
    let nodes = nodes_by_id(graph, &prefix).await.expect("nodes");
    let keys_left = stories_with_keys(&key_prefix(&names), &stories).await;
    result.lost = expected
        .iter()
        .filter(|id| !nodes.contains_key(*id))
        .count() as u64
        + keys_left;
    result.duplicated = nodes.values().map(|&c| (c - 1).max(0) as u64).sum();
    result.dead_lettered = dead_letter_count(js, &names).await;
    let redelivered = consumer_redelivered(js, &names.stream, &durable).await;
    result.check(
        redelivered == 0,
        format!("nothing redelivered ({redelivered})"),
    );

    // The dead letters, read back with `switchyard dlq list --json`.
    let output = Command::new(&options.bin)
        .args(["dlq", "list", "story-transitions", "--json", "--config"])
        .arg(&fleet.config)
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .await
        .expect("run switchyard dlq list");
    result.check(output.status.success(), "`switchyard dlq list --json` ran");
    let letters: Vec<Json> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let first_delivery = letters.iter().all(|l| l["delivery_count"] == json!(1));
    let with_reason = letters
        .iter()
        .all(|l| !l["reason"].as_str().unwrap_or_default().is_empty());
    let lettered: HashSet<u64> = letters
        .iter()
        .filter_map(|l| l["original_sequence"].as_u64())
        .collect();
    let omitted = letters
        .iter()
        .filter(|l| l["payload_omitted"] == json!(true))
        .count();
    result.check(
        letters.len() == bad_count && lettered == bad_sequences,
        format!(
            "dlq list: {} dead letters, exactly the bad events",
            letters.len()
        ),
    );
    result.check(
        first_delivery && with_reason,
        "every one on its first delivery, with a reason",
    );
    result.check(
        omitted == big_count,
        format!(
            "{omitted} 1 MiB payloads dead-lettered by reference (payload stays in the stream)"
        ),
    );
    result.check(
        keys_left == 0,
        format!("valid events unaffected: every story's keys invalidated ({keys_left} left)"),
    );
    fleet.stop(&mut result).await;
    eprintln!("  [malformed] kinds: {kinds:?}");
    result
}

fn format_duration(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn print_table(results: &[RowResult]) {
    let headers = [
        "fault",
        "events sent",
        "lost",
        "duplicated effects",
        "dead-lettered",
        "max stall",
        "result",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.fault.clone(),
                r.sent.clone(),
                r.lost.to_string(),
                r.duplicated.to_string(),
                if r.expected_dead > 0 {
                    format!("{} (of {} bad)", r.dead_lettered, r.expected_dead)
                } else {
                    r.dead_lettered.to_string()
                },
                format_duration(r.max_stall),
                if r.passed() {
                    "pass".into()
                } else {
                    "FAIL".into()
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([headers[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    println!("{}", line(&headers.map(String::from)));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &rows {
        println!("{}", line(row));
    }
    println!();
    for result in results {
        println!("{}:", result.fault);
        for check in &result.checks {
            println!("  ok    {check}");
        }
        for failure in &result.failures {
            println!("  FAIL  {failure}");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if !options.bin.exists() {
        eprintln!(
            "{} not found: build it with `cargo build --release -p switchyard`",
            options.bin.display()
        );
        return ExitCode::from(2);
    }
    std::fs::create_dir_all(&options.work).expect("work directory");
    // Reconnects every 100 ms, so that what it observes after a NATS
    // restart is the hosts' recovery, not its own backoff.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(services::nats_url())
        .await
        .expect("NATS connection");
    // A publish not acknowledged within a second is sent again.
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client);
    let wanted = |row: &str| {
        options
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == row))
    };
    let started = Instant::now();
    let mut results = Vec::new();
    for name in ["kill", "failover", "nats", "valkey", "neo4j", "malformed"] {
        if !wanted(name) {
            continue;
        }
        eprintln!(
            "faults: row `{name}`{}",
            if options.short { " (short)" } else { "" }
        );
        let row_started = Instant::now();
        let row: std::pin::Pin<Box<dyn std::future::Future<Output = RowResult> + '_>> = match name {
            "kill" => Box::pin(row_kill(&options, &js)),
            "failover" => Box::pin(row_failover(&options, &js)),
            "nats" => Box::pin(row_nats(&options, &js)),
            "valkey" => Box::pin(row_valkey(&options, &js)),
            "neo4j" => Box::pin(row_neo4j(&options, &js)),
            _ => Box::pin(row_malformed(&options, &js)),
        };
        // A check that panics fails its row; the hosts die with it (kill on drop).
        let result = std::panic::AssertUnwindSafe(row)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                RowResult {
                    fault: name.to_string(),
                    sent: "?".into(),
                    failures: vec![message],
                    ..RowResult::default()
                }
            });
        eprintln!(
            "faults: row `{name}` done in {:.0} s",
            row_started.elapsed().as_secs_f64()
        );
        results.push(result);
    }
    println!(
        "\nfault-injection suite{} against real NATS, Valkey and Neo4j, {:.0} s\n",
        if options.short { " (short)" } else { "" },
        started.elapsed().as_secs_f64()
    );
    print_table(&results);
    if results.iter().all(RowResult::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
