"""What one event does, written against a `host` object so it runs under
plain CPython with a scripted host as well as in the component (app.py).

1. Parse the payload; a rejection dead-letters the event before any host
   call.
2. Read the configuration: `key_prefix` (default `context:`),
   `retry_base_ms` (500), `retry_max_ms` (30000), `invalidation`
   (`delete-matching`, the default, or `scan`).
3. Upsert (:PhaseTransition {id: "<story_id>:<timestamp>"}) with `story_id`,
   `from_phase`, `to_phase` (text or null) and `timestamp`.
4. Invalidate: one delete-matching call for the escaped bare key and
   `<escaped bare>:*`; or, with `invalidation = "scan"`, delete the bare key,
   then scan the pattern page by page deleting what belongs to the story.
5. Ack. The graph goes first: a reader that misses the cache re-renders from
   a graph that already holds the transition.

A failed host call: `unavailable` and `other` retry after
`retry_base_ms * 2^(attempt - 1)` capped at `retry_max_ms`; `denied` and
`invalid` reject naming the call.

The host: config(key) -> str | None; scan(pattern, cursor, count) ->
(cursor, keys); delete(keys) -> int; delete_matching(patterns) -> int;
upsert_entity(label, id, properties); log(level, message, fields). A failing
call raises HostError. Properties are (name, ("text", value)) or
(name, ("null",)); the outcome is ("ack",), ("retry", ms) or
("reject", reason).
"""

import re
from dataclasses import dataclass

from .keys import StoryKeys
from .transition import Rejection, parse, quote

NODE_LABEL = "PhaseTransition"
DEFAULT_KEY_PREFIX = "context:"
DEFAULT_RETRY_BASE_MS = 500
DEFAULT_RETRY_MAX_MS = 30_000
SCAN_COUNT = 500
MAX_SCAN_PAGES = 100_000
U64_MAX = (1 << 64) - 1

# Unicode White_Space, which Rust's str::trim removes.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_MILLIS = re.compile(r"\+?[0-9]+")


class HostError(Exception):
    """A failed host call: `kind` is unavailable, denied, invalid or other."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Settings:
    key_prefix: str
    retry_base_ms: int
    retry_max_ms: int
    invalidation: str

    def backoff_ms(self, delivery_attempt: int) -> int:
        """`base * 2^(attempt - 1)`, saturating, capped at the maximum (attempt 0 counts as 1)."""
        doublings = max(delivery_attempt - 1, 0)
        factor = U64_MAX if doublings >= 64 else 1 << doublings
        return min(min(self.retry_base_ms * factor, U64_MAX), self.retry_max_ms)


def parse_millis(text: str):
    """A whole number of milliseconds as Rust's u64 parse reads it, or None."""
    trimmed = text.strip(_WHITE_SPACE)
    if not _MILLIS.fullmatch(trimmed):
        return None
    value = int(trimmed)
    return value if value <= U64_MAX else None


def _millis(host, key: str, default: int) -> int:
    text = host.config(key)
    if text is None:
        return default
    value = parse_millis(text)
    if value is not None:
        return value
    host.log(
        "error",
        "invalid retry setting, using the default",
        [("key", key), ("value", quote(text)), ("default", str(default))],
    )
    return default


def load_settings(host) -> Settings:
    key_prefix = host.config("key_prefix")
    if key_prefix is None:
        key_prefix = DEFAULT_KEY_PREFIX
    retry_base_ms = _millis(host, "retry_base_ms", DEFAULT_RETRY_BASE_MS)
    retry_max_ms = _millis(host, "retry_max_ms", DEFAULT_RETRY_MAX_MS)
    setting = host.config("invalidation")
    invalidation = "delete-matching"
    if setting == "scan":
        invalidation = "scan"
    elif setting is not None and setting != "delete-matching":
        host.log(
            "error",
            "invalid invalidation setting, using the default",
            [("key", "invalidation"), ("value", quote(setting)), ("default", "delete-matching")],
        )
    return Settings(key_prefix, retry_base_ms, retry_max_ms, invalidation)


class Failure(Exception):
    """A failed call, with what it was about, e.g. `cache.delete of key "context:S-1"`."""

    def __init__(self, call: str, error: HostError):
        super().__init__(call)
        self.call = call
        self.error = error


