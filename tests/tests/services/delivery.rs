//! Delivery you can trust, against the real servers: per-key ordering,
//! graceful drain, in-progress acks for events held longer than
//! `ack_wait`, and dead letters listed, fixed and replayed.
//!
//! These use the `guest-recorder` test guest, which records each delivery
//! it runs as a `Handled` node with its start and finish times.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::delivery::dead_letter::{read::dead_letters, replay::replay_dead_letters};
use switchyard_tests::artifacts::RECORDER;
use switchyard_tests::services;

use crate::support::{Names, TestService};
use switchyard_tests::config::{Handler, Plugin};

const HANDLER: &str = "recorder";
const SETTLE: Duration = Duration::from_secs(60);

/// Handler settings a test chooses.
struct Settings {
    concurrency: u32,
    ack_wait: &'static str,
    deadline: &'static str,
    drain_grace: &'static str,
    /// The `order_key` JSON pointers, if events of one key run in order.
    order: &'static [&'static str],
    /// `[handlers.config]` entries.
    plugin_config: &'static [(&'static str, &'static str)],
    /// One host at a time runs the handler.
    exclusive: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 4,
            ack_wait: "10s",
            deadline: "8s",
            drain_grace: "20s",
            order: &[],
            plugin_config: &[],
            exclusive: false,
        }
    }
}

/// The recorder on `names` with `settings`, running and ready.
async fn start(names: Names, settings: &Settings) -> TestService {
    let mut handler = Handler::new(HANDLER, Plugin::File(RECORDER.to_string()), &names)
        .set("max_deliver", 5)
        .set("concurrency", settings.concurrency)
        .set("ack_wait", settings.ack_wait)
        .set("deadline", settings.deadline)
        .set("drain_grace", settings.drain_grace)
        .set("exclusive", settings.exclusive)
        .retry("max", "1s")
        .grant("graph_labels", ["Handled"]);
    if !settings.order.is_empty() {
        handler = handler.set("order_key", settings.order.to_vec());
    }
    for (key, value) in settings.plugin_config {
        handler = handler.config(key, *value);
    }
    let config = switchyard_tests::config::Service::new(&names)
        .handler(handler)
        .parse();
    TestService::run(names, HANDLER, config, None).await
}

/// One recorded delivery.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    n: i64,
    attempt: i64,
    started_ns: i64,
    finished_ns: i64,
    trace: String,
}

async fn records(graph: &neo4rs::Graph, run: &str) -> Vec<Record> {
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (h:Handled {run: $run}) RETURN h.key AS key, h.n AS n, h.attempt AS attempt, \
                 h.started_ns AS s, h.finished_ns AS f, h.trace AS trace ORDER BY s",
            )
            .param("run", run),
        )
        .await
        .expect("query Handled nodes");
    let mut records = Vec::new();
    while let Some(row) = rows.next().await.expect("read row") {
        records.push(Record {
            key: row.get("key").expect("key"),
            n: row.get("n").expect("n"),
            attempt: row.get("attempt").expect("attempt"),
            started_ns: row.get("s").expect("started"),
            finished_ns: row.get("f").expect("finished"),
            trace: row
                .get::<Option<String>>("trace")
                .ok()
                .flatten()
                .unwrap_or_default(),
        });
    }
    records
}

async fn wait_for_records(graph: &neo4rs::Graph, run: &str, count: usize) -> Vec<Record> {
    services::eventually(SETTLE, "records written", || async {
        let found = records(graph, run).await;
        if found.len() >= count {
            Ok(found)
        } else {
            Err(format!("{} of {count} records", found.len()))
        }
    })
    .await
}

