//! What the cluster looks like to the backend: its primaries from
//! `CLUSTER SLOTS`, the one scan cursor over all of them, and keys grouped
//! by hash slot.

use foldhash::HashMap;
use redis::Value;
use redis::cluster_routing::Slot;

use super::BACKEND;
use crate::backend::BackendError;

/// Hash slots of a Valkey cluster.
const SLOTS: u32 = 16384;
/// Bits of a scan cursor left for one node's own cursor; the byte above
/// them is the node's index.
const NODE_CURSOR_BITS: u32 = 56;
/// Most primaries a scan cursor can address.
const MAX_PRIMARIES: usize = 1 << (64 - NODE_CURSOR_BITS);

/// A primary, by the address the cluster gives for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Primary {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `keys` grouped by hash slot, in first-seen order of the slots.
pub(super) fn by_slot<K: AsRef<[u8]>>(keys: &[K]) -> Vec<(Slot, Vec<&[u8]>)> {
    let mut order: HashMap<Slot, usize> = HashMap::default();
    let mut groups: Vec<(Slot, Vec<&[u8]>)> = Vec::new();
    for key in keys {
        let key = key.as_ref();
        let slot = Slot::for_key(key);
        let at = *order.entry(slot).or_insert_with(|| {
            groups.push((slot, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(key);
    }
    groups
}

/// The primaries of a `CLUSTER SLOTS` answer, sorted by address, once
/// each; an error unless every slot is served.
pub(super) fn primaries(answer: Value) -> Result<Vec<Primary>, BackendError> {
    let malformed = |why: &str| BackendError::Other {
        backend: BACKEND,
        detail: format!("unexpected CLUSTER SLOTS answer: {why}"),
    };
    let Value::Array(ranges) = answer else {
        return Err(malformed("not an array"));
    };
    let mut primaries = Vec::new();
    let mut served = 0u32;
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(malformed("a range is not an array"));
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return Err(malformed("a range without start, end and primary"));
        };
        let host = match node.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => String::new(),
        };
        let port = match node.get(1) {
            Some(Value::Int(port)) => u16::try_from(*port).ok(),
            _ => None,
        };
        let (Some(port), false) = (port, host.is_empty() || host == "?") else {
            return Err(BackendError::Other {
                backend: BACKEND,
                detail: format!(
                    "CLUSTER SLOTS gives no address for the primary of slots {start}-{end} \
                     (set cluster-announce-ip or cluster-announce-hostname on it)"
                ),
            });
        };
        served += u32::try_from(end - start + 1).unwrap_or(0);
        let primary = Primary { host, port };
        if !primaries.contains(&primary) {
            primaries.push(primary);
        }
    }
    if served < SLOTS {
        return Err(BackendError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "{} of the cluster's {SLOTS} slots have no primary, so their keys cannot be reached",
                SLOTS - served
            ),
        });
    }
    if primaries.len() > MAX_PRIMARIES {
        return Err(BackendError::Other {
            backend: BACKEND,
            detail: format!(
                "the cluster has {} primaries; a scan cursor addresses at most {MAX_PRIMARIES}",
                primaries.len()
            ),
        });
    }
    primaries.sort();
    Ok(primaries)
}

/// The plugin's cursor as (primary index, that node's cursor).
pub(super) fn split_cursor(cursor: u64) -> (usize, u64) {
    let index = (cursor >> NODE_CURSOR_BITS) as usize;
    (index, cursor & ((1 << NODE_CURSOR_BITS) - 1))
}

