//! The built `story_transitions.wasm`, run on the host runtime through the
//! test harness: every payload shape, exact invalidation, rejects without
//! side effects, idempotent redelivery, retries on unavailable backends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use serde_json::json;
use switchyard_testing::{Harness, Value};
use switchyard_tests::artifacts::STORY_TRANSITIONS;

const SUBJECT: &str = "planning.story.transitioned";

fn plugin() -> Harness {
    Harness::load(STORY_TRANSITIONS).start()
}

fn flat(story: &str, timestamp: &str) -> serde_json::Value {
    json!({"story_id": story, "from_phase": "DESIGN", "to_phase": "BUILD", "timestamp": timestamp})
}

#[test]
fn stress_scenario_invalidates_all_fifty_stories() {
    let mut plugin = plugin();
    let stories: Vec<String> = (1..=50).map(|i| format!("STRESS-NEO-{i:04}")).collect();
    plugin.seed_keys(stories.iter().map(|s| format!("context:{s}")));
    plugin.seed_keys(["context:OTHER-STORY"]);
    for story in &stories {
        plugin
            .send_json(SUBJECT, flat(story, "2026-01-01T00:00:00Z"))
            .assert_ack()
            .assert_deleted(1);
    }
    plugin.assert_keys(["context:OTHER-STORY"]);
    plugin.assert_node_count("PhaseTransition", 50);
}

#[test]
fn invalidates_bare_key_and_role_keys_but_not_lookalikes() {
    let mut plugin = plugin();
    plugin.seed_keys([
        "context:S1",
        "context:S1:developer",
        "context:S1:qa:deep",
        "context:S10",
        "context:S1x",
        "context:S1x:developer",
        "other:S1",
        "context:",
    ]);
    plugin
        .send_json(SUBJECT, flat("S1", "t1"))
        .assert_ack()
        .assert_deleted(3);
    plugin.assert_keys([
        "context:S10",
        "context:S1x",
        "context:S1x:developer",
        "other:S1",
        "context:",
    ]);
}

#[test]
fn story_id_with_glob_specials_is_matched_literally() {
    let mut plugin = plugin();
    let id = "a*[b]?\\c";
    plugin.seed_keys([
        format!("context:{id}"),
        format!("context:{id}:dev"),
        "context:aXbc".to_string(),
        "context:a*[b]?\\cd:dev".to_string(),
        "context:ab:dev".to_string(),
    ]);
    plugin
        .send_json(SUBJECT, flat(id, "t1"))
        .assert_ack()
        .assert_deleted(2);
    plugin.assert_keys(["context:aXbc", "context:a*[b]?\\cd:dev", "context:ab:dev"]);
}

#[test]
fn key_prefix_comes_from_config() {
    let mut plugin = Harness::load(STORY_TRANSITIONS)
        .config("key_prefix", "ctx/")
        .start();
    plugin.seed_keys(["ctx/S1", "ctx/S1:dev", "context:S1"]);
    plugin
        .send_json(SUBJECT, flat("S1", "t1"))
        .assert_ack()
        .assert_deleted(2);
    plugin.assert_keys(["context:S1"]);
}

#[test]
fn accepts_every_payload_shape_with_normalised_properties() {
    let mut plugin = plugin();
    let planning = json!({
        "event_type": "story.transitioned", "story_id": "S2",
        "from_state": "DESIGN", "to_state": "BUILD",
        "transitioned_by": "po@example.com", "timestamp": "t2"
    });
    let envelope_of = |inner: serde_json::Value| {
        json!({
            "event_type": "planning.story.transitioned", "payload": inner,
            "idempotency_key": "k", "correlation_id": "c", "timestamp": "t-envelope",
            "producer": "planning", "metadata": {"trace": "x"}
        })
    };
    let shapes = [
        ("S1:t1", flat("S1", "t1")),
        ("S2:t2", planning.clone()),
        ("S3:t3", envelope_of(flat("S3", "t3"))),
        ("S2:t2", envelope_of(planning)),
    ];
    for (node, payload) in shapes {
        plugin.send_json(SUBJECT, payload).assert_ack();
        let stored = plugin.assert_node("PhaseTransition", node);
        assert_eq!(
            stored.properties["from_phase"],
            Value::Text("DESIGN".into()),
            "{node}"
        );
        assert_eq!(
            stored.properties["to_phase"],
            Value::Text("BUILD".into()),
            "{node}"
        );
        assert!(matches!(&stored.properties["story_id"], Value::Text(_)));
        assert!(matches!(&stored.properties["timestamp"], Value::Text(_)));
    }
    plugin.assert_node_count("PhaseTransition", 3);
}

