//! Per-event overhead of the host runtime, three benchmarks side by side:
//!
//! - `native_story_transition`: `story_transitions::handle` called natively
//!   on a [`NativeHost`] over the in-memory cache and graph.
//! - `wasm_story_transition`: the same event through `Runtime::dispatch`:
//!   a fresh instance of the `story-transitions` component, `handle`, and
//!   every host call through the capabilities, on the same in-memory
//!   backends (instantiate + handle).
//! - `wasm_noop`: the `guest-hostile` test component with payload `ok`,
//!   which acks without any host call (instantiate + call, nothing else).
//! - `wasm_noop_pages_returned`: the same with pooled memories given back
//!   to the kernel after each instance (`keep_resident_bytes = 0`), as
//!   before the runtime reset them in place: the next instance faults its
//!   pages back in.
//!
//! Every story-transition iteration gets a freshly seeded cache holding the
//! keys the event deletes, built in `iter_batched`'s setup (not timed), so
//! every iteration deletes the same two keys. The graph is shared: after
//! the first event the upsert merges into the same node, as a redelivery
//! does.
//!
//! Run with `cargo bench -p switchyard-bench`; the table printed at the end
//! gives the time per event and the ratios.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark reports by panicking

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use switchyard::backend::memory::MemoryGraph;
use switchyard::runtime::Outcome as HostOutcome;
use switchyard_bench::{
    NativeHost, OTHER_KEY, TRANSITION_PAYLOAD, TRANSITION_SUBJECT, WasmFixture, native_event,
    seeded_cache, tokio_runtime, wasm_event,
};
use switchyard_plugin::outcome::Outcome;
use switchyard_tests::artifacts::{HOSTILE, STORY_TRANSITIONS};

const GROUP: &str = "per_event";
const NATIVE: &str = "native_story_transition";
const WASM: &str = "wasm_story_transition";
const NOOP: &str = "wasm_noop";
const NOOP_RETURNED: &str = "wasm_noop_pages_returned";
const NOOP_SUBJECT: &str = "bench.noop";

fn output_directory() -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(home) => PathBuf::from(home),
        None => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
            .join("criterion"),
    }
}

/// Runs each path once and checks it does the work it is timed for.
fn check(
    tokio: &tokio::runtime::Runtime,
    graph: &MemoryGraph,
    stories: &WasmFixture,
    hostile: &WasmFixture,
) {
    let cache = seeded_cache();
    let mut host = NativeHost::new(cache.clone(), graph.clone());
    let outcome = story_transitions::handle(&mut host, &native_event());
    assert!(matches!(outcome, Outcome::Ack), "native: {outcome:?}");
    assert_eq!(cache.keys(), [OTHER_KEY], "native left the story's keys");
    assert_eq!(graph.count(story_transitions::NODE_LABEL), 1);

    let cache = seeded_cache();
    let env = stories.env_with_cache(cache.clone());
    let dispatch = tokio.block_on(stories.dispatch(
        &env,
        wasm_event(TRANSITION_SUBJECT, TRANSITION_PAYLOAD.as_bytes()),
    ));
    assert_eq!(dispatch.outcome, HostOutcome::Ack, "wasm: {dispatch:?}");
    assert_eq!(dispatch.effects.keys_deleted, 2, "wasm: {dispatch:?}");
    assert_eq!(dispatch.effects.entities_upserted, 1, "wasm: {dispatch:?}");
    assert_eq!(cache.keys(), [OTHER_KEY], "wasm left the story's keys");

    let dispatch = tokio.block_on(hostile.dispatch(&hostile.env, wasm_event(NOOP_SUBJECT, b"ok")));
    assert_eq!(dispatch.outcome, HostOutcome::Ack, "noop: {dispatch:?}");
    assert_eq!(dispatch.effects.host_calls, 0, "noop: {dispatch:?}");
}

