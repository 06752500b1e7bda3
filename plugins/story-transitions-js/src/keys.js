// Which cache keys belong to a story, and the Valkey globs that select
// exactly them. Pure: no host calls.
//
// A story's context lives under `<prefix><story_id>` and
// `<prefix><story_id>:<anything>`. The bare key is named by an escaped
// pattern (no glob could match it without also matching `<prefix><id>0…`,
// another story's key) and the others by `<escaped bare>:*`. The prefix and
// the id are data: `*`, `?`, `[`, `]` and `\` in them are escaped, so they
// match only themselves.

/** The characters that mean something in a Valkey glob outside a class. */
export const GLOB_SPECIALS = ['*', '?', '[', ']', '\\'];

/** The longest key or pattern a host accepts, in bytes. */
export const MAX_KEY_BYTES = 4096;

/** `literal` as a glob that matches exactly it. */
export function escapeGlob(literal) {
  let out = '';
  for (const ch of literal) {
    if (GLOB_SPECIALS.includes(ch)) out += '\\';
    out += ch;
  }
  return out;
}

/** The length of `text` in UTF-8 bytes. */
export function utf8Length(text) {
  let bytes = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    bytes += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  }
  return bytes;
}

/** The cache keys of one story. */
export class StoryKeys {
  constructor(keyPrefix, storyId) {
    this.bare = `${keyPrefix}${storyId}`;
    this.childPrefix = `${this.bare}:`;
    this.barePattern = escapeGlob(this.bare);
    this.pattern = `${this.barePattern}:*`;
  }

  /** null when every key and pattern fits the host's limit, else the reason. */
  lengthProblem() {
    const bare = utf8Length(this.bare);
    const longest = Math.max(utf8Length(this.pattern), bare);
    if (longest > MAX_KEY_BYTES) {
      return `story id too long: its cache pattern would be ${longest} bytes (key ${bare} bytes), over the ${MAX_KEY_BYTES}-byte limit of a key or pattern`;
    }
    return null;
  }

  /** Whether `key` is one of the story's keys other than the bare one. */
  isChild(key) {
    return key.startsWith(this.childPrefix);
  }
}
