//! Resident memory across many dispatches: loads `story-transitions`, runs a
//! warm-up, then dispatches the story-transition event N times (default
//! 10,000; first argument overrides), reseeding the keys it deletes before
//! each, and prints the process's VmRSS (from `/proc/self/status`) after
//! the load, after the warm-up, and after every quarter of the run.
//!
//! Run with `cargo run --release -p switchyard-bench --bin rss [N]`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark reports by panicking

use std::time::Instant;

use switchyard::runtime::Outcome;
use switchyard_bench::{
    TRANSITION_PAYLOAD, TRANSITION_SUBJECT, WasmFixture, seed, tokio_runtime, wasm_event,
};
use switchyard_tests::artifacts::STORY_TRANSITIONS;

const WARM_UP: usize = 100;

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("N must be a whole number"))
        .unwrap_or(10_000);
    let tokio = tokio_runtime();
    let fixture = WasmFixture::load(STORY_TRANSITIONS);
    let env = &fixture.env;
    let dispatch = |tokio: &tokio::runtime::Runtime| {
        seed(&fixture.cache);
        let dispatch = tokio.block_on(fixture.dispatch(
            env,
            wasm_event(TRANSITION_SUBJECT, TRANSITION_PAYLOAD.as_bytes()),
        ));
        assert_eq!(dispatch.outcome, Outcome::Ack, "{dispatch:?}");
        assert_eq!(dispatch.effects.keys_deleted, 2, "{dispatch:?}");
    };

    println!("{:<34} {:>8} KiB", "VmRSS after load:", vm_rss_kib());
    for _ in 0..WARM_UP {
        dispatch(&tokio);
    }
    let before = vm_rss_kib();
    println!(
        "{:<34} {before:>8} KiB",
        format!("VmRSS after {WARM_UP} warm-up events:")
    );
    let started = Instant::now();
    let quarter = (n / 4).max(1);
    for i in 1..=n {
        dispatch(&tokio);
        if i % quarter == 0 || i == n {
            println!(
                "{:<34} {:>8} KiB",
                format!("VmRSS after {i} more events:"),
                vm_rss_kib()
            );
        }
    }
    let elapsed = started.elapsed();
    let after = vm_rss_kib();
    println!(
        "{n} dispatches in {:.2?} ({:.1} µs/event); VmRSS {before} -> {after} KiB ({:+} KiB)",
        elapsed,
        elapsed.as_secs_f64() * 1e6 / n as f64,
        after as i64 - before as i64
    );
}
