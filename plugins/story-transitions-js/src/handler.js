// What one event does, written against a `host` object so it runs under
// Node with a scripted host as well as in the component (see index.js).
//
// 1. Parse the payload; a rejection dead-letters the event before any host
//    call.
// 2. Read the configuration: `key_prefix` (default `context:`),
//    `retry_base_ms` (500), `retry_max_ms` (30000), `invalidation`
//    (`delete-matching`, the default, or `scan`).
// 3. Upsert (:PhaseTransition {id: "<story_id>:<timestamp>"}) with
//    `story_id`, `from_phase`, `to_phase` (text or null) and `timestamp`.
// 4. Invalidate: one delete-matching call for the escaped bare key and
//    `<escaped bare>:*`; or, with `invalidation = "scan"`, delete the bare
//    key, then scan the pattern page by page deleting what belongs to the
//    story.
// 5. Ack. The graph goes first: a reader that misses the cache re-renders
//    from a graph that already holds the transition.
//
// A failed host call: `unavailable` and `other` retry after
// `retry_base_ms * 2^(attempt - 1)` capped at `retry_max_ms`; `denied` and
// `invalid` reject naming the call.
//
// The host: config(key) -> string | undefined; scan(pattern, cursor, count)
// -> {cursor, keys}; delete(keys) -> bigint; deleteMatching(patterns) ->
// bigint; upsertEntity(label, id, properties); log(level, message, fields).
// A failing call throws a HostError.

import { Rejection, nodeId, parse, quote } from './transition.js';
import { StoryKeys } from './keys.js';

export const NODE_LABEL = 'PhaseTransition';
export const DEFAULT_KEY_PREFIX = 'context:';
export const DEFAULT_RETRY_BASE_MS = 500n;
export const DEFAULT_RETRY_MAX_MS = 30000n;
export const SCAN_COUNT = 500;
export const MAX_SCAN_PAGES = 100000;
const U64_MAX = 0xffffffffffffffffn;

/** A failed host call: `kind` is unavailable, denied, invalid or other. */
export class HostError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

// Unicode White_Space, which Rust's str::trim removes.
const WHITE_SPACE = /^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g;

/** A whole number of milliseconds as Rust's u64 parse reads it, or null. */
export function parseMillis(text) {
  const trimmed = text.replace(WHITE_SPACE, '');
  if (!/^\+?[0-9]+$/.test(trimmed)) return null;
  const value = BigInt(trimmed.replace('+', ''));
  return value > U64_MAX ? null : value;
}

function millis(host, key, fallback) {
  const text = host.config(key);
  if (text === undefined) return fallback;
  const value = parseMillis(text);
  if (value !== null) return value;
  host.log('error', 'invalid retry setting, using the default', [
    ['key', key],
    ['value', quote(text)],
    ['default', fallback.toString()],
  ]);
  return fallback;
}

/** The handler's configuration. */
export function loadSettings(host) {
  const keyPrefix = host.config('key_prefix') ?? DEFAULT_KEY_PREFIX;
  const retryBaseMs = millis(host, 'retry_base_ms', DEFAULT_RETRY_BASE_MS);
  const retryMaxMs = millis(host, 'retry_max_ms', DEFAULT_RETRY_MAX_MS);
  const setting = host.config('invalidation');
  let invalidation = 'delete-matching';
  if (setting === 'scan') {
    invalidation = 'scan';
  } else if (setting !== undefined && setting !== 'delete-matching') {
    host.log('error', 'invalid invalidation setting, using the default', [
      ['key', 'invalidation'],
      ['value', quote(setting)],
      ['default', 'delete-matching'],
    ]);
  }
  return { keyPrefix, retryBaseMs, retryMaxMs, invalidation };
}

/** `base * 2^(attempt - 1)`, saturating, capped at the maximum (attempt 0 counts as 1). */
export function backoffMs(settings, deliveryAttempt) {
  const doublings = Math.max(deliveryAttempt - 1, 0);
  const factor = doublings >= 64 ? U64_MAX : 1n << BigInt(doublings);
  let delay = settings.retryBaseMs * factor;
  if (delay > U64_MAX) delay = U64_MAX;
  return delay < settings.retryMaxMs ? delay : settings.retryMaxMs;
}

/** A failed call, with what it was about, e.g. `cache.delete of key "context:S-1"`. */
class Failure {
  constructor(call, error) {
    this.call = call;
    this.error = error;
  }
}

