//! Which cache keys belong to a story, and the Valkey glob that finds them.
//!
//! Pure: no host calls.
//!
//! A story's context lives under `<prefix><story_id>` and
//! `<prefix><story_id>:<anything>`. Invalidation covers exactly those keys:
//! the bare key is deleted by name (no glob can match it without also
//! matching `<prefix><story_id>0…`, another story's key), and the others are
//! found with `SCAN MATCH <prefix><story_id>:*` where the prefix and the id
//! are escaped, so both are matched literally whatever they contain.
//!
//! Escaping follows Valkey's `stringmatchlen`: outside a bracket class the
//! only special bytes are `*`, `?`, `[` and `\`, and `\x` matches `x`
//! literally. `]` is escaped too, harmlessly, so the escaped text stays
//! literal even if a later edit put it inside a class; `^` and `-` are
//! special only inside a class, which an escaped string never opens. All
//! these are ASCII, and UTF-8 never uses ASCII bytes inside a multi-byte
//! character, so escaping character by character is escaping byte by byte.

pub use switchyard_plugin::glob::{SPECIALS as GLOB_SPECIALS, escape as escape_glob};

/// The longest key or pattern a host accepts, in bytes (the contract's
/// limit on `scan`, `delete` and `delete-matching` arguments).
pub const MAX_KEY_BYTES: usize = 4096;

/// The cache keys of one story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryKeys {
    bare: String,
    child_prefix: String,
    pattern: String,
}

impl StoryKeys {
    /// The keys of `story_id` under `key_prefix` (for example `context:`).
    /// Both are data: neither is ever read as a pattern.
    pub fn new(key_prefix: &str, story_id: &str) -> Self {
        let bare = format!("{key_prefix}{story_id}");
        let child_prefix = format!("{bare}:");
        let pattern = format!("{}:*", escape_glob(&bare));
        Self {
            bare,
            child_prefix,
            pattern,
        }
    }

    /// Whether every key and pattern of the story fits the host's limit;
    /// otherwise the reason, naming the longest. Escaping can double an
    /// id's length, so an id well under the limit can still exceed it.
    pub fn check_lengths(&self) -> Result<(), String> {
        let longest = self.pattern.len().max(self.bare.len());
        if longest > MAX_KEY_BYTES {
            return Err(format!(
                "story id too long: its cache pattern would be {longest} bytes (key {} bytes), over the {MAX_KEY_BYTES}-byte limit of a key or pattern",
                self.bare.len()
            ));
        }
        Ok(())
    }

    /// The bare key, `<prefix><story_id>`, deleted by name.
    pub fn bare_key(&self) -> &str {
        &self.bare
    }

    /// The bare key escaped, as a pattern that names exactly it.
    pub fn bare_pattern(&self) -> String {
        escape_glob(&self.bare)
    }

    /// What every other key of the story starts with: `<prefix><story_id>:`.
    pub fn child_prefix(&self) -> &str {
        &self.child_prefix
    }

    /// The `SCAN MATCH` pattern for the story's other keys:
    /// `<escaped prefix><escaped story_id>:*`.
    pub fn scan_pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether `key` is one of the story's keys other than the bare one,
    /// i.e. one that the scan pattern should match.
    pub fn is_child(&self, key: &str) -> bool {
        key.starts_with(&self.child_prefix)
    }

    /// Whether `key` belongs to the story: the bare key or a child.
    pub fn covers(&self, key: &str) -> bool {
        key == self.bare || self.is_child(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a pattern made of literal characters, `\x` escapes and one
    /// final `*`, returning the literal part. Any other glob syntax (an
    /// unescaped `?`, `[`, `]` or inner `*`, a dangling `\`) is an error:
    /// then the pattern would not be a literal prefix match.
    fn literal_prefix_of(pattern: &str) -> Result<String, String> {
        let body = pattern
            .strip_suffix('*')
            .ok_or("pattern does not end with `*`")?;
        let mut literal = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => literal.push(chars.next().ok_or("dangling `\\`")?),
                '*' | '?' | '[' | ']' => return Err(format!("unescaped `{c}` in {pattern:?}")),
                c => literal.push(c),
            }
        }
        Ok(literal)
    }

    /// Story ids that stress the escaping.
    const AWKWARD_IDS: &[&str] = &[
        "STRESS-NEO-0001",
        "*",
        "?",
        "[",
        "]",
        "\\",
        "a*b?c[d]e\\f",
        "[^a]",
        "[a-z]",
        "\\*",
        "ends-with-backslash\\",
        "with:colon",
        ":",
        "::",
        "ñandú-🦀-故事",
        "tab\there",
        "nul\0byte",
        " ",
    ];

