//! Parsing a story-transition payload into a [`Transition`].
//!
//! Pure: no host calls, so it runs natively for tests and fuzzing.
//!
//! Accepted shapes (see `CONTEXT.md`):
//!
//! - flat: `{"story_id", "from_phase", "to_phase", "timestamp"}`
//! - the planning service's: `{"event_type": "story.transitioned", "story_id",
//!   "from_state", "to_state", "transitioned_by", "timestamp"}`
//! - an envelope: `{"event_type": "planning.story.transitioned", "payload":
//!   {…flat or planning…}, "idempotency_key", "correlation_id", "timestamp",
//!   "producer", "metadata"}`
//!
//! Rules, each with its own [`Rejection`]:
//!
//! - The payload must be UTF-8 JSON whose top level is an object.
//! - An object is an envelope when it has a `payload` field; that field must
//!   be an object and must not itself be an envelope.
//! - `event_type`, where present, must be one of [`EVENT_TYPES`].
//! - `story_id` must be a non-empty string. In an envelope it is read from
//!   `payload.story_id`, or from the envelope's own `story_id`; if both are
//!   present they must be equal. It may not contain `:` ([`SEPARATOR`]):
//!   the story's keys are `<prefix><story_id>` and `<prefix><story_id>:…`
//!   and its node id `<story_id>:<timestamp>`, so an id `S-1:dev` would
//!   share keys with story `S-1` and could share a node id with it.
//! - `from_phase`/`from_state` (and `to_phase`/`to_state`) are synonyms: a
//!   string, `null` or absent. If both names carry a string they must be
//!   equal, and so must the inner and outer values of an envelope.
//! - `timestamp` must be a non-empty string or a number; numbers are kept
//!   exactly as the payload spells them (`1700000000000`, `1.5`, `1E2`,
//!   `18446744073709551617`): two spellings are two timestamps. An envelope's inner
//!   timestamp wins; a missing or `null` one falls back to the envelope's.
//!   With no timestamp at all the event is rejected: the graph node id is
//!   `<story_id>:<timestamp>`, and inventing a timestamp (from the broker's
//!   publish time, say) would give a producer's duplicate publish of the
//!   same transition a second node. Taking it only from the payload keeps
//!   every delivery of every copy of an event on the same node.
//! - A field name that appears twice in one object is rejected rather than
//!   resolved by position.
//!
//! Memory and nesting are bounded by construction: only the handful of known
//! fields are kept, and every other value (however large or deeply nested) is
//! skipped by serde_json's iterative `ignore_value`, which allocates one byte
//! per nesting level and never recurses. The recognised values themselves
//! sit at most three levels deep, well inside serde_json's recursion limit
//! of 128.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// What separates a story id from the rest of its cache keys and node id.
/// An id holding it is rejected: `S-1` would own `S-1:dev`'s keys.
pub const SEPARATOR: char = ':';

/// The `event_type` values a transition may carry, at either level.
pub const EVENT_TYPES: [&str; 2] = ["story.transitioned", "planning.story.transitioned"];

/// How much of a producer-supplied value a rejection reason quotes.
const QUOTE_LIMIT: usize = 80;

/// A story's phase change, normalised from any accepted payload shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The story whose context is invalidated. Never empty.
    pub story_id: String,
    /// The phase the story left, if the producer said.
    pub from_phase: Option<String>,
    /// The phase the story entered, if the producer said.
    pub to_phase: Option<String>,
    /// When the transition happened, as the producer spelled it. Never empty.
    pub timestamp: String,
}

impl Transition {
    /// The `id` of the transition's `PhaseTransition` node: `<story_id>:<timestamp>`.
    pub fn node_id(&self) -> String {
        format!("{}:{}", self.story_id, self.timestamp)
    }
}

/// The type of a JSON value, for rejection reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Null => "null",
            Self::Boolean => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        })
    }
}

