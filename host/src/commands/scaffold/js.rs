//! The JavaScript template: an npm package that componentize-js (pinned in
//! its package.json) turns into a component, against the WIT this binary
//! serves (written into `wit/`).

use crate::commands::wit;

/// The pinned build toolchain; componentize-js 0.23.0 loads preview2-shim
/// without declaring it, so that is pinned beside it.
const COMPONENTIZE_JS: &str = "0.23.0";
const PREVIEW2_SHIM: &str = "0.25.0";

/// The template's files, and what it was written against.
pub fn files(name: &str) -> (Vec<(String, String)>, String) {
    let mut files = vec![
        ("package.json".to_string(), package_json(name)),
        ("src/index.js".to_string(), INDEX_JS.to_string()),
        ("fixtures.jsonl".to_string(), FIXTURES.to_string()),
        (
            "README.md".to_string(),
            README_MD
                .replace("{name}", name)
                .replace("{artifact}", &name.replace('-', "_")),
        ),
        (
            ".gitignore".to_string(),
            "node_modules/\ndist/\n".to_string(),
        ),
    ];
    files.extend(
        wit::FILES
            .iter()
            .map(|(file, text)| (format!("wit/{file}"), (*text).to_string())),
    );
    (files, format!("componentize-js {COMPONENTIZE_JS}"))
}

fn package_json(name: &str) -> String {
    format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "switchyard plugin build ."
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}",
    "@bytecodealliance/preview2-shim": "{PREVIEW2_SHIM}"
  }}
}}
"#
    )
}

const INDEX_JS: &str = r#"// On each event `{"user_id": "..."}`, invalidate the user's cached keys:
// `<key_prefix><id>` and every key under `<key_prefix><id>:`.
//
// Configuration (`[handlers.config]`): `key_prefix`, default `user:`.
// A payload without a `user_id` is rejected (dead-lettered with the
// reason) before any cache call; an unavailable cache retries the event.

import { deleteMatching } from 'switchyard:handler/cache@0.1.1';
import { get } from 'switchyard:handler/config@0.1.1';
import { log } from 'switchyard:handler/log@0.1.1';

// An id is data, never a pattern: its glob characters match only themselves.
const escapeGlob = (text) => text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);

export function handle(event) {
  let payload;
  try {
    payload = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(event.payload));
  } catch (error) {
    return { tag: 'reject', val: `payload is not JSON: ${error.message}` };
  }
  const id = payload?.user_id;
  if (typeof id !== 'string') {
    return { tag: 'reject', val: 'missing `user_id`' };
  }
  const key = `${get('key_prefix') ?? 'user:'}${id}`;
  try {
    const deleted = deleteMatching([escapeGlob(key), `${escapeGlob(key)}:*`]);
    log('info', 'invalidated', [['user_id', id], ['keys_deleted', String(deleted)]]);
    return { tag: 'ack' };
  } catch (thrown) {
    // A WIT error comes as the thrown value's payload: {tag, val}.
    const error = thrown?.payload;
    if (error?.tag === 'unavailable' || error?.tag === 'other') {
      log('warn', 'cache call failed; retrying', [['reason', String(error.val)]]);
      return { tag: 'retry', val: undefined };
    }
    if (error) return { tag: 'reject', val: String(error.val) };
    throw thrown;
  }
}
"#;

const README_MD: &str = r#"# {name}

A Switchyard handler plugin in JavaScript: on `users.updated`, it
invalidates the user's cached keys (`user:<id>` and everything under
`user:<id>:`).

```sh
switchyard plugin build .        # npm install (first time), componentize-js; path, size, digest
switchyard test dist/{artifact}.wasm --events fixtures.jsonl
switchyard plugin push {name} dist/{artifact}.wasm \
    --fixtures fixtures.jsonl --config switchyard.toml
```

The build needs Node.js 20 and the npm registry: the toolchain
(`@bytecodealliance/componentize-js`) is pinned in `package.json`; commit
the `package-lock.json` the first build writes, and later builds install
exactly it. `wit/` is the contract (`switchyard wit --out wit` refreshes
it). Imports are `switchyard:handler/<interface>@0.1.1` modules; a call
that fails throws, with the WIT error (`{tag, val}`) as the thrown value's
`payload`.

`fixtures.jsonl` says what must come of each event (outcome, keys gone
and kept); `switchyard test` fails on any difference, and `plugin push`
runs the same file before it stores a version.
"#;

const FIXTURES: &str = r#"{"subject": "users.updated", "payload": {"user_id": "42"}, "cache": {"user:42": "v", "user:42:profile": "v", "user:420": "another user"}, "expect": {"outcome": "ack", "keys_gone": ["user:42", "user:42:profile"], "keys_kept": ["user:420"]}}
{"subject": "users.updated", "payload": {"user_id": "4*"}, "cache": {"user:42": "v"}, "expect": {"outcome": "ack", "keys_kept": ["user:42"]}}
{"subject": "users.updated", "payload": {"name": "no id"}, "expect": {"outcome": "reject", "detail": "user_id"}}
"#;