fn bench(c: &mut Criterion) {
    let tokio = tokio_runtime();
    let stories = WasmFixture::load(STORY_TRANSITIONS);
    let hostile = WasmFixture::load(HOSTILE);
    let returned = WasmFixture::load_with(HOSTILE, 0);
    let native_graph = MemoryGraph::default();
    check(&tokio, &native_graph, &stories, &hostile);

    let mut group = c.benchmark_group(GROUP);

    let event = native_event();
    group.bench_function(NATIVE, |b| {
        b.iter_batched(
            || NativeHost::new(seeded_cache(), native_graph.clone()),
            |mut host| {
                let outcome = story_transitions::handle(&mut host, &event);
                // Returned so the host (and its cache) drops outside the timing.
                (host, outcome)
            },
            BatchSize::SmallInput,
        );
    });

    group.bench_function(WASM, |b| {
        b.iter_batched(
            || {
                (
                    stories.env_with_cache(seeded_cache()),
                    wasm_event(TRANSITION_SUBJECT, TRANSITION_PAYLOAD.as_bytes()),
                )
            },
            |(env, event)| {
                let dispatch = tokio.block_on(stories.dispatch(&env, event));
                (env, dispatch)
            },
            BatchSize::SmallInput,
        );
    });

    group.bench_function(NOOP, |b| {
        b.iter_batched(
            || wasm_event(NOOP_SUBJECT, b"ok"),
            |event| tokio.block_on(hostile.dispatch(&hostile.env, event)),
            BatchSize::SmallInput,
        );
    });

    group.bench_function(NOOP_RETURNED, |b| {
        b.iter_batched(
            || wasm_event(NOOP_SUBJECT, b"ok"),
            |event| tokio.block_on(returned.dispatch(&returned.env, event)),
            BatchSize::SmallInput,
        );
    });

    group.finish();
}

/// The estimate criterion prints as `time:` (the slope when it sampled
/// linearly, otherwise the mean), in nanoseconds.
fn estimate_ns(directory: &Path, name: &str) -> Option<f64> {
    let path = directory
        .join(GROUP)
        .join(name)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    ["slope", "mean"]
        .iter()
        .find_map(|key| json.get(key)?.get("point_estimate")?.as_f64())
}

fn human(ns: f64) -> String {
    if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn summary(directory: &Path) {
    let native = estimate_ns(directory, NATIVE);
    let wasm = estimate_ns(directory, WASM);
    let noop = estimate_ns(directory, NOOP);
    let returned = estimate_ns(directory, NOOP_RETURNED);
    println!();
    println!("| benchmark | time per event |");
    println!("|---|---|");
    for (name, value) in [
        (NATIVE, native),
        (WASM, wasm),
        (NOOP, noop),
        (NOOP_RETURNED, returned),
    ] {
        if let Some(ns) = value {
            println!("| `{name}` | {} |", human(ns));
        }
    }
    if let (Some(native), Some(wasm)) = (native, wasm) {
        println!(
            "| ratio wasm_story_transition / native_story_transition | {:.1}x |",
            wasm / native
        );
    }
    if let (Some(wasm), Some(noop)) = (wasm, noop) {
        println!(
            "| ratio wasm_noop / wasm_story_transition | {:.2} |",
            noop / wasm
        );
        println!(
            "| wasm_story_transition - wasm_noop | {} |",
            human(wasm - noop)
        );
    }
    if let (Some(noop), Some(returned)) = (noop, returned) {
        println!(
            "| ratio wasm_noop_pages_returned / wasm_noop | {:.2}x |",
            returned / noop
        );
    }
    if let (Some(native), Some(wasm)) = (native, wasm) {
        // What the sandbox adds to one event: the same logic on the same
        // backends, minus the native run.
        println!("| sandbox_overhead_us | {:.2} |", (wasm - native) / 1_000.0);
    }
}

fn main() {
    let directory = output_directory();
    let mut criterion = Criterion::default()
        .output_directory(&directory)
        .sample_size(40)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    summary(&directory);
}