/// Why a payload can never yield a [`Transition`]. `Display` gives the
/// reason that goes with the dead-lettered event. Field names are paths
/// from the top of the payload (`payload.story_id` inside an envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Zero bytes, or JSON whitespace only.
    Empty,
    /// Not UTF-8; `offset` is the first byte that is not part of a valid sequence.
    NotUtf8 { offset: usize },
    /// Starts with a UTF-8 byte-order mark, which JSON does not allow.
    ByteOrderMark,
    /// Not JSON; `message` is serde_json's, with line and column.
    InvalidJson { message: String },
    /// Valid JSON whose top level is not an object.
    NotAnObject { found: JsonType },
    /// An envelope whose `payload` is not an object.
    EnvelopePayloadNotAnObject { found: JsonType },
    /// An envelope whose `payload` has a `payload` of its own.
    NestedEnvelope,
    /// A field name that appears more than once in one object.
    DuplicateField { field: String },
    /// A field of the wrong JSON type.
    WrongType {
        field: String,
        expected: &'static str,
        found: JsonType,
    },
    /// An `event_type` that is not one of [`EVENT_TYPES`].
    UnexpectedEventType { field: String, value: String },
    /// No `story_id` anywhere it may be.
    MissingStoryId { field: String },
    /// `story_id` is `""`.
    EmptyStoryId { field: String },
    /// `story_id` holds the separator of the keys and node ids built from it.
    SeparatorInStoryId { field: String, value: String },
    /// No `timestamp` anywhere it may be (or only `null`).
    MissingTimestamp { field: String },
    /// `timestamp` is `""`.
    EmptyTimestamp { field: String },
    /// Two fields that must agree carry different values.
    Conflict {
        field: String,
        value: String,
        other_field: String,
        other_value: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("payload is empty"),
            Self::NotUtf8 { offset } => {
                write!(
                    f,
                    "payload is not valid UTF-8: invalid byte sequence at byte offset {offset}"
                )
            }
            Self::ByteOrderMark => f.write_str(
                "payload starts with a UTF-8 byte-order mark, which JSON does not allow",
            ),
            Self::InvalidJson { message } => write!(f, "payload is not valid JSON: {message}"),
            Self::NotAnObject { found } => {
                write!(f, "payload must be a JSON object, found {found}")
            }
            Self::EnvelopePayloadNotAnObject { found } => {
                write!(
                    f,
                    "envelope field `payload` must be a JSON object, found {found}"
                )
            }
            Self::NestedEnvelope => {
                f.write_str("envelope `payload` is itself an envelope (it has a `payload` field)")
            }
            Self::DuplicateField { field } => write!(f, "field `{field}` appears more than once"),
            Self::WrongType {
                field,
                expected,
                found,
            } => {
                write!(f, "field `{field}` must be {expected}, found {found}")
            }
            Self::UnexpectedEventType { field, value } => write!(
                f,
                "field `{field}` is {}, expected one of {}",
                quote(value),
                EVENT_TYPES.map(|t| format!("{t:?}")).join(", ")
            ),
            Self::MissingStoryId { field } => write!(f, "missing `{field}`"),
            Self::EmptyStoryId { field } => write!(f, "field `{field}` is empty"),
            Self::SeparatorInStoryId { field, value } => write!(
                f,
                "field `{field}` ({}) contains `{SEPARATOR}`, the separator of a story's cache keys (`<prefix><story_id>{SEPARATOR}<part>`) and node ids (`<story_id>{SEPARATOR}<timestamp>`): its keys and node would be another story's",
                quote(value)
            ),
            Self::MissingTimestamp { field } => write!(
                f,
                "missing `{field}`: a transition needs a timestamp to name its PhaseTransition node"
            ),
            Self::EmptyTimestamp { field } => write!(f, "field `{field}` is empty"),
            Self::Conflict {
                field,
                value,
                other_field,
                other_value,
            } => write!(
                f,
                "fields `{field}` ({}) and `{other_field}` ({}) disagree",
                quote(value),
                quote(other_value)
            ),
        }
    }
}

impl std::error::Error for Rejection {}

/// Quotes a producer-supplied string for a reason: escaped (so control
/// characters cannot break a log line or a header) and cut to a bounded length.
pub(crate) fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_LIMIT) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
    }
}

/// Parses one event payload. See the module docs for the rules.
pub fn parse(payload: &[u8]) -> Result<Transition, Rejection> {
    let text = std::str::from_utf8(payload).map_err(|e| Rejection::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if text.starts_with('\u{feff}') {
        return Err(Rejection::ByteOrderMark);
    }
    if text.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
        return Err(Rejection::Empty);
    }
    let top: Top = serde_json::from_str(text).map_err(|e| Rejection::InvalidJson {
        message: e.to_string(),
    })?;
    let outer = match top {
        Top::Object(fields) => fields,
        Top::Other(found) => return Err(Rejection::NotAnObject { found }),
    };
    interpret(outer)
}

/// Turns the recognised fields into a transition, applying the rules.
fn interpret(mut outer: Fields) -> Result<Transition, Rejection> {
    check_level(&outer, "")?;
    let inner = match outer.payload.take() {
        None => None,
        Some(Payload::Other(found)) => return Err(Rejection::EnvelopePayloadNotAnObject { found }),
        Some(Payload::Object(inner)) => {
            if inner.payload.is_some() {
                return Err(Rejection::NestedEnvelope);
            }
            check_level(&inner, "payload.")?;
            Some(inner)
        }
    };

    // Preference order: the envelope's payload, then the envelope itself.
    let levels: Vec<(&Fields, &str)> = match &inner {
        Some(inner) => vec![(inner.as_ref(), "payload."), (&outer, "")],
        None => vec![(&outer, "")],
    };
    let first_path = |name: &str| format!("{}{name}", levels.first().map_or("", |(_, p)| *p));

    let mut story_ids = Vec::new();
    let mut froms = Vec::new();
    let mut tos = Vec::new();
    let mut timestamps = Vec::new();
    for &(fields, prefix) in &levels {
        story_ids.push(story_id(fields, prefix)?);
        froms.push(phase(
            prefix,
            "from",
            &fields.from_phase,
            &fields.from_state,
        )?);
        tos.push(phase(prefix, "to", &fields.to_phase, &fields.to_state)?);
        timestamps.push(timestamp(fields, prefix)?);
    }

    let story_id = agree(story_ids)?.ok_or_else(|| Rejection::MissingStoryId {
        field: first_path("story_id"),
    })?;
    let from_phase = agree(froms)?;
    let to_phase = agree(tos)?;
    let timestamp =
        timestamps
            .into_iter()
            .flatten()
            .next()
            .ok_or_else(|| Rejection::MissingTimestamp {
                field: first_path("timestamp"),
            })?;
    Ok(Transition {
        story_id,
        from_phase,
        to_phase,
        timestamp,
    })
}

/// Checks what one object must satisfy on its own: no duplicate field and
/// a known `event_type`, if any (`null` is not one).
fn check_level(fields: &Fields, prefix: &str) -> Result<(), Rejection> {
    if let Some(name) = fields.duplicate {
        return Err(Rejection::DuplicateField {
            field: format!("{prefix}{name}"),
        });
    }
    match &fields.event_type {
        None => Ok(()),
        Some(Raw::String(value)) if EVENT_TYPES.contains(&value.as_str()) => Ok(()),
        Some(Raw::String(value)) => Err(Rejection::UnexpectedEventType {
            field: format!("{prefix}event_type"),
            value: value.clone(),
        }),
        Some(other) => Err(Rejection::WrongType {
            field: format!("{prefix}event_type"),
            expected: "a string",
            found: other.json_type(),
        }),
    }
}

/// A value and the path it was found at, so that a disagreement can name
/// both sides.
type Found = Option<(String, String)>;

