"""Which cache keys belong to a story, and the Valkey globs that select
exactly them. Pure: no host calls.

A story's context lives under `<prefix><story_id>` and
`<prefix><story_id>:<anything>`. The bare key is named by an escaped pattern
(no glob could match it without also matching `<prefix><id>0...`, another
story's key) and the others by `<escaped bare>:*`. The prefix and the id are
data: `*`, `?`, `[`, `]` and `\\` in them are escaped, so they match only
themselves.
"""

from typing import Optional

GLOB_SPECIALS = "*?[]\\"
"""The characters that mean something in a Valkey glob outside a class."""

MAX_KEY_BYTES = 4096
"""The longest key or pattern a host accepts, in bytes."""


def escape_glob(literal: str) -> str:
    """`literal` as a glob that matches exactly it."""
    return "".join("\\" + ch if ch in GLOB_SPECIALS else ch for ch in literal)


class StoryKeys:
    """The cache keys of one story."""

    def __init__(self, key_prefix: str, story_id: str):
        self.bare = f"{key_prefix}{story_id}"
        self.child_prefix = f"{self.bare}:"
        self.bare_pattern = escape_glob(self.bare)
        self.pattern = f"{self.bare_pattern}:*"

    def length_problem(self) -> Optional[str]:
        """None when every key and pattern fits the host's limit, else the reason."""
        bare = len(self.bare.encode("utf-8"))
        longest = max(len(self.pattern.encode("utf-8")), bare)
        if longest > MAX_KEY_BYTES:
            return (
                f"story id too long: its cache pattern would be {longest} bytes (key {bare} "
                f"bytes), over the {MAX_KEY_BYTES}-byte limit of a key or pattern"
            )
        return None

    def is_child(self, key: str) -> bool:
        """Whether `key` is one of the story's keys other than the bare one."""
        return key.startswith(self.child_prefix)
