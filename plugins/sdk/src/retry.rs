//! How long to ask the host to wait before a redelivery: exponential
//! backoff from the event's delivery attempt.

/// `base_ms * 2^(delivery_attempt - 1)`, capped at `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first redelivery.
    pub base_ms: u64,
    /// The longest delay.
    pub max_ms: u64,
}

impl Backoff {
    /// The delay after the given delivery (1 on first delivery; 0 counts
    /// as 1). Saturates instead of overflowing, so a huge attempt number or
    /// base still yields `max_ms`.
    pub fn delay_ms(&self, delivery_attempt: u32) -> u64 {
        let doublings = delivery_attempt.saturating_sub(1);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_up_to_the_cap() {
        let backoff = Backoff {
            base_ms: 500,
            max_ms: 30_000,
        };
        for (attempt, delay) in [
            (0, 500),
            (1, 500),
            (2, 1000),
            (3, 2000),
            (6, 16_000),
            (7, 30_000),
            (64, 30_000),
            (65, 30_000),
            (1000, 30_000),
        ] {
            assert_eq!(backoff.delay_ms(attempt), delay, "attempt {attempt}");
        }
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let backoff = Backoff {
            base_ms: u64::MAX / 2,
            max_ms: u64::MAX,
        };
        assert_eq!(backoff.delay_ms(u32::MAX), u64::MAX);
        assert_eq!(backoff.delay_ms(3), u64::MAX);
    }
}
