//! The runtime contains a misbehaving guest: every failure becomes a clear
//! outcome for that event, and the next event runs normally.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use std::time::{Duration, Instant};

use switchyard::runtime::{Fault, LoadError, Runtime, RuntimeConfig, panic_message};
use switchyard_testing::{Harness, Limits, Outcome};
use switchyard_tests::artifacts::{HOSTILE, V010, WRONG_WORLD};

#[path = "runtime/languages.rs"]
mod languages;

const SUBJECT: &str = "test.hostile";

fn hostile(limits: Limits) -> Harness {
    Harness::load(HOSTILE).limits(limits).start()
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline_and_retried() {
    let mut guest = hostile(Limits {
        deadline: Duration::from_millis(200),
        ..Limits::default()
    });
    let started = Instant::now();
    let sent = guest.send_raw(SUBJECT, "loop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        sent.assert_fault(),
        Fault::Deadline(Duration::from_millis(200))
    );
    assert_eq!(sent.assert_retry(), None, "the host picks the backoff");
    guest.send_raw(SUBJECT, "ok").assert_ack();
}

#[test]
fn allocation_past_the_memory_cap_traps() {
    let mut guest = hostile(Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    });
    let sent = guest.send_raw(SUBJECT, "alloc:64");
    match sent.assert_fault() {
        Fault::Memory { limit, .. } => assert_eq!(limit, 16 << 20),
        other => panic!("expected a memory fault, got {other:?}"),
    }
    sent.assert_retry();
    guest
        .send_raw(SUBJECT, "alloc:4")
        .assert_reject_containing("allocated 4 MiB");
}

#[test]
fn panic_becomes_retry_and_the_next_event_succeeds() {
    let mut guest = hostile(Limits::default());
    let sent = guest.send_raw(SUBJECT, "panic");
    assert_eq!(
        sent.assert_fault(),
        Fault::Panic(Some("hostile guest panicked on purpose".into()))
    );
    assert!(
        sent.dispatch
            .output
            .contains("hostile guest panicked on purpose"),
        "the panic message is kept for the log: {:?}",
        sent.dispatch.output
    );
    guest.send_raw(SUBJECT, "ok").assert_ack();
}

#[test]
fn unbounded_recursion_traps_on_stack_overflow() {
    let mut guest = hostile(Limits::default());
    let sent = guest.send_raw(SUBJECT, "recurse");
    assert_eq!(sent.assert_fault(), Fault::StackOverflow);
    guest.send_raw(SUBJECT, "ok").assert_ack();
}

#[test]
fn trap_reasons_start_with_the_cause_and_leave_the_backtrace_out() {
    let mut guest = hostile(Limits::default());
    let panic = guest.send_raw(SUBJECT, "panic").assert_fault().to_string();
    assert_eq!(panic, "guest panicked: hostile guest panicked on purpose");
    let overflow = guest
        .send_raw(SUBJECT, "recurse")
        .assert_fault()
        .to_string();
    assert_eq!(overflow, "stack overflow");
}

#[test]
fn panic_message_is_read_from_the_guest_output_or_left_out() {
    let output = b"thread '<unnamed>' panicked at src/lib.rs:60:24:\nno such key\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
    assert_eq!(panic_message(output).as_deref(), Some("no such key"));
    assert_eq!(panic_message(b""), None);
    assert_eq!(panic_message(b"some log line\n"), None);
    assert_eq!(Fault::Panic(None).to_string(), "guest panicked");
}

#[test]
fn host_calls_past_the_budget_end_the_event() {
    let mut guest = hostile(Limits {
        max_host_calls: 1_000,
        ..Limits::default()
    });
    let sent = guest.send_raw(SUBJECT, "calls:1001");
    assert!(
        matches!(sent.assert_fault(), Fault::HostCallLimit(ref m) if m.contains("1000")),
        "{:?}",
        sent.fault()
    );
    assert_eq!(sent.effects().host_calls, 1_001);
    guest.send_raw(SUBJECT, "calls:1000").assert_ack();
}

