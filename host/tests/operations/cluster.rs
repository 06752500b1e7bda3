//! Scale-out on a three-node JetStream cluster (`scripts/clusters`): hosts
//! sharing a partitioned handler keep every key's events in stream order
//! while a host is SIGKILLed, a NATS server is SIGKILLed, and a host joins.
//!
//! The handler is the `guest-recorder` test guest: each delivery it runs
//! becomes a `Handled` node with the event's key, its position `n` among
//! the key's events, the attempt and the wall-clock start and finish (one
//! clock: every host runs on this machine).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_tests::artifacts::RECORDER;
use switchyard_tests::config::{Handler, Names, Plugin, Service};
use switchyard_tests::services;

use super::{Serve, free_port, poll, sample};

const KEYS: usize = 400;
const PER_KEY: usize = 50;
const EVENTS: usize = KEYS * PER_KEY;
const PARTITIONS: u32 = 6;

/// The recorder, partitioned by the key token of `<id>.keys.<key>`, on the
/// cluster with R3 streams and buckets.
fn cluster_config(names: &Names, port: u16) -> String {
    let handler = Handler::new("recorder", Plugin::File(RECORDER.to_string()), names)
        .set("subjects", vec![format!("{}.keys.*", names.id)])
        .set("order_key_subject_token", 2)
        .set("partitions", i64::from(PARTITIONS))
        .set("concurrency", 8)
        .set("ack_wait", "5s")
        .set("deadline", "4s")
        .set("drain_grace", "10s")
        .grant("graph_labels", ["Handled"]);
    Service::new(names)
        .set("nats", "url", services::cluster_nats_urls())
        .set("nats", "replicas", 3)
        .set("nats", "lease_kv", format!("leases-{}", names.id))
        .set("http", "listen", format!("127.0.0.1:{port}"))
        .handler(handler)
        .to_toml()
}

fn start_host(names: &Names) -> Serve {
    let port = free_port();
    let mut host = Serve::start_with(names, port, &cluster_config(names, port), &[], &[]);
    host.wait_ready(Duration::from_secs(60));
    host
}

/// How many partitions `host` runs, from its `/metrics`.
fn partitions_of(host: &Serve) -> f64 {
    sample(
        &host.metrics(),
        "switchyard_lease_held{handler=\"recorder\"}",
    )
    .unwrap_or(-1.0)
}

/// One recorded delivery: (n, attempt, started_ns).
type Run = (i64, i64, i64);

/// Every delivery recorded for `run`, by key.
async fn recorded(graph: &neo4rs::Graph, run: &str) -> BTreeMap<String, Vec<Run>> {
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (h:Handled {run: $run}) RETURN h.key AS key, h.n AS n, \
                 h.attempt AS attempt, h.started_ns AS s",
            )
            .param("run", run),
        )
        .await
        .expect("query Handled nodes");
    let mut by_key: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    while let Some(row) = rows.next().await.expect("read row") {
        let key: String = row.get("key").expect("key");
        by_key.entry(key).or_default().push((
            row.get("n").expect("n"),
            row.get("attempt").expect("attempt"),
            row.get("s").expect("started"),
        ));
    }
    by_key
}

