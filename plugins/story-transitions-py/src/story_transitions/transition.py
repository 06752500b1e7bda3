"""Parsing a story-transition payload into a Transition, or a Rejection whose
reason is the one the Rust handler gives for the same bytes.

Pure: no host calls, so it runs under plain CPython for tests.

Accepted shapes:
  flat:     {"story_id", "from_phase", "to_phase", "timestamp"}
  planning: {"event_type": "story.transitioned", "story_id", "from_state",
             "to_state", "transitioned_by", "timestamp"}
  envelope: {"event_type": "planning.story.transitioned", "payload": {...},
             "idempotency_key", "correlation_id", "timestamp", "producer",
             "metadata"}

The rules (each with its own reason):
- UTF-8 JSON whose top level is an object; no byte-order mark.
- An object with `payload` is an envelope; its payload must be an object and
  not an envelope itself.
- `event_type`, where present, is one of EVENT_TYPES.
- `story_id` is a non-empty string without `:`, read from the payload or the
  envelope; both present must agree.
- `from_phase`/`from_state` and `to_phase`/`to_state` are synonyms (a string,
  null or absent) and must agree, inner and outer too.
- `timestamp` is a non-empty string or a number kept as spelled; the inner
  one wins, a missing or null one falls back to the envelope's.
- A known field twice in one object is refused.
"""

from bisect import bisect_right
from dataclasses import dataclass
from typing import Optional

from .debug_escapes import DEBUG_ESCAPED
from .json_reader import JsonError, Reader, Value

SEPARATOR = ":"
"""What separates a story id from the rest of its keys and node id."""

EVENT_TYPES = ("story.transitioned", "planning.story.transitioned")
"""The `event_type` values a transition may carry, at either level."""

QUOTE_LIMIT = 80
"""How much of a producer-supplied value a reason quotes, in characters."""

TYPE_NAMES = {
    "null": "null",
    "boolean": "a boolean",
    "number": "a number",
    "string": "a string",
    "array": "an array",
    "object": "an object",
}

KNOWN = frozenset(["event_type", "story_id", "from_phase", "to_phase", "from_state", "to_state"])

_STARTS = DEBUG_ESCAPED[0::2]
_ENDS = DEBUG_ESCAPED[1::2]


class Rejection(Exception):
    """Why a payload can never yield a transition; str() is the reason."""


@dataclass
class Transition:
    story_id: str
    from_phase: Optional[str]
    to_phase: Optional[str]
    timestamp: str

    def node_id(self) -> str:
        """The id of the transition's PhaseTransition node: `<story_id>:<timestamp>`."""
        return f"{self.story_id}:{self.timestamp}"