function attempt(call, run) {
  try {
    return run();
  } catch (error) {
    if (error instanceof HostError) throw new Failure(call(), error);
    throw error;
  }
}

const textOrNull = (value) => (value === null ? { tag: 'null' } : { tag: 'text', val: value });

/** Handles one event against `host`; returns the WIT outcome. */
export function handle(host, event) {
  let transition;
  try {
    transition = parse(event.payload);
  } catch (error) {
    if (!(error instanceof Rejection)) throw error;
    host.log('warn', 'rejected event', [['reason', error.message]]);
    return { tag: 'reject', val: error.message };
  }
  const settings = loadSettings(host);
  const node = nodeId(transition);
  const keys = new StoryKeys(settings.keyPrefix, transition.storyId);
  const tooLong = keys.lengthProblem();
  if (tooLong !== null) {
    host.log('warn', 'rejected event', [['reason', tooLong]]);
    return { tag: 'reject', val: tooLong };
  }
  let deleted;
  try {
    deleted = apply(host, settings, transition, node, keys);
  } catch (failure) {
    if (!(failure instanceof Failure)) throw failure;
    return settleFailure(host, settings, event, transition, failure);
  }
  host.log('debug', 'invalidated story context', [
    ['story_id', transition.storyId],
    ['keys_deleted', deleted.toString()],
    ['from_phase', transition.fromPhase ?? ''],
    ['to_phase', transition.toPhase ?? ''],
    ['node_id', node],
  ]);
  return { tag: 'ack' };
}

function apply(host, settings, transition, node, keys) {
  const properties = [
    ['story_id', { tag: 'text', val: transition.storyId }],
    ['from_phase', textOrNull(transition.fromPhase)],
    ['to_phase', textOrNull(transition.toPhase)],
    ['timestamp', { tag: 'text', val: transition.timestamp }],
  ];
  attempt(
    () => `graph.upsert-entity of ${NODE_LABEL} ${quote(node)}`,
    () => host.upsertEntity(NODE_LABEL, node, properties),
  );
  if (settings.invalidation === 'scan') return invalidateByScan(host, keys);
  const patterns = [keys.barePattern, keys.pattern];
  return attempt(
    () => `cache.delete-matching of ${quote(patterns[0])} and ${quote(patterns[1])}`,
    () => host.deleteMatching(patterns),
  );
}

function invalidateByScan(host, keys) {
  let deleted = attempt(
    () => `cache.delete of key ${quote(keys.bare)}`,
    () => host.delete([keys.bare]),
  );
  // SCAN may return a key more than once; each is deleted once.
  const seen = new Set();
  let cursor = 0n;
  for (let page = 0; page < MAX_SCAN_PAGES; page++) {
    const found = attempt(
      () => `cache.scan of pattern ${quote(keys.pattern)}`,
      () => host.scan(keys.pattern, cursor, SCAN_COUNT),
    );
    const batch = [];
    for (const key of found.keys) {
      if (!keys.isChild(key)) {
        // The pattern should make this impossible; never delete outside the story.
        host.log('warn', 'scan returned a key outside the story, skipped', [
          ['key', quote(key)],
          ['pattern', keys.pattern],
        ]);
      } else if (!seen.has(key)) {
        seen.add(key);
        batch.push(key);
      }
    }
    if (batch.length > 0) {
      deleted += attempt(
        () =>
          `cache.delete of ${batch.length} key(s) matching ${quote(keys.pattern)} (first ${quote(batch[0])})`,
        () => host.delete(batch),
      );
    }
    cursor = BigInt(found.cursor);
    if (cursor === 0n) return deleted;
  }
  throw new Failure(
    `cache.scan of pattern ${quote(keys.pattern)}`,
    new HostError('other', `no end after ${MAX_SCAN_PAGES} pages`),
  );
}

function settleFailure(host, settings, event, transition, failure) {
  const { kind, message } = failure.error;
  const error = `${failure.call} failed (${kind}): ${message}`;
  if (kind === 'denied' || kind === 'invalid') {
    host.log('warn', 'rejected event', [
      ['reason', error],
      ['story_id', transition.storyId],
    ]);
    return { tag: 'reject', val: error };
  }
  const delay = backoffMs(settings, event.deliveryAttempt);
  host.log('warn', 'retrying event', [
    ['error', error],
    ['story_id', transition.storyId],
    ['delivery_attempt', String(event.deliveryAttempt)],
    ['delay_ms', delay.toString()],
  ]);
  return { tag: 'retry', val: delay };
}
