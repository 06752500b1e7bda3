//! The service end to end: events published to JetStream, effects read back
//! from the real Valkey and Neo4j, settlements read back from JetStream.

use std::time::{Duration, Instant};

use switchyard::delivery::dead_letter::headers;
use switchyard_tests::artifacts::HOSTILE;
use switchyard_tests::services;

use crate::support::{HANDLER, Options, TestService, existing, transition, transitions_at};

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_scenario_deletes_every_key_and_writes_fifty_nodes() {
    let _servers = services::shared().await;
    let mut valkey = services::valkey().await;
    let graph = services::neo4j().await;
    let service = TestService::start(Options::default()).await;

    // The incident's keys, exactly, plus another story's key that must stay.
    let keys: Vec<String> = (1..=50)
        .map(|i| format!("context:STRESS-NEO-{i:04}"))
        .collect();
    let other = "context:STRESS-NEO-00010".to_string();
    services::set_keys(&mut valkey, keys.iter().chain([&other]), "rendered").await;
    // A timestamp of this run's own, so nodes from earlier runs never count.
    let timestamp = services::unique("2026-11-26T00:00:00Z#");

    let started = Instant::now();
    for i in 1..=50 {
        service
            .publish(transition(&format!("STRESS-NEO-{i:04}"), &timestamp))
            .await;
    }
    services::eventually(SETTLE, "every stress key deleted", || async {
        match existing(&mut valkey.clone(), &keys).await? {
            0 => Ok(()),
            left => Err(format!("{left} of 50 keys left")),
        }
    })
    .await;
    let elapsed = started.elapsed();
    service.settled(SETTLE).await;
    eprintln!(
        "stress scenario: 50 events published and handled in {elapsed:?} ({:.0} events/s end to end)",
        50.0 / elapsed.as_secs_f64()
    );

    assert_eq!(
        existing(&mut valkey, std::slice::from_ref(&other))
            .await
            .unwrap(),
        1,
        "{other} must be untouched"
    );
    assert_eq!(transitions_at(&graph, &timestamp).await.unwrap(), 50);
    assert!(service.dead_letters().await.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&other)
        .query_async(&mut valkey)
        .await
        .unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payloads_are_dead_lettered_with_reason_on_first_delivery() {
    let _servers = services::shared().await;
    let service = TestService::start(Options::default()).await;
    let bad: Vec<(&[u8], &str)> = vec![
        (b"{not json", "JSON"),
        (b"[1, 2, 3]", "array"),
        (
            br#"{"from_phase": "A", "to_phase": "B", "timestamp": "t"}"#,
            "story_id",
        ),
        (b"\xff\xfe", "UTF-8"),
    ];
    let mut sequences = Vec::new();
    for (payload, _) in &bad {
        sequences.push(service.publish(payload.to_vec()).await);
    }
    service.settled(SETTLE).await;
    let letters = services::eventually(SETTLE, "four dead letters", || async {
        let letters = service.dead_letters().await;
        if letters.len() == bad.len() {
            Ok(letters)
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await;

    for ((payload, needle), sequence) in bad.iter().zip(&sequences) {
        let letter = letters
            .iter()
            .find(|m| m.payload.as_ref() == *payload)
            .unwrap_or_else(|| panic!("no dead letter carries {payload:?}"));
        let header = |name: &str| {
            letter
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| panic!("dead letter lacks {name}"))
        };
        assert!(
            header(headers::REASON).contains(needle),
            "{}",
            header(headers::REASON)
        );
        assert_eq!(header(headers::HANDLER), HANDLER);
        assert_eq!(
            header(headers::DELIVERY_COUNT),
            "1",
            "termed on first delivery"
        );
        assert_eq!(header(headers::ORIGINAL_SUBJECT), service.names.subject);
        assert_eq!(header(headers::ORIGINAL_SEQUENCE), sequence.to_string());
        assert!(header(headers::PLUGIN_DIGEST).starts_with("sha256:"));
        assert_eq!(
            letter.subject.as_str(),
            format!("{}.{HANDLER}", service.names.dead_letter_subject)
        );
    }
    let (_, _, redelivered) = service.consumer_state().await.unwrap();
    assert_eq!(redelivered, 0, "no invalid payload was delivered twice");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_still_failing_at_max_deliver_is_dead_lettered_with_the_last_reason() {
    let _servers = services::shared().await;
    let service = TestService::start(Options {
        plugin: HOSTILE.to_string(),
        max_deliver: 3,
        ..Options::default()
    })
    .await;
    service.publish(b"retry:10".to_vec()).await;
    let letters = services::eventually(SETTLE, "one dead letter", || async {
        let letters = service.dead_letters().await;
        if letters.len() == 1 {
            Ok(letters)
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await;
    let reason = letters[0]
        .headers
        .get(headers::REASON)
        .unwrap()
        .as_str()
        .to_string();
    assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
    assert_eq!(
        letters[0]
            .headers
            .get(headers::DELIVERY_COUNT)
            .unwrap()
            .as_str(),
        "3"
    );
    service.settled(SETTLE).await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_while_valkey_is_down_are_retried_until_it_is_back() {
    let _servers = services::exclusive().await;
    let mut valkey = services::valkey().await;
    let service = TestService::start(Options::default()).await;
    let timestamp = services::unique("outage#");
    let stories: Vec<String> = (1..=10)
        .map(|i| services::unique(&format!("OUTAGE-{i}-")))
        .collect();
    let keys: Vec<String> = stories
        .iter()
        .flat_map(|s| [format!("context:{s}"), format!("context:{s}:developer")])
        .collect();
    services::set_keys(&mut valkey, &keys, "v").await;

    services::control("stop", "valkey");
    for story in &stories {
        service.publish(transition(story, &timestamp)).await;
    }
    // Every event is delivered at least once and retried; none is acked.
    services::eventually(SETTLE, "events retried while Valkey is down", || async {
        match service.consumer_state().await? {
            (_, _, redelivered) if redelivered > 0 => Ok(()),
            state => Err(format!("consumer state {state:?}")),
        }
    })
    .await;
    services::control("start", "valkey");

    let valkey = services::valkey().await;
    services::eventually(SETTLE, "keys invalidated once Valkey is back", || async {
        match existing(&mut valkey.clone(), &keys).await? {
            0 => Ok(()),
            left => Err(format!("{left} of {} keys left", keys.len())),
        }
    })
    .await;
    service.settled(SETTLE).await;
    assert!(
        service.dead_letters().await.is_empty(),
        "an outage is never a reason to dead-letter"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_loses_no_event() {
    let _servers = services::exclusive().await;
    let graph = services::neo4j().await;
    let service = TestService::start(Options::default()).await;
    let timestamp = services::unique("restart#");
    let total = 200;
    for i in 0..total {
        if i == total / 2 {
            services::control("restart", "nats");
        }
        service
            .publish(transition(&format!("RESTART-{i}"), &timestamp))
            .await;
    }
    services::eventually(
        SETTLE,
        "every event handled after the NATS restart",
        || async {
            match transitions_at(&graph, &timestamp).await? {
                n if n == total => Ok(()),
                n => Err(format!("{n} of {total} nodes")),
            }
        },
    )
    .await;
    service.settled(SETTLE).await;
    service.stop().await;
}