fn distinct_events(by_key: &BTreeMap<String, Vec<Run>>) -> usize {
    by_key
        .values()
        .map(|runs| runs.iter().map(|r| r.0).collect::<BTreeSet<_>>().len())
        .sum()
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// Publishes every key's events in rounds (`n` = 0 for every key, then 1,
/// ...), with a message id each so a publish retried across a lost server
/// is stored once.
async fn publish_all(names: Names) {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(services::cluster_nats_urls().split(',').collect::<Vec<_>>())
        .await
        .expect("connect to the NATS cluster");
    let js = async_nats::jetstream::new(client);
    for n in 0..PER_KEY {
        let mut acks = Vec::with_capacity(KEYS);
        for k in 0..KEYS {
            let subject = format!("{}.keys.k{k}", names.id);
            let payload = serde_json::json!({"run": names.id, "key": format!("k{k}"), "n": n});
            acks.push((
                subject,
                payload.to_string(),
                format!("{}-{k}-{n}", names.id),
            ));
        }
        for (subject, payload, id) in acks {
            let started = Instant::now();
            loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                let sent = js
                    .publish_with_headers(subject.clone(), headers, payload.clone().into())
                    .await;
                let acked = match sent {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if acked {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "publishing {subject} #{n} failed for a minute"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // About 4,000 events a second: the run lasts long enough for the
        // faults to land mid-stream.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key has each of its events 0..PER_KEY at least once, and its
/// deliveries, by start time, never go back to an earlier event: a
/// redelivery of `n` (after a host died holding it) comes before `n + 1`
/// ever started.
fn assert_in_stream_order(by_key: &BTreeMap<String, Vec<Run>>) {
    assert_eq!(by_key.len(), KEYS, "every key recorded");
    for (key, runs) in by_key {
        let mut runs = runs.clone();
        runs.sort_by_key(|r| r.2);
        let seen: BTreeSet<i64> = runs.iter().map(|r| r.0).collect();
        assert_eq!(
            seen,
            (0..PER_KEY as i64).collect::<BTreeSet<_>>(),
            "{key}: every event applied"
        );
        for pair in runs.windows(2) {
            assert!(
                pair[1].0 >= pair[0].0,
                "{key}: event {} (attempt {}) started after event {} (attempt {}): out of \
                 stream order; all runs: {runs:?}",
                pair[1].0,
                pair[1].1,
                pair[0].0,
                pair[0].1
            );
        }
    }
}

/// The longest any key waited between two of its deliveries across the
/// instant `at_ns`, among the keys that were running in the second before
/// it: what a fault at that instant cost the keys it stopped.
fn stall_across(by_key: &BTreeMap<String, Vec<Run>>, at_ns: i64) -> Duration {
    let mut longest = 0i64;
    for runs in by_key.values() {
        let mut starts: Vec<i64> = runs.iter().map(|r| r.2).collect();
        starts.sort_unstable();
        for pair in starts.windows(2) {
            if at_ns - 1_000_000_000 <= pair[0] && pair[0] <= at_ns && at_ns < pair[1] {
                longest = longest.max(pair[1] - pair[0]);
            }
        }
    }
    Duration::from_nanos(longest.max(0) as u64)
}

#[test]
fn a_partitioned_handler_keeps_each_keys_order_across_hosts_through_killed_hosts_and_servers() {
    let names = Names::new("cluster");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let graph = runtime.block_on(services::neo4j());
    let mut hosts = vec![start_host(&names), start_host(&names), start_host(&names)];
    poll(
        Duration::from_secs(30),
        "the partitions spread over three hosts",
        || {
            let held: Vec<f64> = hosts.iter().map(partitions_of).collect();
            if held.iter().all(|p| *p == 2.0) {
                Ok(())
            } else {
                Err(format!("partitions per host: {held:?}"))
            }
        },
    );

    // What an operator sees: each host names the partitions it runs.
    let config = super::temp_dir(&names.id).join("status.toml");
    std::fs::write(&config, cluster_config(&names, free_port())).unwrap();
    let status = super::switchyard()
        .args(["status", "--wait", "500ms", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status: {stdout}");
    assert_eq!(
        stdout.matches("partitions ").count(),
        3,
        "three hosts, each with its partitions: {stdout}"
    );
    assert!(stdout.contains(" of 6, "), "{stdout}");

    let started = Instant::now();
    let publisher = runtime.spawn(publish_all(names.clone()));
    let progress = |graph: &neo4rs::Graph| runtime.block_on(recorded(graph, &names.id));
    let wait_for = |share: usize| {
        poll(Duration::from_secs(120), "progress", || {
            let done = distinct_events(&progress(&graph));
            if done * 100 >= EVENTS * share {
                Ok(())
            } else {
                Err(format!("{done} of {EVENTS} events applied"))
            }
        })
    };

    wait_for(15);
    let host_killed_ns = now_ns();
    let killed = hosts.remove(1);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &killed.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL the second host");
    drop(killed);

    wait_for(35);
    let server_killed_ns = now_ns();
    services::cluster_control("kill", "nats-2");

    wait_for(55);
    let joined_ns = now_ns();
    hosts.push(start_host(&names));

    wait_for(75);
    services::cluster_control("start", "nats-2");

    runtime.block_on(publisher).expect("the publisher finished");
    let by_key = poll(Duration::from_secs(120), "every event applied", || {
        let by_key = progress(&graph);
        let done = distinct_events(&by_key);
        if done == EVENTS {
            Ok(by_key)
        } else {
            Err(format!("{done} of {EVENTS} events applied"))
        }
    });
    let elapsed = started.elapsed();
    assert_in_stream_order(&by_key);
    let deliveries: usize = by_key.values().map(Vec::len).sum();
    let joined_runs = partitions_of(&hosts[2]);
    assert!(
        joined_runs >= 1.0,
        "the host that joined mid-stream runs partitions: {joined_runs}"
    );
    eprintln!(
        "cluster: {EVENTS} events over {KEYS} keys applied in {:.1} s ({deliveries} deliveries, \
         {} redelivered); stall for the keys of the killed host: {:.1} s, of the killed NATS \
         server: {:.1} s, of the host that joined: {:.1} s",
        elapsed.as_secs_f64(),
        deliveries - EVENTS,
        stall_across(&by_key, host_killed_ns).as_secs_f64(),
        stall_across(&by_key, server_killed_ns).as_secs_f64(),
        stall_across(&by_key, joined_ns).as_secs_f64(),
    );
    for host in hosts {
        let status = host.terminate();
        assert!(
            status.success(),
            "a host exits cleanly on SIGTERM: {status}"
        );
    }
}
