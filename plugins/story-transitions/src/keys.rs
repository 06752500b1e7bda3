//! Which cache keys belong to a story: `<prefix><story_id>` and every key
//! under `<prefix><story_id>:`, one exact key and one prefix (no single
//! glob names both without also matching `<prefix><story_id>0…`, another
//! story's). Pure; the SDK escapes both when it deletes them.

use switchyard_plugin::glob;

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
    pub fn new(key_prefix: &str, story_id: &str) -> Self {
        let bare = format!("{key_prefix}{story_id}");
        let child_prefix = format!("{bare}:");
        let pattern = glob::under(&child_prefix);
        Self {
            bare,
            child_prefix,
            pattern,
        }
    }

    /// The reason, if a key or pattern of the story is over the host's
    /// limit. Escaping can double an id's length, so an id well under the
    /// limit can still exceed it.
    pub fn check_lengths(&self) -> Result<(), String> {
        let (longest, key) = (self.pattern.len().max(self.bare.len()), self.bare.len());
        if longest > MAX_KEY_BYTES {
            return Err(format!(
                "story id too long: its cache pattern would be {longest} bytes (key {key} bytes), over the {MAX_KEY_BYTES}-byte limit of a key or pattern"
            ));
        }
        Ok(())
    }

    /// `<prefix><story_id>`.
    pub fn bare_key(&self) -> &str {
        &self.bare
    }

    /// What every other key of the story starts with: `<prefix><story_id>:`.
    pub fn child_prefix(&self) -> &str {
        &self.child_prefix
    }

    /// The glob of those other keys: the child prefix escaped, then `*`.
    pub fn scan_pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether `key` is the story's: the bare key or one under the prefix.
    pub fn covers(&self, key: &str) -> bool {
        key == self.bare || key.starts_with(&self.child_prefix)
    }
}
