//! The story-transitions handler in JavaScript and in Python behaves as the
//! Rust one: the shared fixtures (plugins/fixtures/story-transitions.jsonl)
//! come out as they expect for each artifact, every outcome and reason is
//! the Rust handler's word for word, and the retries on an unavailable
//! backend wait as long.
//!
//! The JavaScript and Python artifacts are built by `scripts/build-plugins`
//! (which `scripts/test` runs first); a missing one fails these tests.

use std::time::Duration;

use switchyard::isolation::{EventSpec, Fixture};
use switchyard_testing::{Harness, Outcome, Value};
use switchyard_tests::artifacts::{STORY_TRANSITIONS, built_plugin, story_transitions_fixtures};

const SUBJECT: &str = "planning.story.transitioned";

/// What one fixture came to: the outcome as `switchyard test` names it and
/// its reject reason or retry delay.
type Seen = (String, String);

/// Runs every fixture through `plugin` on one harness (one compile),
/// asserting each expectation; returns what each event came to.
fn run_fixtures(plugin: &mut Harness, name: &str) -> Vec<Seen> {
    let fixtures = Fixture::parse_lines(&story_transitions_fixtures())
        .unwrap_or_else(|e| panic!("plugins/fixtures/story-transitions.jsonl: {e}"));
    assert!(fixtures.len() >= 25, "the shared fixtures are there");
    let mut seen = Vec::new();
    for (i, fixture) in fixtures.iter().enumerate() {
        let line = i + 1;
        for (key, value) in &fixture.cache {
            plugin.seed(key, value);
        }
        let sent = plugin.send(fixture.event.clone());
        let (outcome, detail) = match sent.outcome() {
            Outcome::Ack => ("ack", String::new()),
            Outcome::Retry { delay } => ("retry", format!("{delay:?}")),
            Outcome::Reject { reason } => ("reject", reason.clone()),
        };
        let expect = fixture.expect.as_ref().expect("every fixture line expects");
        assert_eq!(outcome, expect.outcome, "{name}, fixture {line}: {detail}");
        if let Some(needle) = &expect.detail {
            assert!(
                detail.contains(needle.as_str()),
                "{name}, fixture {line}: expected {needle:?} in {detail:?}"
            );
        }
        let keys = plugin.keys();
        for key in &expect.keys_gone {
            assert!(!keys.contains(key), "{name}, fixture {line}: {key:?} left");
        }
        for key in &expect.keys_kept {
            assert!(
                keys.contains(key),
                "{name}, fixture {line}: {key:?} deleted"
            );
        }
        let nodes = plugin.nodes();
        for (label, id) in &expect.nodes {
            assert!(
                nodes.iter().any(|n| &n.label == label && &n.id == id),
                "{name}, fixture {line}: no node ({label}:{id})"
            );
        }
        seen.push((outcome.to_string(), detail));
    }
    seen
}

fn flat(story: &str, timestamp: &str) -> EventSpec {
    EventSpec::json(
        SUBJECT,
        &serde_json::json!({"story_id": story, "from_phase": "DESIGN", "to_phase": "BUILD", "timestamp": timestamp}),
    )
}

/// Everything one artifact is checked on, from one load of it.
fn check(path: &str, name: &str) -> Vec<Seen> {
    let mut plugin = Harness::load(path).start();
    let seen = run_fixtures(&mut plugin, name);

    // The graph upsert: label, id and the four properties; a phase the
    // producer left out is set to null, which (as in Neo4j) stores none.
    let node = plugin.assert_node("PhaseTransition", "S5:1E2");
    let text = |v: &str| Value::Text(v.to_string());
    assert_eq!(node.properties["story_id"], text("S5"), "{name}");
    assert!(
        !node.properties.contains_key("from_phase"),
        "{name}: {:?}",
        node.properties
    );
    assert_eq!(node.properties["to_phase"], text("B"), "{name}");
    assert_eq!(node.properties["timestamp"], text("1E2"), "{name}");
    let node = plugin.assert_node("PhaseTransition", "S3:t3-inner");
    assert_eq!(node.properties["from_phase"], text("TEST"), "{name}");
    assert_eq!(node.properties["to_phase"], text("DONE"), "{name}");
    assert_eq!(node.properties.len(), 4, "{name}: {:?}", node.properties);

    // A redelivery writes no second node and finds nothing left to delete.
    let before = plugin.nodes().len();
    plugin
        .send(flat("S1", "2026-01-01T00:00:00Z"))
        .assert_ack()
        .assert_deleted(0);
    assert_eq!(plugin.nodes().len(), before, "{name}: a second node");

    // An unavailable cache: retried after 500 ms doubling per attempt up
    // to 30 s, the keys left for the retry; then the retry succeeds.
    plugin.seed_keys(["context:U1", "context:U1:dev"]);
    plugin.cache_unavailable(true);
    for (attempt, ms) in [
        (1, 500),
        (2, 1000),
        (3, 2000),
        (4, 4000),
        (7, 30_000),
        (40, 30_000),
    ] {
        let delay = plugin
            .send_attempt(flat("U1", "tu"), attempt)
            .assert_retry();
        assert_eq!(
            delay,
            Some(Duration::from_millis(ms)),
            "{name}, attempt {attempt}"
        );
    }
    plugin.cache_unavailable(false);
    let keys = plugin.keys();
    assert!(
        keys.contains(&"context:U1:dev".to_string()),
        "{name}: {keys:?}"
    );
    plugin
        .send_attempt(flat("U1", "tu"), 5)
        .assert_ack()
        .assert_deleted(2);

    // An unavailable graph: retried before the cache is touched.
    plugin.seed_keys(["context:U2"]);
    plugin.graph_unavailable(true);
    let delay = plugin.send_attempt(flat("U2", "tu"), 2).assert_retry();
    assert_eq!(delay, Some(Duration::from_millis(1000)), "{name}");
    assert!(plugin.keys().contains(&"context:U2".to_string()), "{name}");
    plugin.graph_unavailable(false);
    seen
}

/// The Rust handler's outcomes over the fixtures, to compare others with.
fn rust_outcomes() -> Vec<Seen> {
    let mut plugin = Harness::load(STORY_TRANSITIONS).start();
    run_fixtures(&mut plugin, "story_transitions")
}

fn same_as_rust(name: &str) {
    let path = built_plugin(name);
    let seen = check(&path, name);
    let rust = rust_outcomes();
    assert_eq!(seen.len(), rust.len());
    for (line, (theirs, ours)) in seen.iter().zip(&rust).enumerate() {
        assert_eq!(
            theirs,
            ours,
            "{name}, fixture {}: differs from Rust",
            line + 1
        );
    }
}

#[test]
fn rust_story_transitions_passes_the_shared_fixtures() {
    check(STORY_TRANSITIONS, "story_transitions");
}

#[test]
fn javascript_story_transitions_behaves_as_the_rust_one() {
    same_as_rust("story_transitions_js");
}

#[test]
fn python_story_transitions_behaves_as_the_rust_one() {
    same_as_rust("story_transitions_py");
}
