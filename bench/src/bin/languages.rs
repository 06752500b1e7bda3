//! The story-transitions handler in Rust, JavaScript and Python side by
//! side, in one run: component size, load (compile) time, cached load (the
//! same digest loaded again: the runtime's compiled-component cache plus
//! linking), and per-event cost (fresh instance + `handle` + every host
//! call, on the in-memory backends), with the instance pool resetting the
//! default 4 MiB of each memory in place and with 64 MiB.
//!
//! The JavaScript and Python artifacts come from `scripts/build-plugins`.
//! Run: `cargo run --release -p switchyard-bench --bin languages`
//! (`-- --events N` for more events per artifact; default 200).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark reports by panicking

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::isolation::{EventSpec, Isolation, Profile};
use switchyard::runtime::{Outcome, Runtime, RuntimeConfig};
use switchyard_bench::{SEEDED_KEYS, TRANSITION_PAYLOAD, TRANSITION_SUBJECT};
use switchyard_tests::artifacts::{STORY_TRANSITIONS, built_plugin};

struct Row {
    name: &'static str,
    size: usize,
    load: Duration,
    cached_load: Duration,
    per_event: Duration,
    per_event_resident: Duration,
    per_reject: Duration,
}

fn runtime(keep_resident_bytes: usize) -> Arc<Runtime> {
    Arc::new(
        Runtime::new(RuntimeConfig {
            max_instances: 4,
            keep_resident_bytes,
            ..RuntimeConfig::default()
        })
        .expect("a runtime"),
    )
}

/// Mean time of one event over `events`, after one warm-up event.
fn per_event(
    tokio: &tokio::runtime::Runtime,
    runtime: &Arc<Runtime>,
    bytes: &[u8],
    payload: &[u8],
    expect_ack: bool,
    events: u32,
) -> Duration {
    let plugin = runtime.load(bytes).expect("loads");
    let mut isolation = Isolation::on(
        runtime.clone(),
        plugin,
        Profile::unrestricted(BTreeMap::new()),
    );
    let mut total = Duration::ZERO;
    for i in 0..=events {
        for key in SEEDED_KEYS {
            isolation.cache().set(key, "rendered context");
        }
        let started = Instant::now();
        let dispatch =
            tokio.block_on(isolation.send(EventSpec::raw(TRANSITION_SUBJECT, payload.to_vec())));
        let elapsed = started.elapsed();
        match (&dispatch.outcome, expect_ack) {
            (Outcome::Ack, true) | (Outcome::Reject { .. }, false) => {}
            (other, _) => panic!("unexpected outcome {other:?}"),
        }
        if i > 0 {
            total += elapsed;
        }
    }
    total / events
}

fn measure(tokio: &tokio::runtime::Runtime, name: &'static str, path: &str, events: u32) -> Row {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let fresh = runtime(switchyard::runtime::KEEP_RESIDENT_BYTES);
    let started = Instant::now();
    fresh.load(&bytes).expect("loads");
    let load = started.elapsed();
    let started = Instant::now();
    fresh.load(&bytes).expect("loads again");
    let cached_load = started.elapsed();
    let per_event_default = per_event(
        tokio,
        &fresh,
        &bytes,
        TRANSITION_PAYLOAD.as_bytes(),
        true,
        events,
    );
    let per_reject = per_event(
        tokio,
        &fresh,
        &bytes,
        b"{\"timestamp\":\"t\"}",
        false,
        events,
    );
    let resident = runtime(64 << 20);
    let per_event_resident = per_event(
        tokio,
        &resident,
        &bytes,
        TRANSITION_PAYLOAD.as_bytes(),
        true,
        events,
    );
    Row {
        name,
        size: bytes.len(),
        load,
        cached_load,
        per_event: per_event_default,
        per_event_resident,
        per_reject,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros >= 1000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{micros:.0} µs")
    }
}

fn main() {
    let mut events = 200;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => {
                events = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--events takes a number");
            }
            other => panic!("unknown argument {other:?} (expected --events N)"),
        }
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = [
        measure(&tokio, "Rust", STORY_TRANSITIONS, events),
        measure(
            &tokio,
            "JavaScript",
            &built_plugin("story_transitions_js"),
            events,
        ),
        measure(
            &tokio,
            "Python",
            &built_plugin("story_transitions_py"),
            events,
        ),
    ];
    let rust = rows[0].per_event.as_secs_f64();
    println!(
        "| plugin | size | load (compile) | cached load | per event | × Rust | per event, 64 MiB resident | per reject (no host call) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.1} MiB | {} | {} | {} | {:.0}× | {} | {} |",
            row.name,
            row.size as f64 / f64::from(1 << 20),
            ms(row.load),
            us(row.cached_load),
            us(row.per_event),
            row.per_event.as_secs_f64() / rust,
            us(row.per_event_resident),
            us(row.per_reject),
        );
    }
    println!(
        "\n{events} events per cell, after one warm-up event; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