/// The `story_id` of one object: absent, or a non-empty string.
fn story_id(fields: &Fields, prefix: &str) -> Result<Found, Rejection> {
    let field = format!("{prefix}story_id");
    match &fields.story_id {
        None => Ok(None),
        Some(Raw::String(id)) if id.is_empty() => Err(Rejection::EmptyStoryId { field }),
        Some(Raw::String(id)) if id.contains(SEPARATOR) => Err(Rejection::SeparatorInStoryId {
            field,
            value: id.clone(),
        }),
        Some(Raw::String(id)) => Ok(Some((field, id.clone()))),
        Some(other) => Err(Rejection::WrongType {
            field,
            expected: "a string",
            found: other.json_type(),
        }),
    }
}

/// One side (`from` or `to`) of a transition in one object, from
/// `<side>_phase` or `<side>_state`, which must agree when both are strings.
fn phase(
    prefix: &str,
    side: &str,
    phase: &Option<Raw>,
    state: &Option<Raw>,
) -> Result<Found, Rejection> {
    let read = |raw: &Option<Raw>, name: &str| -> Result<Found, Rejection> {
        let field = format!("{prefix}{side}_{name}");
        match raw {
            None | Some(Raw::Null) => Ok(None),
            Some(Raw::String(value)) => Ok(Some((field, value.clone()))),
            Some(other) => Err(Rejection::WrongType {
                field,
                expected: "a string or null",
                found: other.json_type(),
            }),
        }
    };
    first_agreed(vec![read(phase, "phase")?, read(state, "state")?])
}

/// The `timestamp` of one object: absent or `null`, or a non-empty string,
/// or a number in its JSON spelling.
fn timestamp(fields: &Fields, prefix: &str) -> Result<Option<String>, Rejection> {
    let field = format!("{prefix}timestamp");
    match &fields.timestamp {
        None | Some(Raw::Null) => Ok(None),
        Some(Raw::String(ts)) if ts.is_empty() => Err(Rejection::EmptyTimestamp { field }),
        Some(Raw::String(ts)) => Ok(Some(ts.clone())),
        Some(Raw::Number(n)) => Ok(Some(n.to_string())),
        Some(Raw::NumberText(n)) => Ok(Some(n.clone())),
        Some(other) => Err(Rejection::WrongType {
            field,
            expected: "a string or a number",
            found: other.json_type(),
        }),
    }
}

/// The single value the present candidates agree on, or a conflict naming
/// the first two that differ.
fn agree(candidates: Vec<Found>) -> Result<Option<String>, Rejection> {
    first_agreed(candidates).map(|found| found.map(|(_, value)| value))
}

/// Like [`agree`], keeping the path of the first candidate present.
fn first_agreed(candidates: Vec<Found>) -> Result<Found, Rejection> {
    let mut chosen: Found = None;
    for (field, value) in candidates.into_iter().flatten() {
        match &chosen {
            None => chosen = Some((field, value)),
            Some((first_field, first_value)) if *first_value != value => {
                return Err(Rejection::Conflict {
                    field: first_field.clone(),
                    value: first_value.clone(),
                    other_field: field,
                    other_value: value,
                });
            }
            Some(_) => {}
        }
    }
    Ok(chosen)
}

// ---------------------------------------------------------------------------
// Deserialisation: only the known fields are kept; everything else is
// skipped without being built.

/// The top level of a payload. Built once per event, so its size is no
/// concern.
#[allow(clippy::large_enum_variant)]
enum Top {
    Object(Fields),
    Other(JsonType),
}

/// The recognised fields of one object.
#[derive(Default)]
struct Fields {
    event_type: Option<Raw>,
    story_id: Option<Raw>,
    from_phase: Option<Raw>,
    to_phase: Option<Raw>,
    from_state: Option<Raw>,
    to_state: Option<Raw>,
    timestamp: Option<Raw>,
    payload: Option<Payload>,
    /// The first recognised field name seen twice.
    duplicate: Option<&'static str>,
}

/// An envelope's `payload` field.
enum Payload {
    Object(Box<Fields>),
    Other(JsonType),
}

/// A recognised field's value: strings and numbers are kept, containers
/// only by type (their contents are skipped).
enum Raw {
    Null,
    Boolean,
    Number(serde_json::Number),
    /// A number exactly as the payload spells it (`1E2`, `18446744073709551617`).
    NumberText(String),
    String(String),
    Array,
    Object,
}

impl Raw {
    fn json_type(&self) -> JsonType {
        match self {
            Self::Null => JsonType::Null,
            Self::Boolean => JsonType::Boolean,
            Self::Number(_) | Self::NumberText(_) => JsonType::Number,
            Self::String(_) => JsonType::String,
            Self::Array => JsonType::Array,
            Self::Object => JsonType::Object,
        }
    }
}

