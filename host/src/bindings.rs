//! The host side of the `switchyard:handler` world, generated from `wit/`.
//!
//! This is the only `bindgen!` in the host; everything else imports the
//! generated types from here. Imports are `async` (backends do network I/O)
//! and `trappable` (a host-enforced limit ends the event with a trap).

wasmtime::component::bindgen!({
    world: "event-handler",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
    additional_derives: [PartialEq],
});

pub use switchyard::handler::{cache, config, event, graph, log, outcome, types};