/// The plugin's cursor after primary `index` of `count` answered `next`.
pub(super) fn join_cursor(
    index: usize,
    next: u64,
    count: usize,
    primary: &Primary,
) -> Result<u64, BackendError> {
    if next >> NODE_CURSOR_BITS != 0 {
        return Err(BackendError::Other {
            backend: BACKEND,
            detail: format!(
                "primary {primary} answered SCAN cursor {next}, which does not fit in the \
                 {NODE_CURSOR_BITS} bits a cluster scan cursor leaves for one node's"
            ),
        });
    }
    Ok(match (next, index + 1 < count) {
        (0, true) => ((index + 1) as u64) << NODE_CURSOR_BITS,
        (0, false) => 0,
        (next, _) => ((index as u64) << NODE_CURSOR_BITS) | next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, primary: Value) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), primary])
    }

    #[test]
    fn primaries_are_read_sorted_and_once_each() {
        let answer = Value::Array(vec![
            range(10923, 16383, node("127.0.0.1", 7103)),
            range(0, 5000, node("127.0.0.1", 7101)),
            range(5461, 10922, node("127.0.0.1", 7102)),
            range(5001, 5460, node("127.0.0.1", 7101)),
        ]);
        let primaries = primaries(answer).unwrap();
        let ports: Vec<u16> = primaries.iter().map(|p| p.port).collect();
        assert_eq!(ports, [7101, 7102, 7103]);
    }

    #[test]
    fn a_cluster_with_unserved_slots_or_an_unknown_address_is_refused() {
        let partial = Value::Array(vec![range(0, 5460, node("127.0.0.1", 7101))]);
        let error = primaries(partial).unwrap_err();
        assert!(
            matches!(&error, BackendError::Unavailable { detail, .. } if detail.contains("10923 of the cluster's 16384 slots")),
            "{error}"
        );
        let unknown = Value::Array(vec![range(0, 16383, node("?", 7101))]);
        let error = primaries(unknown).unwrap_err().to_string();
        assert!(
            error.contains("no address for the primary of slots 0-16383"),
            "{error}"
        );
    }

    #[test]
    fn one_cursor_walks_every_primary_in_turn_and_ends_at_zero() {
        let p = Primary {
            host: "h".into(),
            port: 1,
        };
        assert_eq!(split_cursor(0), (0, 0));
        let mid = join_cursor(0, 77, 3, &p).unwrap();
        assert_eq!(split_cursor(mid), (0, 77));
        let next = join_cursor(0, 0, 3, &p).unwrap();
        assert_eq!(split_cursor(next), (1, 0));
        assert_ne!(next, 0, "moving to the second primary is not the end");
        let last = join_cursor(2, 5, 3, &p).unwrap();
        assert_eq!(split_cursor(last), (2, 5));
        assert_eq!(join_cursor(2, 0, 3, &p).unwrap(), 0);
        let error = join_cursor(1, 1 << 56, 3, &p).unwrap_err().to_string();
        assert!(error.contains("does not fit in the 56 bits"), "{error}");
    }

    #[test]
    fn keys_are_grouped_by_slot_honouring_hash_tags() {
        let keys = [
            "{story:1}:a",
            "{story:1}:b",
            "story:2",
            "{}x",
            "{story:1}:c",
        ];
        let groups = by_slot(&keys);
        let of = |key: &str| {
            groups
                .iter()
                .position(|(_, keys)| keys.contains(&key.as_bytes()))
                .unwrap()
        };
        assert_eq!(of("{story:1}:a"), of("{story:1}:b"));
        assert_eq!(of("{story:1}:a"), of("{story:1}:c"));
        assert_eq!(groups[of("{story:1}:a")].1.len(), 3);
        for (slot, keys) in &groups {
            for key in keys {
                assert_eq!(Slot::for_key(key), *slot);
            }
        }
        // The slots Valkey's CLUSTER KEYSLOT gives: a tag is hashed alone,
        // the first one only, and `{}` is no tag.
        let slot = |n| Slot::new(n).unwrap();
        assert_eq!(Slot::for_key("foo"), slot(12182));
        assert_eq!(Slot::for_key("{story:1}:a"), slot(1619));
        assert_eq!(Slot::for_key("story:1"), slot(1619));
        assert_eq!(Slot::for_key("a{b}c{d}"), slot(3300));
        assert_eq!(Slot::for_key("{}x"), slot(10595));
    }
}