_SIMPLE = {0: "\\0", 9: "\\t", 10: "\\n", 13: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def _escaped(cp: int) -> bool:
    k = bisect_right(_STARTS, cp) - 1
    return k >= 0 and cp <= _ENDS[k]


def debug_string(value: str) -> str:
    """A string as Rust's `{:?}` prints it: quoted, escaped."""
    out = ['"']
    for ch in value:
        cp = ord(ch)
        simple = _SIMPLE.get(cp)
        if simple is not None:
            out.append(simple)
        elif _escaped(cp):
            out.append(f"\\u{{{cp:x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def quote(value: str) -> str:
    """Quotes a producer-supplied string for a reason: escaped and bounded."""
    if len(value) <= QUOTE_LIMIT:
        return debug_string(value)
    return debug_string(value[:QUOTE_LIMIT]) + "…"


def _wrong_type(field: str, expected: str, found: str):
    raise Rejection(f"field `{field}` must be {expected}, found {TYPE_NAMES[found]}")


def _read_fields(envelope: bool):
    def read(reader: Reader) -> dict:
        fields = {"duplicate": None}
        state = [True]
        while True:
            name = reader.key(state)
            if name is None:
                return fields
            reader.colon()
            if name in KNOWN:
                value = reader.value()
            elif name == "timestamp":
                value = reader.spelled()
            elif name == "payload":
                value = reader.value(_read_fields(False)) if envelope else Value(reader.value().type)
            else:
                reader.skip_value()
                continue
            if name in fields:
                if fields["duplicate"] is None:
                    fields["duplicate"] = name
            else:
                fields[name] = value

    return read


def parse(payload: bytes) -> Transition:
    """Parses one event payload into a Transition, or raises a Rejection."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection(
            f"payload is not valid UTF-8: invalid byte sequence at byte offset {error.start}"
        ) from None
    if payload.startswith(b"\xef\xbb\xbf"):
        raise Rejection("payload starts with a UTF-8 byte-order mark, which JSON does not allow")
    if not payload.strip(b" \t\n\r"):
        raise Rejection("payload is empty")
    try:
        reader = Reader(payload)
        top = reader.value(_read_fields(True))
        reader.end()
    except JsonError as error:
        raise Rejection(f"payload is not valid JSON: {error}") from None
    if top.type != "object":
        raise Rejection(f"payload must be a JSON object, found {TYPE_NAMES[top.type]}")
    return _interpret(top.fields)


def _check_level(fields: dict, prefix: str) -> None:
    if fields["duplicate"] is not None:
        raise Rejection(f"field `{prefix}{fields['duplicate']}` appears more than once")
    event_type = fields.get("event_type")
    if event_type is None:
        return
    if event_type.type != "string":
        _wrong_type(f"{prefix}event_type", "a string", event_type.type)
    if event_type.value not in EVENT_TYPES:
        expected = ", ".join(debug_string(t) for t in EVENT_TYPES)
        raise Rejection(
            f"field `{prefix}event_type` is {quote(event_type.value)}, expected one of {expected}"
        )


def _interpret(outer: dict) -> Transition:
    _check_level(outer, "")
    inner = None
    payload = outer.get("payload")
    if payload is not None:
        if payload.type != "object":
            raise Rejection(
                f"envelope field `payload` must be a JSON object, found {TYPE_NAMES[payload.type]}"
            )
        inner = payload.fields
        if inner.get("payload") is not None:
            raise Rejection("envelope `payload` is itself an envelope (it has a `payload` field)")
        _check_level(inner, "payload.")
    # Preference order: the envelope's payload, then the envelope itself.
    levels = [(inner, "payload."), (outer, "")] if inner is not None else [(outer, "")]
    first_prefix = levels[0][1]

    story_ids, froms, tos, timestamps = [], [], [], []
    for fields, prefix in levels:
        story_ids.append(_story_id(fields, prefix))
        froms.append(_phase(prefix, "from", fields.get("from_phase"), fields.get("from_state")))
        tos.append(_phase(prefix, "to", fields.get("to_phase"), fields.get("to_state")))
        timestamps.append(_timestamp(fields, prefix))

    story = _first_agreed(story_ids)
    if story is None:
        raise Rejection(f"missing `{first_prefix}story_id`")
    from_phase = _first_agreed(froms)
    to_phase = _first_agreed(tos)
    timestamp = next((t for t in timestamps if t is not None), None)
    if timestamp is None:
        raise Rejection(
            f"missing `{first_prefix}timestamp`: a transition needs a timestamp to name its "
            "PhaseTransition node"
        )
    return Transition(
        story_id=story[1],
        from_phase=from_phase[1] if from_phase else None,
        to_phase=to_phase[1] if to_phase else None,
        timestamp=timestamp,
    )


def _story_id(fields: dict, prefix: str):
    field = f"{prefix}story_id"
    raw = fields.get("story_id")
    if raw is None:
        return None
    if raw.type != "string":
        _wrong_type(field, "a string", raw.type)
    if raw.value == "":
        raise Rejection(f"field `{field}` is empty")
    if SEPARATOR in raw.value:
        raise Rejection(
            f"field `{field}` ({quote(raw.value)}) contains `:`, the separator of a story's cache "
            "keys (`<prefix><story_id>:<part>`) and node ids (`<story_id>:<timestamp>`): its "
            "keys and node would be another story's"
        )
    return (field, raw.value)


def _phase(prefix: str, side: str, phase, state):
    def read(raw, name):
        field = f"{prefix}{side}_{name}"
        if raw is None or raw.type == "null":
            return None
        if raw.type == "string":
            return (field, raw.value)
        _wrong_type(field, "a string or null", raw.type)

    return _first_agreed([read(phase, "phase"), read(state, "state")])


def _timestamp(fields: dict, prefix: str):
    field = f"{prefix}timestamp"
    raw = fields.get("timestamp")
    if raw is None or raw.type == "null":
        return None
    if raw.type == "string":
        if raw.value == "":
            raise Rejection(f"field `{field}` is empty")
        return raw.value
    if raw.type == "number":
        return raw.value
    _wrong_type(field, "a string or a number", raw.type)


def _first_agreed(candidates):
    """The first candidate present, or a conflict naming the first two that differ."""
    chosen = None
    for candidate in candidates:
        if candidate is None:
            continue
        if chosen is None:
            chosen = candidate
        elif chosen[1] != candidate[1]:
            raise Rejection(
                f"fields `{chosen[0]}` ({quote(chosen[1])}) and `{candidate[0]}` "
                f"({quote(candidate[1])}) disagree"
            )
    return chosen