/// A field name, matched without allocating.
enum Key {
    EventType,
    StoryId,
    FromPhase,
    ToPhase,
    FromState,
    ToState,
    Timestamp,
    Payload,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(match name {
                    "event_type" => Key::EventType,
                    "story_id" => Key::StoryId,
                    "from_phase" => Key::FromPhase,
                    "to_phase" => Key::ToPhase,
                    "from_state" => Key::FromState,
                    "to_state" => Key::ToState,
                    "timestamp" => Key::Timestamp,
                    "payload" => Key::Payload,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Skips the rest of a sequence.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Skips the rest of a map.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the non-container `visit_*` methods by mapping each JSON
/// scalar to a value of the visitor's type.
macro_rules! visit_scalars {
    ($scalar:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($scalar(Raw::Null))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($scalar(Raw::Boolean))
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok($scalar(Raw::Number(n.into())))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok($scalar(Raw::Number(n.into())))
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
            // serde_json never yields a non-finite number.
            serde_json::Number::from_f64(n)
                .map(|n| $scalar(Raw::Number(n)))
                .ok_or_else(|| E::custom("number out of range"))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok($scalar(Raw::String(s.to_owned())))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok($scalar(Raw::String(s)))
        }
    };
}

impl<'de> de::Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars!(std::convert::identity);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Raw, A::Error> {
                drain_seq(seq).map(|()| Raw::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Raw, A::Error> {
                drain_map(map).map(|()| Raw::Object)
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

/// Reads the recognised fields of an object. `envelope` says whether a
/// `payload` field is read as an inner object (top level) or only noted
/// (inside an envelope, where it is an error).
struct FieldsVisitor {
    envelope: bool,
}

impl<'de> FieldsVisitor {
    fn read<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, name) = match key {
                Key::EventType => (&mut fields.event_type, "event_type"),
                Key::StoryId => (&mut fields.story_id, "story_id"),
                Key::FromPhase => (&mut fields.from_phase, "from_phase"),
                Key::ToPhase => (&mut fields.to_phase, "to_phase"),
                Key::FromState => (&mut fields.from_state, "from_state"),
                Key::ToState => (&mut fields.to_state, "to_state"),
                Key::Timestamp => (&mut fields.timestamp, "timestamp"),
                Key::Payload => {
                    let payload = if self.envelope {
                        map.next_value_seed(PayloadSeed)?
                    } else {
                        Payload::Other(map.next_value::<Raw>()?.json_type())
                    };
                    if fields.payload.is_some() {
                        fields.duplicate.get_or_insert("payload");
                    } else {
                        fields.payload = Some(payload);
                    }
                    continue;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = if name == "timestamp" {
                spelled(&map.next_value::<Box<RawValue>>()?)?
            } else {
                map.next_value::<Raw>()?
            };
            if slot.is_some() {
                fields.duplicate.get_or_insert(name);
            } else {
                *slot = Some(value);
            }
        }
        Ok(fields)
    }
}

/// A timestamp's value with a number kept as spelled: two spellings are two
/// timestamps (`1E2` is not `100`, and 2^64 is not 2^64 + 1), since each
/// names a node.
fn spelled<E: de::Error>(raw: &RawValue) -> Result<Raw, E> {
    let text = raw.get();
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Ok(Raw::NumberText(text.to_owned()))
    } else {
        serde_json::from_str::<Raw>(text).map_err(E::custom)
    }
}

impl<'de> de::Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            visit_scalars!(|raw: Raw| Top::Other(raw.json_type()));
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top, A::Error> {
                drain_seq(seq).map(|()| Top::Other(JsonType::Array))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top, A::Error> {
                FieldsVisitor { envelope: true }.read(map).map(Top::Object)
            }
        }
        deserializer.deserialize_any(TopVisitor)
    }
}

/// Reads an envelope's `payload`: an object's fields, or just its type.
struct PayloadSeed;