def _text_or_null(value):
    return ("null",) if value is None else ("text", value)


def handle(host, payload: bytes, delivery_attempt: int):
    """Handles one event against `host`; returns the outcome."""
    try:
        transition = parse(payload)
    except Rejection as rejection:
        reason = str(rejection)
        host.log("warn", "rejected event", [("reason", reason)])
        return ("reject", reason)
    settings = load_settings(host)
    node_id = transition.node_id()
    keys = StoryKeys(settings.key_prefix, transition.story_id)
    too_long = keys.length_problem()
    if too_long is not None:
        host.log("warn", "rejected event", [("reason", too_long)])
        return ("reject", too_long)
    try:
        deleted = _apply(host, settings, transition, node_id, keys)
    except Failure as failure:
        return _settle_failure(host, settings, delivery_attempt, transition, failure)
    host.log(
        "debug",
        "invalidated story context",
        [
            ("story_id", transition.story_id),
            ("keys_deleted", str(deleted)),
            ("from_phase", transition.from_phase or ""),
            ("to_phase", transition.to_phase or ""),
            ("node_id", node_id),
        ],
    )
    return ("ack",)


def _attempt(call, run):
    try:
        return run()
    except HostError as error:
        raise Failure(call(), error) from None


def _apply(host, settings, transition, node_id, keys) -> int:
    properties = [
        ("story_id", ("text", transition.story_id)),
        ("from_phase", _text_or_null(transition.from_phase)),
        ("to_phase", _text_or_null(transition.to_phase)),
        ("timestamp", ("text", transition.timestamp)),
    ]
    _attempt(
        lambda: f"graph.upsert-entity of {NODE_LABEL} {quote(node_id)}",
        lambda: host.upsert_entity(NODE_LABEL, node_id, properties),
    )
    if settings.invalidation == "scan":
        return _invalidate_by_scan(host, keys)
    patterns = [keys.bare_pattern, keys.pattern]
    return _attempt(
        lambda: f"cache.delete-matching of {quote(patterns[0])} and {quote(patterns[1])}",
        lambda: host.delete_matching(patterns),
    )


def _invalidate_by_scan(host, keys) -> int:
    deleted = _attempt(
        lambda: f"cache.delete of key {quote(keys.bare)}",
        lambda: host.delete([keys.bare]),
    )
    # SCAN may return a key more than once; each is deleted once.
    seen = set()
    cursor = 0
    for _ in range(MAX_SCAN_PAGES):
        cursor_now = cursor
        cursor, found = _attempt(
            lambda: f"cache.scan of pattern {quote(keys.pattern)}",
            lambda: host.scan(keys.pattern, cursor_now, SCAN_COUNT),
        )
        batch = []
        for key in found:
            if not keys.is_child(key):
                # The pattern should make this impossible; never delete outside the story.
                host.log(
                    "warn",
                    "scan returned a key outside the story, skipped",
                    [("key", quote(key)), ("pattern", keys.pattern)],
                )
            elif key not in seen:
                seen.add(key)
                batch.append(key)
        if batch:
            deleted += _attempt(
                lambda: (
                    f"cache.delete of {len(batch)} key(s) matching {quote(keys.pattern)} "
                    f"(first {quote(batch[0])})"
                ),
                lambda: host.delete(batch),
            )
        if cursor == 0:
            return deleted
    raise Failure(
        f"cache.scan of pattern {quote(keys.pattern)}",
        HostError("other", f"no end after {MAX_SCAN_PAGES} pages"),
    )


def _settle_failure(host, settings, delivery_attempt, transition, failure):
    kind = failure.error.kind
    error = f"{failure.call} failed ({kind}): {failure.error.message}"
    if kind in ("denied", "invalid"):
        host.log("warn", "rejected event", [("reason", error), ("story_id", transition.story_id)])
        return ("reject", error)
    delay = settings.backoff_ms(delivery_attempt)
    host.log(
        "warn",
        "retrying event",
        [
            ("error", error),
            ("story_id", transition.story_id),
            ("delivery_attempt", str(delivery_attempt)),
            ("delay_ms", str(delay)),
        ],
    )
    return ("retry", delay)
