"""The component: the `handle` export of the switchyard:handler
event-handler world, joining story_transitions.handler to the world's
imports."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import cache, config, graph, log, types
from wit_world.imports.outcome import Outcome_Ack, Outcome_Reject, Outcome_Retry

from story_transitions.handler import HostError, handle

_KINDS = {
    types.Error_Unavailable: "unavailable",
    types.Error_Denied: "denied",
    types.Error_Invalid: "invalid",
    types.Error_Other: "other",
}
_LEVELS = {
    "trace": log.Level.TRACE,
    "debug": log.Level.DEBUG,
    "info": log.Level.INFO,
    "warn": log.Level.WARN,
    "error": log.Level.ERROR,
}


def _call(run):
    try:
        return run()
    except Err as err:
        raise HostError(_KINDS.get(type(err.value), "other"), str(err.value.value)) from None


def _value(value):
    return graph.Value_Null() if value[0] == "null" else graph.Value_Text(value[1])


class Imports:
    def config(self, key):
        return config.get(key)

    def scan(self, pattern, cursor, count):
        page = _call(lambda: cache.scan(pattern, cursor, count))
        return page.cursor, page.keys

    def delete(self, keys):
        return _call(lambda: cache.delete(keys))

    def delete_matching(self, patterns):
        return _call(lambda: cache.delete_matching(patterns))

    def upsert_entity(self, label, id, properties):
        props = [(name, _value(value)) for name, value in properties]
        _call(lambda: graph.upsert_entity(label, id, props))

    def log(self, level, message, fields):
        log.log(_LEVELS[level], message, fields)


_IMPORTS = Imports()


class WitWorld(wit_world.WitWorld):
    def handle(self, event):
        outcome = handle(_IMPORTS, bytes(event.payload), event.delivery_attempt)
        if outcome[0] == "ack":
            return Outcome_Ack()
        if outcome[0] == "retry":
            return Outcome_Retry(outcome[1])
        return Outcome_Reject(outcome[1])
