//! A failed host call, named, and what it makes of the event.
//!
//! [`Named::named`] turns a call's `Result<T, Error>` into a
//! `Result<T, Failure>` that says which call failed and on what, so `?`
//! carries everything the reason needs. [`Failure::settle`] maps it onto
//! the outcome, by the error's cause:
//!
//! - `unavailable` and `other` may pass: retry after the [`Backoff`] for
//!   this delivery attempt, logged at warn as `retrying event`;
//! - `denied` and `invalid` never will: reject with the reason
//!   `<call> failed (<kind>): <message>`, logged at warn as
//!   `rejected event` ([`reject`]).

use std::fmt;

use crate::host::Host;
use crate::outcome::Outcome;
use crate::retry::Backoff;
use crate::types::Error;

impl Error {
    /// The cause as the contract names it: `unavailable`, `denied`,
    /// `invalid` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable(_) => "unavailable",
            Error::Denied(_) => "denied",
            Error::Invalid(_) => "invalid",
            Error::Other(_) => "other",
        }
    }

    /// What the host said.
    pub fn message(&self) -> &str {
        match self {
            Error::Unavailable(m) | Error::Denied(m) | Error::Invalid(m) | Error::Other(m) => m,
        }
    }

    /// Whether a later delivery may succeed: `unavailable` and `other`.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Other(_))
    }
}

/// A host call that failed: which call and on what (e.g.
/// `cache.delete of key "user:42"`), and the host's error.
#[derive(Debug, Clone)]
pub struct Failure {
    pub call: String,
    pub error: Error,
}

/// Names the call a host result came from.
pub trait Named<T> {
    /// The result, its error named by `call` (built only on failure).
    fn named(self, call: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Named<T> for Result<T, Error> {
    fn named(self, call: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|error| Failure {
            call: call(),
            error,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (call, kind, message) = (&self.call, self.error.kind(), self.error.message());
        write!(f, "{call} failed ({kind}): {message}")
    }
}

impl Failure {
    /// The event's outcome, logged with `context` (fields naming what the
    /// event was about): a retry after `backoff`'s delay for
    /// `delivery_attempt`, or a rejection with this failure as the reason.
    pub fn settle(
        self,
        host: &mut impl Host,
        backoff: Backoff,
        delivery_attempt: u32,
        context: &[(&str, String)],
    ) -> Outcome {
        if !self.error.is_retryable() {
            return reject(host, self.to_string(), context);
        }
        let delay_ms = backoff.delay_ms(delivery_attempt);
        let mut fields = vec![("error", self.to_string())];
        fields.extend_from_slice(context);
        fields.push(("delivery_attempt", delivery_attempt.to_string()));
        fields.push(("delay_ms", delay_ms.to_string()));
        host.warn("retrying event", &fields);
        Outcome::Retry(Some(delay_ms))
    }
}

/// Rejects the event with `reason`, logged at warn as `rejected event`
/// with the reason and `context`.
pub fn reject(host: &mut impl Host, reason: String, context: &[(&str, String)]) -> Outcome {
    let mut fields = vec![("reason", reason.clone())];
    fields.extend_from_slice(context);
    host.warn("rejected event", &fields);
    Outcome::Reject(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::double::Scripted;

    fn failure(error: Error) -> Failure {
        Err::<(), _>(error)
            .named(|| "cache.delete of key \"k\"".to_owned())
            .unwrap_err()
    }

    #[test]
    fn names_the_call_the_cause_and_the_message() {
        let failure = failure(Error::Denied("outside the grant".to_owned()));
        assert_eq!(
            failure.to_string(),
            r#"cache.delete of key "k" failed (denied): outside the grant"#
        );
    }

    #[test]
    fn retries_unavailable_and_other_after_the_backoff() {
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 250,
        };
        for error in [
            Error::Unavailable("down".into()),
            Error::Other("deadlock".into()),
        ] {
            let mut host = Scripted::default();
            let outcome = failure(error).settle(&mut host, backoff, 2, &[("id", "7".into())]);
            assert!(matches!(outcome, Outcome::Retry(Some(200))), "{outcome:?}");
            let (_, message, fields) = &host.logs[0];
            assert_eq!(message, "retrying event");
            let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, ["error", "id", "delivery_attempt", "delay_ms"]);
        }
    }

    #[test]
    fn rejects_denied_and_invalid_with_the_reason() {
        for error in [Error::Denied("no".into()), Error::Invalid("bad".into())] {
            let mut host = Scripted::default();
            let reason = failure(error.clone()).to_string();
            let backoff = Backoff {
                base_ms: 1,
                max_ms: 1,
            };
            let outcome = failure(error).settle(&mut host, backoff, 1, &[]);
            assert!(
                matches!(&outcome, Outcome::Reject(r) if *r == reason),
                "{outcome:?}"
            );
            assert_eq!(host.log_field("rejected event", "reason"), Some(reason));
        }
    }
}
