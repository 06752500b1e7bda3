// Parsing a story-transition payload into a transition, or a rejection
// whose reason is the one the Rust handler gives for the same bytes.
//
// Pure: no host calls, so it runs under Node for tests.
//
// Accepted shapes:
//   flat:     {"story_id", "from_phase", "to_phase", "timestamp"}
//   planning: {"event_type": "story.transitioned", "story_id", "from_state",
//              "to_state", "transitioned_by", "timestamp"}
//   envelope: {"event_type": "planning.story.transitioned", "payload": {…},
//              "idempotency_key", "correlation_id", "timestamp", "producer",
//              "metadata"}
//
// The rules (each with its own reason):
// - UTF-8 JSON whose top level is an object; no byte-order mark.
// - An object with `payload` is an envelope; its payload must be an object
//   and not an envelope itself.
// - `event_type`, where present, is one of EVENT_TYPES.
// - `story_id` is a non-empty string without `:`, read from the payload or
//   the envelope; both present must agree.
// - `from_phase`/`from_state` and `to_phase`/`to_state` are synonyms (a
//   string, null or absent) and must agree, inner and outer too.
// - `timestamp` is a non-empty string or a number kept as spelled; the
//   inner one wins, a missing or null one falls back to the envelope's.
// - A known field twice in one object is refused.

import { JsonError, Reader, invalidUtf8At } from './json.js';
import { DEBUG_ESCAPED } from './debug-escapes.js';

/** What separates a story id from the rest of its keys and node id. */
export const SEPARATOR = ':';

/** The `event_type` values a transition may carry, at either level. */
export const EVENT_TYPES = ['story.transitioned', 'planning.story.transitioned'];

/** How much of a producer-supplied value a reason quotes, in characters. */
const QUOTE_LIMIT = 80;

const TYPE_NAMES = {
  null: 'null',
  boolean: 'a boolean',
  number: 'a number',
  string: 'a string',
  array: 'an array',
  object: 'an object',
};

/** Why a payload can never yield a transition; `message` is the reason. */
export class Rejection extends Error {}

function isDebugEscaped(cp) {
  let lo = 0;
  let hi = DEBUG_ESCAPED.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < DEBUG_ESCAPED[2 * mid]) {
      hi = mid - 1;
    } else if (cp > DEBUG_ESCAPED[2 * mid + 1]) {
      lo = mid + 1;
    } else {
      return true;
    }
  }
  return false;
}

/** A string as Rust's `{:?}` prints it: quoted, escaped. */
export function debugString(value) {
  let out = '"';
  for (const ch of value) {
    const cp = ch.codePointAt(0);
    switch (cp) {
      case 0: out += '\\0'; break;
      case 9: out += '\\t'; break;
      case 10: out += '\\n'; break;
      case 13: out += '\\r'; break;
      case 0x22: out += '\\"'; break;
      case 0x5c: out += '\\\\'; break;
      default:
        out += isDebugEscaped(cp) ? `\\u{${cp.toString(16)}}` : ch;
    }
  }
  return `${out}"`;
}

/** Quotes a producer-supplied string for a reason: escaped and bounded. */
export function quote(value) {
  let count = 0;
  let cut = -1;
  for (let i = 0; i < value.length; ) {
    if (count === QUOTE_LIMIT) {
      cut = i;
      break;
    }
    const cp = value.codePointAt(i);
    i += cp > 0xffff ? 2 : 1;
    count += 1;
  }
  return cut < 0 ? debugString(value) : `${debugString(value.slice(0, cut))}…`;
}

const reject = (reason) => {
  throw new Rejection(reason);
};

const wrongType = (field, expected, found) =>
  reject(`field \`${field}\` must be ${expected}, found ${TYPE_NAMES[found]}`);

const conflict = (field, value, otherField, otherValue) =>
  reject(
    `fields \`${field}\` (${quote(value)}) and \`${otherField}\` (${quote(otherValue)}) disagree`,
  );

const KNOWN = new Set(['event_type', 'story_id', 'from_phase', 'to_phase', 'from_state', 'to_state']);

/** Reads the known fields of one object; `envelope` reads `payload` as an object. */
function readFields(envelope) {
  return (reader) => {
    const fields = { duplicate: null };
    const state = { first: true };
    for (;;) {
      const name = reader.key(state);
      if (name === null) return fields;
      reader.colon();
      let value;
      if (KNOWN.has(name)) {
        value = reader.value();
      } else if (name === 'timestamp') {
        value = reader.spelled();
      } else if (name === 'payload') {
        value = envelope ? reader.value(readFields(false)) : { type: reader.value().type };
      } else {
        reader.skipValue();
        continue;
      }
      if (Object.hasOwn(fields, name)) {
        fields.duplicate ??= name;
      } else {
        fields[name] = value;
      }
    }
  };
}