/// The most records whose run intervals overlap at one instant.
fn max_overlap(records: &[Record]) -> usize {
    let mut edges: Vec<(i64, i32)> = records
        .iter()
        .flat_map(|r| [(r.started_ns, 1), (r.finished_ns, -1)])
        .collect();
    // Ends before starts at the same instant: touching is not overlapping.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// Every key has `per_key` records, and its events ran one at a time in
/// stream order: 0, 1, 2, ..., each starting after the one before finished.
fn assert_each_key_in_order(found: &[Record], per_key: i64) {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in found {
        by_key.entry(record.key.as_str()).or_default().push(record);
    }
    for (key, mut list) in by_key {
        assert_eq!(
            list.len(),
            per_key as usize,
            "{key}: one record per event: {list:?}"
        );
        list.sort_by_key(|r| r.started_ns);
        let order: Vec<i64> = list.iter().map(|r| r.n).collect();
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "{key} ran out of stream order"
        );
        for pair in list.windows(2) {
            assert!(
                pair[1].started_ns >= pair[0].finished_ns,
                "{key}: event {} started before event {} finished",
                pair[1].n,
                pair[0].n
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_key_run_one_at_a_time_in_stream_order_while_keys_run_in_parallel() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let settings = Settings {
        concurrency: 4,
        order: &["/payload/key", "/key"],
        ..Settings::default()
    };
    let service = start(Names::new("d"), &settings).await;
    let run = services::unique("order");
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    let per_key = 8i64;
    // Interleaved: k0/0, k1/0, ..., k4/0, k0/1, ...; every other event in an
    // envelope (the key then sits at /payload/key); k2/3 is retried twice
    // before it succeeds, so k2/4 must still wait for it.
    for n in 0..per_key {
        for (i, key) in keys.iter().enumerate() {
            let mut event = json!({"run": run, "key": key, "n": n, "sleep_ms": 40});
            if *key == "k2" && n == 3 {
                event["retry_until"] = json!(3);
            }
            if (n as usize + i) % 2 == 1 {
                event = json!({"event_type": "recorded", "payload": event});
            }
            service.publish(event.to_string()).await;
        }
    }
    let found = wait_for_records(&graph, &run, keys.len() * per_key as usize).await;
    service.settled(SETTLE).await;

    assert_each_key_in_order(&found, per_key);
    let retried = found
        .iter()
        .find(|r| r.key == "k2" && r.n == 3)
        .expect("k2/3 recorded");
    assert_eq!(retried.attempt, 3, "k2/3 recorded on its third attempt");
    let overlap = max_overlap(&found);
    assert!(
        overlap > 1,
        "different keys ran in parallel (max overlap {overlap})"
    );
    assert!(
        overlap <= 4,
        "never more than concurrency at once (max overlap {overlap})"
    );
    let (_, _, redelivered) = service.consumer_state().await.unwrap();
    assert_eq!(
        redelivered, 0,
        "a keyed retry is retried in place, not redelivered"
    );
    assert!(
        dead_letters(&service.js, &service.dead_letter_source())
            .await
            .unwrap()
            .is_empty()
    );
    service.stop().await;
}

/// A nak'ed event stays in the consumer's ack-pending count until it is
/// delivered again, so "settled" shows as: another host gets every event
/// at once, long before `ack_wait` (30 s here) would have brought back one
/// left unsettled.
const WELL_INSIDE_ACK_WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_naks_unstarted_events_at_once_and_leaves_nothing_unsettled() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let settings = Settings {
        concurrency: 2,
        ack_wait: "30s",
        order: &["/key"],
        ..Settings::default()
    };
    let names = Names::new("d");
    let service = start(names.clone(), &settings).await;
    let run = services::unique("drain");
    let total = 30usize;
    for n in 0..total {
        let key = format!("k{}", n % 3);
        service
            .publish(json!({"run": run, "key": key, "n": n, "sleep_ms": 300}).to_string())
            .await;
    }
    // Mid-flight: some events done, more held (running or queued by key).
    wait_for_records(&graph, &run, 2).await;
    let (_, held_before, _) = service.consumer_state().await.unwrap();
    assert!(
        held_before > 2,
        "the host held queued events before the stop ({held_before})"
    );
    let took = service.stop().await;
    assert!(
        took < Duration::from_secs(3),
        "drain took {took:?}: only in-flight events are waited for"
    );
    let done = records(&graph, &run).await;
    assert!(
        done.len() < total,
        "the stop came mid-flight ({} of {total} done)",
        done.len()
    );
    assert!(
        done.iter().all(|r| r.attempt == 1),
        "in-flight events finished: {done:?}"
    );

    let restarted = Instant::now();
    let service = start(names, &settings).await;
    let found = wait_for_records(&graph, &run, total).await;
    service.settled(SETTLE).await;
    let took = restarted.elapsed();
    assert!(
        took < WELL_INSIDE_ACK_WAIT,
        "the next host got every event at once, not after ack_wait ({took:?})"
    );
    let mut events: Vec<(String, i64)> = found.iter().map(|r| (r.key.clone(), r.n)).collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len(), total, "every event handled");
    assert_eq!(
        found.len(),
        total,
        "none handled twice: in-flight ones were acked, the rest nak'ed unstarted"
    );
    assert!(
        dead_letters(&service.js, &service.dead_letter_source())
            .await
            .unwrap()
            .is_empty()
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_running_after_the_drain_grace_are_stopped_and_nakd() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let settings = Settings {
        concurrency: 2,
        ack_wait: "30s",
        drain_grace: "1s",
        ..Settings::default()
    };
    let names = Names::new("d");
    let service = start(names.clone(), &settings).await;
    let run = services::unique("grace");
    for n in 0..2 {
        service
            .publish(json!({"run": run, "key": "k", "n": n, "sleep_ms": 5000}).to_string())
            .await;
    }
    services::eventually(SETTLE, "both events running", || async {
        match service.consumer_state().await? {
            (0, 2, _) => Ok(()),
            state => Err(format!("{state:?}")),
        }
    })
    .await;
    let took = service.stop().await;
    assert!(
        took >= Duration::from_millis(900),
        "the grace period was given ({took:?})"
    );
    assert!(
        took < Duration::from_secs(4),
        "the grace period ends the wait ({took:?})"
    );
    assert!(
        records(&graph, &run).await.is_empty(),
        "no stopped event got to record"
    );

    let restarted = Instant::now();
    let service = start(names, &settings).await;
    let found = wait_for_records(&graph, &run, 2).await;
    let took = restarted.elapsed();
    assert!(
        took < WELL_INSIDE_ACK_WAIT,
        "stopped events were nak'ed, not left for ack_wait ({took:?})"
    );
    assert!(
        found.iter().all(|r| r.attempt == 2),
        "handled on the redelivery: {found:?}"
    );
    service.settled(SETTLE).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_held_longer_than_ack_wait_are_kept_alive_not_redelivered() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    // Each event runs 1.5 s of a 2 s ack_wait; those of one key run one
    // after the other, so the last one is held 4.5 s from its delivery,
    // and one unkeyed event runs past ack_wait / 2.
    let settings = Settings {
        concurrency: 4,
        ack_wait: "2s",
        deadline: "1900ms",
        order: &["/key"],
        ..Settings::default()
    };
    let service = start(Names::new("d"), &settings).await;
    let run = services::unique("progress");
    for n in 0..3 {
        service
            .publish(json!({"run": run, "key": "slow", "n": n, "sleep_ms": 1500}).to_string())
            .await;
    }
    service
        .publish(json!({"run": run, "key": "solo", "n": 0, "sleep_ms": 1800}).to_string())
        .await;
    let found = wait_for_records(&graph, &run, 4).await;
    service.settled(SETTLE).await;
    // Give a wrongly redelivered event time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let found_later = records(&graph, &run).await;
    assert_eq!(found_later.len(), 4, "each event ran once: {found_later:?}");
    assert!(found.iter().all(|r| r.attempt == 1), "{found:?}");
    let (_, _, redelivered) = service.consumer_state().await.unwrap();
    assert_eq!(
        redelivered, 0,
        "in-progress acks kept every held event from redelivery"
    );
    let slow: Vec<&Record> = found.iter().filter(|r| r.key == "slow").collect();
    let held_for = Duration::from_nanos((slow[2].finished_ns - slow[0].started_ns) as u64);
    assert!(
        held_for > Duration::from_secs(4),
        "the last event was held past ack_wait ({held_for:?})"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_then_replayed_after_a_fix() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let names = Names::new("d");
    let service = start(names.clone(), &Settings::default()).await;
    let run = services::unique("dlq");
    let mut sequences = Vec::new();
    for n in 0..3 {
        let event = json!({"run": run, "key": "k", "n": n, "reject": format!("bad input {n}")});
        let headers: &[(&str, &str)] = if n == 0 {
            &[("Trace-Id", "trace-0"), ("Nats-Msg-Id", "replay-me-0")]
        } else {
            &[]
        };
        sequences.push(
            service
                .publish_with_headers(event.to_string(), headers)
                .await,
        );
    }
    service
        .publish(json!({"run": run, "key": "k", "n": 3}).to_string())
        .await;
    service.settled(SETTLE).await;
    let source = service.dead_letter_source();
    let letters = services::eventually(SETTLE, "three dead letters", || async {
        let letters = dead_letters(&service.js, &source)
            .await
            .map_err(|e| e.to_string())?;
        if letters.len() == 3 {
            Ok(letters)
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await;
    // Unordered handler: dead-lettered in whatever order they finished.
    for letter in &letters {
        let n = sequences
            .iter()
            .position(|&sequence| Some(sequence) == letter.original_sequence)
            .unwrap_or_else(|| panic!("dead letter of an unknown event: {letter:?}"));
        assert_eq!(letter.reason, format!("bad input {n}"));
        assert_eq!(letter.handler, HANDLER);
        assert_eq!(letter.delivery_count, Some(1));
        assert!(
            letter.plugin_digest.starts_with("sha256:"),
            "{}",
            letter.plugin_digest
        );
        assert_eq!(letter.original_subject, names.subject);
        assert_eq!(letter.payload_omitted, None);
        assert!(letter.dead_lettered_at.elapsed().unwrap_or_default() < SETTLE);
        assert!(
            letter
                .original_headers
                .iter()
                .all(|(name, _)| !name.starts_with("Switchyard-"))
        );
    }
    let first = letters
        .iter()
        .find(|l| l.original_sequence == Some(sequences[0]))
        .unwrap();
    assert!(
        first
            .original_headers
            .contains(&("Trace-Id".to_string(), "trace-0".to_string()))
    );
    service.stop().await;

    // The fix: the handler now accepts what it rejected.
    let settings = Settings {
        plugin_config: &[("accept_rejects", "yes")],
        ..Settings::default()
    };
    let service = start(names.clone(), &settings).await;
    let mut replayed = Vec::new();
    let report = replay_dead_letters(
        &service.js,
        &source,
        Some("bad input"),
        Some(2),
        |letter, result| {
            replayed.push((letter.sequence, result.map_err(str::to_string)));
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.seen, report.matched, report.replayed),
        (2, 2, 2),
        "{report:?}"
    );
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(
        replayed.iter().all(|(_, result)| result.is_ok()),
        "{replayed:?}"
    );
    assert_eq!(
        dead_letters(&service.js, &source).await.unwrap().len(),
        1,
        "one left"
    );
    let report = replay_dead_letters(&service.js, &source, Some("no such text"), None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (report.seen, report.matched, report.replayed),
        (1, 0, 0),
        "{report:?}"
    );
    let report = replay_dead_letters(&service.js, &source, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");

    let found = wait_for_records(&graph, &run, 4).await;
    service.settled(SETTLE).await;
    assert!(
        dead_letters(&service.js, &source).await.unwrap().is_empty(),
        "dead-letter stream empty"
    );
    let first = found
        .iter()
        .find(|r| r.n == 0)
        .expect("event 0 handled after the replay");
    assert_eq!(
        first.trace, "trace-0",
        "original headers travel with the replay"
    );
    assert_eq!(found.len(), 4, "each event handled once: {found:?}");
    service.stop().await;
}

/// (lease state, events handled) of each host answering for `names`.
async fn lease_states(names: &Names) -> Vec<(String, u64)> {
    let hosts = services::fleet_status(&names.control_subject).await;
    let mut states: Vec<(String, u64)> = hosts
        .iter()
        .flat_map(|h| &h.handlers)
        .map(|s| (s.lease.clone().unwrap_or_default(), s.handled))
        .collect();
    states.sort();
    states
}

/// With `exclusive = true`, two hosts on one durable take turns instead of
/// sharing it: one runs the handler while the other stands by, so a key's
/// events never run on both at once; when the active host stops, the
/// standby takes over at once and keeps the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_handler_runs_on_one_host_at_a_time_and_fails_over_in_order() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let settings = Settings {
        concurrency: 4,
        order: &["/key"],
        exclusive: true,
        ..Settings::default()
    };
    let names = Names::new("d");
    let first = start(names.clone(), &settings).await;
    services::eventually(SETTLE, "the first host active", || async {
        match lease_states(&names).await.as_slice() {
            [(state, _)] if state == "active" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let second = start(names.clone(), &settings).await;

    let keys = ["k0", "k1", "k2", "k3"];
    let per_key = 6i64;
    let publish_round = |run: String, service: &TestService| {
        let service_js = service.js.clone();
        let subject = names.subject.clone();
        async move {
            for n in 0..per_key {
                for key in keys {
                    let event = json!({"run": run, "key": key, "n": n, "sleep_ms": 30});
                    service_js
                        .publish(subject.clone(), event.to_string().into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            }
        }
    };
    let before = services::unique("excl-a");
    publish_round(before.clone(), &second).await;
    let found = wait_for_records(&graph, &before, keys.len() * per_key as usize).await;
    assert_each_key_in_order(&found, per_key);
    first.settled(SETTLE).await;
    let total = (keys.len() as i64 * per_key) as u64;
    assert_eq!(
        lease_states(&names).await,
        [("active".to_string(), total), ("standby".to_string(), 0)],
        "the active host handled every event, the standby none"
    );

    // The active host stops: it drains, releases, and the standby takes over.
    first.stop().await;
    let stopped = std::time::Instant::now();
    services::eventually(SETTLE, "the standby active", || async {
        match lease_states(&names).await.as_slice() {
            [(state, 0)] if state == "active" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let takeover = stopped.elapsed();
    eprintln!("standby took over {takeover:?} after the active host stopped");
    assert!(
        takeover < Duration::from_secs(8),
        "took over after a release, not after the lease expired: {takeover:?}"
    );
    let after = services::unique("excl-b");
    publish_round(after.clone(), &second).await;
    let found = wait_for_records(&graph, &after, keys.len() * per_key as usize).await;
    assert_each_key_in_order(&found, per_key);
    second.settled(SETTLE).await;
    let (_, _, redelivered) = second.consumer_state().await.unwrap();
    assert_eq!(redelivered, 0, "nothing was delivered twice");
    second.stop().await;
}

/// An exclusive handler whose lease is taken from it mid-stream (here: the
/// lease key deleted, as when a renewal is lost) stops pulling, hands back
/// the events queued behind their keys, and whichever host takes the lease
/// next runs them: every event once, each key still in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_hands_queued_events_to_the_next_holder_in_key_order() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let settings = Settings {
        concurrency: 4,
        order: &["/key"],
        exclusive: true,
        ..Settings::default()
    };
    let names = Names::new("d");
    let first = start(names.clone(), &settings).await;
    services::eventually(SETTLE, "the first host active", || async {
        match lease_states(&names).await.as_slice() {
            [(state, _)] if state == "active" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let second = start(names.clone(), &settings).await;

    let run = services::unique("lost");
    let keys = ["k0", "k1", "k2", "k3"];
    let per_key = 8i64;
    for n in 0..per_key {
        for key in keys {
            first
                .publish(json!({"run": run, "key": key, "n": n, "sleep_ms": 300}).to_string())
                .await;
        }
    }
    // Some events ran, most wait behind their keys (each key takes 2.4 s;
    // the holder notices at its next renewal, within 2 s): take the lease
    // away.
    wait_for_records(&graph, &run, 4).await;
    let leases = first.js.get_key_value("switchyard-leases").await.unwrap();
    leases
        .delete(format!("{}.{}", names.stream, names.durable(HANDLER)))
        .await
        .unwrap();

    let found = wait_for_records(&graph, &run, keys.len() * per_key as usize).await;
    assert_each_key_in_order(&found, per_key);
    let handed_back = found.iter().filter(|r| r.attempt > 1).count();
    eprintln!(
        "{handed_back} of {} events ran on a later delivery",
        found.len()
    );
    assert!(handed_back > 0, "queued events were handed back: {found:?}");
    first.settled(SETTLE).await;
    let states = lease_states(&names).await;
    assert_eq!(
        states.iter().filter(|(state, _)| state == "active").count(),
        1,
        "one host holds the lease again: {states:?}"
    );
    first.stop().await;
    second.stop().await;
}
