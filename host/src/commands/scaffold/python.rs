//! The Python template: an app that componentize-py (pinned in its
//! requirements.txt, installed into `.venv`) turns into a component,
//! against the WIT this binary serves (written into `wit/`).

use crate::commands::wit;

/// The pinned build toolchain.
const COMPONENTIZE_PY: &str = "0.25.1";

/// The template's files, and what it was written against.
pub fn files(name: &str) -> (Vec<(String, String)>, String) {
    let mut files = vec![
        (
            "requirements.txt".to_string(),
            format!("componentize-py=={COMPONENTIZE_PY}\n"),
        ),
        (
            "pyproject.toml".to_string(),
            format!(
                "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.10\"\n"
            ),
        ),
        ("src/app.py".to_string(), APP_PY.to_string()),
        ("fixtures.jsonl".to_string(), FIXTURES.to_string()),
        (
            "README.md".to_string(),
            README_MD
                .replace("{name}", name)
                .replace("{artifact}", &name.replace('-', "_")),
        ),
        (
            ".gitignore".to_string(),
            ".venv/\ndist/\n__pycache__/\n".to_string(),
        ),
    ];
    files.extend(
        wit::FILES
            .iter()
            .map(|(file, text)| (format!("wit/{file}"), (*text).to_string())),
    );
    (files, format!("componentize-py {COMPONENTIZE_PY}"))
}

const APP_PY: &str = r#""""On each event `{"user_id": "..."}`, invalidate the user's cached keys:
`<key_prefix><id>` and every key under `<key_prefix><id>:`.

Configuration (`[handlers.config]`): `key_prefix`, default `user:`.
A payload without a `user_id` is rejected (dead-lettered with the reason)
before any cache call; an unavailable cache retries the event.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import cache, config, log, types
from wit_world.imports.outcome import Outcome_Ack, Outcome_Reject, Outcome_Retry


def escape_glob(text: str) -> str:
    """An id is data, never a pattern: its glob characters match only themselves."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class WitWorld(wit_world.WitWorld):
    def handle(self, event):
        try:
            payload = json.loads(bytes(event.payload).decode("utf-8"))
        except ValueError as error:
            return Outcome_Reject(f"payload is not JSON: {error}")
        user_id = payload.get("user_id") if isinstance(payload, dict) else None
        if not isinstance(user_id, str):
            return Outcome_Reject("missing `user_id`")
        prefix = config.get("key_prefix")
        key = ("user:" if prefix is None else prefix) + user_id
        try:
            deleted = cache.delete_matching([escape_glob(key), escape_glob(key) + ":*"])
        except Err as err:
            # A failed call raises Err with the WIT error as its value.
            if isinstance(err.value, (types.Error_Unavailable, types.Error_Other)):
                log.log(log.Level.WARN, "cache call failed; retrying", [("reason", err.value.value)])
                return Outcome_Retry(None)
            return Outcome_Reject(err.value.value)
        log.log(log.Level.INFO, "invalidated", [("user_id", user_id), ("keys_deleted", str(deleted))])
        return Outcome_Ack()
"#;

const README_MD: &str = r#"# {name}

A Switchyard handler plugin in Python: on `users.updated`, it invalidates
the user's cached keys (`user:<id>` and everything under `user:<id>:`).

```sh
switchyard plugin build .        # .venv with componentize-py (first time), the component; path, size, digest
switchyard test dist/{artifact}.wasm --events fixtures.jsonl
switchyard plugin push {name} dist/{artifact}.wasm \
    --fixtures fixtures.jsonl --config switchyard.toml
```

The build needs Python 3.10 or later and PyPI: `componentize-py` is pinned
in `requirements.txt` and installed into `.venv`. The app is `src/app.py`
(its class `WitWorld` exports `handle`); modules beside it in `src/` are
bundled too. `wit/` is the contract (`switchyard wit --out wit` refreshes
it). A failed host call raises `componentize_py_types.Err` whose `value`
is the WIT error (`types.Error_Unavailable(...)` and so on).

`fixtures.jsonl` says what must come of each event (outcome, keys gone
and kept); `switchyard test` fails on any difference, and `plugin push`
runs the same file before it stores a version.
"#;

const FIXTURES: &str = r#"{"subject": "users.updated", "payload": {"user_id": "42"}, "cache": {"user:42": "v", "user:42:profile": "v", "user:420": "another user"}, "expect": {"outcome": "ack", "keys_gone": ["user:42", "user:42:profile"], "keys_kept": ["user:420"]}}
{"subject": "users.updated", "payload": {"user_id": "4*"}, "cache": {"user:42": "v"}, "expect": {"outcome": "ack", "keys_kept": ["user:42"]}}
{"subject": "users.updated", "payload": {"name": "no id"}, "expect": {"outcome": "reject", "detail": "user_id"}}
"#;
