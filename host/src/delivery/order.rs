//! Order keys: which events of a handler must run one at a time.
//!
//! With `order_key` (JSON pointers into the payload, first match wins) or
//! `order_key_subject_token`, events that share a key run one at a time, in
//! stream order, while different keys run in parallel up to `concurrency`
//! (the queues are in [`super::flow`]). An event whose key cannot be
//! extracted runs unordered. See the README's "Delivery" section for what
//! is and is not guaranteed.

use std::fmt;

use crate::config::HandlerConfig;
use crate::pointer::Pointer;

/// Where an event's ordering key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// JSON pointers (RFC 6901) into the payload; the first one that
    /// resolves to a string, number or boolean gives the key.
    Pointers(Vec<Pointer>),
    /// The subject token at this 0-based index.
    SubjectToken(usize),
}

impl OrderKey {
    /// The handler's ordering, if it has one.
    pub fn of(config: &HandlerConfig) -> Option<OrderKey> {
        if let Some(token) = config.order_key_subject_token {
            return Some(OrderKey::SubjectToken(token as usize));
        }
        let pointers: Vec<Pointer> = config
            .order_key
            .iter()
            .filter_map(|text| Pointer::parse(text).ok())
            .collect();
        (!pointers.is_empty()).then_some(OrderKey::Pointers(pointers))
    }

    /// The key of an event, or `None` when it has none (it then runs
    /// unordered).
    pub fn extract(&self, subject: &str, payload: &[u8]) -> Option<String> {
        match self {
            OrderKey::SubjectToken(index) => subject.split('.').nth(*index).map(str::to_string),
            OrderKey::Pointers(pointers) => pointers.iter().find_map(|p| p.resolve(payload)),
        }
    }
}

impl fmt::Display for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderKey::SubjectToken(index) => write!(f, "subject token {index}"),
            OrderKey::Pointers(pointers) => {
                let texts: Vec<&str> = pointers.iter().map(|p| p.as_str()).collect();
                write!(f, "{}", texts.join(", "))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking
mod tests {
    use super::*;

    fn pointers(texts: &[&str]) -> OrderKey {
        OrderKey::Pointers(texts.iter().map(|t| Pointer::parse(t).unwrap()).collect())
    }

    #[test]
    fn first_matching_pointer_gives_the_key() {
        let key = pointers(&["/payload/story_id", "/story_id"]);
        assert_eq!(
            key.extract("s", br#"{"story_id": "S1"}"#).as_deref(),
            Some("S1")
        );
        assert_eq!(
            key.extract(
                "s",
                br#"{"story_id": "OUT", "payload": {"story_id": "IN"}}"#
            )
            .as_deref(),
            Some("IN")
        );
        assert_eq!(
            key.extract("s", br#"{"payload": {"story_id": 42}}"#)
                .as_deref(),
            Some("42")
        );
        // null, objects and arrays are no key; the next pointer is tried.
        assert_eq!(
            key.extract("s", br#"{"payload": {"story_id": null}, "story_id": "S2"}"#)
                .as_deref(),
            Some("S2")
        );
        assert_eq!(key.extract("s", br#"{"story_id": {"x": 1}}"#), None);
        assert_eq!(
            pointers(&["/items/1"])
                .extract("s", br#"{"items": ["a", "b"]}"#)
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn bad_payloads_have_no_key() {
        let key = pointers(&["/story_id"]);
        assert_eq!(key.extract("s", b"{not json"), None);
        assert_eq!(key.extract("s", b"\xff\xfe"), None);
        assert_eq!(key.extract("s", br#"{"story_id": "S1"} trailing"#), None);
        assert_eq!(key.extract("s", b"[1, 2]"), None);
        assert_eq!(key.extract("s", b""), None);
    }

    #[test]
    fn deep_nesting_outside_the_path_is_skipped_without_recursion() {
        let key = pointers(&["/story_id"]);
        let deep = format!(
            r#"{{"extra": {}{}, "story_id": "S1"}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(key.extract("s", deep.as_bytes()).as_deref(), Some("S1"));
        let top = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(key.extract("s", top.as_bytes()), None);
    }

    #[test]
    fn subject_token_gives_the_key() {
        let key = OrderKey::SubjectToken(2);
        assert_eq!(
            key.extract("planning.story.S1.transitioned", b"")
                .as_deref(),
            Some("S1")
        );
        assert_eq!(key.extract("planning.story", b""), None);
    }
}
