//! Readiness: whether every dependency answers. Delivery and the service
//! set the flags; `/readyz` reads them.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports: every dependency answering.
#[derive(Default)]
pub struct Health {
    pub nats: AtomicBool,
    pub cache: AtomicBool,
    pub graph: AtomicBool,
    pub consumers: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.nats.load(Ordering::Relaxed)
            && self.cache.load(Ordering::Relaxed)
            && self.graph.load(Ordering::Relaxed)
            && self.consumers.load(Ordering::Relaxed)
    }
}
