//! `story-transitions`: on each `planning.story.transitioned` event,
//! invalidate the story's cached context and record the transition as a
//! `PhaseTransition` node. [`transition`] parses the payload, [`keys`]
//! names the story's cache keys (both pure); [`handle`] runs the effects
//! against the SDK's [`Host`], [`Imports`] in the component, a double or
//! the host's own capabilities natively.
//!
//! One event:
//!
//! 1. Parse the payload; a rejection dead-letters the event before any
//!    cache or graph call.
//! 2. Read the configuration: `key_prefix` (default `context:`),
//!    `retry_base_ms` (500), `retry_max_ms` (30000), `invalidation`
//!    (`delete-matching`, the default, or `scan`, the per-event design
//!    before 0.1.1).
//! 3. Upsert `(:PhaseTransition {id: "<story_id>:<timestamp>"})` with
//!    `story_id`, `from_phase`, `to_phase` and `timestamp`.
//! 4. Delete the key `<prefix><story_id>` and every key under
//!    `<prefix><story_id>:`, the id escaped as data.
//! 5. Ack, logging how many keys were deleted.
//!
//! The graph goes before the cache, as with any source of truth and its
//! cache: a reader that misses the cache after step 4 re-renders from a
//! graph that already holds the transition; cache-first would let a reader
//! in between re-cache context rendered from the old graph. Both steps are
//! idempotent, so a retry runs them again. A failed call retries the event
//! after an exponential backoff or rejects it, by the error's cause
//! ([`switchyard_plugin::failure`]).

pub mod keys;
pub mod transition;

pub use switchyard_plugin::{Host, Imports};

use switchyard_plugin::event::Event;
use switchyard_plugin::failure::{self, Failure, Named};
use switchyard_plugin::graph::Value;
use switchyard_plugin::invalidate::{self, Method};
use switchyard_plugin::logging::quote;
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::retry::Backoff;
use switchyard_plugin::settings::parse_or_log;

use keys::StoryKeys;
use transition::Transition;

/// Label of the node recording a transition.
pub const NODE_LABEL: &str = "PhaseTransition";
/// Key prefix used when `key_prefix` is not configured.
pub const DEFAULT_KEY_PREFIX: &str = "context:";
/// First retry delay, in milliseconds, when `retry_base_ms` is not configured.
pub const DEFAULT_RETRY_BASE_MS: u64 = 500;
/// Longest retry delay, in milliseconds, when `retry_max_ms` is not configured.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;

switchyard_plugin::export_handler!(handle);

/// Handles one event against `host`. See the crate docs for the steps.
pub fn handle(host: &mut impl Host, event: &Event) -> Outcome {
    let transition = match transition::parse(&event.payload) {
        Ok(transition) => transition,
        Err(reason) => return failure::reject(host, reason, &[]),
    };
    // A retry or invalidation setting that does not parse is logged and
    // replaced by its default: it shapes how the event is handled, not whether.
    let prefix = host
        .config("key_prefix")
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    let backoff = Backoff {
        base_ms: parse_or_log(host, "retry_base_ms", DEFAULT_RETRY_BASE_MS, "retry"),
        max_ms: parse_or_log(host, "retry_max_ms", DEFAULT_RETRY_MAX_MS, "retry"),
    };
    let method = parse_or_log(host, "invalidation", Method::default(), "invalidation");
    let keys = StoryKeys::new(&prefix, &transition.story_id);
    // Everything the effects need is checked before the first one, so an
    // event is either handled or rejected with nothing done.
    if let Err(reason) = keys.check_lengths() {
        return failure::reject(host, reason, &[]);
    }
    let node_id = transition.node_id();
    match apply(host, method, &transition, &node_id, &keys) {
        Ok(keys_deleted) => {
            // At debug: a busy host at `info` should not spend more on the
            // line than on the event. The host's metrics count every key.
            let fields = [
                ("story_id", transition.story_id.clone()),
                ("keys_deleted", keys_deleted.to_string()),
                ("from_phase", transition.from_phase.unwrap_or_default()),
                ("to_phase", transition.to_phase.unwrap_or_default()),
                ("node_id", node_id),
            ];
            host.debug("invalidated story context", &fields);
            Outcome::Ack
        }
        Err(failure) => {
            let context = [("story_id", transition.story_id)];
            failure.settle(host, backoff, event.delivery_attempt, &context)
        }
    }
}

/// The graph upsert, then the invalidation. Returns how many keys were deleted.
fn apply(
    host: &mut impl Host,
    method: Method,
    transition: &Transition,
    node_id: &str,
    keys: &StoryKeys,
) -> Result<u64, Failure> {
    let text = |value: Option<&String>| value.map_or(Value::Null, |v| Value::Text(v.clone()));
    let properties = [
        ("story_id".to_owned(), text(Some(&transition.story_id))),
        (
            "from_phase".to_owned(),
            text(transition.from_phase.as_ref()),
        ),
        ("to_phase".to_owned(), text(transition.to_phase.as_ref())),
        ("timestamp".to_owned(), text(Some(&transition.timestamp))),
    ];
    host.upsert_entity(NODE_LABEL, node_id, &properties)
        .named(|| format!("graph.upsert-entity of {NODE_LABEL} {}", quote(node_id)))?;
    let (bare, children) = ([keys.bare_key()], [keys.child_prefix()]);
    invalidate::run(host, method, &bare, &children)
}
