//! What this host settled lately, per order key: the highest stream
//! sequence it acked or dead-lettered for each key.
//!
//! A JetStream cluster can redeliver an event whose ack it confirmed or
//! never answered (its consumer leader died before the ack was replicated,
//! or the cluster took longer than the event's `ack_wait` to answer). By
//! then the key's next events may have run here. Running the old event
//! again would undo them, so [`super::flow`] acks such a copy without
//! running it: a redelivery (delivery count above 1) at or below the
//! sequence settled for its key. Only redeliveries are skipped, so a
//! consumer reset to an earlier sequence still delivers everything once.
//!
//! Bounded: two generations of at most [`GENERATION`] keys each; a key
//! not settled for two generations is forgotten (its next redelivery then
//! runs, as before this memory existed).

use std::collections::HashMap;

/// Keys per generation.
pub const GENERATION: usize = 32_768;

/// Per key, the highest stream sequence settled on this host.
#[derive(Default)]
pub struct Settled {
    current: HashMap<String, u64>,
    previous: HashMap<String, u64>,
}

impl Settled {
    /// Notes that `sequence` of `key` is settled here.
    pub fn record(&mut self, key: &str, sequence: u64) {
        let known = self.highest(key).unwrap_or(0).max(sequence);
        if let Some(entry) = self.current.get_mut(key) {
            *entry = known;
            return;
        }
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key.to_string(), known);
    }

    /// Whether a delivery of `key` at `sequence`, delivered `delivered`
    /// times, is a copy of an event this host already settled.
    pub fn is_stale(&self, key: &str, sequence: u64, delivered: u32) -> bool {
        delivered > 1 && self.highest(key).is_some_and(|highest| sequence <= highest)
    }

    fn highest(&self, key: &str) -> Option<u64> {
        self.current
            .get(key)
            .or_else(|| self.previous.get(key))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivery_at_or_below_the_settled_sequence_is_stale() {
        let mut settled = Settled::default();
        settled.record("k1", 11);
        settled.record("k1", 12);
        assert!(settled.is_stale("k1", 11, 2));
        assert!(settled.is_stale("k1", 12, 3));
        assert!(!settled.is_stale("k1", 13, 2), "a later event runs");
        assert!(!settled.is_stale("k2", 5, 2), "another key runs");
    }

    #[test]
    fn a_first_delivery_is_never_stale() {
        // A consumer reset to an earlier sequence delivers again from 1.
        let mut settled = Settled::default();
        settled.record("k1", 12);
        assert!(!settled.is_stale("k1", 11, 1));
    }

    #[test]
    fn the_highest_sequence_is_kept_when_an_older_one_is_recorded() {
        let mut settled = Settled::default();
        settled.record("k1", 12);
        settled.record("k1", 7);
        assert!(settled.is_stale("k1", 12, 2));
    }

    #[test]
    fn keys_are_remembered_for_at_least_one_full_generation() {
        let mut settled = Settled::default();
        settled.record("old", 3);
        for n in 0..GENERATION {
            settled.record(&format!("k{n}"), 1);
        }
        assert!(settled.is_stale("old", 3, 2), "one generation back");
        for n in 0..GENERATION {
            settled.record(&format!("j{n}"), 1);
        }
        assert!(
            !settled.is_stale("old", 3, 2),
            "two generations back: forgotten"
        );
        assert!(settled.current.len() <= GENERATION && settled.previous.len() <= GENERATION);
    }
}