#[test]
fn plugin_chosen_retry_delay_is_kept() {
    let mut guest = hostile(Limits::default());
    let sent = guest.send_raw(SUBJECT, "retry:250");
    assert_eq!(sent.assert_retry(), Some(Duration::from_millis(250)));
    assert!(sent.fault().is_none());
    assert_eq!(
        *guest.send_raw(SUBJECT, "retry").outcome(),
        Outcome::Retry { delay: None }
    );
}

#[test]
fn component_without_the_handle_export_is_refused() {
    let error = Harness::load(WRONG_WORLD)
        .try_start()
        .err()
        .expect("must be refused");
    assert!(
        error.contains("does not fit the switchyard:handler/event-handler world"),
        "{error}"
    );
}

#[test]
fn core_module_and_garbage_are_refused_with_the_reason() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let core_module = b"\0asm\x01\0\0\0";
    match runtime.load(core_module) {
        Err(LoadError::CoreModule { .. }) => {}
        other => panic!("expected CoreModule, got {other:?}"),
    }
    match runtime.load(b"not wasm at all") {
        Err(LoadError::Compile { reason, .. }) => assert!(!reason.is_empty()),
        other => panic!("expected Compile, got {other:?}"),
    }
}

#[test]
fn loading_the_same_bytes_twice_reuses_the_compiled_component() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let bytes = std::fs::read(HOSTILE).unwrap();
    let first = runtime.load(&bytes).unwrap();
    let second = runtime.load(&bytes).unwrap();
    assert_eq!(first.digest(), second.digest());
    assert!(first.digest().as_str().starts_with("sha256:"));
    assert_eq!(runtime.compiled_components(), 1);
}

#[test]
fn events_file_lines_parse_into_events() {
    use switchyard::isolation::EventSpec;
    let events = EventSpec::parse_lines(
        "{\"subject\":\"a\",\"payload\":{\"x\":1}}\n\n{\"subject\":\"b\",\"payload\":\"raw bytes\",\"headers\":{\"h\":\"v\"}}\n",
    )
    .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].payload, b"{\"x\":1}");
    assert_eq!(events[1].payload, b"raw bytes");
    assert_eq!(events[1].headers, vec![("h".to_string(), "v".to_string())]);
    let error =
        EventSpec::parse_lines("{\"subject\":\"a\",\"payload\":1}\n{\"payload\":1}").unwrap_err();
    assert_eq!(error, "line 2: missing \"subject\"");
}

#[test]
fn payload_base64_carries_bytes_that_are_not_utf8_and_refuses_ambiguity() {
    use switchyard::isolation::EventSpec;
    let events = EventSpec::parse_lines("{\"subject\":\"a\",\"payload_base64\":\"/w97\"}").unwrap();
    assert_eq!(events[0].payload, [0xff, 0x0f, 0x7b]);
    let both =
        EventSpec::parse_lines("{\"subject\":\"a\",\"payload\":1,\"payload_base64\":\"AA==\"}")
            .unwrap_err();
    assert_eq!(
        both,
        "line 1: give \"payload\" or \"payload_base64\", not both"
    );
    let bad = EventSpec::parse_lines("{\"subject\":\"a\",\"payload_base64\":\"not base64!\"}")
        .unwrap_err();
    assert!(
        bad.starts_with("line 1: \"payload_base64\" is not standard base64"),
        "{bad}"
    );
    let not_string =
        EventSpec::parse_lines("{\"subject\":\"a\",\"payload_base64\":[1]}").unwrap_err();
    assert_eq!(not_string, "line 1: \"payload_base64\" must be a string");
}

