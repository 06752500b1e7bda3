//! A test guest that misbehaves on request. The payload names the
//! behaviour; anything unknown is acked untouched.
//!
//! - `ok`: ack.
//! - `loop`: spin forever.
//! - `alloc:<MiB>`: allocate and touch that much memory, then ack.
//! - `recurse`: unbounded recursion.
//! - `panic`: panic with a message.
//! - `scan:<pattern>`: scan the pattern to the end; ack with nothing deleted.
//! - `delete:<key>`: delete that key; reject with the error if refused.
//! - `label:<label>`: upsert an entity with that label.
//! - `calls:<n>`: make `n` config reads.
//! - `sleep-calls`: host calls until the deadline.

use switchyard_plugin::event::Event;
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::{Guest, cache, config, graph};

struct Hostile;

fn describe(error: &switchyard_plugin::types::Error) -> String {
    format!("{error:?}")
}

#[inline(never)]
#[allow(unconditional_recursion)] // the point of this guest
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    sink[(depth % 64) as usize] = depth;
    let mut local = [depth; 64];
    local[0] = recurse(depth + 1, sink);
    local.iter().sum()
}

impl Guest for Hostile {
    fn handle(event: Event) -> Outcome {
        let command = String::from_utf8_lossy(&event.payload).into_owned();
        let (verb, argument) = command.split_once(':').unwrap_or((command.as_str(), ""));
        match verb {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mib: usize = argument.parse().unwrap_or(4096);
                let mut blocks = Vec::new();
                for _ in 0..mib {
                    blocks.push(vec![1u8; 1 << 20]);
                }
                Outcome::Reject(format!(
                    "allocated {} MiB without being stopped",
                    blocks.len()
                ))
            }
            "recurse" => {
                let mut sink = [0u64; 64];
                let total = recurse(0, &mut sink);
                Outcome::Reject(format!("recursion returned {total}"))
            }
            "panic" => panic!("hostile guest panicked on purpose"),
            "scan" => {
                let mut cursor = 0;
                let mut seen = 0usize;
                loop {
                    match cache::scan(argument, cursor, 100) {
                        Ok(page) => {
                            seen += page.keys.len();
                            cursor = page.cursor;
                            if cursor == 0 {
                                break;
                            }
                        }
                        Err(e) => {
                            return Outcome::Reject(format!("scan refused: {}", describe(&e)));
                        }
                    }
                }
                Outcome::Reject(format!("scan of {argument} saw {seen} keys"))
            }
            "delete" => match cache::delete(&[argument.to_string()]) {
                Ok(n) => Outcome::Reject(format!("deleted {n} keys outside the grant")),
                Err(e) => Outcome::Reject(format!("delete refused: {}", describe(&e))),
            },
            "label" => match graph::upsert_entity(argument, "x", &[]) {
                Ok(()) => Outcome::Ack,
                Err(e) => Outcome::Reject(format!("upsert refused: {}", describe(&e))),
            },
            "calls" => {
                let n: u64 = argument.parse().unwrap_or(10_000);
                for _ in 0..n {
                    let _ = config::get("anything");
                }
                Outcome::Ack
            }
            "retry" => Outcome::Retry(argument.parse().ok()),
            _ => Outcome::Ack,
        }
    }
}

switchyard_plugin::export!(Hostile);