impl<'de> DeserializeSeed<'de> for PayloadSeed {
    type Value = Payload;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Payload, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            visit_scalars!(|raw: Raw| Payload::Other(raw.json_type()));
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Payload, A::Error> {
                drain_seq(seq).map(|()| Payload::Other(JsonType::Array))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Payload, A::Error> {
                FieldsVisitor { envelope: false }
                    .read(map)
                    .map(|f| Payload::Object(Box::new(f)))
            }
        }
        deserializer.deserialize_any(PayloadVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(payload: &str) -> Transition {
        match parse(payload.as_bytes()) {
            Ok(t) => t,
            Err(r) => panic!("expected a transition from {payload}, got: {r}"),
        }
    }

    fn rejected(payload: impl AsRef<[u8]>) -> Rejection {
        match parse(payload.as_ref()) {
            Ok(t) => panic!("expected a rejection, got {t:?}"),
            Err(r) => r,
        }
    }

    fn transition(
        story_id: &str,
        from: Option<&str>,
        to: Option<&str>,
        timestamp: &str,
    ) -> Transition {
        Transition {
            story_id: story_id.to_owned(),
            from_phase: from.map(str::to_owned),
            to_phase: to.map(str::to_owned),
            timestamp: timestamp.to_owned(),
        }
    }

    fn wrong_type(field: &str, expected: &'static str, found: JsonType) -> Rejection {
        Rejection::WrongType {
            field: field.to_owned(),
            expected,
            found,
        }
    }

    const PLANNING: &str = r#"{"event_type":"story.transitioned","story_id":"S-1","from_state":"design","to_state":"build","transitioned_by":"ana","timestamp":"2025-01-01T00:00:00Z"}"#;

    // --- accepted shapes -------------------------------------------------

    #[test]
    fn parses_flat_payload() {
        let t = ok(
            r#"{"story_id":"STRESS-NEO-0001","from_phase":"design","to_phase":"build","timestamp":"2025-01-01T00:00:00Z"}"#,
        );
        assert_eq!(
            t,
            transition(
                "STRESS-NEO-0001",
                Some("design"),
                Some("build"),
                "2025-01-01T00:00:00Z"
            )
        );
        assert_eq!(t.node_id(), "STRESS-NEO-0001:2025-01-01T00:00:00Z");
    }

    #[test]
    fn parses_planning_service_payload() {
        assert_eq!(
            ok(PLANNING),
            transition("S-1", Some("design"), Some("build"), "2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn parses_envelope_around_planning_payload() {
        let payload = format!(
            r#"{{"event_type":"planning.story.transitioned","payload":{PLANNING},"idempotency_key":"k","correlation_id":"c","timestamp":"2025-01-02T00:00:00Z","producer":"planning","metadata":{{"a":[1,2,{{"b":null}}]}}}}"#
        );
        // The inner timestamp wins over the envelope's.
        assert_eq!(
            ok(&payload),
            transition("S-1", Some("design"), Some("build"), "2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn parses_envelope_around_flat_payload() {
        let t = ok(
            r#"{"event_type":"planning.story.transitioned","payload":{"story_id":"S-2","from_phase":"a","to_phase":"b","timestamp":"t1"},"timestamp":"t2"}"#,
        );
        assert_eq!(t, transition("S-2", Some("a"), Some("b"), "t1"));
    }

    #[test]
    fn uses_envelope_timestamp_when_inner_payload_has_none() {
        let t = ok(
            r#"{"payload":{"story_id":"S-3","to_phase":"b"},"timestamp":"2025-03-03T00:00:00Z"}"#,
        );
        assert_eq!(
            t,
            transition("S-3", None, Some("b"), "2025-03-03T00:00:00Z")
        );
        let t = ok(r#"{"payload":{"story_id":"S-3","timestamp":null},"timestamp":7}"#);
        assert_eq!(t.timestamp, "7");
    }

    #[test]
    fn accepts_story_id_and_phases_on_the_envelope_when_they_agree() {
        let t = ok(
            r#"{"story_id":"S-4","to_phase":"b","payload":{"story_id":"S-4","from_state":"a","timestamp":"t"}}"#,
        );
        assert_eq!(t, transition("S-4", Some("a"), Some("b"), "t"));
        let t = ok(r#"{"story_id":"S-4","payload":{"timestamp":"t"}}"#);
        assert_eq!(t.story_id, "S-4");
    }

    #[test]
    fn accepts_missing_and_null_phases_as_none() {
        assert_eq!(
            ok(r#"{"story_id":"S","timestamp":"t"}"#),
            transition("S", None, None, "t")
        );
        assert_eq!(
            ok(r#"{"story_id":"S","from_phase":null,"to_state":null,"timestamp":"t"}"#),
            transition("S", None, None, "t")
        );
    }

    #[test]
    fn accepts_phase_and_state_names_that_agree() {
        let t = ok(
            r#"{"story_id":"S","from_phase":"a","from_state":"a","to_phase":null,"to_state":"b","timestamp":"t"}"#,
        );
        assert_eq!(t, transition("S", Some("a"), Some("b"), "t"));
    }

    #[test]
    fn keeps_numeric_timestamps_as_spelled() {
        assert_eq!(ok(r#"{"story_id":"S","timestamp":1E2}"#).timestamp, "1E2");
        assert_eq!(
            ok(r#"{"story_id":"S","timestamp": 1e-7 }"#).timestamp,
            "1e-7"
        );
        let two_64 = ok(r#"{"story_id":"S","timestamp":18446744073709551616}"#);
        let two_64_plus_1 = ok(r#"{"story_id":"S","timestamp":18446744073709551617}"#);
        assert_eq!(two_64.timestamp, "18446744073709551616");
        assert_eq!(two_64_plus_1.timestamp, "18446744073709551617");
        assert_ne!(two_64.node_id(), two_64_plus_1.node_id());
    }

    #[test]
    fn rejects_a_story_id_holding_the_key_separator() {
        for payload in [
            r#"{"story_id":"S-1:dev","timestamp":"t"}"#,
            r#"{"payload":{"story_id":":"},"timestamp":"t"}"#,
        ] {
            let reason = parse(payload.as_bytes())
                .err()
                .map(|r| r.to_string())
                .unwrap_or_default();
            assert!(
                reason.contains("contains `:`") && reason.contains("another story's"),
                "{payload}: {reason}"
            );
        }
    }

    #[test]
    fn keeps_numeric_timestamps_in_their_json_spelling() {
        assert_eq!(
            ok(r#"{"story_id":"S","timestamp":1700000000000}"#).timestamp,
            "1700000000000"
        );
        assert_eq!(ok(r#"{"story_id":"S","timestamp":-5}"#).timestamp, "-5");
        assert_eq!(
            ok(r#"{"story_id":"S","timestamp":1700000000.25}"#).timestamp,
            "1700000000.25"
        );
        assert_eq!(ok(r#"{"story_id":"S","timestamp":1.0}"#).timestamp, "1.0");
    }

    #[test]
    fn keeps_timestamp_text_verbatim() {
        let t = ok(r#"{"story_id":"S","timestamp":" 2025-01-01T00:00:00+02:00 "}"#);
        assert_eq!(t.timestamp, " 2025-01-01T00:00:00+02:00 ");
    }

    #[test]
    fn parses_the_same_transition_identically_on_every_delivery() {
        let payload = br#"{"payload":{"story_id":"S"},"timestamp":"t"}"#;
        assert_eq!(parse(payload), parse(payload));
        assert_eq!(parse(payload).map(|t| t.node_id()), Ok("S:t".to_owned()));
    }

    #[test]
    fn ignores_unknown_fields_of_any_type() {
        let t = ok(
            r#"{"story_id":"S","timestamp":"t","transitioned_by":{"x":[1,true,null]},"extra":[[]],"n":1e300}"#,
        );
        assert_eq!(t, transition("S", None, None, "t"));
    }

    #[test]
    fn keeps_story_id_verbatim_including_glob_specials_and_unicode() {
        for id in ["*", "a?b", "[x]", "back\\slash", "ñandú 🦀", " padded "] {
            let payload = serde_json::json!({"story_id": id, "timestamp": "t"}).to_string();
            assert_eq!(ok(&payload).story_id, id);
        }
        assert_eq!(
            ok(r#"{"story_id":"\u0041\n","timestamp":"t"}"#).story_id,
            "A\n"
        );
    }

    #[test]
    fn accepts_json_whitespace_around_the_object() {
        assert_eq!(
            ok(" \r\n\t{\"story_id\":\"S\",\"timestamp\":\"t\"}\n ").story_id,
            "S"
        );
    }

    // --- rejections: bytes and syntax ----------------------------------------

    #[test]
    fn rejects_empty_payload() {
        assert_eq!(rejected(b""), Rejection::Empty);
        assert_eq!(rejected(b" \n\t\r"), Rejection::Empty);
        assert_eq!(Rejection::Empty.to_string(), "payload is empty");
    }

    #[test]
    fn rejects_non_utf8_payload_with_byte_offset() {
        let mut payload = br#"{"story_id":"S"#.to_vec();
        payload.push(0xff);
        payload.extend_from_slice(br#"","timestamp":"t"}"#);
        let r = rejected(&payload);
        assert_eq!(r, Rejection::NotUtf8 { offset: 14 });
        assert_eq!(
            r.to_string(),
            "payload is not valid UTF-8: invalid byte sequence at byte offset 14"
        );
        // A truncated multi-byte sequence at the end.
        assert_eq!(
            rejected([b'{', 0xe2, 0x82]),
            Rejection::NotUtf8 { offset: 1 }
        );
    }

    #[test]
    fn rejects_byte_order_mark() {
        assert_eq!(
            rejected("\u{feff}{\"story_id\":\"S\",\"timestamp\":\"t\"}"),
            Rejection::ByteOrderMark
        );
    }

    #[test]
    fn rejects_invalid_json_with_line_and_column() {
        let r = rejected("{\n  \"story_id\": \"S\",\n  oops\n}");
        assert_eq!(
            r,
            Rejection::InvalidJson {
                message: "key must be a string at line 3 column 3".to_owned()
            }
        );
        assert_eq!(
            r.to_string(),
            "payload is not valid JSON: key must be a string at line 3 column 3"
        );
        assert!(
            matches!(rejected(r#"{"story_id":"S""#), Rejection::InvalidJson { message } if message.contains("EOF"))
        );
    }

    #[test]
    fn rejects_trailing_data_after_the_object() {
        let r = rejected(r#"{"story_id":"S","timestamp":"t"} {}"#);
        assert!(
            matches!(&r, Rejection::InvalidJson { message } if message.starts_with("trailing characters at line 1")),
            "{r}"
        );
    }

    #[test]
    fn rejects_invalid_json_inside_ignored_fields() {
        let r = rejected(r#"{"story_id":"S","timestamp":"t","metadata":[1,}"#);
        assert!(matches!(r, Rejection::InvalidJson { .. }), "{r}");
    }

    #[test]
    fn rejects_payload_that_is_not_an_object_naming_its_type() {
        let cases = [
            ("null", JsonType::Null),
            ("true", JsonType::Boolean),
            ("42", JsonType::Number),
            ("-1.5", JsonType::Number),
            (r#""story""#, JsonType::String),
            (r#"[{"story_id":"S","timestamp":"t"}]"#, JsonType::Array),
        ];
        for (payload, found) in cases {
            assert_eq!(
                rejected(payload),
                Rejection::NotAnObject { found },
                "{payload}"
            );
        }
        assert_eq!(
            rejected("[]").to_string(),
            "payload must be a JSON object, found an array"
        );
    }

    // --- rejections: story_id --------------------------------------------------

    #[test]
    fn rejects_payload_without_story_id() {
        let r = rejected(r#"{"from_phase":"a","to_phase":"b","timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::MissingStoryId {
                field: "story_id".to_owned()
            }
        );
        assert_eq!(r.to_string(), "missing `story_id`");
    }

    #[test]
    fn rejects_envelope_without_story_id() {
        let r = rejected(r#"{"payload":{"to_phase":"b"},"timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::MissingStoryId {
                field: "payload.story_id".to_owned()
            }
        );
    }

    #[test]
    fn rejects_empty_story_id() {
        let r = rejected(r#"{"story_id":"","timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::EmptyStoryId {
                field: "story_id".to_owned()
            }
        );
        assert_eq!(r.to_string(), "field `story_id` is empty");
        let r = rejected(r#"{"payload":{"story_id":""},"timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::EmptyStoryId {
                field: "payload.story_id".to_owned()
            }
        );
    }

    #[test]
    fn rejects_story_id_that_is_not_a_string() {
        let cases = [
            ("42", JsonType::Number),
            ("null", JsonType::Null),
            ("false", JsonType::Boolean),
            (r#"["S"]"#, JsonType::Array),
            (r#"{"id":"S"}"#, JsonType::Object),
        ];
        for (value, found) in cases {
            let payload = format!(r#"{{"story_id":{value},"timestamp":"t"}}"#);
            assert_eq!(
                rejected(&payload),
                wrong_type("story_id", "a string", found),
                "{payload}"
            );
        }
        assert_eq!(
            rejected(r#"{"story_id":42,"timestamp":"t"}"#).to_string(),
            "field `story_id` must be a string, found a number"
        );
    }

    #[test]
    fn rejects_envelope_and_payload_story_ids_that_disagree() {
        let r = rejected(r#"{"story_id":"S-1","payload":{"story_id":"S-2","timestamp":"t"}}"#);
        assert_eq!(
            r,
            Rejection::Conflict {
                field: "payload.story_id".to_owned(),
                value: "S-2".to_owned(),
                other_field: "story_id".to_owned(),
                other_value: "S-1".to_owned(),
            }
        );
        assert_eq!(
            r.to_string(),
            r#"fields `payload.story_id` ("S-2") and `story_id` ("S-1") disagree"#
        );
    }

    // --- rejections: phases ------------------------------------------------------

    #[test]
    fn rejects_phases_of_the_wrong_type() {
        for field in ["from_phase", "to_phase", "from_state", "to_state"] {
            for (value, found) in [
                ("1", JsonType::Number),
                ("true", JsonType::Boolean),
                ("[]", JsonType::Array),
                ("{}", JsonType::Object),
            ] {
                let payload = format!(r#"{{"story_id":"S","timestamp":"t","{field}":{value}}}"#);
                assert_eq!(
                    rejected(&payload),
                    wrong_type(field, "a string or null", found),
                    "{payload}"
                );
            }
        }
        let r = rejected(r#"{"payload":{"story_id":"S","to_state":7},"timestamp":"t"}"#);
        assert_eq!(
            r.to_string(),
            "field `payload.to_state` must be a string or null, found a number"
        );
    }

    #[test]
    fn rejects_phase_and_state_that_disagree() {
        let r = rejected(r#"{"story_id":"S","from_phase":"a","from_state":"b","timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::Conflict {
                field: "from_phase".to_owned(),
                value: "a".to_owned(),
                other_field: "from_state".to_owned(),
                other_value: "b".to_owned(),
            }
        );
    }

    #[test]
    fn rejects_envelope_and_payload_phases_that_disagree() {
        let r = rejected(
            r#"{"to_phase":"x","payload":{"story_id":"S","to_state":"y","timestamp":"t"}}"#,
        );
        assert_eq!(
            r,
            Rejection::Conflict {
                field: "payload.to_state".to_owned(),
                value: "y".to_owned(),
                other_field: "to_phase".to_owned(),
                other_value: "x".to_owned(),
            }
        );
    }

    // --- rejections: timestamp ---------------------------------------------------

    #[test]
    fn rejects_payload_without_timestamp() {
        let r = rejected(r#"{"story_id":"S","to_phase":"b"}"#);
        assert_eq!(
            r,
            Rejection::MissingTimestamp {
                field: "timestamp".to_owned()
            }
        );
        assert!(r.to_string().starts_with("missing `timestamp`"));
        assert_eq!(rejected(r#"{"story_id":"S","timestamp":null}"#), r);
    }

    #[test]
    fn rejects_envelope_without_any_timestamp() {
        let r = rejected(r#"{"payload":{"story_id":"S"},"timestamp":null}"#);
        assert_eq!(
            r,
            Rejection::MissingTimestamp {
                field: "payload.timestamp".to_owned()
            }
        );
    }

    #[test]
    fn rejects_empty_timestamp() {
        assert_eq!(
            rejected(r#"{"story_id":"S","timestamp":""}"#),
            Rejection::EmptyTimestamp {
                field: "timestamp".to_owned()
            }
        );
        // An empty inner timestamp is an error, not a reason to fall back.
        assert_eq!(
            rejected(r#"{"payload":{"story_id":"S","timestamp":""},"timestamp":"t"}"#),
            Rejection::EmptyTimestamp {
                field: "payload.timestamp".to_owned()
            }
        );
    }

    #[test]
    fn rejects_timestamp_of_the_wrong_type() {
        for (value, found) in [
            ("true", JsonType::Boolean),
            ("[1]", JsonType::Array),
            (r#"{"s":1}"#, JsonType::Object),
        ] {
            let payload = format!(r#"{{"story_id":"S","timestamp":{value}}}"#);
            assert_eq!(
                rejected(&payload),
                wrong_type("timestamp", "a string or a number", found),
                "{payload}"
            );
        }
        // The envelope's timestamp is checked even when the inner one wins.
        assert_eq!(
            rejected(r#"{"payload":{"story_id":"S","timestamp":"t"},"timestamp":false}"#),
            wrong_type("timestamp", "a string or a number", JsonType::Boolean)
        );
    }

    // --- rejections: envelope and event_type -------------------------------------

    #[test]
    fn rejects_envelope_payload_that_is_not_an_object() {
        for (value, found) in [
            ("null", JsonType::Null),
            ("1", JsonType::Number),
            (r#""{\"story_id\":\"S\"}""#, JsonType::String),
            ("[]", JsonType::Array),
            ("true", JsonType::Boolean),
        ] {
            let payload = format!(r#"{{"payload":{value},"story_id":"S","timestamp":"t"}}"#);
            assert_eq!(
                rejected(&payload),
                Rejection::EnvelopePayloadNotAnObject { found },
                "{payload}"
            );
        }
        assert_eq!(
            rejected(r#"{"payload":"x"}"#).to_string(),
            "envelope field `payload` must be a JSON object, found a string"
        );
    }

    #[test]
    fn rejects_nested_envelope() {
        let r = rejected(r#"{"payload":{"payload":{"story_id":"S","timestamp":"t"}}}"#);
        assert_eq!(r, Rejection::NestedEnvelope);
    }

    #[test]
    fn rejects_unexpected_event_type() {
        let r = rejected(r#"{"event_type":"story.created","story_id":"S","timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::UnexpectedEventType {
                field: "event_type".to_owned(),
                value: "story.created".to_owned()
            }
        );
        assert_eq!(
            r.to_string(),
            r#"field `event_type` is "story.created", expected one of "story.transitioned", "planning.story.transitioned""#
        );
        let r = rejected(r#"{"payload":{"event_type":"x","story_id":"S"},"timestamp":"t"}"#);
        assert!(
            matches!(r, Rejection::UnexpectedEventType { field, .. } if field == "payload.event_type")
        );
    }

    #[test]
    fn rejects_null_event_type_naming_the_field() {
        assert_eq!(
            rejected(r#"{"event_type":null,"story_id":"S","timestamp":"t"}"#),
            wrong_type("event_type", "a string", JsonType::Null)
        );
    }

    #[test]
    fn rejects_event_type_that_is_not_a_string() {
        assert_eq!(
            rejected(r#"{"event_type":1,"story_id":"S","timestamp":"t"}"#),
            wrong_type("event_type", "a string", JsonType::Number)
        );
    }

    #[test]
    fn accepts_either_known_event_type_at_either_level() {
        for outer in EVENT_TYPES {
            for inner in EVENT_TYPES {
                let payload = format!(
                    r#"{{"event_type":"{outer}","payload":{{"event_type":"{inner}","story_id":"S"}},"timestamp":"t"}}"#
                );
                assert_eq!(ok(&payload).story_id, "S");
            }
        }
    }

    #[test]
    fn rejects_duplicate_fields() {
        let r = rejected(r#"{"story_id":"S-1","story_id":"S-2","timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::DuplicateField {
                field: "story_id".to_owned()
            }
        );
        assert_eq!(r.to_string(), "field `story_id` appears more than once");
        let r = rejected(r#"{"payload":{"story_id":"S","timestamp":"a","timestamp":"b"}}"#);
        assert_eq!(
            r,
            Rejection::DuplicateField {
                field: "payload.timestamp".to_owned()
            }
        );
        let r =
            rejected(r#"{"payload":{"story_id":"S"},"payload":{"story_id":"S"},"timestamp":"t"}"#);
        assert_eq!(
            r,
            Rejection::DuplicateField {
                field: "payload".to_owned()
            }
        );
    }

    #[test]
    fn tolerates_duplicate_unknown_fields() {
        assert_eq!(
            ok(r#"{"x":1,"x":2,"story_id":"S","timestamp":"t"}"#).story_id,
            "S"
        );
    }

    #[test]
    fn escapes_and_truncates_producer_values_in_reasons() {
        let long = "é".repeat(500);
        let payload =
            format!(r#"{{"event_type":"{long}\r\nInjected: yes","story_id":"S","timestamp":"t"}}"#);
        let reason = rejected(&payload).to_string();
        assert!(!reason.contains('\n') && !reason.contains('\r'), "{reason}");
        assert!(reason.contains('…'));
        assert!(reason.chars().count() < 250, "{reason}");
        let reason =
            rejected(r#"{"event_type":"a\u0000\nb","story_id":"S","timestamp":"t"}"#).to_string();
        assert!(reason.contains(r#""a\0\nb""#), "{reason}");
    }

    #[test]
    fn never_panics_on_mutated_payloads() {
        // Deterministic byte mutations of valid payloads: every result is
        // either a transition or a rejection.
        let seeds = [
            PLANNING.to_owned(),
            format!(r#"{{"payload":{PLANNING},"timestamp":"t","metadata":{{"a":[1,2.5,null]}}}}"#),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &seeds {
            for _ in 0..5_000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() % bytes.len() as u64) as usize;
                    match next() % 3 {
                        0 => bytes[at] = (next() & 0xff) as u8,
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, b"{}[]\":,0\\\xff"[(next() % 10) as usize]),
                    }
                }
                if let Ok(t) = parse(&bytes) {
                    assert!(!t.story_id.is_empty() && !t.timestamp.is_empty());
                }
            }
        }
    }

    // --- nesting and size ----------------------------------------------------------

    fn nested(depth: usize, open: &str, close: &str) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn rejects_deeply_nested_array_without_overflowing_the_stack() {
        for depth in [129, 10_000, 1_000_000] {
            assert_eq!(
                rejected(nested(depth, "[", "]")),
                Rejection::NotAnObject {
                    found: JsonType::Array
                }
            );
        }
    }

    #[test]
    fn rejects_deeply_nested_object_without_overflowing_the_stack() {
        // `{"a":{"a":…1…}}`: an object, but no story_id.
        let payload = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert_eq!(
            rejected(&payload),
            Rejection::MissingStoryId {
                field: "story_id".to_owned()
            }
        );
    }

    #[test]
    fn rejects_deep_nesting_in_recognised_fields_by_type() {
        let deep = nested(10_000, "[", "]");
        assert_eq!(
            rejected(format!(r#"{{"story_id":{deep},"timestamp":"t"}}"#)),
            wrong_type("story_id", "a string", JsonType::Array)
        );
        assert_eq!(
            rejected(format!(r#"{{"payload":{deep},"timestamp":"t"}}"#)),
            Rejection::EnvelopePayloadNotAnObject {
                found: JsonType::Array
            }
        );
        assert_eq!(
            rejected(format!(r#"{{"payload":{{"payload":{deep}}}}}"#)),
            Rejection::NestedEnvelope
        );
    }

    #[test]
    fn skips_deep_nesting_in_unknown_fields() {
        let deep = nested(10_000, "[", "]");
        let payload = format!(
            r#"{{"metadata":{deep},"payload":{{"x":{deep},"story_id":"S"}},"timestamp":"t"}}"#
        );
        assert_eq!(ok(&payload).story_id, "S");
    }

    #[test]
    fn rejects_unbalanced_deep_nesting_as_invalid_json() {
        let payload = format!(
            r#"{{"story_id":"S","timestamp":"t","m":{}}}"#,
            "[".repeat(10_000)
        );
        assert!(matches!(rejected(&payload), Rejection::InvalidJson { .. }));
    }

    #[test]
    fn parses_multi_mebibyte_payload() {
        // 8 MiB of metadata: a long string and a long array, skipped unbuilt.
        let big_string = "x".repeat(4 << 20);
        let big_array = vec!["0"; 2 << 20].join(",");
        let payload = format!(
            r#"{{"metadata":{{"blob":"{big_string}","list":[{big_array}]}},"payload":{{"story_id":"S-BIG","to_phase":"b"}},"timestamp":"t"}}"#
        );
        assert!(payload.len() > 8 << 20);
        assert_eq!(ok(&payload), transition("S-BIG", None, Some("b"), "t"));
    }

    #[test]
    fn parses_multi_mebibyte_story_id() {
        let id = "i".repeat(3 << 20);
        let payload = format!(r#"{{"story_id":"{id}","timestamp":"t"}}"#);
        assert_eq!(ok(&payload).story_id.len(), 3 << 20);
    }

    #[test]
    fn rejects_truncated_multi_mebibyte_payload() {
        let payload = format!(
            r#"{{"story_id":"S","timestamp":"t","blob":"{}"#,
            "x".repeat(4 << 20)
        );
        let r = rejected(&payload);
        assert!(
            matches!(&r, Rejection::InvalidJson { message } if message.starts_with("EOF while parsing a string")),
            "{r}"
        );
    }
}