/** Parses one event payload (bytes) into a transition, or throws a Rejection. */
export function parse(payload) {
  const bad = invalidUtf8At(payload);
  if (bad >= 0) {
    reject(`payload is not valid UTF-8: invalid byte sequence at byte offset ${bad}`);
  }
  if (payload.length >= 3 && payload[0] === 0xef && payload[1] === 0xbb && payload[2] === 0xbf) {
    reject('payload starts with a UTF-8 byte-order mark, which JSON does not allow');
  }
  if (payload.every((b) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d)) {
    reject('payload is empty');
  }
  let top;
  try {
    const reader = new Reader(payload);
    top = reader.value(readFields(true));
    reader.end();
  } catch (error) {
    if (error instanceof JsonError) reject(`payload is not valid JSON: ${error.message}`);
    throw error;
  }
  if (top.type !== 'object') reject(`payload must be a JSON object, found ${TYPE_NAMES[top.type]}`);
  return interpret(top.fields);
}

function checkLevel(fields, prefix) {
  if (fields.duplicate !== null) {
    reject(`field \`${prefix}${fields.duplicate}\` appears more than once`);
  }
  const eventType = fields.event_type;
  if (eventType === undefined) return;
  if (eventType.type !== 'string') wrongType(`${prefix}event_type`, 'a string', eventType.type);
  if (!EVENT_TYPES.includes(eventType.value)) {
    reject(
      `field \`${prefix}event_type\` is ${quote(eventType.value)}, expected one of ${EVENT_TYPES.map((t) => debugString(t)).join(', ')}`,
    );
  }
}

function interpret(outer) {
  checkLevel(outer, '');
  let inner = null;
  if (outer.payload !== undefined) {
    if (outer.payload.type !== 'object') {
      reject(
        `envelope field \`payload\` must be a JSON object, found ${TYPE_NAMES[outer.payload.type]}`,
      );
    }
    inner = outer.payload.fields;
    if (inner.payload !== undefined) {
      reject('envelope `payload` is itself an envelope (it has a `payload` field)');
    }
    checkLevel(inner, 'payload.');
  }
  // Preference order: the envelope's payload, then the envelope itself.
  const levels = inner ? [[inner, 'payload.'], [outer, '']] : [[outer, '']];
  const firstPrefix = levels[0][1];

  const storyIds = [];
  const froms = [];
  const tos = [];
  const timestamps = [];
  for (const [fields, prefix] of levels) {
    storyIds.push(storyId(fields, prefix));
    froms.push(phase(prefix, 'from', fields.from_phase, fields.from_state));
    tos.push(phase(prefix, 'to', fields.to_phase, fields.to_state));
    timestamps.push(timestamp(fields, prefix));
  }
  const story = firstAgreed(storyIds);
  if (story === null) reject(`missing \`${firstPrefix}story_id\``);
  const from = firstAgreed(froms);
  const to = firstAgreed(tos);
  const ts = timestamps.find((t) => t !== null);
  if (ts === undefined) {
    reject(
      `missing \`${firstPrefix}timestamp\`: a transition needs a timestamp to name its PhaseTransition node`,
    );
  }
  return {
    storyId: story[1],
    fromPhase: from ? from[1] : null,
    toPhase: to ? to[1] : null,
    timestamp: ts,
  };
}

function storyId(fields, prefix) {
  const field = `${prefix}story_id`;
  const raw = fields.story_id;
  if (raw === undefined) return null;
  if (raw.type !== 'string') wrongType(field, 'a string', raw.type);
  if (raw.value === '') reject(`field \`${field}\` is empty`);
  if (raw.value.includes(SEPARATOR)) {
    reject(
      `field \`${field}\` (${quote(raw.value)}) contains \`:\`, the separator of a story's cache keys (\`<prefix><story_id>:<part>\`) and node ids (\`<story_id>:<timestamp>\`): its keys and node would be another story's`,
    );
  }
  return [field, raw.value];
}

function phase(prefix, side, phaseRaw, stateRaw) {
  const read = (raw, name) => {
    const field = `${prefix}${side}_${name}`;
    if (raw === undefined || raw.type === 'null') return null;
    if (raw.type === 'string') return [field, raw.value];
    return wrongType(field, 'a string or null', raw.type);
  };
  return firstAgreed([read(phaseRaw, 'phase'), read(stateRaw, 'state')]);
}

function timestamp(fields, prefix) {
  const field = `${prefix}timestamp`;
  const raw = fields.timestamp;
  if (raw === undefined || raw.type === 'null') return null;
  if (raw.type === 'string') {
    if (raw.value === '') reject(`field \`${field}\` is empty`);
    return raw.value;
  }
  if (raw.type === 'number') return raw.value;
  return wrongType(field, 'a string or a number', raw.type);
}

/** The first candidate present, or a conflict naming the first two that differ. */
function firstAgreed(candidates) {
  let chosen = null;
  for (const candidate of candidates) {
    if (candidate === null) continue;
    if (chosen === null) {
      chosen = candidate;
    } else if (chosen[1] !== candidate[1]) {
      conflict(chosen[0], chosen[1], candidate[0], candidate[1]);
    }
  }
  return chosen;
}

/** The id of the transition's PhaseTransition node: `<story_id>:<timestamp>`. */
export const nodeId = (transition) => `${transition.storyId}:${transition.timestamp}`;