    #[test]
    fn builds_bare_key_and_child_prefix_from_prefix_and_id() {
        let keys = StoryKeys::new("context:", "STRESS-NEO-0001");
        assert_eq!(keys.bare_key(), "context:STRESS-NEO-0001");
        assert_eq!(keys.child_prefix(), "context:STRESS-NEO-0001:");
        assert_eq!(keys.scan_pattern(), "context:STRESS-NEO-0001:*");
    }

    #[test]
    fn escapes_glob_specials_in_story_id() {
        assert_eq!(escape_glob("*"), "\\*");
        assert_eq!(escape_glob("?"), "\\?");
        assert_eq!(escape_glob("["), "\\[");
        assert_eq!(escape_glob("]"), "\\]");
        assert_eq!(escape_glob("\\"), "\\\\");
        assert_eq!(escape_glob("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(
            StoryKeys::new("context:", "S*[1]").scan_pattern(),
            "context:S\\*\\[1\\]:*"
        );
    }

    #[test]
    fn leaves_bracket_only_specials_and_ordinary_text_alone() {
        // `^` and `-` are special only inside a class, which is never opened.
        assert_eq!(escape_glob("^-"), "^-");
        assert_eq!(escape_glob("with:colon"), "with:colon");
        assert_eq!(escape_glob("ñandú-🦀-故事"), "ñandú-🦀-故事");
        assert_eq!(escape_glob(""), "");
    }

    #[test]
    fn escapes_glob_specials_in_key_prefix() {
        let keys = StoryKeys::new("ctx[v2]*:", "S-1");
        assert_eq!(keys.scan_pattern(), "ctx\\[v2\\]\\*:S-1:*");
        assert_eq!(keys.bare_key(), "ctx[v2]*:S-1");
    }

    #[test]
    fn scan_pattern_is_a_literal_child_prefix_for_awkward_ids() {
        for prefix in ["context:", "", "a*[?]\\:"] {
            for id in AWKWARD_IDS {
                let keys = StoryKeys::new(prefix, id);
                assert_eq!(
                    literal_prefix_of(keys.scan_pattern()).as_deref(),
                    Ok(keys.child_prefix()),
                    "prefix {prefix:?}, id {id:?}"
                );
            }
        }
    }

    #[test]
    fn covers_bare_key_and_colon_children_only() {
        let keys = StoryKeys::new("context:", "STRESS-NEO-0001");
        for key in [
            "context:STRESS-NEO-0001",
            "context:STRESS-NEO-0001:",
            "context:STRESS-NEO-0001:dev",
            "context:STRESS-NEO-0001:role:qa",
        ] {
            assert!(keys.covers(key), "{key} should be covered");
        }
        for key in [
            "context:STRESS-NEO-00010",
            "context:STRESS-NEO-0001x:dev",
            "context:STRESS-NEO-000",
            "context:STRESS-NEO-0002",
            "context:STRESS-NEO-0002:dev",
            "other:STRESS-NEO-0001",
            "xcontext:STRESS-NEO-0001",
            "STRESS-NEO-0001",
        ] {
            assert!(!keys.covers(key), "{key} must not be covered");
        }
    }

    #[test]
    fn bare_key_is_not_a_child() {
        let keys = StoryKeys::new("context:", "S-1");
        assert!(!keys.is_child("context:S-1"));
        assert!(keys.is_child("context:S-1:x"));
    }

    #[test]
    fn treats_story_id_with_glob_specials_as_data() {
        // A story literally named `*` owns `context:*` and `context:*:…`,
        // not every key.
        let keys = StoryKeys::new("context:", "*");
        assert!(keys.covers("context:*"));
        assert!(keys.covers("context:*:dev"));
        assert!(!keys.covers("context:S-1"));
        assert!(!keys.covers("context:S-1:dev"));
        assert_eq!(keys.scan_pattern(), "context:\\*:*");
    }

    #[test]
    fn handles_empty_prefix_and_colon_ids() {
        let keys = StoryKeys::new("", ":");
        assert_eq!(keys.bare_key(), ":");
        assert_eq!(keys.child_prefix(), "::");
        assert_eq!(keys.scan_pattern(), "::*");
        assert!(keys.covers("::x"));
        assert!(!keys.covers(":x"));
    }

    #[test]
    fn stays_exact_for_an_empty_story_id() {
        // Parsing rejects an empty id; the keys would still not spill over.
        let keys = StoryKeys::new("context:", "");
        assert_eq!(keys.bare_key(), "context:");
        assert_eq!(keys.scan_pattern(), "context::*");
        assert!(keys.covers("context::x"));
        assert!(!keys.covers("context:S-1"));
        assert!(!keys.covers("context:S-1:dev"));
    }

    #[test]
    fn escaping_round_trips_every_ascii_character() {
        let all: String = (0u8..=127).map(char::from).collect();
        let pattern = format!("{}*", escape_glob(&all));
        assert_eq!(literal_prefix_of(&pattern), Ok(all));
    }
}