/// With one instance slot, three events dispatched at once take turns:
/// each runs to its own outcome instead of failing to instantiate.
#[test]
fn events_beyond_max_instances_wait_for_a_free_slot() {
    use std::sync::Arc;
    use switchyard::capability::HandlerEnv;
    use switchyard::limits::Limits as RuntimeLimits;

    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 1,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = runtime.load(&std::fs::read(HOSTILE).unwrap()).unwrap();
    let (backends, _, _) = switchyard::backend::memory::backends();
    let env = HandlerEnv::new(
        "one-slot",
        Default::default(),
        backends,
        RuntimeLimits {
            deadline: Duration::from_millis(300),
            ..RuntimeLimits::default()
        },
    );
    let event = |payload: &str| switchyard::bindings::event::Event {
        subject: SUBJECT.to_string(),
        payload: payload.as_bytes().to_vec(),
        headers: Vec::new(),
        stream_sequence: 1,
        delivery_attempt: 1,
        published_at_ms: 0,
    };
    let results = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let runtime = Arc::new(runtime);
            let tasks: Vec<_> = ["loop", "ok", "loop"]
                .into_iter()
                .map(|payload| {
                    let (runtime, plugin, env) = (runtime.clone(), plugin.clone(), env.clone());
                    let event = event(payload);
                    tokio::spawn(async move { runtime.dispatch(&plugin, &env, event).await })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        });
    assert_eq!(
        results[0].fault,
        Some(Fault::Deadline(Duration::from_millis(300)))
    );
    assert_eq!(
        results[1].fault, None,
        "the ok event ran: {:?}",
        results[1].fault
    );
    assert_eq!(
        results[2].fault,
        Some(Fault::Deadline(Duration::from_millis(300)))
    );
}

/// Fixtures run with the handler's grants: a version that passes them with
/// every key granted fails them under grants production would enforce.
#[test]
fn fixtures_fail_under_grants_that_deny_what_the_version_needs() {
    use std::sync::Arc;
    use switchyard::grant::{Grants, GrantsConfig};
    use switchyard::isolation::{Fixture, Profile, run_fixtures};
    use switchyard_tests::artifacts::STORY_TRANSITIONS;

    let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());
    let plugin = runtime
        .load(&std::fs::read(STORY_TRANSITIONS).unwrap())
        .unwrap();
    let fixtures = Fixture::parse_lines(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/story-transitions.fixtures.jsonl"
        ))
        .unwrap(),
    )
    .unwrap();
    let profile = |grants: &str| Profile {
        grants: Grants::new(&toml::from_str::<GrantsConfig>(grants).unwrap()),
        ..Profile::unrestricted(Default::default())
    };
    let run = |profile: Profile| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_fixtures(
                runtime.clone(),
                plugin.clone(),
                profile,
                &fixtures,
            ))
    };

    run(Profile::unrestricted(Default::default())).expect("passes with every key granted");
    run(profile(
        r#"cache_keys = ["context:*"]
graph_labels = ["PhaseTransition"]"#,
    ))
    .expect("passes with the grants of the example configuration");
    let refused = run(profile(
        r#"cache_keys = ["other:*"]
graph_labels = ["PhaseTransition"]"#,
    ))
    .expect_err("a scan outside the grant is denied");
    assert!(
        refused.contains("fixture 1") && refused.contains("denied"),
        "{refused}"
    );
}

/// A plugin built against `switchyard:handler@0.1.0`, before
/// `delete-matching` existed, loads on this host and runs unchanged: its
/// scans, deletes, graph writes and logs all reach their capabilities.
#[test]
fn a_plugin_built_against_contract_0_1_0_runs_unchanged() {
    let mut guest = Harness::load(V010).config("prefix", "context:S1").start();
    guest.seed_keys(["context:S1", "context:S1:dev", "context:S2"]);
    guest
        .send_raw("planning.story.transitioned", "{}")
        .assert_ack()
        .assert_deleted(2);
    guest.assert_keys(["context:S2"]);
    guest.assert_node("Seen", "planning.story.transitioned");
}
