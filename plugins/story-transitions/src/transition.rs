//! Payload bytes → [`Transition`], or the reason it can never be one.
//! Pure, so it runs natively for tests and fuzzing. Accepted shapes:
//!
//! - flat: `{"story_id", "from_phase", "to_phase", "timestamp"}`;
//! - the planning service's: `{"event_type": "story.transitioned",
//!   "story_id", "from_state", "to_state", "transitioned_by", "timestamp"}`;
//! - an envelope: `{"event_type": "planning.story.transitioned", "payload":
//!   {…either…}, "idempotency_key", "correlation_id", "timestamp",
//!   "producer", "metadata"}`.
//!
//! Rules, each rejected with its own reason (those about the bytes, and
//! memory bounded whatever they hold, are [`switchyard_plugin::json`]'s):
//!
//! - An object, no known field twice in one; `event_type`, if present, one
//!   of [`EVENT_TYPES`]; an envelope's `payload` an object, no envelope.
//! - `story_id`: a non-empty string without [`SEPARATOR`]: the story's keys
//!   are `<prefix><story_id>` and `<prefix><story_id>:…`, its node id
//!   `<story_id>:<timestamp>`, so `S-1:dev` would share `S-1`'s.
//! - `from_phase`/`from_state` (and `to_…`) are synonyms: a string, `null`
//!   or absent; two strings must agree, as must the inner and outer values
//!   of an envelope (also for `story_id`).
//! - `timestamp`: a non-empty string, or a number as spelled (`1E2` is not
//!   `100`); an envelope's inner one wins, a missing or `null` one falls
//!   back to the outer. None at all is a rejection, not an invented time:
//!   the node id comes from it, and every copy of an event must land on
//!   one node.

use switchyard_plugin::json::{self, Json, Object, Shape};
use switchyard_plugin::logging::quote;

/// Separates a story id from the rest of its cache keys and node id.
pub const SEPARATOR: char = ':';

/// The `event_type` values a transition may carry, at either level.
pub const EVENT_TYPES: [&str; 2] = ["story.transitioned", "planning.story.transitioned"];

/// A story's phase change, normalised from any accepted payload shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Never empty.
    pub story_id: String,
    pub from_phase: Option<String>,
    pub to_phase: Option<String>,
    /// As the producer spelled it. Never empty.
    pub timestamp: String,
}

impl Transition {
    /// The `id` of the transition's node: `<story_id>:<timestamp>`.
    pub fn node_id(&self) -> String {
        format!("{}:{}", self.story_id, self.timestamp)
    }
}

#[rustfmt::skip]
const FIELDS: &[&str] = &[
    "event_type", "story_id", "from_phase", "to_phase", "from_state", "to_state", "timestamp",
    "payload",
];
/// An envelope's `payload`: whether it has a `payload` of its own is noted.
const INNER: Shape = Shape {
    fields: FIELDS,
    spelled: &["timestamp"],
    nested: &[],
};
const OUTER: Shape = Shape {
    fields: FIELDS,
    spelled: &["timestamp"],
    nested: &[("payload", &INNER)],
};

/// A value and the path it was found at (`payload.story_id` inside an
/// envelope), so that a reason names the field and a disagreement both.
type Found = Option<(String, String)>;

