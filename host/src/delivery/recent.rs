//! Which events this host settled lately: the stream sequences it acked
//! or dead-lettered.
//!
//! A JetStream cluster can redeliver an event whose ack it confirmed or
//! never answered (its consumer leader died before the ack was
//! replicated). By then the key's next events may have run here. Running
//! the old event again would undo them, so [`super::flow`] acks such a
//! copy without running it: a redelivery (delivery count above 1) of a
//! sequence this host settled itself. Nothing else is skipped: an event
//! this host did not settle always runs, so no event is lost on this
//! memory's account, and a consumer reset to an earlier sequence (first
//! deliveries) delivers everything once.
//!
//! Bounded: two generations of at most [`GENERATION`] sequences each; a
//! sequence settled more than two generations ago is forgotten (its
//! redelivery then runs, as before this memory existed).

use std::collections::HashSet;

/// Sequences per generation.
pub const GENERATION: usize = 65_536;

/// Stream sequences settled on this host, lately.
#[derive(Default)]
pub struct Settled {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Settled {
    /// Notes that `sequence` is settled here.
    pub fn record(&mut self, sequence: u64) {
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(sequence);
    }

    /// Whether a delivery of `sequence`, delivered `delivered` times, is a
    /// copy of an event this host already settled.
    pub fn is_stale(&self, sequence: u64, delivered: u32) -> bool {
        delivered > 1 && (self.current.contains(&sequence) || self.previous.contains(&sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivery_of_a_settled_sequence_is_stale() {
        let mut settled = Settled::default();
        settled.record(11);
        settled.record(12);
        assert!(settled.is_stale(11, 2));
        assert!(settled.is_stale(12, 3));
    }

    #[test]
    fn an_event_not_settled_here_always_runs() {
        // Even below a settled one: after a take-over the server may bring
        // a previous holder's event after a later one of its key.
        let mut settled = Settled::default();
        settled.record(12);
        assert!(!settled.is_stale(11, 2));
        assert!(!settled.is_stale(13, 2));
    }

    #[test]
    fn a_first_delivery_is_never_stale() {
        // A consumer reset to an earlier sequence delivers again from 1.
        let mut settled = Settled::default();
        settled.record(12);
        assert!(!settled.is_stale(12, 1));
    }

    #[test]
    fn sequences_are_remembered_for_at_least_one_full_generation() {
        let mut settled = Settled::default();
        settled.record(u64::MAX);
        for n in 0..GENERATION as u64 {
            settled.record(n);
        }
        assert!(settled.is_stale(u64::MAX, 2), "one generation back");
        for n in 0..GENERATION as u64 {
            settled.record(1_000_000 + n);
        }
        assert!(
            !settled.is_stale(u64::MAX, 2),
            "two generations back: forgotten"
        );
        assert!(settled.current.len() <= GENERATION && settled.previous.len() <= GENERATION);
    }
}
