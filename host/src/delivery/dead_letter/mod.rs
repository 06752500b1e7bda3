//! Dead letters: events a handler rejected, or that ran out of
//! deliveries, kept in their own stream with why.
//!
//! - [`write`](mod@write): publishing a dead letter with its reason and origin, then
//!   terming the original (or keeping it when the publish fails).
//! - [`read`]: listing a handler's dead letters without consuming them.
//! - [`replay`]: republishing them to their original subjects.
//!
//! A handler's dead letters go to `<nats.dead_letter_subject>.<handler>`
//! ([`DeadLetterSource`]).

pub mod read;
pub mod replay;
pub mod write;

/// Headers a dead letter carries, besides the original message's own.
pub mod headers {
    pub const REASON: &str = "Switchyard-Reason";
    pub const HANDLER: &str = "Switchyard-Handler";
    pub const PLUGIN_DIGEST: &str = "Switchyard-Plugin-Digest";
    pub const DELIVERY_COUNT: &str = "Switchyard-Delivery-Count";
    pub const ORIGINAL_SUBJECT: &str = "Switchyard-Original-Subject";
    pub const ORIGINAL_STREAM: &str = "Switchyard-Original-Stream";
    pub const ORIGINAL_SEQUENCE: &str = "Switchyard-Original-Sequence";
    pub const DEAD_LETTERED_AT: &str = "Switchyard-Dead-Lettered-At";
    /// Set (to the payload's size in bytes) when the payload and headers
    /// together would exceed the server's `max_payload`: the dead letter
    /// then carries no payload, and a replay reads it from the original
    /// stream at `ORIGINAL_SEQUENCE`.
    pub const PAYLOAD_OMITTED: &str = "Switchyard-Payload-Omitted";
    /// Every header this host adds starts with this.
    pub const PREFIX: &str = "Switchyard-";
}

/// Where a handler's dead letters are.
#[derive(Debug, Clone)]
pub struct DeadLetterSource {
    pub stream: String,
    /// `<dead_letter_subject>.<handler>`.
    pub subject: String,
}

impl DeadLetterSource {
    pub fn new(stream: &str, dead_letter_subject: &str, handler: &str) -> Self {
        DeadLetterSource {
            stream: stream.to_string(),
            subject: format!("{dead_letter_subject}.{handler}"),
        }
    }
}

pub fn is_switchyard_header(name: &str) -> bool {
    name.len() >= headers::PREFIX.len()
        && name[..headers::PREFIX.len()].eq_ignore_ascii_case(headers::PREFIX)
}

/// Headers that steer the publish itself and must not travel with a
/// replay: a message id would make the stream drop the replay as a
/// duplicate, an expectation would fail it.
pub fn is_publish_directive(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "nats-msg-id" || lower.starts_with("nats-expected-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchyard_headers_are_recognised_in_any_case() {
        assert!(is_switchyard_header("Switchyard-Reason"));
        assert!(is_switchyard_header("switchyard-reason"));
        assert!(!is_switchyard_header("Content-Type"));
        assert!(is_publish_directive("Nats-Msg-Id"));
        assert!(is_publish_directive("Nats-Expected-Last-Sequence"));
        assert!(!is_publish_directive("Trace-Id"));
    }
}