/// Parses one event payload; the error is the reason to reject it with.
/// See the module docs for the rules.
pub fn parse(payload: &[u8]) -> Result<Transition, String> {
    let outer = json::object(payload, &OUTER)?;
    check(&outer, "")?;
    let mut levels = vec![(&outer, "")];
    match outer.get("payload") {
        None => {}
        Some(Json::Object(Some(inner))) if inner.get("payload").is_some() => {
            return Err(
                "envelope `payload` is itself an envelope (it has a `payload` field)".into(),
            );
        }
        Some(Json::Object(Some(inner))) => {
            check(inner, "payload.")?;
            levels.insert(0, (inner, "payload."));
        }
        Some(other) => {
            let found = other.kind();
            return Err(format!(
                "envelope field `payload` must be a JSON object, found {found}"
            ));
        }
    }

    // Each level's fields are checked, inner first, before they are combined.
    let (mut ids, mut froms, mut tos, mut timestamps) = (vec![], vec![], vec![], vec![]);
    for (fields, at) in levels.iter().copied() {
        ids.push(story_id(fields, at)?);
        froms.push(phase(fields, at, ["from_phase", "from_state"])?);
        tos.push(phase(fields, at, ["to_phase", "to_state"])?);
        timestamps.push(timestamp(fields, at)?);
    }
    let first = levels[0].1;
    let value = |found: Found| found.map(|(_, value)| value);
    Ok(Transition {
        story_id: value(agreed(ids)?).ok_or_else(|| format!("missing `{first}story_id`"))?,
        from_phase: value(agreed(froms)?),
        to_phase: value(agreed(tos)?),
        timestamp: timestamps.into_iter().flatten().next().ok_or_else(|| {
            format!("missing `{first}timestamp`: a transition needs a timestamp to name its PhaseTransition node")
        })?,
    })
}

/// What one object must satisfy on its own.
fn check(fields: &Object, at: &str) -> Result<(), String> {
    if let Some(name) = fields.duplicate() {
        return Err(format!("field `{at}{name}` appears more than once"));
    }
    match fields.get("event_type") {
        None => Ok(()),
        Some(Json::Text(t)) if EVENT_TYPES.contains(&t.as_str()) => Ok(()),
        Some(Json::Text(t)) => Err(format!(
            "field `{at}event_type` is {}, expected one of {}",
            quote(t),
            EVENT_TYPES.map(|t| format!("{t:?}")).join(", ")
        )),
        Some(other) => Err(wrong_type(&format!("{at}event_type"), "a string", other)),
    }
}

fn story_id(fields: &Object, at: &str) -> Result<Found, String> {
    let field = format!("{at}story_id");
    match fields.get("story_id") {
        None => Ok(None),
        Some(Json::Text(id)) if id.is_empty() => Err(format!("field `{field}` is empty")),
        Some(Json::Text(id)) if id.contains(SEPARATOR) => Err(format!(
            "field `{field}` ({}) contains `{SEPARATOR}`, the separator of a story's cache keys (`<prefix><story_id>{SEPARATOR}<part>`) and node ids (`<story_id>{SEPARATOR}<timestamp>`): its keys and node would be another story's",
            quote(id)
        )),
        Some(Json::Text(id)) => Ok(Some((field, id.clone()))),
        Some(other) => Err(wrong_type(&field, "a string", other)),
    }
}

/// One side of the transition, from its two names (`from_phase` and
/// `from_state`, or `to_…`).
fn phase(fields: &Object, at: &str, names: [&str; 2]) -> Result<Found, String> {
    let mut found = Vec::new();
    for name in names {
        let field = format!("{at}{name}");
        found.push(match fields.get(name) {
            None | Some(Json::Null) => None,
            Some(Json::Text(value)) => Some((field, value.clone())),
            Some(other) => return Err(wrong_type(&field, "a string or null", other)),
        });
    }
    agreed(found)
}

fn timestamp(fields: &Object, at: &str) -> Result<Option<String>, String> {
    let field = format!("{at}timestamp");
    match fields.get("timestamp") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Text(t)) if t.is_empty() => Err(format!("field `{field}` is empty")),
        Some(Json::Text(t) | Json::Spelled(t)) => Ok(Some(t.clone())),
        Some(other) => Err(wrong_type(&field, "a string or a number", other)),
    }
}

/// The one value the present candidates agree on, with the path of the
/// first; or the first two that differ.
fn agreed(candidates: Vec<Found>) -> Result<Found, String> {
    let mut present = candidates.into_iter().flatten();
    let Some((field, value)) = present.next() else {
        return Ok(None);
    };
    match present.find(|(_, other)| *other != value) {
        None => Ok(Some((field, value))),
        Some((other_field, other)) => Err(format!(
            "fields `{field}` ({}) and `{other_field}` ({}) disagree",
            quote(&value),
            quote(&other)
        )),
    }
}

fn wrong_type(field: &str, expected: &str, found: &Json) -> String {
    format!("field `{field}` must be {expected}, found {}", found.kind())
}