#[test]
fn redelivery_writes_no_second_node() {
    let mut plugin = plugin();
    plugin.seed_keys(["context:S1"]);
    plugin
        .send_json(SUBJECT, flat("S1", "t1"))
        .assert_ack()
        .assert_deleted(1);
    plugin
        .send_json(SUBJECT, flat("S1", "t1"))
        .assert_ack()
        .assert_deleted(0);
    plugin.assert_node_count("PhaseTransition", 1);
}

#[test]
fn rejects_bad_payloads_with_a_reason_and_no_side_effects() {
    let mut plugin = plugin();
    plugin.seed_keys(["context:S1"]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "JSON"),
        (vec![0xff, 0xfe, b'{'], "UTF-8"),
        (b"[1,2]".to_vec(), "array"),
        (b"\"S1\"".to_vec(), "string"),
        (
            json!({"from_phase": "A", "timestamp": "t"})
                .to_string()
                .into_bytes(),
            "story_id",
        ),
        (
            json!({"story_id": "", "timestamp": "t"})
                .to_string()
                .into_bytes(),
            "story_id",
        ),
        (
            json!({"story_id": 7, "timestamp": "t"})
                .to_string()
                .into_bytes(),
            "story_id",
        ),
        (
            json!({"event_type": "planning.story.transitioned", "payload": 3})
                .to_string()
                .into_bytes(),
            "payload",
        ),
        ("[".repeat(10_000).into_bytes(), "JSON"),
    ];
    for (payload, needle) in cases {
        let sent = plugin.send_raw(SUBJECT, payload.clone());
        let reason = sent.assert_reject_containing(needle);
        sent.assert_no_effects();
        assert!(!reason.is_empty());
    }
    plugin.assert_keys(["context:S1"]);
    plugin.assert_node_count("PhaseTransition", 0);
}

#[test]
fn unavailable_backend_retries_with_a_delay_that_grows_per_attempt() {
    let mut plugin = plugin();
    plugin.seed_keys(["context:S1"]);
    plugin.cache_unavailable(true);
    let delays: Vec<_> = (1..=4)
        .map(|attempt| {
            plugin
                .send_attempt(
                    switchyard_testing::EventSpec::json(SUBJECT, &flat("S1", "t1")),
                    attempt,
                )
                .assert_retry()
                .expect("the plugin chooses its own delay")
        })
        .collect();
    assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
    plugin.assert_keys(["context:S1"]);

    plugin.cache_unavailable(false);
    plugin
        .send_json(SUBJECT, flat("S1", "t1"))
        .assert_ack()
        .assert_deleted(1);
    plugin.assert_keys(Vec::<String>::new());

    plugin.graph_unavailable(true);
    plugin.seed_keys(["context:S2"]);
    plugin.send_json(SUBJECT, flat("S2", "t2")).assert_retry();
    plugin.assert_keys(["context:S2"]);
}

#[test]
fn a_scan_outside_the_grants_is_denied_and_the_event_rejected_with_the_keys_left() {
    let mut plugin = Harness::load(STORY_TRANSITIONS)
        .grants("cache_keys = [\"other:*\"]\ngraph_labels = [\"PhaseTransition\"]")
        .start();
    plugin.seed_keys(["context:S1", "context:S1:dev"]);
    let reason = plugin
        .send_json(SUBJECT, json!({"story_id": "S1", "timestamp": "t1"}))
        .assert_reject_containing("denied");
    assert!(reason.contains("context:S1"), "names the pattern: {reason}");
    plugin.assert_keys(["context:S1", "context:S1:dev"]);
    // The graph step comes first by design (see the crate docs).
    plugin.assert_node_count("PhaseTransition", 1);
}

#[test]
fn runs_with_the_grants_of_the_example_service_configuration() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/switchyard.toml"
    );
    let mut plugin = Harness::load(STORY_TRANSITIONS)
        .as_handler_of(example, "story-transitions")
        .start();
    plugin.seed_keys(["context:S1", "context:S1:dev", "context:S10"]);
    plugin
        .send_json(SUBJECT, json!({"story_id": "S1", "timestamp": "t1"}))
        .assert_ack()
        .assert_deleted(2);
    plugin.assert_keys(["context:S10"]);
}
