//! A hostile plugin on the running service: each misbehaviour is stopped
//! (deadline, memory cap, stack, host-call budget) or refused (grants,
//! identifier checks), its event ends in the dead-letter stream with the
//! reason, the host stays up, and well-behaved events beside it are still
//! handled.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use switchyard::delivery::dead_letter::headers;
use switchyard_tests::artifacts::HOSTILE;
use switchyard_tests::services;

use crate::support::{HANDLER, Options, TestService, existing, grant, transition, transitions_at};

const SETTLE: Duration = Duration::from_secs(60);

/// The hostile guest on its own stream: two deliveries before a dead
/// letter, a 500 ms deadline, the default memory cap (64 MiB) and host-call
/// budget (10,000), and `grants` as its `[handlers.grants]`.
async fn hostile(grants: Vec<(&'static str, Vec<String>)>) -> TestService {
    TestService::start(Options {
        plugin: HOSTILE.to_string(),
        max_deliver: 2,
        concurrency: 4,
        deadline: Some("500ms"),
        grants,
        http: true,
        ..Options::default()
    })
    .await
}

fn header(letter: &StreamMessage, name: &str) -> String {
    letter
        .headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| panic!("dead letter lacks {name}"))
}

/// Publishes `payload`, waits for its dead letter and checks its reason
/// holds every `needle`. Then checks the host still handles a well-behaved
/// event: an `ok` published afterwards is acked, not dead-lettered.
async fn dead_lettered(service: &TestService, payload: &str, needles: &[&str]) -> StreamMessage {
    let before = service.dead_letters().await.len();
    let sequence = service.publish(payload.as_bytes().to_vec()).await;
    let letter = services::eventually(SETTLE, &format!("dead letter for {payload:?}"), || async {
        service
            .dead_letters()
            .await
            .into_iter()
            .find(|m| header(m, headers::ORIGINAL_SEQUENCE) == sequence.to_string())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let reason = header(&letter, headers::REASON);
    for needle in needles {
        assert!(
            reason.contains(needle),
            "reason {reason:?} lacks {needle:?}"
        );
    }
    assert_eq!(letter.payload.as_ref(), payload.as_bytes());
    assert_eq!(header(&letter, headers::HANDLER), HANDLER);

    service.publish(b"ok".to_vec()).await;
    service.settled(SETTLE).await;
    assert!(service.health.ready(), "the host is still up and ready");
    assert_eq!(
        service.dead_letters().await.len(),
        before + 1,
        "only the hostile event is dead-lettered; the `ok` after it is acked"
    );
    letter
}

fn deliveries(letter: &StreamMessage) -> String {
    header(letter, headers::DELIVERY_COUNT)
}

/// `switchyard_host_call_errors_total{error="denied"}` or `{error="invalid"}`.
async fn host_call_errors(service: &TestService, kind: &str) -> f64 {
    let series =
        format!("switchyard_host_call_errors_total{{handler=\"{HANDLER}\",error=\"{kind}\"}}");
    service.metric(&series).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_by_the_deadline_and_dead_lettered() {
    let _servers = services::shared().await;
    let service = hostile(Vec::new()).await;
    let letter = dead_lettered(
        &service,
        "loop",
        &["gave up after 2 deliveries", "deadline of 500ms exceeded"],
    )
    .await;
    assert_eq!(deliveries(&letter), "2");
    service.stop().await;
}

/// A memory figure of this process (the service runs in it), in bytes:
/// `VmRSS` (resident now) or `VmHWM` (the most ever resident).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gib_allocation_hits_the_memory_cap_and_host_memory_stays_bounded() {
    let _servers = services::shared().await;
    let service = hostile(Vec::new()).await;
    let before = status_bytes("VmRSS:");
    dead_lettered(
        &service,
        "alloc:4096",
        &[
            "gave up after 2 deliveries",
            "memory limit of 67108864 bytes reached",
        ],
    )
    .await;
    let (after, peak) = (status_bytes("VmRSS:"), status_bytes("VmHWM:"));
    eprintln!(
        "VmRSS before {} MiB, after {} MiB; VmHWM {} MiB",
        before >> 20,
        after >> 20,
        peak >> 20
    );
    assert!(
        after.saturating_sub(before) < 1 << 30,
        "resident memory grew from {before} to {after} bytes"
    );
    assert!(
        peak.saturating_sub(before) < 1 << 30,
        "resident memory peaked at {peak} bytes, from {before}"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_exhausts_the_stack_and_is_dead_lettered() {
    let _servers = services::shared().await;
    let service = hostile(Vec::new()).await;
    dead_lettered(
        &service,
        "recurse",
        &["stack overflow; gave up after 2 deliveries"],
    )
    .await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_trap_and_is_dead_lettered() {
    let _servers = services::shared().await;
    let service = hostile(Vec::new()).await;
    dead_lettered(
        &service,
        "panic",
        &["guest panicked: hostile guest panicked on purpose; gave up after 2 deliveries"],
    )
    .await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_of_every_key_is_denied_and_rejected_at_once() {
    let _servers = services::shared().await;
    let prefix = services::unique("hostile-scan-");
    let service = hostile(grant("cache_keys", format!("{prefix}:*"))).await;
    let letter = dead_lettered(
        &service,
        "scan:*",
        &[
            "scan refused: Error::Denied",
            "outside this handler's cache grant",
            &format!("{prefix}:*"),
        ],
    )
    .await;
    assert_eq!(
        deliveries(&letter),
        "1",
        "a refused call is the plugin's reject, not a fault"
    );
    assert!(host_call_errors(&service, "denied").await >= 1.0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_outside_the_granted_prefix_is_denied_and_the_key_stays() {
    let _servers = services::shared().await;
    let mut valkey = services::valkey().await;
    let prefix = services::unique("hostile-del-");
    let victim = format!("other-{prefix}:victim");
    let _: () = redis::cmd("SET")
        .arg(&victim)
        .arg("keep me")
        .query_async(&mut valkey)
        .await
        .unwrap();
    let service = hostile(grant("cache_keys", format!("{prefix}:*"))).await;
    let letter = dead_lettered(
        &service,
        &format!("delete:{victim}"),
        &["delete refused: Error::Denied", &victim],
    )
    .await;
    assert_eq!(deliveries(&letter), "1");
    assert_eq!(
        existing(&mut valkey, std::slice::from_ref(&victim))
            .await
            .unwrap(),
        1,
        "{victim} must survive"
    );
    assert!(host_call_errors(&service, "denied").await >= 1.0);
    let _: () = redis::cmd("DEL")
        .arg(&victim)
        .query_async(&mut valkey)
        .await
        .unwrap();
    service.stop().await;
}

/// How many nodes carry a label containing `needle`.
async fn nodes_labelled_with(graph: &neo4rs::Graph, needle: &str) -> i64 {
    let mut rows = graph
        .execute(
            neo4rs::query(
                "MATCH (n) WHERE any(l IN labels(n) WHERE l CONTAINS $needle) RETURN count(n) AS c",
            )
            .param("needle", needle),
        )
        .await
        .unwrap();
    rows.next().await.unwrap().unwrap().get::<i64>("c").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cypher_injection_in_a_label_is_invalid_and_reaches_no_query() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    // A node the injected `DETACH DELETE n` would take with it.
    let canary = services::unique("canary-");
    graph
        .run(neo4rs::query("CREATE (:HostileCanary {id: $id})").param("id", canary.as_str()))
        .await
        .unwrap();
    let service = hostile(grant("graph_labels", "PhaseTransition")).await;
    let letter = dead_lettered(
        &service,
        "label:A`) DETACH DELETE n //",
        &["upsert refused: Error::Invalid", "is not an identifier"],
    )
    .await;
    assert_eq!(deliveries(&letter), "1");
    assert_eq!(nodes_labelled_with(&graph, "DETACH").await, 0);
    let mut rows = graph
        .execute(
            neo4rs::query("MATCH (n:HostileCanary {id: $id}) RETURN count(n) AS c")
                .param("id", canary.as_str()),
        )
        .await
        .unwrap();
    assert_eq!(
        rows.next().await.unwrap().unwrap().get::<i64>("c").unwrap(),
        1,
        "the canary node survives"
    );
    assert!(host_call_errors(&service, "invalid").await >= 1.0);
    graph
        .run(
            neo4rs::query("MATCH (n:HostileCanary {id: $id}) DELETE n")
                .param("id", canary.as_str()),
        )
        .await
        .unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_outside_the_grant_is_denied_and_writes_nothing() {
    let _servers = services::shared().await;
    let graph = services::neo4j().await;
    let label = services::unique("Ungranted_");
    let service = hostile(grant("graph_labels", "PhaseTransition")).await;
    let letter = dead_lettered(
        &service,
        &format!("label:{label}"),
        &["upsert refused: Error::Denied", &label],
    )
    .await;
    assert_eq!(deliveries(&letter), "1");
    assert_eq!(nodes_labelled_with(&graph, &label).await, 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_host_calls_is_the_budget_and_one_more_ends_the_event() {
    let _servers = services::shared().await;
    let service = hostile(Vec::new()).await;
    // Exactly the default budget is allowed: the event is acked.
    service.publish(b"calls:10000".to_vec()).await;
    service.settled(SETTLE).await;
    assert!(service.dead_letters().await.is_empty());
    dead_lettered(
        &service,
        "calls:10001",
        &[
            "gave up after 2 deliveries",
            "more than 10000 host calls in one event",
        ],
    )
    .await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_handler_beside_a_hostile_one_handles_every_event() {
    let _servers = services::shared().await;
    let mut valkey = services::valkey().await;
    let graph = services::neo4j().await;
    let attacker = hostile(grant("cache_keys", "hostile:*")).await;
    let neighbour = TestService::start(Options::default()).await;

    let stories: Vec<String> = (0..100)
        .map(|i| services::unique(&format!("NEIGHBOUR-{i}-")))
        .collect();
    let keys: Vec<String> = stories.iter().map(|s| format!("context:{s}")).collect();
    services::set_keys(&mut valkey, &keys, "v").await;
    let timestamp = services::unique("neighbour#");
    let attacks = [
        "loop",
        "loop",
        "loop",
        "loop",
        "alloc:4096",
        "recurse",
        "panic",
        "calls:10001",
        "scan:*",
        "delete:context:x",
    ];
    for (i, story) in stories.iter().enumerate() {
        if let Some(attack) = attacks.get(i / 10).filter(|_| i % 10 == 0) {
            attacker.publish(attack.as_bytes().to_vec()).await;
        }
        neighbour.publish(transition(story, &timestamp)).await;
    }

    services::eventually(SETTLE, "every neighbour key deleted", || async {
        match existing(&mut valkey.clone(), &keys).await? {
            0 => Ok(()),
            left => Err(format!("{left} of {} keys left", keys.len())),
        }
    })
    .await;
    neighbour.settled(SETTLE).await;
    assert_eq!(transitions_at(&graph, &timestamp).await.unwrap(), 100);
    assert!(neighbour.dead_letters().await.is_empty());

    attacker.settled(SETTLE).await;
    assert_eq!(
        attacker.dead_letters().await.len(),
        attacks.len(),
        "every attack is dead-lettered"
    );
    assert!(attacker.health.ready() && neighbour.health.ready());
    neighbour.stop().await;
    attacker.stop().await;
}
